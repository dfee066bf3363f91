"""The Python client (listener/client.py), sync and asyncio, against an in-process
listener and fake SEPs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from dispatcher.protocol import DEFAULT_PORT
from dispatcher.region import Region
from dispatcher.tokens import create_token
from listener import CallError, connect, connect_async
from listener.client import parse_address

from .fake_sep import FakeSEP, define_transactions, fake_seps, inprocess_listener, wait_until

Live = tuple[str, str, list[FakeSEP], Region]


@pytest.fixture
def live(region: Region, db_url: str) -> Iterator[Live]:
    define_transactions(region)
    token = create_token(region, "client")
    with fake_seps(db_url, "test", 2) as seps, inprocess_listener(db_url, "test") as lst:
        yield f"127.0.0.1:{lst.port}", token, seps, region


def test_parse_address() -> None:
    assert parse_address("h:1") == ("h", 1)
    assert parse_address("[::1]:7") == ("::1", 7)
    assert parse_address("somehost") == ("somehost", DEFAULT_PORT)
    assert parse_address("") == ("127.0.0.1", DEFAULT_PORT)
    with pytest.raises(ValueError):
        parse_address("h:port")


def test_sync_session(live: Live) -> None:
    address, token, _, _ = live
    with connect(address, token=token) as s:
        assert s.welcome["user"] == "client" and s.welcome["region"] == "test"
        assert s.call("ECHO", {"x": 1}) == {"x": 1}
        s.ping()
        with pytest.raises(CallError) as err:
            s.call("ABEND", None)
        assert err.value.code == "abend" and err.value.detail["type"] == "ValueError"
        assert err.value.request_id is not None
        with pytest.raises(CallError) as err:
            s.call("CHAT", None)  # it wants input, and no on_output was given
        assert err.value.code == "input_needed"


def test_sync_conversation_and_result_of(live: Live) -> None:
    address, token, _, _ = live
    with connect(address, token=token) as s:
        got = s.call("CHAT", None, on_output=lambda data, wants: "Bo" if wants else None)
        assert got == {"greeting": "Hello, Bo!", "second": "Bo"}
        s.send({"type": "call", "id": "x", "transid": "ECHO", "data": 5})
        rid = s.receive(timeout=5)["request_id"]
        while s.receive(timeout=5)["type"] != "result":
            pass
    with connect(address, token=token) as other:
        assert other.result_of(rid) == {"type": "result", "id": 1, "request_id": rid, "data": 5}


def test_pending_result(live: Live) -> None:
    """result_of a request still running says pending, with its state."""
    address, token, seps, _ = live
    with connect(address, token=token) as s, connect(address, token=token) as watcher:
        s.send({"type": "call", "id": 1, "transid": "SLOW", "data": "later"})
        rid = s.receive(timeout=5)["request_id"]
        pending = watcher.result_of(rid)
        assert pending["type"] == "pending" and pending["state"] in ("dispatched", "running")
        for sep in seps:
            sep.hold.set()
        assert s.receive(timeout=10)["data"] == "later"


def test_idempotency_key(live: Live) -> None:
    """A call repeated with the same key, from another session, runs once and gets the
    first call's result; another user's same key is another request."""
    address, token, _, region = live
    with connect(address, token=token) as s:
        assert s.call("ECHO", "first", key="k-1") == "first"
    with connect(address, token=token) as s:
        s.send({"type": "call", "id": 1, "transid": "ECHO", "data": "second", "key": "k-1"})
        accepted = s.receive(timeout=5)
        assert accepted["type"] == "accepted" and accepted["duplicate"] is True
        assert s.receive(timeout=5)["data"] == "first"
        with pytest.raises(CallError) as err:
            s.call("ECHO", 1, key="")
        assert err.value.code == "invalid_value"  # a key of the right type, out of range
    other = create_token(region, "someone-else")
    with connect(address, token=other) as s:
        assert s.call("ECHO", "theirs", key="k-1") == "theirs"
    n = region.conn.execute("SELECT count(*) AS n FROM dispatcher.request_history").fetchone()
    assert n["n"] == 2


def test_refused_hello(live: Live) -> None:
    address, _, _, _ = live
    with pytest.raises(CallError) as err:
        connect(address, token="dsp_nope")
    assert err.value.code == "unauthorized" and not err.value.retryable


def test_async_session(live: Live) -> None:
    address, token, _, _ = live

    async def main() -> None:
        async with await connect_async(address, token=token) as s:
            assert await s.call("ECHO", [1]) == [1]

            async def answer(data: Any, wants: bool) -> Any:
                await asyncio.sleep(0)
                return "Cy" if wants else None

            got = await s.call("CHAT", None, on_output=answer)
            assert got == {"greeting": "Hello, Cy!", "second": "Cy"}
            assert await s.call("ORDER", "ink") == {"prompt": "how many?"}
            assert s.next_transid == "ORDER2"
            assert await s.input(2) == {"item": "ink", "quantity": 2}
            with pytest.raises(CallError) as err:
                await s.call("NOPE", None)
            assert err.value.code == "unknown_transaction"
        with pytest.raises(CallError):
            await connect_async(address, token="bad")

    asyncio.run(main())


def test_session_carries_the_tokens_user_and_priority(live: Live) -> None:
    """The session is registered with the token's name and priority; its requests get
    that priority added (enqueue_v1), and other versions of the hello are refused."""
    address, _, _, region = live
    from dispatcher.channel import read_frame_sync
    from dispatcher.protocol import encode
    from dispatcher.tokens import create_token as make

    vip = make(region, "vip", priority=7)
    with connect(address, token=vip) as s:
        row = region.conn.execute(
            "SELECT user_name, priority FROM dispatcher.session WHERE id = %s", [s.session_id]
        ).fetchone()
        assert row == {"user_name": "vip", "priority": 7}
        s.send({"type": "call", "id": 1, "transid": "ECHO", "data": 0})
        rid = s.receive(timeout=5)["request_id"]
        assert s.receive(timeout=5)["type"] == "result"
    assert region.request(rid)["priority"] == 7
    left = "SELECT count(*) AS n FROM dispatcher.session WHERE user_name = 'vip'"
    wait_until(lambda: region.conn.execute(left).fetchone()["n"] == 0)  # ended with it
    import socket

    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(encode({"type": "hello", "version": 2, "token": vip}))
        reply = read_frame_sync(raw)
        assert reply is not None and reply["code"] == "bad_hello"
        assert read_frame_sync(raw) is None  # and the connection is closed
