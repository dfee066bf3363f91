"""The listener with real sockets, real SEP processes and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from dispatcher.channel import encode_frame
from dispatcher.gateway import ops
from dispatcher.protocol import MAX_FRAME
from dispatcher.region import Region
from dispatcher.tokens import create_token
from listener import CallError, connect, connect_async
from sep.program import sync_app

from .listeners import running_listener
from .seps import ROOT, running_seps, sep_env
from .wire import Wire

APP = "dispatcher_examples.sample"


@pytest.fixture(scope="module")
def live(module_region: Region, module_db_url: str) -> Iterator[tuple[str, str, Region]]:
    """A region with 3 SEPs of the sample app and one listener, shared by the tests of
    this module: (address, token, region)."""
    region, url = module_region, module_db_url
    sync_app(region, APP)
    token = create_token(region, "tester")
    with running_seps(url, "test", 3, app=APP), running_listener(url, "test") as address:
        yield address, token, region


def test_round_trip(live: tuple[str, str, Region]) -> None:
    """A call returns the program's result."""
    address, token, _ = live
    with connect(address, token) as s:
        assert s.call("ECHO", {"x": 1}) == {"x": 1}
        assert s.call("ECHO", [1, 2, 3]) == [1, 2, 3]


def test_conversation(live: tuple[str, str, Region]) -> None:
    """Output while the task runs; the session's next input goes straight to the SEP."""
    address, token, _ = live
    seen: list[Any] = []

    def on_output(data: Any, wants_input: bool) -> Any:
        seen.append((data, wants_input))
        return "Ada"

    with connect(address, token) as s:
        assert s.call("CHAT", None, on_output=on_output) == {"greeting": "Hello, Ada!"}
    assert seen == [({"prompt": "What is your name?"}, True)]


def test_pseudo_conversation(live: tuple[str, str, Region]) -> None:
    """RETURN TRANSID: the next input becomes a request for ORDER2 with the commarea."""
    address, token, _ = live
    with connect(address, token) as s:
        first = s.call("ORDER", {"item": "pen"})
        assert "How many pens" in first["prompt"] and s.next_transid == "ORDER2"
        assert s.input(4) == {"ordered": {"item": "pen", "quantity": 4}}
        assert s.next_transid is None
        with pytest.raises(CallError) as err:
            s.input(5)
        assert err.value.code == "no_task_waiting"


def test_abend_and_unknown_transaction(live: tuple[str, str, Region]) -> None:
    """An abend and an unknown TRANSID are error replies; the session goes on."""
    address, token, _ = live
    with connect(address, token) as s:
        with pytest.raises(CallError) as err:
            s.call("ABEND", 1)
        assert err.value.code == "abend" and err.value.detail["type"] == "ValueError"
        with pytest.raises(CallError) as err:
            s.call("NOPE", 1)
        assert err.value.code == "unknown_transaction" and not err.value.retryable
        assert s.call("ECHO", "still here") == "still here"


def test_tokens(live: tuple[str, str, Region]) -> None:
    """Missing or wrong tokens are refused; a token limited to ECHO may not run CHAT."""
    address, _, region = live
    for bad in (None, "dsp_wrong"):
        with pytest.raises(CallError) as err:
            connect(address, bad)
        assert err.value.code == "unauthorized"
    limited = create_token(region, "echo-only", allow=["ECHO"])
    with connect(address, limited) as s:
        assert s.call("ECHO", 1) == 1
        with pytest.raises(CallError) as err:
            s.call("CHAT", None)
        assert err.value.code == "forbidden"


def test_a_revoked_token_opens_no_session(live: tuple[str, str, Region]) -> None:
    """After token revoke, a hello with that token is unauthorized; a session opened
    before goes on."""
    address, _, region = live
    doomed = create_token(region, "doomed")
    with connect(address, doomed) as before:
        assert region.run(ops.listener.revoke_token(region.name, "doomed")) is True
        with pytest.raises(CallError) as err:
            connect(address, doomed)
        assert err.value.code == "unauthorized"
        assert before.call("ECHO", "still") == "still"


