"""Logs: key=value for a terminal, one JSON object per line with --log-format json."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

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


WRITER = """
import logging, sys
from dispatcher.logs import configure_logging, get_logger
configure_logging("json")
log = get_logger("writer")
me = sys.argv[1]
for i in range(150):
    log.info("line", who=me, i=i, filler=me * 1400)
    logging.getLogger("psycopg.pool").warning("pool line %s %s", me, i)
log.info("long", who=me, text="x" * 100_000)
"""


def test_lines_of_processes_sharing_stderr_never_merge() -> None:
    """Processes writing long lines to one stderr at once (up, a supervisor and its
    SEPs): every line arrives whole, a JSON object of its own; a huge value is cut."""
    import os

    r, w = os.pipe()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, who], stderr=w) for who in "abcd"]
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        data = pipe.read()
    for p in procs:
        assert p.wait(timeout=60) == 0
    lines = data.decode().splitlines()
    events = [json.loads(line) for line in lines]  # each line is one whole object
    assert len(events) == 4 * 301
    for e in events:
        if e["event"] == "line":
            assert e["filler"] == e["who"] * 1400
        elif e["event"] == "long":
            assert len(e["text"]) < 2000 and "characters cut" in e["text"]


def test_a_forced_requeue_is_logged_per_request(db_url: str, capfd: Any, monkeypatch: Any) -> None:
    """A SEP declared dead while it held requests: the process that declared it logs
    each request taken back from it (request_requeued), with the SEP and why."""
    from dispatcher.database import connect
    from dispatcher.gateway import Gateway, ops
    from dispatcher.logs import configure_logging
    from dispatcher.region import Region

    # configure_logging sets these for child processes: put back after the test
    monkeypatch.setenv("DISPATCHER_LOG_FORMAT", "json")
    monkeypatch.setenv("DISPATCHER_LOG_LEVEL", "info")
    configure_logging("json")
    with connect(db_url) as conn:
        region = Region(conn, "test")
        region.ensure()
        region.define_transaction("ECHO", "app:echo")
        ids = [region.enqueue("ECHO", i).request_id for i in range(3)]
        sep = int(region.register_sep("h", 1)["id"])
        db = Gateway(conn)
        held = db.run(ops.sep.claim_batch(sep, 3))
        assert sorted(t.request_id for t in held) == ids
        capfd.readouterr()
        db.run(ops.sep.control_sep(sep, "lost"))
    events = [json.loads(line) for line in capfd.readouterr().err.splitlines()]
    requeued = [e for e in events if e["event"] == "request_requeued"]
    assert sorted(e["request_id"] for e in requeued) == ids
    assert all(e["sep"] == sep and e["why"] and e["level"] == "warning" for e in requeued)


def test_a_failing_command_ends_with_a_json_line_under_log_format_json(
    cli_env: dict[str, str],
) -> None:
    """With --log-format json (or its variable), the line a failing command ends with
    is a JSON object too: a port in use, a usage error, a bad option of the group; in
    text mode it stays `error: ...` / click's usage lines."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        cases = [
            (["--log-format", "json", "listener", "--port", port], 1, "command_failed"),
            (["--log-format=json", "region", "set", "--max-seps", "-3"], 2, "usage_error"),
            (["--log-format", "json", "sep", "start", "--app", "nosuch.mod"], 2, "usage_error"),
            (["--log-format", "json", "--region", "a/b", "status"], 2, "usage_error"),
        ]
        for args, code, event in cases:
            out = subprocess.run(
                [sys.executable, "-m", "dispatcher", *args],
                env=cli_env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == code, (args, out.stderr)
            lines = [json.loads(line) for line in out.stderr.strip().splitlines()]
            assert lines[-1]["event"] == event and lines[-1]["error"], (args, lines[-1])
            assert lines[-1]["level"] == "error" and lines[-1]["exit_code"] == code
        text = subprocess.run(
            [sys.executable, "-m", "dispatcher", "region", "set", "--max-seps", "-3"],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert text.returncode == 2 and "Usage:" in text.stderr and "Error:" in text.stderr
