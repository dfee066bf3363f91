"""Least privilege: the roles of revision 0005 (sql/schema/080_operations.sql) and the URL
each kind of process connects with (dispatcher/roles.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from dispatcher.config import ConfigError, load_settings
from dispatcher.gateway import Gateway, ops
from dispatcher.region import Region
from dispatcher.roles import process_url, with_role
from dispatcher.tokens import create_token, hash_token


def _as(url: str, role: str) -> psycopg.Connection[dict[str, Any]]:
    return psycopg.connect(with_role(url, role), autocommit=True, row_factory=dict_row)


def _denied(conn: psycopg.Connection[Any], sql: str, *params: Any) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(sql, params or None)


@pytest.fixture
def login(db_url: str) -> Iterator[str]:
    """A login that is a member of no dispatcher role: its name."""
    name = f"stranger_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute(f'CREATE ROLE "{name}" LOGIN')
    try:
        yield name
    finally:
        with psycopg.connect(db_url, autocommit=True) as c:
            c.execute(f'DROP OWNED BY "{name}"')
            c.execute(f'DROP ROLE "{name}"')


def test_the_listener_role_cannot_read_tokens_nor_change_requests(
    db_url: str, region: Region
) -> None:
    """The listener's role cannot read the token table, update or delete a request, or
    call a SEP's procedures; it opens sessions and enqueues through its procedures."""
    region.define_transaction("ECHO", "app:echo")
    token = create_token(region, "alice")
    e = region.enqueue("ECHO", {"x": 1})
    with _as(db_url, "dispatcher_listener") as conn:
        assert conn.execute("SELECT current_user AS u").fetchone() == {"u": "dispatcher_listener"}
        _denied(conn, "SELECT * FROM dispatcher.token")
        _denied(conn, "SELECT * FROM dispatcher.region_secret")
        _denied(conn, "UPDATE dispatcher.request SET state = 'done' WHERE id = %s", e.request_id)
        _denied(conn, "DELETE FROM dispatcher.request WHERE id = %s", e.request_id)
        _denied(conn, "INSERT INTO dispatcher.token (region, name, hash) VALUES ('test', 'x', '')")
        _denied(conn, "SELECT * FROM dispatcher_v2.claim(1, 1)")
        _denied(conn, "SELECT * FROM dispatcher.set_region_v1('test', 1, NULL, NULL, NULL, NULL)")
        db = Gateway(conn)
        sid, tok = db.run(ops.session.open_session("test", None, hash_token(token)))
        assert tok.name == "alice"
        assert db.run(ops.listener.find_token("test", hash_token(token))) == tok
        again = db.run(ops.request.enqueue("test", "ECHO", {"y": 2}, session=sid))
        assert region.request(again.request_id)["state"] == "queued"
        assert db.run(ops.region.channel_secret("test"))


