"""Alembic migrations of the region database, driven from Python.

Alembic (and SQLAlchemy under it) is imported only to migrate: every process checks
the database's revision when it starts, and reads the revisions this code knows from
the migration files themselves (``revision = "..."``, ``down_revision = ...``), which
costs milliseconds instead of the second that importing Alembic takes.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .resources import MIGRATIONS_DIR, SQL_DIR

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "MIGRATIONS_DIR",
    "VERSION_TABLE",
    "alembic_config",
    "current",
    "downgrade",
    "ensure_schema",
    "head",
    "install_cross_region",
    "revisions",
    "run_sql_files",
    "sqlalchemy_url",
    "upgrade",
]

VERSION_TABLE = "dispatcher_alembic_version"


def sqlalchemy_url(url: str) -> str:
    """A libpq URL as SQLAlchemy wants it (psycopg 3 driver)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def run_sql_files(bind: Any, names: list[str], subdir: str = "schema") -> None:
    """Run sql/<subdir>/<name> scripts verbatim on an Alembic connection."""
    raw = bind.connection.dbapi_connection
    with raw.cursor() as cur:
        for name in names:
            cur.execute((SQL_DIR / subdir / name).read_text(encoding="utf-8"))


def install_cross_region(url: str) -> None:
    """Install or update the timer schema on a separate cross-region server (idempotent)."""
    from .database import connect

    with connect(url, application_name="dispatcher-migrate") as conn:
        for name in ("040_timers.sql", "061_timers.sql"):  # each may run again safely
            conn.execute((SQL_DIR / "schema" / name).read_text(encoding="utf-8"))


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["database_url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def current(url: str) -> str | None:
    """The database's revision (None: not migrated); DatabaseUnavailable if unreachable."""
    from .database import connect
    from .gateway import Gateway, ops

    with connect(url, application_name="dispatcher-migrate") as conn:
        db = Gateway(conn)
        if not db.run(ops.migrate.version_table_present()):
            return None
        return db.run(ops.migrate.alembic_revision())


def ensure_schema(url: str, upgrade_older: bool = False) -> str:
    """Migrate an empty database to head; refuse to work on an outdated one (or, with
    UPGRADE_OLDER, as ``dispatcher up`` does, upgrade it: an older revision of ours)."""
    import structlog

    from .errors import DispatcherError

    log = structlog.get_logger("dispatcher.migrate")
    rev = current(url)
    code_head = head()
    if rev is None:
        upgrade(url)
        log.info("database_migrated", revision=code_head)
        return code_head
    if rev != code_head:
        if upgrade_older and rev in revisions():
            upgrade(url)
            log.info("database_upgraded", from_revision=rev, revision=code_head)
            return code_head
        newer = rev not in revisions()
        raise DispatcherError(
            f"the database is at revision {rev}, this code expects {code_head}",
            hint="this code is older than the database: run a newer release"
            if newer
            else "run: dispatcher db upgrade",
        )
    return rev


_REVISION = re.compile(r"^revision(?:\s*:\s*str)?\s*=\s*[\"']([^\"']+)[\"']", re.M)
_DOWN = re.compile(r"^down_revision(?:\s*:[^=]+)?\s*=\s*(?:None|[\"']([^\"']+)[\"'])", re.M)


def revisions() -> list[str]:
    """Every revision this code knows, oldest first (one line of history, as Alembic
    walks it: tests/test_migrations.py checks the two agree)."""
    parent: dict[str, str | None] = {}
    for path in (MIGRATIONS_DIR / "versions").iterdir():
        if not path.name.endswith(".py") or path.name.startswith("_"):
            continue
        text = path.read_text(encoding="utf-8")
        rev, down = _REVISION.search(text), _DOWN.search(text)
        if rev is None or down is None:
            raise RuntimeError(f"migration {path.name} names no revision or down_revision")
        parent[rev.group(1)] = down.group(1)
    children = {p: r for r, p in parent.items()}
    if len(children) != len(parent):
        raise RuntimeError("the migrations branch: two revisions share a parent")
    order: list[str] = []
    at = children.get(None)
    while at is not None:
        order.append(at)
        at = children.get(at)
    if len(order) != len(parent):
        raise RuntimeError("the migrations do not form one line from the first")
    return order


def head() -> str:
    """The newest revision this code knows."""
    return revisions()[-1]
