"""Our dispatcher, measured through its real parts: procedures, SEP processes, listener."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dispatcher import migrate
from dispatcher.database import connect
from dispatcher.gateway import ops
from dispatcher.monitor import Monitor
from dispatcher.processes import stop_processes
from dispatcher.region import Region
from dispatcher.tokens import create_token
from sep.program import sync_app

from .loadgen import Load, generate
from .loadgen import pct as pct  # bench/__main__.py and bench/profile.py use ours.pct

ROOT = Path(__file__).resolve().parent.parent
APP = "dispatcher_examples.sample"


def prepare(url: str, max_seps: int = 8) -> Region:
    migrate.upgrade(url)
    region = Region(connect(url), "bench")
    region.ensure()
    region.set(max_seps=max_seps)
    sync_app(region, APP)
    return region


def _env(url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DISPATCHER_DATABASE_URL": url,
        "DISPATCHER_REGION": "bench",
        "DISPATCHER_LOG_LEVEL": "warning",
        "PYTHONPATH": str(ROOT),
    }


def start_seps(url: str, n: int, *extra: str) -> list[subprocess.Popen[bytes]]:
    argv = [sys.executable, "-m", "sep", "--app", APP, "--poll", "0.5", *extra]
    procs = [subprocess.Popen(argv, env=_env(url), cwd=ROOT) for _ in range(n)]
    with connect(url) as conn:
        r = Region(conn, "bench")
        deadline = time.monotonic() + 60
        while len([s for s in r.seps() if s["state"] != "dead"]) < n:
            if time.monotonic() > deadline:
                raise RuntimeError("SEPs did not start")
            time.sleep(0.05)
    return procs


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    stop_processes(procs, 60)


def enqueue_one_by_one(region: Region, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        region.enqueue("ECHO", i)
    return n / (time.perf_counter() - t0)


def enqueue_bulk(region: Region, n: int) -> float:
    t0 = time.perf_counter()
    for start in range(0, n, 1000):
        region.enqueue_many([("ECHO", i) for i in range(start, min(n, start + 1000))])
    return n / (time.perf_counter() - t0)


def _tasks_run(conn: Any) -> int:
    """Tasks the region's SEPs have reported so far: a read of the few SEP rows (polling
    the request table itself would scan the dead tuples of every request drained)."""
    row = conn.execute("SELECT coalesce(sum(tasks_run), 0) AS n FROM dispatcher.sep").fetchone()
    return int(row["n"])


def drain(url: str, n: int, workers: int, *extra: str) -> float:
    """N queued ECHO tasks drained by WORKERS real SEP processes (complete-and-pull-next)."""
    region = Region(connect(url), "bench")
    region.conn.execute("TRUNCATE dispatcher.request, dispatcher.request_history")
    region.set(state="stopping")
    procs = start_seps(url, workers, *extra)
    try:
        enqueue_bulk(region, n)
        base = _tasks_run(region.conn)
        t0 = time.perf_counter()
        region.set(state="running")  # wakes the idle SEPs
        while _tasks_run(region.conn) - base < n:
            time.sleep(0.01)
        return n / (time.perf_counter() - t0)
    finally:
        stop(procs)
        region.conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Region_:
    """A running region: SEPs, a listener and (HTTP) the HTTP front, for the socket and
    HTTP phases."""

    def __init__(
        self, url: str, seps: int, *sep_args: str, http: bool = False, listeners: int = 1
    ) -> None:
        self.url = url
        self.port = _free_port()
        self.seps = start_seps(url, seps, *sep_args)
        argv = [sys.executable, "-m", "dispatcher", "listener", "--port", str(self.port)]
        if listeners > 1:
            argv.append("--reuse-port")
        self.listeners = [subprocess.Popen(argv, env=_env(url), cwd=ROOT) for _ in range(listeners)]
        self.listener = self.listeners[0]
        self.procs = [*self.listeners, *self.seps]
        self.http_port = _free_port() if http else 0
        if http:
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "dispatcher", "http", "--port", str(self.http_port)],
                    env=_env(url),
                    cwd=ROOT,
                )
            )
            _wait_port(self.http_port)
        _wait_port(self.port)
        with connect(url) as conn:
            self.token = create_token(Region(conn, "bench"), "bench")

    def close(self) -> None:
        stop(self.procs)


def round_trips(reg: Region_, n: int) -> list[float]:
    from listener import connect as lconnect

    out = []
    with lconnect(f"127.0.0.1:{reg.port}", reg.token) as s:
        for i in range(50):
            s.call("ECHO", i)  # warm up
        for i in range(n):
            t0 = time.perf_counter()
            s.call("ECHO", i)
            out.append((time.perf_counter() - t0) * 1000)
    return out


def http_round_trips(reg: Region_, n: int) -> list[float]:
    """POST /v1/requests/ECHO with Prefer: wait=10, one after the other, on one kept
    connection: ms from send to the 200 with the result."""
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", reg.http_port, timeout=30)
    headers = {
        "Authorization": f"Bearer {reg.token}",
        "Content-Type": "application/json",
        "Prefer": "wait=10",
    }
    out = []
    try:
        for i in range(50 + n):
            t0 = time.perf_counter()
            conn.request("POST", "/v1/requests/ECHO", json.dumps(i), headers)
            reply = conn.getresponse()
            reply.read()
            if reply.status != 200:
                raise RuntimeError(f"HTTP {reply.status}")
            if i >= 50:  # the first 50 warm up
                out.append((time.perf_counter() - t0) * 1000)
    finally:
        conn.close()
    return out


def http_accepted(reg: Region_, clients: int, seconds: float) -> float:
    """POST /v1/requests/ECHO without waiting from CLIENTS concurrent clients: 202s per
    second."""
    import aiohttp

    headers = {"Authorization": f"Bearer {reg.token}", "Content-Type": "application/json"}
    base = f"http://127.0.0.1:{reg.http_port}/v1/requests/ECHO"

    async def one(session: aiohttp.ClientSession, stop_at: float) -> int:
        n = 0
        while time.perf_counter() < stop_at:
            async with session.post(base, data=str(n), headers=headers) as reply:
                await reply.read()
                if reply.status != 202:
                    raise RuntimeError(f"HTTP {reply.status}")
            n += 1
        return n

    async def main() -> int:
        async with aiohttp.ClientSession() as session:
            stop_at = time.perf_counter() + seconds
            return sum(await asyncio.gather(*(one(session, stop_at) for _ in range(clients))))

    t0 = time.perf_counter()
    total = asyncio.run(main())
    return total / (time.perf_counter() - t0)


def sustained(reg: Region_, sessions: int, seconds: float, procs: int = 2) -> Load:
    """SESSIONS sessions calling ECHO as fast as they can for SECONDS, from the load
    generator's PROCS processes (bench/loadgen.py)."""
    return generate(
        f"127.0.0.1:{reg.port}", reg.token, sessions=sessions, procs=procs, seconds=seconds
    )