def test_the_sep_monitor_and_viewer_roles_keep_to_their_rights(db_url: str, region: Region) -> None:
    """A SEP's role registers, claims and completes, but cannot open a session, read
    the tokens or change a request by hand; the monitor's role cannot claim work; the
    status page's role reads and changes nothing."""
    region.define_transaction("ECHO", "app:echo")
    e = region.enqueue("ECHO", {"x": 1})
    with _as(db_url, "dispatcher_sep") as conn:
        db = Gateway(conn)
        sep = db.run(ops.sep.register_sep("test", "h", 1, [], address=None))
        task = db.run(ops.sep.claim_next(int(sep["id"])))
        assert task is not None and task.request_id == e.request_id
        _denied(conn, "SELECT * FROM dispatcher.token")
        _denied(conn, "UPDATE dispatcher.request SET state = 'queued'")
        _denied(conn, "SELECT * FROM dispatcher_v2.open_session('test', NULL, ''::bytea)")
        # its watchdog may end the backend of a SEP's task connection, and no other
        with psycopg.connect(db_url, application_name="dispatcher-cli") as other:
            pid = other.info.backend_pid
            assert db.run(ops.sep.end_backend(pid)) is False
            assert other.execute("SELECT 1").fetchone() == (1,)
    with _as(db_url, "dispatcher_viewer") as conn:  # the status page: reads only
        assert conn.execute("SELECT count(*) AS n FROM dispatcher.request").fetchone()
        conn.execute("SELECT * FROM dispatcher.get_region_v1('test')")
        _denied(conn, "SELECT * FROM dispatcher.token")
        _denied(conn, "UPDATE dispatcher.region SET max_seps = 0")
        _denied(conn, "DELETE FROM dispatcher_xr.timer")
        _denied(
            conn,
            "SELECT * FROM dispatcher_v2.enqueue('test', 'ECHO', NULL, NULL, 0, NULL, NULL, "
            "NULL, 'x', false, NULL)",
        )
    with _as(db_url, "dispatcher_monitor") as conn:
        _denied(conn, "SELECT * FROM dispatcher_v2.claim(1, 1)")
        _denied(conn, "SELECT * FROM dispatcher.token")
        _denied(conn, "DELETE FROM dispatcher.request")
        assert conn.execute("SELECT count(*) AS n FROM dispatcher_xr.timer").fetchone()


def test_a_login_of_no_role_may_call_no_procedure(db_url: str, login: str) -> None:
    """The region's procedures are not callable by every role (PostgreSQL's default
    grants them to PUBLIC): a login that is a member of no dispatcher role gets none."""
    url = psycopg.conninfo.make_conninfo(db_url, user=login)
    with psycopg.connect(url, autocommit=True) as conn:
        _denied(
            conn,
            "SELECT * FROM dispatcher_v2.enqueue('test', 'ECHO', NULL, NULL, 0, NULL, NULL, "
            "NULL, 'x', false, NULL)",
        )


def test_the_operator_role_may_do_everything(db_url: str, region: Region) -> None:
    """The CLI's role reads the tokens and changes the region."""
    create_token(region, "bob")
    with _as(db_url, "dispatcher_operator") as conn:
        assert conn.execute("SELECT count(*) AS n FROM dispatcher.token").fetchone() == {"n": 1}
        conn.execute("UPDATE dispatcher.region SET max_seps = 3 WHERE name = 'test'")


def test_with_role_replaces_a_role_and_keeps_other_options() -> None:
    """with_role adds the role to a URL's options, replacing one that was there."""
    url = with_role("postgresql://u@h/db?options=-c%20work_mem%3D8MB", "dispatcher_sep")
    d = psycopg.conninfo.conninfo_to_dict(url)
    assert d["options"] == "-c work_mem=8MB -c role=dispatcher_sep"
    d = psycopg.conninfo.conninfo_to_dict(with_role(url, "dispatcher_listener"))
    assert d["options"] == "-c work_mem=8MB -c role=dispatcher_listener"
    assert d["dbname"] == "db" and d["user"] == "u"


def test_which_url_each_kind_of_process_takes(db_url: str, login: str) -> None:
    """A kind's own URL wins; else the region's URL with the kind's role (auto: when
    the login may take it, but for a SEP, whose programs work on its connection; on:
    always, else an error); off: the URL as it is."""
    own = "postgresql://listener@elsewhere/db"

    def settings(**env: str) -> Any:
        return load_settings(env={"DISPATCHER_DATABASE_URL": db_url, **env})

    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as conn:
        db = Gateway(conn)
        s = settings(DISPATCHER_LISTENER_DATABASE_URL=own)
        assert process_url(s, "listener", db_url, db) == own
        assert process_url(s, "http", db_url, db) == own
        assert process_url(s, "monitor", db_url, db) == with_role(db_url, "dispatcher_monitor")
        assert process_url(settings(DISPATCHER_DATABASE_ROLES="off"), "web", db_url, db) == db_url
        # a SEP's programs work on its connection: auto leaves it the login's rights
        assert process_url(s, "sep", db_url, db) == db_url
        on = settings(DISPATCHER_DATABASE_ROLES="on")
        assert process_url(on, "sep", db_url, db) == with_role(db_url, "dispatcher_sep")
    stranger = psycopg.conninfo.make_conninfo(db_url, user=login)
    with psycopg.connect(stranger, autocommit=True, row_factory=dict_row) as conn:
        db = Gateway(conn)
        assert process_url(settings(), "monitor", stranger, db) == stranger
        with pytest.raises(ConfigError, match="dispatcher_monitor"):
            process_url(settings(DISPATCHER_DATABASE_ROLES="on"), "monitor", stranger, db)


