"""What the read-only status page reads beyond the other listings
(sql/queries/status_page.sql; dispatcher/status_page.py)."""

from __future__ import annotations

from ..op import Op, Row, all_rows

__all__ = ["status_page_failures", "status_page_finished", "status_page_next_timers"]


def status_page_finished(region: str, window_s: float) -> Op[dict[str, int]]:
    """Requests finished in the last WINDOW_S seconds, by state: {state: n}."""
    params = {"region": region, "window_s": float(window_s)}
    return Op(
        "status_page_finished",
        params,
        lambda result: {str(r["state"]): int(r["n"]) for r in result.rows},
    )


def status_page_failures(region: str, limit: int, within_s: float) -> Op[list[Row]]:
    """The last LIMIT failed requests finished within WITHIN_S seconds, newest first:
    id, transid, attempt, error_type, error_message, finished_at."""
    params = {"region": region, "limit": int(limit), "within_s": float(within_s)}
    return Op("status_page_failures", params, all_rows)


def status_page_next_timers(region: str, limit: int) -> Op[list[Row]]:
    """The region's next LIMIT timers: reqid, transid, due_at, cron, tz, fired."""
    return Op("status_page_next_timers", {"region": region, "limit": int(limit)}, all_rows)
