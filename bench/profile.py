"""python -m bench.profile [--seps 2] [--sessions 32] [--seconds 8] [--listeners 1]
[--procs 2] [SEP ARGS...]

Where the time of the sustained phase goes: CPU seconds per process (the load
generator's, listeners, SEPs, PostgreSQL backends) per 1,000 requests, and the statements that cost
PostgreSQL most (pg_stat_statements, tracking statements inside the procedures too).
Needs psutil (pip install -e '.[test]'). Runs on its own fresh embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import os
import time

import psutil
import psycopg

from dispatcher.logs import configure_logging

from . import ours
from .server import Server


def _restart_with_statements(server: Server) -> None:
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        conn.execute("ALTER SYSTEM SET pg_stat_statements.track = 'all'")
    server.restart()


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--seps", type=int, default=2)
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--listeners", type=int, default=1, help="on one port (SO_REUSEPORT)")
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    args, sep_args = parser.parse_known_args()
    configure_logging("text", "warning")
    os.environ["DISPATCHER_LOG_LEVEL"] = "warning"
    server = Server()
    try:
        _restart_with_statements(server)
        url = server.database("bench_profile")
        ours.prepare(url, max_seps=max(8, args.seps)).conn.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        reg = ours.Region_(url, args.seps, *sep_args, listeners=args.listeners)
        try:
            groups: dict[str, list[psutil.Process]] = {
                "listener": [psutil.Process(p.pid) for p in reg.listeners],
                "SEPs": [psutil.Process(p.pid) for p in reg.seps],
            }
            with psycopg.connect(url) as conn:
                backend = psutil.Process(conn.info.backend_pid)
                postmaster = backend.parent()
            groups["PostgreSQL"] = postmaster.children() if postmaster is not None else []
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("SELECT pg_stat_statements_reset()")
            before = {k: _cpu(v) for k, v in groups.items()}
            t0 = time.perf_counter()
            load = ours.sustained(reg, args.sessions, args.seconds, procs=args.procs)
            rate, lat = load.rate, load.latencies()
            wall = time.perf_counter() - t0
            groups["PostgreSQL"] = [
                p for p in groups["PostgreSQL"] if p.is_running()
            ]  # backends that lived through the run
            after = {k: _cpu(v) for k, v in groups.items()}
            done = load.completed
            print(
                f"sustained: {rate:.0f} req/s, p50 {ours.pct(lat, 0.5):.1f} ms, "
                f"p99 {ours.pct(lat, 0.99):.1f} ms, SEPs {args.seps} {' '.join(sep_args)}"
            )
            print(f"CPU seconds per 1,000 requests ({os.cpu_count()} cores, {wall:.1f} s):")
            print(f"  {'load generator (bench/loadgen)':32} {load.cpu_per_1000():8.3f}")
            for k in groups:
                print(f"  {k:32} {(after[k] - before[k]) / done * 1000:8.3f}")
            with psycopg.connect(url, autocommit=True) as conn:
                rows = conn.execute(_TOP).fetchall()
                cycle = conn.execute(_CYCLE).fetchone()
            if cycle is not None and cycle[0]:
                # what bounds a closed loop of sessions: how long requests wait for a SEP,
                # and how long a SEP is away between two tasks (its report round trip)
                print(
                    f"SEPs: {cycle[1] / cycle[0]:.1f} tasks per report on average; wait in "
                    f"the queue p50 {cycle[2]:.1f} ms, p90 {cycle[3]:.1f} ms; a SEP between "
                    f"two runs of tasks (its report) p50 {cycle[4]:.1f} ms, p90 {cycle[5]:.1f} ms"
                )
            print("PostgreSQL statements by total time (ms per 1,000 requests, calls per request):")
            for r in rows:
                print(f"  {r[1] / done * 1000:8.1f} ms  {r[2] / done:6.2f}  {r[0]}")
        finally:
            reg.close()
    finally:
        server.close()


# from the history of the run: per SEP, a gap of over 1 ms between a task's end and the
# next one's start is a report (and the next batch's arrival); tasks between two gaps
# are one batch
_CYCLE = """
WITH t AS (
    SELECT sep_id, started_at, dispatched_at, enqueued_at,
           started_at - lag(finished_at) OVER (PARTITION BY sep_id ORDER BY started_at) AS gap
    FROM dispatcher.request_history WHERE state = 'done'
)
SELECT count(*) FILTER (WHERE gap > interval '1 ms'),
       count(*),
       percentile_cont(0.5) WITHIN GROUP (
           ORDER BY extract(epoch FROM dispatched_at - enqueued_at) * 1000),
       percentile_cont(0.9) WITHIN GROUP (
           ORDER BY extract(epoch FROM dispatched_at - enqueued_at) * 1000),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM gap) * 1000)
           FILTER (WHERE gap > interval '1 ms'),
       percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM gap) * 1000)
           FILTER (WHERE gap > interval '1 ms')
FROM t
"""

_TOP = """
SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 110), total_exec_time, calls
FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 25
"""


if __name__ == "__main__":
    main()
