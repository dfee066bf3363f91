"""Alembic migrations, shipped as ``dispatcher.migrations`` (see dispatcher/resources.py)."""
