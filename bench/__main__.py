"""python -m bench [--quick] [--out bench/results]: our dispatcher against raw PostgreSQL
floors (and the peers pgqueuer and procrastinate when installed: pip install -e '.[bench]'),
all in one run on one fresh embedded PostgreSQL; see docs/performance.md."""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import Any

from dispatcher.logs import configure_logging

from . import floors, ours, peers
from .report import Report
from .server import Server

SIZES = {
    "quick": {
        "enqueue": 2000,
        "bulk": 20000,
        "drain": 5000,
        "rt": 300,
        "sessions": 32,
        "seconds": 8.0,
        "depth": 100_000,
        "timers": 5000,
    },
    "full": {
        "enqueue": 10000,
        "bulk": 100000,
        "drain": 10000,
        "rt": 2000,
        "sessions": 64,
        "seconds": 30.0,
        "depth": 1_000_000,
        "timers": 100_000,
    },
}


def _compare(
    report: Report, phase: str, ours_metric: str, peer: str, higher_is_better: bool = True
) -> None:
    """Our figure again, as a ratio against a peer's figure of the same run."""
    mine = [
        r
        for r in report.rows
        if r.phase == phase and r.system == "ours" and r.metric == ours_metric
    ]
    theirs = [r for r in report.rows if r.phase == phase and f"{r.system}/{r.metric}" == peer]
    if mine and theirs:
        report.add(
            phase,
            "ours",
            f"{ours_metric} (vs peer)",
            mine[0].value,
            mine[0].unit,
            baseline=peer,
            higher_is_better=higher_is_better,
        )


BATCH = "--batch 10"  # SEP-side batching (sep/batch.py), measured beside one-by-one


