"""Region-wide figures read at each metrics scrape (sql/queries/metrics.sql)."""

from __future__ import annotations

from collections.abc import Sequence

from ..op import Op, Row, all_rows, one_row


def metrics_gauges(region: str) -> Op[Row]:
    """running, oldest_queued_s, seps (by state), queued_by_band, max_seps, sessions."""
    return Op("metrics_gauges", {"region": region}, one_row("metrics_gauges"))


def metrics_finished(region: str, bounds: Sequence[float]) -> Op[list[Row]]:
    """Finished requests by (transid, state, bucket of BOUNDS): n and seconds."""
    params = {"region": region, "bounds": [float(b) for b in bounds]}
    return Op("metrics_finished", params, all_rows)
