"""Statistics over the history a region keeps (sql/queries/stats.sql)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..op import Op, Row, each, one

__all__ = ["region_stats", "transaction_stats"]


def _pcts(values: list[float] | None) -> dict[str, float | None]:
    keys = ("p50", "p95", "p99")
    if not values:
        return dict.fromkeys(keys)
    return {k: None if v is None else round(float(v), 3) for k, v in zip(keys, values, strict=True)}


def _transaction(row: Row) -> dict[str, Any]:
    return {
        "transid": row["transid"],
        "count": row["count"],
        "done": row["done"],
        "abends": row["abends"],
        "retries": int(row["retries"]),
        "start_latency_ms": _pcts(row["start_latency_ms"]),
        "response_ms": _pcts(row["response_ms"]),
        "run_avg_ms": None if row["run_avg_ms"] is None else round(float(row["run_avg_ms"]), 3),
    }


def _region(row: Row) -> dict[str, Any]:
    return {
        "max_seps": row["max_seps"],
        "tasks": row["tasks"],
        "peak_running": int(row["peak_running"]),
        "times_at_max_seps": row["times_at_max_seps"],
        "seconds_at_max_seps": round(float(row["seconds_at_max_seps"]), 3),
        "queued_ms": _pcts(row["queued_ms"]),
    }


def transaction_stats(region: str, since: dt.datetime) -> Op[list[dict[str, Any]]]:
    """Per transaction, over requests finished since SINCE: count, done, abends,
    retries, start latency and response time p50/p95/p99 (ms), average run (ms)."""
    params = {"region": region, "since": since}
    return Op("transaction_stats", params, each(_transaction))


def region_stats(region: str, since: dt.datetime) -> Op[dict[str, Any]]:
    """Over tasks run since SINCE: peak running, times and seconds at max SEPs,
    queued time p50/p95/p99 (ms)."""
    return Op("region_stats", {"region": region, "since": since}, one("region_stats", _region))
