"""DELIVER (sep/delivery.py): outbound HTTP calls, at least once, with retries, against a
real local HTTP server, run by real SEP processes."""

from __future__ import annotations

import datetime as dt
import http.server
import itertools
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dispatcher.gateway import ops
from dispatcher.region import Region
from sep import GiveUp
from sep.delivery import describe, retry_after
from sep.program import sync_app
from tests.seps import running_seps, wait_final

APP = "sep.delivery"


class Target:
    """A local HTTP server that answers each call with the next of STATUSES (then 200)
    and records every call (time, path, headers, body)."""

    def __init__(
        self, statuses: list[int], *, retry_after: str | None = None, body: bytes | None = None
    ) -> None:
        self.statuses = list(statuses)
        self.retry_after = retry_after
        self.body = body
        self.calls: list[dict[str, Any]] = []
        target = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode()
                target.calls.append(
                    {
                        "at": time.monotonic(),
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": body,
                    }
                )
                status = target.statuses.pop(0) if target.statuses else 200
                self.send_response(status)
                if status == 429 and target.retry_after:
                    self.send_header("Retry-After", target.retry_after)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.end_headers()
                ok = target.body if target.body is not None else b'{"ok": true}'
                self.wfile.write(ok if status == 200 else b"no")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def delivery(region: Region, conn: psycopg.Connection[dict[str, Any]]) -> Region:
    sync_app(region, APP)
    # a quick schedule for the tests: 0.2, 0.4, 0.8 ... s (the default is 2, 4, 8 ...)
    conn.execute("UPDATE dispatcher.transaction SET retry_backoff_s = 0.2, max_attempts = 4")
    return region


def _deliver(region: Region, url: str, uuid: str = "u-1", **more: Any) -> int:
    data = {
        "UUID": uuid,
        "Url": url,
        "Method": "POST",
        "Body": '{"n": 1}',
        "Header": {"Content-Type": "application/json"},
        "Timeout": 2000,
        **more,
    }
    return region.enqueue("DELIVER", data, idempotency_key=uuid).request_id


@pytest.fixture
def target() -> Iterator[Target]:
    t = Target([503, 500])
    yield t
    t.close()


def test_describe_reads_the_seed_form_and_refuses_what_can_never_succeed() -> None:
    """The seed 004 example is a valid call; a bad URL, method, header or timeout is
    GiveUp (failed at once, never retried)."""
    call = describe(
        {
            "UUID": "x",
            "Url": "http://my-url/",
            "Method": "POST",
            "Body": "{}",
            "Header": {"Content-Type": "application/json"},
            "Timeout": 1000,
        }
    )
    assert call["method"] == "POST" and call["timeout"] == 1.0 and call["content"] == b"{}"
    assert call["headers"]["Idempotency-Key"] == "x"
    for bad in (
        {"Url": "ftp://x"},
        {"Url": "http://x", "Method": "BREW"},
        {"Url": "http://x", "Header": {"a": 1}},
        {"Url": "http://x", "Timeout": 0},
        {"Url": "http://x", "Timeout": True},
        {"Url": "http://[::1"},
        {"Url": "http://127.0.0.1:99999/x"},
        {"Url": "http://127.0.0.1:-1/x"},
        {"Url": "http://exa mple.com/"},
        {"Url": "http://x", "Header": {"X": "a\u0085b"}},
        {"Url": "http://"},
        {"Url": "http://x", "Header": {"X": "a\r\nInjected: 1"}},
        {"Url": "http://x", "Header": {"Bad\nName": "v"}},
        {"Url": "http://x", "Header": {"": "v"}},
        {"Url": "http://x", "Header": {"X": "nul\u0000"}},
        [1],
    ):
        with pytest.raises(GiveUp):
            describe(bad)


def test_a_delivered_call_is_done_whatever_the_target_answers(
    delivery: Region, db_url: str
) -> None:
    """A 2xx whose body holds NULs and bytes that are not text is done at its first
    attempt (its result keeps U+FFFD for them: it used to be refused and the call made
    again); a header value that is not ASCII is sent (as UTF-8); a redirect fails at
    once (GiveUp), followed nowhere."""
    binary = Target([200], body=b'{"x": "\x00"}\x00\xff\xfe end')
    moved = Target([302])
    try:
        with running_seps(db_url, "test", 1, app=APP):
            ok = _deliver(delivery, binary.url, "u-bin", Header={"X-Name": "café ☕"})
            redirect = _deliver(delivery, moved.url, "u-302")
            row = wait_final(delivery, ok)
            assert row["state"] == "done" and row["attempt"] == 1, row
            assert row["result"]["status"] == 200
            assert row["result"]["body"].startswith('{"x": "\ufffd"}\ufffd')
            assert row["result"]["body"].endswith(" end")
            assert len(binary.calls) == 1
            # a value that is not ASCII is sent as UTF-8 (http.server reads it as latin-1)
            sent = binary.calls[0]["headers"]["X-Name"]
            assert sent.encode("latin-1").decode("utf-8") == "café ☕"
            row = wait_final(delivery, redirect)
            assert row["state"] == "failed" and row["attempt"] == 1, row
            assert row["error"]["type"] == "GiveUp" and "302" in row["error"]["message"]
            assert len(moved.calls) == 1
    finally:
        binary.close()
        moved.close()