def test_downgrade_takes_the_rights_back(pg_server_url: str) -> None:
    """Down from 0005 the procedures run with their caller's rights again and PUBLIC
    may call them, as before; up again, the roles have their rights back."""
    from dispatcher import migrate

    from .plugin import fresh_database

    with fresh_database(pg_server_url) as url:
        migrate.downgrade(url, "0004")
        with psycopg.connect(url, autocommit=True) as conn:
            definer = conn.execute(
                "SELECT prosecdef FROM pg_proc WHERE proname = 'enqueue' "
                "AND pronamespace = 'dispatcher_v2'::regnamespace"
            ).fetchone()
            assert definer == (False,)
        migrate.upgrade(url)
        with _as(url, "dispatcher_listener") as conn:
            _denied(conn, "SELECT * FROM dispatcher.token")
            conn.execute("SELECT dispatcher_xr.clock()")


def test_a_login_that_may_not_set_the_role_does_not_take_it(db_url: str, login: str) -> None:
    """A login that is only an admin of a role (as a CREATEROLE login is of the roles it
    made, PostgreSQL 16+) may not SET it: auto leaves its URL as it is instead of a
    connection that would be refused; granted with SET, it takes the role."""
    stranger = psycopg.conninfo.make_conninfo(db_url, user=login)
    s = load_settings(env={"DISPATCHER_DATABASE_URL": stranger})
    with psycopg.connect(db_url, autocommit=True) as su:
        su.execute(
            f'GRANT dispatcher_monitor TO "{login}" WITH ADMIN TRUE, INHERIT FALSE, SET FALSE'
        )
        try:
            with psycopg.connect(stranger, autocommit=True, row_factory=dict_row) as conn:
                assert process_url(s, "monitor", stranger, Gateway(conn)) == stranger
            su.execute(f'GRANT dispatcher_monitor TO "{login}" WITH SET TRUE')
            with psycopg.connect(stranger, autocommit=True, row_factory=dict_row) as conn:
                url = process_url(s, "monitor", stranger, Gateway(conn))
            assert url == with_role(stranger, "dispatcher_monitor")
            with psycopg.connect(url) as conn:  # and the server lets it
                assert conn.execute("SELECT current_user").fetchone() == ("dispatcher_monitor",)
        finally:
            su.execute(f'REVOKE dispatcher_monitor FROM "{login}"')


def test_a_process_url_that_cannot_connect_is_refused_at_start(db_url: str, tmp_path: Any) -> None:
    """A kind's own URL that is not a URL, or names a login the server refuses: the
    process says so in one line and exits 2 at once (it used to retry for good)."""
    from click.testing import CliRunner

    from dispatcher.cli import cli

    env = {
        "DISPATCHER_DATABASE_URL": db_url,
        "DISPATCHER_REGION": "test",
        "DISPATCHER_HOME": str(tmp_path / "home"),
    }
    nobody = psycopg.conninfo.make_conninfo(db_url, user="no_such_login")
    for bad in ("not a url", nobody):
        result = CliRunner().invoke(
            cli,
            ["listener", "--port", "0"],
            env={**env, "DISPATCHER_LISTENER_DATABASE_URL": bad},
        )
        assert result.exit_code == 2, (bad, result.output)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "listener process's database URL" in errors[0], result.stderr