def test_a_cancelled_request_is_answered_cancelled(live: tuple[str, str, Region]) -> None:
    """result_of a request cancelled while queued: the error `cancelled` (it never ran),
    not `abend`."""
    address, token, region = live
    region.define_transaction("NOBODY", "app:nobody", requires=("no-such-capability",))
    e = region.enqueue("NOBODY", None)
    assert region.run(ops.request.cancel_request(region.name, e.request_id)) == "cancelled"
    with connect(address, token) as s, pytest.raises(CallError) as err:
        s.result_of(e.request_id)
    assert err.value.code == "cancelled" and err.value.detail["type"] == "Cancelled"


def test_result_of_a_request(live: tuple[str, str, Region]) -> None:
    """A result stays retrievable by request id from another session."""
    address, token, region = live
    e = region.enqueue("ECHO", {"later": True})
    with connect(address, token) as s:
        for _ in range(200):
            reply = s.result_of(e.request_id)
            if reply["type"] == "result":
                break
        assert (
            reply
            == {"type": "result", "id": 1, "request_id": e.request_id, "data": {"later": True}}
            or reply["type"] == "result"
        )
        with pytest.raises(CallError) as err:
            s.result_of(10**12)
        assert err.value.code == "unknown_request"


def test_many_sessions_at_once(live: tuple[str, str, Region]) -> None:
    """300 concurrent sessions each get their own answers."""
    address, token, _ = live

    async def one(i: int) -> Any:
        s = await connect_async(address, token)
        try:
            return [await s.call("ECHO", {"i": i, "n": n}) for n in range(3)]
        finally:
            await s.close()

    async def main() -> list[Any]:
        return await asyncio.gather(*(one(i) for i in range(300)))

    results = asyncio.run(main())
    assert results == [[{"i": i, "n": n} for n in range(3)] for i in range(300)]


def test_two_listeners_one_region(live: tuple[str, str, Region], module_db_url: str) -> None:
    """A second listener on the same region serves its own sessions."""
    address, token, _ = live
    with running_listener(module_db_url, "test") as second:
        with connect(address, token) as a, connect(second, token) as b:
            assert a.call("ECHO", "a") == "a"
            assert b.call("ECHO", "b") == "b"
            seen: list[Any] = []
            assert b.call("CHAT", None, on_output=lambda d, w: seen.append(d) or "B") == {
                "greeting": "Hello, B!"
            }