def test_retry_after_reads_seconds_and_http_dates() -> None:
    """Retry-After: delta-seconds or an HTTP date; nonsense is ignored."""
    now = dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert retry_after("3") == 3.0
    assert retry_after("Tue, 01 Dec 2026 12:00:30 GMT", now) == 30.0
    assert retry_after("Tue, 01 Dec 2026 11:00:00 GMT", now) == 0.0
    assert retry_after("soon") is None and retry_after(None) is None
    assert retry_after("nan") is None


@pytest.mark.slow
def test_deliveries_retry_back_off_honour_retry_after_and_give_up_on_4xx(
    delivery: Region, db_url: str, target: Target
) -> None:
    """503, 500, then 200: done on the 3rd attempt with the same Idempotency-Key each
    time, the waits growing; 429 with Retry-After: 1 waits at least 1 s; 404 fails at
    once; a closed port is retried until the last attempt: a dead letter that
    `request rerun` delivers once the target is up."""
    slow = Target([429], retry_after="1")
    gone = Target([404])
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    closed_port = free.getsockname()[1]
    free.close()
    try:
        with running_seps(db_url, "test", 2, app=APP):
            flaky = _deliver(delivery, target.url, "u-flaky")
            limited = _deliver(delivery, slow.url, "u-429")
            missing = _deliver(delivery, gone.url, "u-404")
            dead = _deliver(delivery, f"http://127.0.0.1:{closed_port}/hook", "u-dead")

            row = wait_final(delivery, flaky, timeout=30)
            assert row["state"] == "done" and row["attempt"] == 3
            assert row["result"]["status"] == 200
            assert [c["headers"]["Idempotency-Key"] for c in target.calls] == ["u-flaky"] * 3
            waits = [b["at"] - a["at"] for a, b in itertools.pairwise(target.calls)]
            assert waits[0] >= 0.15 and waits[1] >= 0.3  # 0.2 s, then 0.4 s (+-10%)

            row = wait_final(delivery, limited, timeout=30)
            assert row["state"] == "done" and row["attempt"] == 2
            assert slow.calls[1]["at"] - slow.calls[0]["at"] >= 0.95

            row = wait_final(delivery, missing, timeout=30)
            assert row["state"] == "failed" and row["attempt"] == 1
            assert row["error"]["type"] == "GiveUp" and "404" in row["error"]["message"]
            assert len(gone.calls) == 1

            row = wait_final(delivery, dead, timeout=30)
            assert row["state"] == "failed" and row["attempt"] == 4
            assert row["error"]["type"] == "RetryLater"
            letters = delivery.run(
                ops.request.list_requests("test", state="failed", transid="DELIVER")
            )
            assert {r["id"] for r in letters} == {missing, dead}

            back = Target([])
            try:
                data = dict(delivery.request(dead)["payload"], Url=back.url)
                delivery.conn.execute(
                    "UPDATE dispatcher.request_history SET payload = %s WHERE id = %s",
                    [psycopg.types.json.Jsonb(data), dead],
                )
                out = subprocess.run(
                    [sys.executable, "-m", "dispatcher", "request", "rerun", str(dead)],
                    env=_env(db_url),
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert out.returncode == 0, out.stderr
                again = int(out.stdout.strip())
                assert wait_final(delivery, again, timeout=30)["state"] == "done"
                assert len(back.calls) == 1
            finally:
                back.close()
    finally:
        slow.close()
        gone.close()


def _env(db_url: str) -> dict[str, str]:
    import os

    return {
        **os.environ,
        "DISPATCHER_DATABASE_URL": db_url,
        "DISPATCHER_REGION": "test",
        "DISPATCHER_LOG_LEVEL": "warning",
    }


@pytest.mark.slow
def test_an_accepted_delivery_survives_kill_9_of_every_process(
    delivery: Region, db_url: str
) -> None:
    """Accepted (committed) while no SEP runs; a SEP killed -9 in the middle of the
    call; the next SEP delivers it (at least once: the target may see it twice, always
    with the same Idempotency-Key)."""
    hang = threading.Event()

    target = Target([])
    first_call = threading.Event()
    original = target.server.RequestHandlerClass.do_POST  # type: ignore[attr-defined]

    def do_post(handler: Any) -> None:
        if not first_call.is_set():
            first_call.set()
            hang.wait(20)  # the first attempt never answers: its SEP is killed meanwhile
            return
        original(handler)

    target.server.RequestHandlerClass.do_POST = do_post  # type: ignore[attr-defined]
    delivery.set(sep_dead_after_s=1.0)
    try:
        rid = _deliver(delivery, target.url, "u-crash", Timeout=30000)
        time.sleep(0.5)
        assert delivery.request(rid)["state"] == "queued"  # nothing runs it yet
        with running_seps(db_url, "test", 1, "--heartbeat", "0.2", app=APP) as procs:
            assert first_call.wait(20)
            procs[0].kill()
            procs[0].wait(10)
        with running_seps(db_url, "test", 1, "--heartbeat", "0.2", app=APP):
            row = wait_final(delivery, rid, timeout=40)
        assert row["state"] == "done" and row["attempt"] == 2
        assert [c["headers"]["Idempotency-Key"] for c in target.calls] == ["u-crash"]
    finally:
        hang.set()
        target.close()