def done_count(url: str, transid: str = "ECHO") -> int:
    """Requests of TRANSID of the bench region done so far (in the history)."""
    with connect(url) as conn:
        return Region(conn, "bench").run(ops.sep.sample_done_count("bench", transid))


def dispatch_cost_ms(url: str, queued: int, cycles: int = 300, fresh: bool = True) -> float:
    """Cost of one enqueue + claim + complete with QUEUED requests waiting (ms).

    fresh: on emptied tables; else on the tables as earlier phases left them (their
    history, dead tuples and index pages), which is the point of measuring after a run.
    """
    region = Region(connect(url), "bench")
    conn = region.conn
    # the cost of the dispatch work itself: without the fsync of each commit, whose
    # jitter on a shared machine is larger than any depth effect
    conn.execute("SET synchronous_commit = off")
    if fresh:
        conn.execute("TRUNCATE dispatcher.request, dispatcher.request_history")
    else:
        conn.execute("DELETE FROM dispatcher.request")
    conn.execute(
        """INSERT INTO dispatcher.request (region, transid, priority, dispatch_key)
           SELECT 'bench', 'ECHO', 0, clock_timestamp() + interval '1 day'
           FROM generate_series(1, %s)""",
        [queued],
    )
    conn.execute("VACUUM ANALYZE dispatcher.request" if fresh else "ANALYZE dispatcher.request")
    sep_id = int(region.register_sep("bench", os.getpid(), app=APP)["id"])
    times = []
    for i in range(cycles):
        t0 = time.perf_counter()
        e = region.enqueue("ECHO", i, user_priority=200)
        task = (
            region.begin(sep_id, e.request_id) if e.sep_id == sep_id else region.claim_next(sep_id)
        )
        assert task is not None
        region.complete(sep_id, task, ok=True, take_next=False)
        times.append((time.perf_counter() - t0) * 1000)
    region.leave(sep_id)
    sizes = conn.execute(
        "SELECT pg_total_relation_size('dispatcher.request') AS t, "
        "pg_indexes_size('dispatcher.request') AS i, "
        "pg_total_relation_size('dispatcher.request_history') AS h, "
        "(SELECT count(*) FROM dispatcher.request_history) AS hn"
    ).fetchone()
    conn.close()
    print(
        f"    request table {sizes['t'] / 1e6:.1f} MB (indexes {sizes['i'] / 1e6:.1f} MB) "
        f"with {queued} queued; history {sizes['hn']} rows, {sizes['h'] / 1e6:.1f} MB"
    )
    return statistics.median(times)


def timers(url: str, n: int) -> tuple[float, float, float]:
    """N timers due now, one monitor: fires/s, lag p50 and p99 (ms)."""
    with connect(url) as conn:
        conn.execute("TRUNCATE dispatcher.request, dispatcher_xr.timer, dispatcher_xr.firing")
        conn.execute(
            """INSERT INTO dispatcher_xr.timer (region, reqid, transid, payload, due_at)
               SELECT 'bench', 'b' || g, 'ECHO', to_jsonb(g), now()
               FROM generate_series(1, %s) g""",
            [n],
        )
    m = Monitor(url, "bench", batch=500)
    t0 = time.perf_counter()
    with connect(url, autocommit=False) as xr:
        while m.fire_due(xr):
            pass
    rate = n / (time.perf_counter() - t0)
    with connect(url) as conn:
        row = conn.execute(
            """SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY
                   extract(epoch FROM fired_at - due_at) * 1000) AS p FROM dispatcher_xr.firing"""
        ).fetchone()
    return rate, row["p"][0], row["p"][1]