def _dispatcher(env: dict[str, str], *args: str, input: str | None = None) -> Any:
    """The real `dispatcher` program, run as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        input=input,
    )


def _raw(address: str, token: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    _send(sock, {"type": "hello", "version": 1, "token": token})
    assert _recv(sock)["type"] == "welcome"
    return sock


def _send(sock: socket.socket, msg: Any) -> None:
    body = json.dumps(msg).encode()
    sock.sendall(struct.pack(">I", len(body)) + body)


def _recv(sock: socket.socket) -> dict[str, Any]:
    header = b""
    while len(header) < 4:
        chunk = sock.recv(4 - len(header))
        if not chunk:
            raise ConnectionError("closed")
        header += chunk
    (n,) = struct.unpack(">I", header)
    body = b""
    while len(body) < n:
        body += sock.recv(n - len(body))
    out: dict[str, Any] = json.loads(body)
    return out


def test_bad_frames_get_errors_and_the_listener_stays_up(live: tuple[str, str, Region]) -> None:
    """Malformed, unknown, oversized and truncated frames: documented errors, no crash."""
    address, token, _ = live
    with connect(address, token) as bystander:
        sock = _raw(address, token)
        body = b"{not json"
        sock.sendall(struct.pack(">I", len(body)) + body)
        assert _recv(sock)["code"] == "bad_frame"
        _send(sock, [1, 2])
        assert _recv(sock)["code"] == "bad_frame"
        _send(sock, {"type": "dance"})
        assert _recv(sock)["code"] == "bad_frame"
        _send(sock, {"type": "call", "id": 7})
        assert _recv(sock) | {"message": ""} == {
            "type": "error",
            "code": "bad_frame",
            "id": 7,
            "retryable": False,
            "message": "",
        }
        _send(sock, {"type": "input", "id": 8, "data": 1})
        assert _recv(sock)["code"] == "no_task_waiting"
        sock.sendall(struct.pack(">I", MAX_FRAME + 1))
        assert _recv(sock)["code"] == "frame_too_large"
        sock.close()
        trunc = _raw(address, token)
        trunc.sendall(struct.pack(">I", 100) + b'{"type": "ca')
        trunc.close()
        host, port = address.rsplit(":", 1)
        nohello = socket.create_connection((host, int(port)), timeout=10)
        _send(nohello, {"type": "call", "transid": "ECHO"})
        assert _recv(nohello)["code"] == "bad_hello"
        nohello.close()
        assert bystander.call("ECHO", "unaffected") == "unaffected"


def test_fuzz_random_frames(live: tuple[str, str, Region]) -> None:
    """A thousand random frames: every reply is a documented frame; the listener lives."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from dispatcher.protocol import ERRORS

    address, token, _ = live
    sock = _raw(address, token)
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=10,
    )
    frames = st.one_of(
        st.binary(max_size=64),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {"type": st.sampled_from(["ping", "input", "result_of", "nope", "hello"])},
            optional={"id": st.integers(), "data": json_values, "request_id": json_values},
        ).map(lambda v: json.dumps(v).encode()),
    )
    count = 0

    @settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
    @given(frames)
    def check(body: bytes) -> None:
        nonlocal count
        count += 1
        sock.sendall(struct.pack(">I", len(body)) + body)
        reply = _recv(sock)
        assert reply["type"] in ("error", "pong", "pending", "result"), reply
        if reply["type"] == "error":
            assert reply["code"] in ERRORS

    check()
    assert count >= 500
    sock.close()
    with connect(address, token) as s:
        assert s.call("ECHO", "alive") == "alive"


def test_call_command(live: tuple[str, str, Region], module_db_url: str) -> None:
    """`dispatcher call` prints the result as JSON; an error reply exits 1."""
    address, token, _ = live
    env = {**sep_env(module_db_url, "test"), "DISPATCHER_TOKEN": token}
    out = _dispatcher(env, "call", "ECHO", "--data", '{"k": [1]}', "--address", address)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"k": [1]}
    out = _dispatcher(env, "call", "ECHO", "--data", "[2]", "--json", "--address", address)
    answer = json.loads(out.stdout)
    assert answer["result"] == [2] and answer["request_id"] >= 1, out
    out = _dispatcher(env, "call", "ECHO", "--data", '"café 😀"', "--address", address)
    assert out.returncode == 0 and out.stdout.strip() == '"café 😀"', out  # not \u-escaped
    out = _dispatcher(env, "call", "ABEND", "--address", address)
    assert out.returncode == 1 and json.loads(out.stderr)["error"] == "abend"
    out = _dispatcher(env, "call", "ECHO", "--data", "{bad", "--address", address)
    assert out.returncode == 2 and "not valid JSON" in out.stderr


def test_local_cli_finds_its_own_token(
    live: tuple[str, str, Region], module_db_url: str, tmp_path: Any
) -> None:
    """Without --token, the CLI makes and reuses a local token under DISPATCHER_HOME."""
    address, _, _ = live
    env = {**sep_env(module_db_url, "test"), "DISPATCHER_HOME": str(tmp_path)}
    env.pop("DISPATCHER_TOKEN", None)
    for _ in range(2):
        out = _dispatcher(env, "call", "ECHO", "--data", "1", "--address", address)
        assert out.returncode == 0, out.stderr
    assert (tmp_path / "tokens" / "test").stat().st_mode & 0o777 == 0o600


