"""python -m bench.sustained [--seconds 60] [--sessions 64] [--seps 2] [--listeners 1 2]
[--procs 2] [--window 5] [SEP ARGS...]

A long sustained run through the listener on a fresh embedded PostgreSQL, once per
number of listener processes given (on one port, SO_REUSEPORT): the load generator
(bench/loadgen.py) prints completed calls per second and latency percentiles per
window, accepted against completed, its own CPU per 1,000 requests, and, at the end,
how many accepted calls are not in the history (nothing may be lost). The raw floor of
the same run (one round trip per job, 4 connections) is printed first, for the ratio.
"""

from __future__ import annotations

import argparse
import os

from dispatcher.logs import configure_logging

from . import floors, ours
from .loadgen import pct, report
from .server import Server


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sustained", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--seps", type=int, default=2)
    parser.add_argument("--listeners", type=int, nargs="+", default=[1])
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--window", type=float, default=5.0)
    args, sep_args = parser.parse_known_args()
    configure_logging("text", "warning")
    os.environ["DISPATCHER_LOG_LEVEL"] = "warning"
    server = Server()
    try:
        raw = server.database("bench_raw")
        floors.setup(raw)
        floor = floors.drain_one_round_trip(raw, 20000, 4)
        print(f"raw floor, one round trip per job, 4 connections: {floor:.0f} jobs/s")
        url = server.database("bench_ours")
        ours.prepare(url, max_seps=max(8, args.seps)).conn.close()
        for n in args.listeners:
            reg = ours.Region_(url, args.seps, *sep_args, listeners=n)
            try:
                before = ours.done_count(url)
                load = ours.sustained(reg, args.sessions, args.seconds, procs=args.procs)
                lost = load.accepted - (ours.done_count(url) - before)
            finally:
                reg.close()
            lat = load.latencies()
            print(
                f"\n{n} listener(s), {args.seps} SEPs {' '.join(sep_args)}, "
                f"{args.sessions} sessions:"
            )
            print(report(load, args.window))
            print(
                f"=> {load.rate:.0f} req/s ({load.rate / floor:.2f}x the raw floor), "
                f"p50 {pct(lat, 0.5):.1f} ms, p99 {pct(lat, 0.99):.1f} ms; "
                f"accepted but not in the history: {lost}"
            )
    finally:
        server.close()


if __name__ == "__main__":
    main()
