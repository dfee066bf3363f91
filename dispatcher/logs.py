"""Logging with structlog: key=value lines for a terminal, JSON lines with --log-format json."""

from __future__ import annotations

import logging
import os
import select
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
    one_line = [] if fmt == "json" else [_one_line]  # JSON escapes newlines itself
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _logger_key,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _process,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            *one_line,
            _bounded,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(level_name) if level_name != "WARN" else logging.WARNING
        ),
        logger_factory=_LineWriter,
        cache_logger_on_first_use=False,
    )
    # what libraries log with the standard logging module (psycopg's pool: a broken
    # connection, a failed reconnect) goes out the same way, one line per event
    handler = logging.StreamHandler(_LineStream())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                *one_line,
                _bounded,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_dispatcher", False):
            root.removeHandler(old)
    handler._dispatcher = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(max(logging.WARNING, _level_number(level_name)))


# Several processes of a region (up, a SEP supervisor and its SEPs) write to one stderr:
# each line goes out in one write() of at most PIPE_BUF bytes, which a pipe never
# interleaves with another process's, so one process's line is never merged with
# another's. A value longer than MAX_VALUE characters is cut (a traceback keeps its end).
MAX_VALUE = 1500


def _bounded(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str) and len(value) > MAX_VALUE:
            cut = len(value) - MAX_VALUE
            if key == "exception":
                event[key] = f"...({cut} characters cut) " + value[-MAX_VALUE:]
            else:
                event[key] = value[:MAX_VALUE] + f"...({cut} characters cut)"
    return event


def _write_line(text: str) -> None:
    """TEXT and a newline to stderr in one write() (the whole line, or its first
    PIPE_BUF bytes and then the rest, for a line too long to go at once)."""
    line = text.rstrip("\n") + "\n"
    stream = sys.stderr
    try:
        stream.flush()
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's capture)
        stream.write(line)
        stream.flush()
        return
    data = line.encode("utf-8", "backslashreplace")
    while data:
        n = os.write(fd, data[: select_pipe_buf()])
        data = data[n:]


def select_pipe_buf() -> int:
    return getattr(select, "PIPE_BUF", 4096)


class _LineWriter:
    """structlog's logger: each rendered event is one line, written at once."""

    def __init__(self, *_args: Any) -> None:
        pass

    def msg(self, message: str) -> None:
        _write_line(message)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


class _LineStream:
    """The stream of the standard logging handler: each record is one line, at once."""

    def write(self, text: str) -> None:
        if text.strip():
            _write_line(text)

    def flush(self) -> None:
        pass


def _level_number(name: str) -> int:
    return logging.WARNING if name == "WARN" else int(logging.getLevelName(name))


def _process(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Every line names the process that wrote it (the pid; with the logger's name and
    the region its logger bound, that tells the parts of a region apart)."""
    event.setdefault("pid", os.getpid())
    record = event.get("_record")
    if record is not None and "logger" not in event:
        event["logger"] = record.name
    return event


def _one_line(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A value over several lines (a database error, a traceback) stays on the event's
    line: each newline is written as a visible \n."""
    for key, value in event.items():
        if isinstance(value, str) and "\n" in value:
            event[key] = value.strip().replace("\n", "\\n")
    return event


def _logger_key(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Show the logger's name as ``logger=`` (kept as logger_name until rendering)."""
    name = event.pop("logger_name", None)
    if name is not None:
        event["logger"] = name
    return event


def get_logger(name: str, **bound: Any) -> Any:
    """A logger that follows configure_logging even when made before it (at import)."""
    return structlog.get_logger(**{"logger_name": name, **bound})
