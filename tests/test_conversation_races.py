"""A conversation whose messages race its call: a SEP that takes the request from the
queue may speak before the listener has the enqueue's answer, and a session may end
while its request still waits in the queue (docs/protocol.md, "A call";
docs/sep.md, "Conversations")."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from dispatcher.region import Region
from dispatcher.tokens import create_token
from sep.program import sync_app

from .dbproxy import Proxy, through
from .listeners import listener_process
from .seps import running_seps, wait_final
from .wire import Wire

APP = "tests.apps.timeouts"


@contextmanager
def _region_with_a_late_listener(region: Region, db_url: str) -> Iterator[tuple[str, Proxy]]:
    """One SEP (its own connection) and a listener whose database answers come through
    a proxy that can hold them back: (the listener's address, the proxy)."""
    sync_app(region, APP)
    proxy = Proxy(db_url)
    proxy.start()
    try:
        with (
            running_seps(db_url, "test", 1, "--poll", "0.2", app=APP),
            listener_process(through(proxy, db_url), "test") as (address, _),
        ):
            yield address, proxy
    finally:
        proxy.stop()


def test_output_that_comes_before_the_enqueue_answer_reaches_the_client(
    region: Region, db_url: str
) -> None:
    """The SEP takes the call's request from the queue and asks for input while the
    listener still waits for the enqueue's answer: the client gets accepted, then the
    output, and its input reaches the program (it was dropped, and the SEP waited out
    its receive timeout)."""
    token = create_token(region, "tester")
    with _region_with_a_late_listener(region, db_url) as (address, proxy):
        for n in range(2):
            wire = Wire(address, timeout=20)
            assert wire.hello(token)["type"] == "welcome"
            busy = region.enqueue("T_NAP", 0.5).request_id  # the SEP is busy: the call queues
            time.sleep(0.1)
            proxy.delay = 1.5  # the enqueue commits; its answer comes after the SEP spoke
            wire.send({"type": "call", "id": n, "transid": "T_CHAT", "data": None})
            accepted = wire.read()
            proxy.delay = 0.0
            assert accepted["type"] == "accepted", accepted
            output = wire.read()
            assert output["type"] == "output" and output["wants_input"], output
            assert output["request_id"] == accepted["request_id"]
            wire.send({"type": "input", "id": n, "data": f"client {n}"})
            result = wire.read()
            assert result == {
                "type": "result",
                "id": n,
                "request_id": accepted["request_id"],
                "data": {"hello": f"client {n}"},
            }, result
            assert wait_final(region, busy)["state"] == "done"
            wire.sock.close()


@pytest.mark.parametrize("served_before", [True, False], ids=["known-session", "new-session"])
def test_a_session_that_ends_while_its_conversation_is_queued(
    region: Region, db_url: str, served_before: bool
) -> None:
    """The client closes while its conversational call waits in the queue: when a SEP
    runs it, its first wait for input raises SessionEnded at once (not the receive
    timeout of 120 s, and not a RuntimeError), whether or not that SEP served the
    session before, and the SEP serves the next client."""
    token = create_token(region, "tester")
    with _region_with_a_late_listener(region, db_url) as (address, _):
        wire = Wire(address, timeout=20)
        assert wire.hello(token)["type"] == "welcome"
        if served_before:  # the SEP knows the session's listener from this call
            wire.send({"type": "call", "id": 0, "transid": "T_ECHO", "data": "hi"})
            assert [wire.read()["type"] for _ in range(2)] == ["accepted", "result"]
        busy = region.enqueue("T_NAP", 1.0).request_id
        time.sleep(0.1)
        wire.send({"type": "call", "id": 1, "transid": "T_CHAT", "data": None})
        accepted = wire.read()
        assert accepted["type"] == "accepted", accepted
        wire.sock.close()
        assert wait_final(region, busy)["state"] == "done"
        started = time.monotonic()
        row = wait_final(region, int(accepted["request_id"]), timeout=60)
        assert row["state"] == "failed" and row["error"]["type"] == "SessionEnded", row
        assert time.monotonic() - started < 10, "the program waited for input that cannot come"
        other = Wire(address, timeout=20)
        assert other.hello(token)["type"] == "welcome"
        other.send({"type": "call", "id": 2, "transid": "T_ECHO", "data": "next"})
        replies = [other.read() for _ in range(2)]
        assert replies[-1]["type"] == "result" and replies[-1]["data"] == "next", replies