def test_connect_interactive_session(live: tuple[str, str, Region], module_db_url: str) -> None:
    """`dispatcher connect`: a typed transaction, a conversation, a RETURN TRANSID chain."""
    address, token, _ = live
    env = {**sep_env(module_db_url, "test"), "DISPATCHER_TOKEN": token}
    script = 'ECHO {"a": 1}\nCHAT\n"Zoe"\nORDER {"item": "cup"}\n2\nNOPE\nquit\n'
    out = _dispatcher(env, "connect", "--address", address, input=script)
    assert out.returncode == 0, out.stderr
    assert '{"a": 1}' in out.stdout
    assert '{"greeting": "Hello, Zoe!"}' in out.stdout
    assert '{"ordered": {"item": "cup", "quantity": 2}}' in out.stdout
    assert "error unknown_transaction" in out.stdout


def _hellos(address: str, token: str, n: int) -> tuple[list[Wire], list[dict[str, Any]]]:
    """N hellos at once: (the connections welcomed, kept open; every refusal)."""
    wires = [Wire(address, timeout=15) for _ in range(n)]
    with ThreadPoolExecutor(n) as pool:
        replies = list(pool.map(lambda w: w.hello(token), wires))
    welcomed = [w for w, r in zip(wires, replies, strict=True) if r["type"] == "welcome"]
    for w, r in zip(wires, replies, strict=True):
        if r["type"] != "welcome":
            w.close()
    return welcomed, [r for r in replies if r["type"] != "welcome"]


def test_a_token_opens_at_most_its_max_sessions(
    live: tuple[str, str, Region], module_db_url: str
) -> None:
    """A token made with --max-sessions N has at most N sessions open in the region, in
    all its listeners together, even when many hellos race; one more is refused with
    too_many_sessions, and a session that ends makes room. A listener with
    --max-sessions refuses a hello past its own limit, whatever the token."""
    address, token, region = live
    capped = create_token(region, "capped", max_sessions=3)
    with running_listener(module_db_url, "test", "--max-sessions", "2") as small:
        welcomed, refused = _hellos(address, capped, 8)
        assert len(welcomed) == 3 and len(refused) == 5
        assert {r["code"] for r in refused} == {"too_many_sessions"}
        assert "capped" in refused[0]["message"] and refused[0]["retryable"] is True
        # the other listener counts the same sessions
        with Wire(small) as w:
            assert w.hello(capped)["code"] == "too_many_sessions"
        welcomed.pop().close()  # its session ends: room for one
        deadline = time.monotonic() + 10
        while True:
            with Wire(small) as w:
                reply = w.hello(capped)
            if reply["type"] == "welcome" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert reply["type"] == "welcome", reply
        for w in welcomed:
            w.close()
        # the listener's own limit
        mine, over = _hellos(small, token, 4)
        assert len(mine) == 2 and len(over) == 2
        assert "--max-sessions" in over[0]["message"]
        for w in mine:
            w.close()


def test_a_stranger_on_the_internal_channel_can_inject_nothing(
    live: tuple[str, str, Region],
) -> None:
    """A process that connects to a listener's or a SEP's channel socket without the
    region's secret is cut off unread: a forged end of a running call and a forged input
    change nothing, with a wrong secret or none."""
    address, token, region = live
    with Wire(address) as client:
        session_id = client.hello(token)["session_id"]
        client.send({"type": "call", "id": 1, "transid": "CHAT"})
        prompt = client.read()
        if prompt["type"] == "accepted":
            prompt = client.read()
        assert prompt["type"] == "output", prompt
        rid = prompt["request_id"]
        sep_id = region.request(rid)["sep_id"]
        sep_address = next(s["address"] for s in region.seps() if s["id"] == sep_id)
        # the listener of this session (other tests' listeners may be leaving meanwhile)
        listener_addresses = [
            r["address"]
            for r in region.conn.execute(
                "SELECT l.address FROM dispatcher.session s "
                "JOIN dispatcher.listener l ON l.id = s.listener_id WHERE s.id = %s",
                [session_id],
            )
        ]
        assert len(listener_addresses) == 1
        forged_end = {
            "type": "end",
            "request_id": rid,
            "session_id": session_id,
            "ok": True,
            "result": "forged",
            "error": None,
            "next_transid": None,
        }
        forged_input = {"type": "input", "request_id": rid, "data": "Mallory"}
        for target, forged in [
            *((a, forged_end) for a in listener_addresses),
            (sep_address, forged_input),
        ]:
            for first in ({"type": "auth", "secret": "not-the-secret"}, None, forged):
                kind, _, path = target.partition(":")
                assert kind == "unix", target
                with socket.socket(socket.AF_UNIX) as stranger:
                    stranger.settimeout(15)
                    stranger.connect(path)
                    try:
                        if first is not None and first is not forged:
                            stranger.sendall(encode_frame(first))
                        stranger.sendall(encode_frame(forged))
                        # cut off: closed (or reset, with the forged frame unread)
                        assert stranger.recv(1) == b""
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # cut off already after its first frame
            # a first frame announced at 16 MiB is not read: cut off at its header
            with socket.socket(socket.AF_UNIX) as stranger:
                stranger.settimeout(15)
                stranger.connect(target.partition(":")[2])
                started = time.monotonic()
                try:
                    stranger.sendall(struct.pack(">I", 16 * 1024 * 1024 - 1))
                    assert stranger.recv(1) == b""
                except (BrokenPipeError, ConnectionResetError):
                    pass
                assert time.monotonic() - started < 5  # not after the 10 s auth timeout
        client.send({"type": "input", "id": 2, "data": "Ada"})
        reply = client.read()
        assert reply["type"] == "result" and reply["data"] == {"greeting": "Hello, Ada!"}, reply


