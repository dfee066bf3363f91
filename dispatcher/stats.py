"""Statistics as CICS keeps them, computed in the region database from request history.

Per transaction: count, abends, retries, latency to start and response time
percentiles. Per region: peak of tasks running at once, how many times and how long
the region sat at max SEPs, and queueing time. Exact over the history kept (the
region's history_retention), with no sampling and no extra writes on the hot path.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from .region import Region

__all__ = ["region_stats", "transaction_stats"]


def _pcts(values: list[float] | None) -> dict[str, float | None]:
    keys = ("p50", "p95", "p99")
    if not values:
        return dict.fromkeys(keys)
    return {k: None if v is None else round(float(v), 3) for k, v in zip(keys, values, strict=True)}


def transaction_stats(region: Region, since: dt.datetime) -> list[dict[str, Any]]:
    out = []
    for row in region.rows("transaction_stats", region=region.name, since=since):
        out.append(
            {
                "transid": row["transid"],
                "count": row["count"],
                "done": row["done"],
                "abends": row["abends"],
                "retries": int(row["retries"]),
                "start_latency_ms": _pcts(row["start_latency_ms"]),
                "response_ms": _pcts(row["response_ms"]),
                "run_avg_ms": None
                if row["run_avg_ms"] is None
                else round(float(row["run_avg_ms"]), 3),
            }
        )
    return out


def region_stats(region: Region, since: dt.datetime) -> dict[str, Any]:
    row = region.rows("region_stats", region=region.name, since=since)[0]
    return {
        "max_seps": row["max_seps"],
        "tasks": row["tasks"],
        "peak_running": int(row["peak_running"]),
        "times_at_max_seps": row["times_at_max_seps"],
        "seconds_at_max_seps": round(float(row["seconds_at_max_seps"]), 3),
        "queued_ms": _pcts(row["queued_ms"]),
    }
