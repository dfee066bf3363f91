"""Statistics as CICS keeps them, computed in the region database from request history.

Per transaction: count, abends, retries, latency to start and response time
percentiles. Per region: peak of tasks running at once, how many times and how long
the region sat at max SEPs, and queueing time. Exact over the history kept (the
region's history_retention), with no sampling and no extra writes on the hot path.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from .gateway import InRegion, ops

__all__ = ["region_stats", "transaction_stats"]


def transaction_stats(region: InRegion, since: dt.datetime) -> list[dict[str, Any]]:
    """See :func:`dispatcher.gateway.ops.stats.transaction_stats`."""
    return region.run(ops.stats.transaction_stats(region.name, since))


def region_stats(region: InRegion, since: dt.datetime) -> dict[str, Any]:
    """See :func:`dispatcher.gateway.ops.stats.region_stats`."""
    return region.run(ops.stats.region_stats(region.name, since))
