"""The SQL of the program, shipped as ``dispatcher.sql`` (see dispatcher/resources.py)."""