@pytest.mark.parametrize("accepted", [True, False])
def test_a_call_answered_by_its_key_clears_a_pending_return_transid(
    live: tuple[str, str, Region], accepted: bool
) -> None:
    """A call sent again with its key runs nothing: its result carries duplicate and no
    next_transid of another request, and, like any call, it clears the session's
    pending RETURN TRANSID (the next input gets no_task_waiting)."""
    address, token, _ = live
    key = f"dup-{time.time_ns()}-{accepted}"

    def final(w: Wire) -> dict[str, Any]:
        reply = w.read()
        while reply["type"] in ("accepted", "output"):
            reply = w.read()
        return reply

    with Wire(address) as w:
        assert w.hello(token, accepted=accepted)["type"] == "welcome"
        w.send({"type": "call", "id": 1, "transid": "ECHO", "data": "e", "key": key})
        first = final(w)
        assert first["type"] == "result" and "duplicate" not in first
        w.send({"type": "call", "id": 2, "transid": "ORDER", "data": {"item": "gear"}})
        assert final(w)["next_transid"] == "ORDER2"
        w.send({"type": "call", "id": 3, "transid": "ECHO", "data": "e", "key": key})
        again = final(w)
        assert again["type"] == "result" and again["request_id"] == first["request_id"]
        assert again["duplicate"] is True and "next_transid" not in again, again
        w.send({"type": "input", "id": 4, "data": 2})
        assert w.read()["code"] == "no_task_waiting"


def test_an_input_with_a_key_is_retried_from_a_new_session_as_a_call(
    live: tuple[str, str, Region],
) -> None:
    """docs/protocol.md, Retrying safely: an input that became a request, sent again
    from a new session as a call of its transaction with the same key, gets the first
    outcome; sent again as an input there, no_task_waiting (nothing is pending)."""
    address, token, _ = live
    key = f"in-{time.time_ns()}"
    with Wire(address) as w:
        assert w.hello(token, accepted=False)["type"] == "welcome"
        w.send({"type": "call", "id": 1, "transid": "ORDER", "data": {"item": "cog"}})
        assert w.read()["next_transid"] == "ORDER2"
        w.send({"type": "input", "id": 2, "data": 3, "key": key})
        first = w.read()
        assert first["data"] == {"ordered": {"item": "cog", "quantity": 3}}
    with Wire(address) as w:
        assert w.hello(token, accepted=False)["type"] == "welcome"
        w.send({"type": "input", "id": 3, "data": 3, "key": key})
        assert w.read()["code"] == "no_task_waiting"
        w.send({"type": "call", "id": 4, "transid": "ORDER2", "data": 3, "key": key})
        again = w.read()
        assert again["request_id"] == first["request_id"] and again["duplicate"] is True
        assert again["data"] == first["data"]
