"""Regions: create, show, change, reap, status (sql/queries/region.sql)."""

from __future__ import annotations

from ..op import Op, Row, one_row, scalar


def ensure_region(region: str) -> Op[Row]:
    """Create the region if it does not exist; its settings."""
    return Op("ensure_region", {"region": region}, one_row("ensure_region"))


def get_region(region: str) -> Op[Row]:
    """The region's settings (UnknownRegion if there is none)."""
    return Op("get_region", {"region": region}, one_row("get_region"))


def set_region(
    region: str,
    *,
    max_seps: int | None = None,
    state: str | None = None,
    aging_ms: int | None = None,
    sep_dead_after_s: float | None = None,
    history_retention_s: float | None = None,
) -> Op[Row]:
    """Change the settings given (None: unchanged)."""
    params = {
        "region": region,
        "max_seps": max_seps,
        "state": state,
        "aging_ms": aging_ms,
        "sep_dead_after_s": sep_dead_after_s,
        "history_retention_s": history_retention_s,
    }
    return Op("set_region", params, one_row("set_region"))


def reap(region: str) -> Op[Row]:
    """Declare silent SEPs dead, expire requests past their deadline, trim history."""
    return Op("reap", {"region": region}, one_row("reap"))


def region_status(region: str) -> Op[Row]:
    """What the region is doing: SEPs and requests by state, queue, oldest waiting."""
    return Op("region_status", {"region": region}, one_row("region_status"))


def channel_secret(region: str) -> Op[str]:
    """The region's channel secret (made at its first use; dispatcher/channel.py)."""
    return Op("channel_secret", {"region": region}, scalar("channel_secret", "secret", str))
