"""Logging with structlog: key=value lines for a terminal, JSON lines with --log-format json."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["LOG_FORMATS", "configure_logging", "get_logger"]

LOG_FORMATS = ("text", "json")


def configure_logging(fmt: str | None = None, level: str | None = None) -> None:
    """Configure structlog for this process (stderr). ``fmt``: text or json.

    Defaults come from DISPATCHER_LOG_FORMAT and DISPATCHER_LOG_LEVEL, so that child
    processes (SEPs) log the way their parent was told to.
    """
    fmt = fmt or os.environ.get("DISPATCHER_LOG_FORMAT") or "text"
    level_name = (level or os.environ.get("DISPATCHER_LOG_LEVEL") or "info").upper()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: use text or json")
    os.environ["DISPATCHER_LOG_FORMAT"] = fmt
    os.environ["DISPATCHER_LOG_LEVEL"] = level_name.lower()
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.processors.LogfmtRenderer(key_order=["timestamp", "level", "event"])
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _logger_key,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(level_name) if level_name != "WARN" else logging.WARNING
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def _logger_key(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Show the logger's name as ``logger=`` (kept as logger_name until rendering)."""
    name = event.pop("logger_name", None)
    if name is not None:
        event["logger"] = name
    return event


def get_logger(name: str, **bound: Any) -> Any:
    """A logger that follows configure_logging even when made before it (at import)."""
    return structlog.get_logger(**{"logger_name": name, **bound})
