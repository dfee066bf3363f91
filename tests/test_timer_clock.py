"""Timers on one clock, the database's: a CLI or monitor whose own clock is wrong
still sets, fires and measures timers right (processes run with a shifted clock by
tests/clockshift.py)."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from dispatcher import timers
from dispatcher.region import Region

from .seps import ROOT, sep_env

Conn = psycopg.Connection[dict[str, Any]]


def _shifted(db_url: str, shift_s: float, *args: str, **kw: Any) -> subprocess.Popen[bytes]:
    """`dispatcher ARGS` in a process whose wall clock is SHIFT_S seconds off."""
    env = {**sep_env(db_url, "test"), **kw.pop("env", {})}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.clockshift", str(shift_s), "dispatcher", *args],
        env=env,
        cwd=ROOT,
        **kw,
    )


def _run_shifted(db_url: str, shift_s: float, *args: str) -> str:
    p = _shifted(db_url, shift_s, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err.decode()
    return out.decode().strip()


def _in_s(conn: Conn, reqid: str) -> float:
    row = conn.execute(
        "SELECT extract(epoch FROM due_at - clock_timestamp()) AS s FROM dispatcher_xr.timer"
        " WHERE reqid = %s",
        [reqid],
    ).fetchone()
    assert row is not None
    return float(row["s"])


def _count(conn: Conn) -> int:
    n: int = conn.execute("SELECT count(*) AS n FROM dispatcher.request").fetchone()["n"]
    return n


def _stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)


def test_start_from_a_host_an_hour_fast_is_due_on_the_database_clock(
    region: Region, conn: Conn, db_url: str
) -> None:
    """`start --after 2s` and `--cron` from a host an hour fast are due 2 s / within a
    minute on the database's clock, and a monitor an hour fast fires the START in ~2 s."""
    region.define_transaction("ECHO", "app:echo")
    start = ("start", "ECHO", "--data", "2")
    assert _run_shifted(db_url, 3600, *start, "--after", "30s", "--reqid", "late") == "late"
    assert 25 < _in_s(conn, "late") <= 30
    _run_shifted(db_url, 3600, *start, "--cron", "* * * * *", "--reqid", "minutely")
    assert 0 < _in_s(conn, "minutely") <= 60
    conn.execute("DELETE FROM dispatcher_xr.timer")
    _run_shifted(db_url, 3600, *start, "--after", "2s", "--reqid", "soon")
    started = time.monotonic()
    monitor = _shifted(db_url, 3600, "monitor")
    try:
        while _count(conn) == 0 and time.monotonic() - started < 15:
            time.sleep(0.05)
        fired_after = time.monotonic() - started
    finally:
        _stop(monitor)
    assert _count(conn) == 1 and 1.0 < fired_after < 8, fired_after


def test_monitor_behind_the_database_fires_a_cron_slot_once(
    region: Region, conn: Conn, db_url: str, tmp_path: Path
) -> None:
    """A monitor whose clock is behind the database's fires a `* * * * *` slot once,
    sets the next slot one minute later on the database clock, and logs the lag
    measured on the database clock."""
    region.define_transaction("ECHO", "app:echo")
    # room for the whole test inside one minute of the database clock: begun later than
    # 0:30, the next slot fell due meanwhile and was (rightly) fired too
    second = conn.execute("SELECT extract(second FROM clock_timestamp()) AS s").fetchone()
    if float(second["s"]) > 30:
        time.sleep(60.5 - float(second["s"]))
    timers.schedule_cron(conn, "test", "ECHO", "tick", expr="* * * * *", reqid="tick")
    # due: the minute that just began on the database clock; the monitor's clock is
    # 10 s before that slot (10 to 70 s behind the database)
    row = conn.execute(
        """UPDATE dispatcher_xr.timer SET due_at = date_trunc('minute', clock_timestamp())
           RETURNING due_at, extract(epoch FROM clock_timestamp() - due_at) AS since"""
    ).fetchone()
    slot, shift = row["due_at"], -(float(row["since"]) + 10)
    log = tmp_path / "monitor.log"
    with log.open("wb") as err:
        monitor = _shifted(
            db_url,
            shift,
            "monitor",
            env={"DISPATCHER_LOG_LEVEL": "info", "DISPATCHER_LOG_FORMAT": "json"},
            stderr=err,
        )
        try:
            deadline = time.monotonic() + 15
            while _count(conn) == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(2)  # time enough to fire the same slot many more times
        finally:
            _stop(monitor)
    assert _count(conn) == 1
    (timer,) = timers.list_timers(conn, "test")
    assert timer["due_at"] == slot + dt.timedelta(minutes=1) and timer["fired"] == 1
    firing = conn.execute(
        "SELECT extract(epoch FROM fired_at - due_at) * 1000 AS lag_ms FROM dispatcher_xr.firing"
    ).fetchone()
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    (fired,) = [e for e in events if e.get("event") == "timers_fired"]
    assert fired["count"] == 1
    assert abs(fired["lag_ms_max"] - float(firing["lag_ms"])) < 1000, (fired, firing)
