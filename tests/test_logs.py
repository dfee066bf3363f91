"""Logs: key=value for a terminal, one JSON object per line with --log-format json."""

from __future__ import annotations

import json

import pytest

from dispatcher.logs import configure_logging, get_logger


def test_json_and_text_formats(capsys: pytest.CaptureFixture[str]) -> None:
    """A logger made before configure_logging follows it; JSON lines parse; text is k=v."""
    log = get_logger("dispatcher.test", region="r1")
    configure_logging("json")
    log.info("request_done", request_id=7)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    event = json.loads(line)
    assert event["event"] == "request_done" and event["request_id"] == 7
    assert event["logger"] == "dispatcher.test" and event["region"] == "r1"
    configure_logging("text")
    log.warning("database_unavailable", retry_in_s=0.2)
    text = capsys.readouterr().err.strip().splitlines()[-1]
    assert "level=warning" in text and "event=database_unavailable" in text
    assert "retry_in_s=0.2" in text
    with pytest.raises(ValueError, match="unknown log format"):
        configure_logging("xml")
