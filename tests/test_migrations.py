"""Migrations: empty -> head, head -> base -> head, and the schema the code expects."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest

from dispatcher import migrate
from dispatcher.database import with_dbname
from dispatcher.queries import QUERIES

SCHEMA_QUERY = """
SELECT 'table' AS kind, table_schema || '.' || table_name || '.' || column_name || ':' || data_type
    AS name
FROM information_schema.columns WHERE table_schema LIKE 'dispatcher%%'
UNION ALL
SELECT 'index', schemaname || '.' || indexname || ':' || indexdef FROM pg_indexes
WHERE schemaname LIKE 'dispatcher%%'
UNION ALL
SELECT 'function', n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid)
    || '):' || md5(p.prosrc)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname LIKE 'dispatcher%%'
ORDER BY 1, 2
"""


@pytest.fixture
def empty_url(pg_server_url: str) -> Iterator[str]:
    name = f"dispatcher_migrations_{os.getpid()}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield with_dbname(pg_server_url, name)
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _schema(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return [(k, n) for k, n in conn.execute(SCHEMA_QUERY).fetchall()]


def test_upgrade_downgrade_upgrade_round_trips(empty_url: str) -> None:
    """Empty -> head -> base -> head gives the same schema, and base leaves nothing."""
    assert migrate.current(empty_url) is None
    migrate.upgrade(empty_url)
    assert migrate.current(empty_url) == migrate.head()
    first = _schema(empty_url)
    assert first
    migrate.downgrade(empty_url, "base")
    assert migrate.current(empty_url) is None
    assert _schema(empty_url) == []
    migrate.upgrade(empty_url)
    assert _schema(empty_url) == first


def test_migrated_schema_has_what_the_code_calls(template_url: str) -> None:
    """Every named query prepares against a migrated database (tables, columns,
    procedure signatures all match what the code sends)."""
    with psycopg.connect(template_url, autocommit=True) as conn:
        for name, sql in QUERIES.items():
            with conn.transaction(force_rollback=True), conn.cursor() as cur:
                params = _null_params(sql)
                try:
                    cur.execute("EXPLAIN " + sql, params)
                except (
                    psycopg.errors.UndefinedFunction,
                    psycopg.errors.UndefinedTable,
                    psycopg.errors.UndefinedColumn,
                    psycopg.errors.AmbiguousFunction,
                ) as exc:
                    pytest.fail(f"query {name}: {exc}")


def _null_params(sql: str) -> dict[str, None]:
    import re

    return {m: None for m in re.findall(r"%\((\w+)\)s", sql)}


def test_plain_alembic_command_works(empty_url: str) -> None:
    """`alembic upgrade head` from the project root migrates the configured database."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "DISPATCHER_DATABASE_URL": empty_url}
    out = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert migrate.current(empty_url) == migrate.head()


def test_each_revision_downgrades_to_exactly_the_one_before(empty_url: str) -> None:
    """For every revision: upgrading to it and downgrading one step gives back exactly
    the schema of the revision before (columns, indexes, procedure bodies)."""
    revisions = migrate.revisions()
    assert revisions[0] == "0001" and len(revisions) >= 2
    for before, after in itertools.pairwise(revisions):
        migrate.upgrade(empty_url, before)
        expected = _schema(empty_url)
        migrate.upgrade(empty_url, after)
        assert _schema(empty_url) != expected, f"{after} changes nothing"
        migrate.downgrade(empty_url, before)
        assert migrate.current(empty_url) == before
        assert _schema(empty_url) == expected, f"{after} does not downgrade cleanly"


def test_commands_refuse_an_older_database_and_up_upgrades_it(empty_url: str) -> None:
    """A database at an older revision: ensure_schema refuses it with the command to
    run; with upgrade_older (dispatcher up) it is upgraded to head."""
    from dispatcher.errors import DispatcherError

    migrate.upgrade(empty_url, "0001")
    with pytest.raises(DispatcherError, match="revision 0001") as caught:
        migrate.ensure_schema(empty_url)
    assert "dispatcher db upgrade" in (caught.value.hint or "")
    assert migrate.ensure_schema(empty_url, upgrade_older=True) == migrate.head()
    assert migrate.current(empty_url) == migrate.head()


def test_current_schema_file_is_what_the_migrations_build(empty_url: str) -> None:
    """sql/current.sql (the schema at head, for readers) is exactly what `alembic upgrade
    head` builds: tables, indexes, types and every procedure body."""
    from dispatcher.current_schema import CURRENT, dump

    migrate.upgrade(empty_url)
    built = dump(empty_url)
    assert built == CURRENT.read_text(encoding="utf-8"), (
        "sql/current.sql is out of date: python -m dispatcher.current_schema --write URL"
    )
    assert "CREATE FUNCTION dispatcher_v2.enqueue(" in built


def test_the_revisions_read_from_the_files_are_alembics() -> None:
    """migrate.revisions() and head(), read from the migration files without importing
    Alembic, are the line of revisions Alembic walks."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate.alembic_config(""))
    walked = [r.revision for r in reversed(list(script.walk_revisions()))]
    assert migrate.revisions() == walked
    assert migrate.head() == script.get_current_head()


def test_a_process_start_does_not_import_alembic() -> None:
    """A SEP, a listener or a CLI command checks the revision without importing Alembic
    or SQLAlchemy (about a second of every process start)."""
    code = (
        "import sys, sep.__main__, listener.server, dispatcher.cli; "
        "print(sorted(m for m in ('alembic', 'sqlalchemy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
