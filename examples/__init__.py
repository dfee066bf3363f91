"""Example apps (installed as the package ``dispatcher_examples``).

- :mod:`.sample`: the app ``dispatcher up`` runs by default (``--app`` picks another).
"""
