"""A conversation whose session ends (client closes or says bye, its listener stops, its
SEP stops) ends at once: ctx.receive raises SessionEnded and the SEP goes free
(docs/sep.md, "Conversations"; docs/listener.md, "Sessions")."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from dispatcher.gateway import ops
from dispatcher.region import Region
from dispatcher.tokens import create_token
from sep.program import sync_app

from .listeners import free_port, listener_process, wait_port
from .seps import ROOT, running_seps, sep_env, start_sep, wait_final, wait_registered
from .wire import Wire

APP = "tests.apps.timeouts"


def _chat_waiting(address: str, token: str) -> tuple[Wire, int]:
    """A client whose T_CHAT call now waits for its input: (its wire, the request)."""
    wire = Wire(address)
    assert wire.hello(token)["type"] == "welcome"
    wire.send({"type": "call", "id": 1, "transid": "T_CHAT", "data": None})
    request_id = 0
    while True:
        msg = wire.read()
        if msg["type"] == "accepted":
            request_id = int(msg["request_id"])
        elif msg["type"] == "waiting" or (msg["type"] == "output" and msg.get("wants_input")):
            return wire, request_id
        else:
            raise AssertionError(msg)


def _ended(region: Region, request_id: int, within: float) -> dict[str, Any]:
    started = time.monotonic()
    row = wait_final(region, request_id, timeout=30)
    assert time.monotonic() - started < within, "the program did not learn at once"
    assert row["state"] == "failed" and row["error"]["type"] == "SessionEnded", row
    return row


@pytest.mark.parametrize("how", ["close", "bye"])
def test_an_abandoned_conversation_frees_its_sep(region: Region, db_url: str, how: str) -> None:
    """The client closes (or says bye) while the program waits in ctx.receive: the
    program gets SessionEnded at once and the SEP serves the next client."""
    sync_app(region, APP)
    token = create_token(region, "tester")
    with running_seps(db_url, "test", 1, app=APP), listener_process(db_url, "test") as (address, _):
        wire, request_id = _chat_waiting(address, token)
        if how == "bye":
            wire.send({"type": "bye"})
        wire.sock.close()
        _ended(region, request_id, within=5)
        other = Wire(address)
        assert other.hello(token)["type"] == "welcome"
        other.send({"type": "call", "id": 2, "transid": "T_ECHO", "data": "next"})
        replies = [other.read() for _ in range(2)]
        assert replies[-1]["type"] == "result" and replies[-1]["data"] == "next", replies


@contextmanager
def _conversation_at_a_listener(
    region: Region, db_url: str
) -> Iterator[tuple[Wire, int, subprocess.Popen[bytes]]]:
    """A SEP, a listener process and a client whose T_CHAT call waits for its input:
    (the client's wire, the request, the listener process)."""
    sync_app(region, APP)
    token = create_token(region, "tester")
    with (
        running_seps(db_url, "test", 1, app=APP),
        listener_process(db_url, "test") as (address, proc),
    ):
        wire, request_id = _chat_waiting(address, token)
        yield wire, request_id, proc


def test_a_stopping_listener_ends_its_conversations(region: Region, db_url: str) -> None:
    """SIGTERM to the listener while a conversation waits: the listener stops at once,
    and the conversation ends with SessionEnded."""
    with _conversation_at_a_listener(region, db_url) as (wire, request_id, proc):
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - stopped < 5
        _ended(region, request_id, within=5)
        wire.sock.close()


def test_a_reaped_listener_ends_its_conversations(region: Region, db_url: str) -> None:
    """The listener dies (kill -9) while a conversation waits for input; once it is
    reaped, the SEP is told at once (NOTIFY session_ended): the conversation ends with
    SessionEnded and is never run again, though its receive timeout is minutes away."""
    with _conversation_at_a_listener(region, db_url) as (wire, request_id, proc):
        proc.kill()
        proc.wait(timeout=30)
        time.sleep(0.3)
        assert region.run(ops.listener.reap_listeners("test", 0.1)) == 1
        row = _ended(region, request_id, within=5)
        assert row["attempt"] == 1
        wire.sock.close()


def test_a_stopping_sep_ends_its_conversation_and_never_reruns_it(
    region: Region, db_url: str
) -> None:
    """SIGTERM to a SEP whose conversation waits: the SEP stops at once (exit 0), the
    conversation ends with SessionEnded and does not run again."""
    sync_app(region, APP)
    token = create_token(region, "tester")
    sep = start_sep(db_url, "test", APP)
    try:
        wait_registered(db_url, "test", 1)
        with listener_process(db_url, "test") as (address, _):
            wire, request_id = _chat_waiting(address, token)
            stopped = time.monotonic()
            sep.send_signal(signal.SIGTERM)
            assert sep.wait(timeout=30) == 0
            assert time.monotonic() - stopped < 5
            row = _ended(region, request_id, within=5)
            assert row["attempt"] == 1
            wire.sock.close()
        with running_seps(db_url, "test", 1, app=APP):
            time.sleep(1.0)
            assert region.request(request_id)["attempt"] == 1
    finally:
        if sep.poll() is None:
            sep.kill()


def test_stopping_up_ends_a_waiting_conversation_at_once(region: Region, db_url: str) -> None:
    """Ctrl-C of `dispatcher up` while a conversation waits: everything stops within
    seconds, no SEP is killed, and the conversation ends once (SessionEnded), never
    re-run."""
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "dispatcher", "up", "--app", APP),
            *("--seps", "1", "--port", str(port), "--no-http", "--no-web"),
        ],
        env=sep_env(db_url, "test"),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_port(port, proc, timeout=60)
        wait_registered(db_url, "test", 1)
        token = create_token(region, "tester")
        wire, request_id = _chat_waiting(f"127.0.0.1:{port}", token)
        stopped = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert time.monotonic() - stopped < 15, err
        assert "process_killed" not in err
        row = _ended(region, request_id, within=5)
        assert row["attempt"] == 1
        wire.sock.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
