"""Logs: key=value for a terminal, one JSON object per line with --log-format json."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
from dispatcher.logs import configure_logging, get_logger
log = get_logger("dispatcher.test", region="r1")   # made before configure_logging
configure_logging({fmt!r})
log.info("request_done", request_id=7)
log.warning("database_unavailable", retry_in_s=0.2)
"""


def _run(fmt: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(fmt=fmt)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stderr.strip().splitlines()


def test_json_lines() -> None:
    """With json, every line is one JSON object with event, level, logger and fields."""
    first, second = (json.loads(line) for line in _run("json"))
    assert first["event"] == "request_done" and first["request_id"] == 7
    assert first["logger"] == "dispatcher.test" and first["region"] == "r1"
    assert second["level"] == "warning" and second["retry_in_s"] == 0.2


def test_text_lines() -> None:
    """With text, lines are key=value, event first after time and level."""
    first, second = _run("text")
    assert "level=info event=request_done" in first and "request_id=7" in first
    assert "event=database_unavailable" in second and "retry_in_s=0.2" in second


def test_unknown_format_is_refused() -> None:
    """An unknown format is a clear error (the CLI refuses it as a usage error too)."""
    out = subprocess.run(
        [sys.executable, "-m", "dispatcher", "--log-format", "xml", "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "xml" in out.stderr


def test_library_log_records_come_out_one_json_object_per_line() -> None:
    """What a library logs with the logging module (psycopg's pool) is rendered like our
    own events: in JSON mode every line is a JSON object, with its logger and pid; in
    text mode a multi-line message stays on one line."""
    code = (
        "import logging\n"
        "from dispatcher.logs import configure_logging, get_logger\n"
        "configure_logging('{fmt}')\n"
        "logging.getLogger('psycopg.pool').warning('error connecting in %s:\\nsecond line', 'p')\n"
        "logging.getLogger('psycopg.pool').info('not shown at info')\n"
        "get_logger('database').warning('database_unavailable', error='a\\nb')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code.format(fmt="json")], capture_output=True, text=True, timeout=60
    )
    lines = out.stderr.strip().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["logger"] for e in events] == ["psycopg.pool", "database"]
    assert all(isinstance(e["pid"], int) for e in events)
    assert events[0]["event"] == "error connecting in p:\nsecond line"
    text = subprocess.run(
        [sys.executable, "-c", code.format(fmt="text")], capture_output=True, text=True, timeout=60
    )
    assert len(text.stderr.strip().splitlines()) == 2, text.stderr
