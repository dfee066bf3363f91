"""Timers: the SQL procedures, the Python API, PROTECT, the monitor's firing, the CLI."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from dispatcher import timers
from dispatcher.cli import cli
from dispatcher.database import connect
from dispatcher.errors import DuplicateTimer, InvalidValue, UnknownTimer
from dispatcher.monitor import Monitor
from dispatcher.region import Region

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture
def tregion(region: Region) -> Region:
    region.define_transaction("ECHO", "app:echo")
    return region


def _requests(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT id, transid, payload, idempotency_key, origin FROM dispatcher.request ORDER BY id"
    ).fetchall()


def test_set_list_cancel(tregion: Region, conn: Conn) -> None:
    """A timer is listed until cancelled; a second cancel is UnknownTimer."""
    rid = timers.start_after(conn, "test", "ECHO", {"a": 1}, after=60, reqid="nightly")
    assert rid == "nightly"
    rows = timers.list_timers(conn, "test")
    assert [r["reqid"] for r in rows] == ["nightly"] and rows[0]["payload"] == {"a": 1}
    with pytest.raises(DuplicateTimer, match="already pending"):
        timers.start_after(conn, "test", "ECHO", None, after=5, reqid="nightly")
    timers.cancel(conn, "test", "nightly")
    with pytest.raises(UnknownTimer, match="no pending timer"):
        timers.cancel(conn, "test", "nightly")
    with pytest.raises(InvalidValue):
        timers.start_at(conn, "test", "ECHO", None, at=dt.datetime(2030, 1, 1))
    with pytest.raises(InvalidValue):
        timers.start_after(conn, "test", "ECHO", None, after=-1)


def test_monitor_fires_due_timers_once(tregion: Region, conn: Conn, db_url: str) -> None:
    """Due timers become requests (origin timer); future ones wait; each fires once."""
    timers.start_after(conn, "test", "ECHO", 1, after=0, reqid="now")
    timers.start_after(conn, "test", "ECHO", 2, after=3600, reqid="later")
    m = Monitor(db_url, "test")
    with connect(db_url, autocommit=False) as xr:
        assert m.fire_due(xr) == 1
        assert m.fire_due(xr) == 0
    reqs = _requests(conn)
    assert len(reqs) == 1 and reqs[0]["payload"] == 1 and reqs[0]["origin"] == "timer"
    firing = conn.execute("SELECT firing_id, request_id FROM dispatcher_xr.firing").fetchall()
    assert [f["request_id"] for f in firing] == [reqs[0]["id"]]
    assert firing[0]["firing_id"].startswith("timer:")
    assert [r["reqid"] for r in timers.list_timers(conn, "test")] == ["later"]


def test_cron_timer_advances_from_now(tregion: Region, conn: Conn, db_url: str) -> None:
    """A cron schedule missed for a day fires once, then waits for its next slot."""
    timers.schedule_cron(conn, "test", "ECHO", "tick", expr="*/5 * * * *", reqid="tick")
    conn.execute("UPDATE dispatcher_xr.timer SET due_at = now() - interval '1 day'")
    m = Monitor(db_url, "test")
    with connect(db_url, autocommit=False) as xr:
        assert m.fire_due(xr) == 1
        assert m.fire_due(xr) == 0
    (row,) = timers.list_timers(conn, "test")
    now = dt.datetime.now(dt.UTC)
    assert now < row["due_at"] <= now + dt.timedelta(minutes=5) and row["fired"] == 1
    assert len(_requests(conn)) == 1


def test_protect_start_in_rolled_back_transaction(tregion: Region, db_url: str, conn: Conn) -> None:
    """A START inside a transaction that rolls back never fires (CICS PROTECT)."""
    with connect(db_url, autocommit=False) as task:
        timers.start_in_transaction(task, "test", "ECHO", "x", after=0, reqid="doomed")
        task.rollback()
        timers.start_in_transaction(task, "test", "ECHO", "y", after=0, reqid="kept")
        task.commit()
    m = Monitor(db_url, "test")
    with connect(db_url, autocommit=False) as xr:
        assert m.fire_due(xr) == 1
    assert [r["payload"] for r in _requests(conn)] == ["y"]


def test_a_bad_start_time_is_invalid_value_and_sets_nothing(tregion: Region, conn: Conn) -> None:
    """ctx.start's times: a string, a time without a zone, one past what UTC can hold or
    over 100 years ahead, after and at both, an unstorable delay: InvalidValue (with a
    short message), and no timer."""
    far = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.timezone(-dt.timedelta(hours=1)))
    cases: list[dict[str, Any]] = [
        {"at": "2027-01-01T00:00:00Z"},
        {"at": dt.datetime(2027, 1, 1)},
        {"at": far},
        {"at": dt.datetime.now(dt.UTC) + dt.timedelta(days=36600)},
        {"at": dt.datetime.now(dt.UTC), "after": 3600},
        {"after": 10**300},
        {"after": "soon"},
        {"after": "5"},
        {"after": True},
    ]
    for kw in cases:
        with pytest.raises(InvalidValue) as caught:
            timers.start_in_transaction(conn, "test", "ECHO", None, **kw)
        assert len(caught.value.message) < 200, caught.value.message
    assert timers.list_timers(conn, "test") == []


def test_timer_for_unknown_transaction_does_not_block_others(
    tregion: Region, conn: Conn, db_url: str
) -> None:
    """A due timer whose TRANSID was removed is dropped with an error; others fire."""
    timers.start_after(conn, "test", "GONE", 1, after=0, reqid="bad")
    timers.start_after(conn, "test", "ECHO", 2, after=0, reqid="good")
    m = Monitor(db_url, "test")
    with connect(db_url, autocommit=False) as xr:
        assert m.fire_due(xr) == 2
    assert [r["payload"] for r in _requests(conn)] == [2]


def test_cli_start_with_timers_cancel_and_list(tregion: Region, db_url: str) -> None:
    """start --after/--at/--cron prints a REQID; timers --json lists; cancel removes."""
    env = {"DISPATCHER_DATABASE_URL": db_url, "DISPATCHER_REGION": "test"}
    run = CliRunner().invoke
    out = run(cli, ["start", "ECHO", "--data", "1", "--after", "10m", "--reqid", "r1"], env=env)
    assert out.exit_code == 0 and out.stdout.strip() == "r1"
    out = run(cli, ["start", "ECHO", "--at", "2030-01-01T00:00:00Z"], env=env)
    assert out.exit_code == 0 and out.stdout.startswith("t-")
    out = run(
        cli,
        ["start", "ECHO", "--cron", "0 9 * * 1", "--tz", "Europe/Paris", "--reqid", "weekly"],
        env=env,
    )
    assert out.exit_code == 0, out.output
    listed = json.loads(run(cli, ["timers", "--json"], env=env).stdout)
    assert {r["reqid"] for r in listed} >= {"r1", "weekly"}
    assert run(cli, ["cancel", "r1"], env=env).exit_code == 0
    gone = run(cli, ["cancel", "r1"], env=env)
    assert gone.exit_code == 1 and "no pending timer" in gone.stderr
    bad = run(cli, ["start", "ECHO", "--after", "soon"], env=env)
    assert bad.exit_code == 2 and "not a delay" in bad.stderr
    bad = run(cli, ["start", "ECHO", "--at", "2030-01-01T00:00:00"], env=env)
    assert bad.exit_code == 2 and "no time zone" in bad.stderr
    bad = run(cli, ["start", "ECHO", "--cron", "* * *"], env=env)
    assert bad.exit_code == 2 and "invalid cron" in bad.stderr
    bad = run(cli, ["start", "NOPE", "--after", "1s"], env=env)
    assert bad.exit_code == 1 and "unknown transaction" in bad.stderr
    status = json.loads(run(cli, ["status", "--json"], env=env).stdout)
    assert status["timers"]["pending"] == 2
    time.sleep(0)


def test_timer_set_in_the_past_fires_at_once_with_lag_from_when_it_was_set(
    tregion: Region, conn: Conn, db_url: str
) -> None:
    """A START at a time in the past is due now (database clock): it fires at once and
    its lag (firing, `status`) counts from when it was set, not from the past time."""
    env = {"DISPATCHER_DATABASE_URL": db_url, "DISPATCHER_REGION": "test"}
    run = CliRunner().invoke
    out = run(cli, ["start", "ECHO", "--data", "1", "--at", "2020-01-01T00:00:00Z"], env=env)
    assert out.exit_code == 0, out.output
    timers.start_at(conn, "test", "ECHO", 2, at=dt.datetime(2001, 1, 1, tzinfo=dt.UTC))
    late = conn.execute(
        "SELECT max(abs(extract(epoch FROM due_at - clock_timestamp()))) AS s"
        " FROM dispatcher_xr.timer"
    ).fetchone()
    assert late["s"] < 5
    with connect(db_url, autocommit=False) as xr:
        assert Monitor(db_url, "test").fire_due(xr) == 2
    lag = conn.execute(
        "SELECT max(extract(epoch FROM fired_at - due_at)) AS s FROM dispatcher_xr.firing"
    ).fetchone()
    assert 0 <= lag["s"] < 5
    status = json.loads(run(cli, ["status", "--json"], env=env).stdout)["timers"]
    assert status["fired_last_hour"] == 2 and 0 <= status["lag_ms_p99"] < 5000, status


def test_cron_lag_is_measured_from_the_slot_it_fired_for(
    tregion: Region, conn: Conn, db_url: str
) -> None:
    """A cron firing's lag is from the slot it fired for, on the database clock."""
    timers.schedule_cron(conn, "test", "ECHO", "tick", expr="*/5 * * * *", reqid="tick")
    conn.execute("UPDATE dispatcher_xr.timer SET due_at = clock_timestamp() - interval '90 s'")
    with connect(db_url, autocommit=False) as xr:
        assert Monitor(db_url, "test").fire_due(xr) == 1
    lag = conn.execute(
        "SELECT extract(epoch FROM fired_at - due_at) AS s FROM dispatcher_xr.firing"
    ).fetchone()
    assert 90 <= lag["s"] < 95
