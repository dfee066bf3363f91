"""The files the program ships beside its code: its SQL and its Alembic migrations.

In the checkout they live at the top (``sql/``, ``migrations/``); an installed wheel
carries them as the packages ``dispatcher.sql`` and ``dispatcher.migrations`` (the
mapping is in pyproject.toml), so they are found with :mod:`importlib.resources`
wherever the program is installed, editable or not.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["MIGRATIONS_DIR", "SQL_DIR"]


def _directory(package: str) -> Path:
    try:
        root = files(package)
    except ModuleNotFoundError as exc:  # a checkout on sys.path that was never installed
        raise RuntimeError(
            f"{package} is missing: install the project (pip install -e . in a checkout)"
        ) from exc
    path = Path(str(root))
    if not path.is_dir():
        raise RuntimeError(f"{package} is not a directory on disk ({root}): reinstall the project")
    return path


SQL_DIR = _directory("dispatcher.sql")
MIGRATIONS_DIR = _directory("dispatcher.migrations")