def _sustained(report: Report, reg: ours.Region_, size: dict[str, Any], label: str) -> None:
    before = ours.done_count(reg.url)
    load = ours.sustained(reg, size["sessions"], size["seconds"])
    lost = load.accepted - (ours.done_count(reg.url) - before)
    report.add(
        "sustained",
        "ours",
        f"{size['sessions']} sessions, 2 SEPs{label}: completed",
        load.rate,
        "req/s",
        baseline="raw/one round trip",
    )
    lat = load.latencies()
    for q in (0.5, 0.99):
        report.add(
            "sustained",
            "ours",
            f"2 SEPs{label}: latency p{int(q * 100)}",
            ours.pct(lat, q),
            "ms",
            higher_is_better=False,
        )
    report.add(
        "sustained",
        "ours",
        f"2 SEPs{label}: load generator CPU per 1,000",
        load.cpu_per_1000(),
        "s",
        higher_is_better=False,
    )
    report.notes.append(
        f"sustained{label}: {load.accepted} accepted, {load.completed} answered, "
        f"{lost} not in the history at the end, errors {load.errors or 'none'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="under 3 minutes on 2 cores")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    configure_logging("text", "warning")
    os.environ["DISPATCHER_LOG_LEVEL"] = "warning"
    mode = "quick" if args.quick else "full"
    size = SIZES[mode]
    server = Server()
    try:
        report = Report(mode, server.settings())
        w = args.workers
        raw = server.database("bench_raw")
        floors.setup(raw)
        url = server.database("bench_ours")
        region = ours.prepare(url, max_seps=max(8, w))

        print("phase 1: enqueue", flush=True)
        report.add(
            "enqueue", "raw", "one by one", floors.enqueue_one_by_one(raw, size["enqueue"]), "req/s"
        )
        report.add(
            "enqueue",
            "ours",
            "one by one",
            ours.enqueue_one_by_one(region, size["enqueue"]),
            "req/s",
            baseline="raw/one by one",
        )
        report.add("enqueue", "raw", "bulk unnest", floors.enqueue_bulk(raw, size["bulk"]), "req/s")
        report.add(
            "enqueue",
            "ours",
            "bulk enqueue_many",
            ours.enqueue_bulk(region, size["bulk"]),
            "req/s",
            baseline="raw/bulk unnest",
        )
        region.conn.close()

        print("phase 2: drain", flush=True)
        report.add(
            "drain",
            "raw",
            "claim 1 per txn",
            floors.drain_claim_one(raw, size["drain"], w),
            "jobs/s",
        )
        report.add(
            "drain",
            "raw",
            "one round trip",
            floors.drain_one_round_trip(raw, size["drain"], w),
            "jobs/s",
        )
        report.add(
            "drain",
            "ours",
            f"{w} SEP processes",
            ours.drain(url, size["drain"], w),
            "jobs/s",
            baseline="raw/one round trip",
        )
        report.add(
            "drain",
            "ours",
            f"{w} SEPs --async-commit",
            ours.drain(url, size["drain"], w, "--async-commit"),
            "jobs/s",
            baseline="raw/one round trip",
        )
        report.add(
            "drain",
            "ours",
            f"{w} SEPs {BATCH}",
            ours.drain(url, size["drain"], w, *BATCH.split()),
            "jobs/s",
            baseline="raw/one round trip",
        )

        print("phase 3-4: listener round trip and sustained load", flush=True)
        ping = floors.ping_latency_ms(raw)
        report.add(
            "roundtrip",
            "raw",
            "SELECT 1 p50",
            statistics.median(ping),
            "ms",
            higher_is_better=False,
        )
        reg = ours.Region_(url, 2, http=True)
        try:
            lat = ours.round_trips(reg, size["rt"])
            for q in (0.5, 0.95, 0.99):
                report.add(
                    "roundtrip",
                    "ours",
                    f"call p{int(q * 100)}",
                    ours.pct(lat, q),
                    "ms",
                    higher_is_better=False,
                )
            hlat = ours.http_round_trips(reg, size["rt"])
            for q in (0.5, 0.99):
                report.add(
                    "roundtrip",
                    "ours",
                    f"HTTP POST wait p{int(q * 100)}",
                    ours.pct(hlat, q),
                    "ms",
                    baseline=f"ours/call p{int(q * 100)}",
                    higher_is_better=False,
                )
            _sustained(report, reg, size, "")
            report.add(
                "sustained",
                "ours",
                f"HTTP {size['sessions']} clients: accepted (202)",
                ours.http_accepted(reg, size["sessions"], size["seconds"]),
                "req/s",
                baseline=f"ours/{size['sessions']} sessions, 2 SEPs: completed",
            )
        finally:
            reg.close()
        reg = ours.Region_(url, 2, *BATCH.split())
        try:
            _sustained(report, reg, size, f" {BATCH}")
        finally:
            reg.close()
        report.rows.append(next(r for r in report.rows if r.metric == "one round trip"))
        report.rows[-1] = type(report.rows[-1])(
            **{**report.rows[-1].__dict__, "phase": "sustained"}
        )

        print("phase 5: queue depth", flush=True)
        small = ours.dispatch_cost_ms(url, 1000)
        report.add("depth", "ours", "cost with 1K queued", small, "ms", higher_is_better=False)
        big = ours.dispatch_cost_ms(url, size["depth"])
        report.add(
            "depth",
            "ours",
            f"cost with {size['depth']:,} queued",
            big,
            "ms",
            baseline="ours/cost with 1K queued",
            higher_is_better=False,
        )

        ran = size["depth"]
        print(f"    running {ran:,} requests through 4 SEPs {BATCH} first", flush=True)
        ours.drain(url, ran, w, *BATCH.split())
        after = ours.dispatch_cost_ms(url, 1000, fresh=False)
        report.add(
            "depth",
            "ours",
            f"cost with 1K queued after {ran:,} ran",
            after,
            "ms",
            baseline="ours/cost with 1K queued",
            higher_is_better=False,
        )

        print("phase 6: timers", flush=True)
        rate, p50, p99 = ours.timers(url, size["timers"])
        report.add("timers", "ours", f"{size['timers']:,} due: fires", rate, "fires/s")
        report.add("timers", "ours", "fire lag p50", p50, "ms", higher_is_better=False)
        report.add("timers", "ours", "fire lag p99", p99, "ms", higher_is_better=False)

        peers.run(server, report, size, w)
        _compare(report, "drain", f"{w} SEP processes", f"pgqueuer/{w} workers")
        _compare(report, "drain", f"{w} SEPs --async-commit", f"pgqueuer/{w} workers")
        _compare(report, "drain", f"{w} SEPs {BATCH}", f"pgqueuer/{w} workers")
        _compare(report, "roundtrip", "call p50", "procrastinate/enqueue->done p50", False)
        report.notes.append(
            "ours/drain runs real SEP processes (Python) sharing the 2 cores with PostgreSQL; "
            "raw floors run threads of one Python process doing nothing but SQL."
        )
        report.write(args.out)
    finally:
        server.close()


if __name__ == "__main__":
    main()
