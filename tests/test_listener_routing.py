"""The listener against fake SEPs (tests/fake_sep.py): the exact channel frames of a
direct hand-off, the NOTIFY fallback, conversational and pseudo-conversational
routing, a SEP lost in a conversation, lost end frames, listener registry and reaping."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dispatcher.database import connect as db_connect
from dispatcher.gateway import ops
from dispatcher.region import Region
from dispatcher.tokens import create_token
from listener import CallError, connect
from listener.server import Listener

from .fake_sep import FakeSEP, define_transactions, fake_seps, inprocess_listener, wait_until

Live = tuple[Listener, str, str, list[FakeSEP], Region]


@pytest.fixture
def live(region: Region, db_url: str) -> Iterator[Live]:
    """An in-process listener with two fake SEPs: (listener, address, token, seps, region)."""
    define_transactions(region)
    token = create_token(region, "tester")
    with fake_seps(db_url, "test", 2) as seps, inprocess_listener(db_url, "test") as lst:
        yield lst, f"127.0.0.1:{lst.port}", token, seps, region


def _dispatches(seps: list[FakeSEP]) -> list[dict[str, Any]]:
    found = [f for s in seps for f in s.frames if f["type"] == "dispatch"]
    return sorted(found, key=lambda f: int(f["task"]["request_id"]))


def test_direct_hand_off_needs_no_notify(live: Live, db_url: str) -> None:
    """enqueue_v1 picks a SEP; the listener sends it a dispatch frame with its own
    address as reply_to; nothing is NOTIFYd."""
    lst, address, token, seps, _ = live
    with db_connect(db_url) as listen:
        for s in seps:
            listen.execute(f"LISTEN dispatcher_sep_{s.sep_id}")
        with connect(address, token) as session:
            assert session.call("ECHO", {"x": 1}) == {"x": 1}
        assert list(listen.notifies(timeout=0.3, stop_after=1)) == []
    (frame,) = _dispatches(seps)
    assert frame["reply_to"] == lst.address
    assert frame["task"]["transid"] == "ECHO" and frame["task"]["attempt"] == 1
    assert frame["task"]["program"] == "fake.programs:echo"


def test_unreachable_sep_is_woken_by_notify(region: Region, db_url: str) -> None:
    """The chosen SEP's socket is gone: the listener NOTIFYs its channel instead; the
    SEP claims the request from the database and the result reaches the client."""
    define_transactions(region)
    token = create_token(region, "t")
    ghost = FakeSEP(db_url, "test", address="unix:/nonexistent/dir/sep.sock")
    with inprocess_listener(db_url, "test") as lst, db_connect(db_url) as listen:
        listen.execute(f"LISTEN dispatcher_sep_{ghost.sep_id}")
        out: list[Any] = []
        session = connect(f"127.0.0.1:{lst.port}", token)
        caller = threading.Thread(target=lambda: out.append(session.call("ECHO", "via notify")))
        caller.start()
        (note,) = list(listen.notifies(timeout=10, stop_after=1))
        kind, request_id = note.payload.split()
        assert kind == "dispatch"
        task = region.begin(ghost.sep_id, int(request_id))
        assert ghost.run(task, lst.address, {}) is None
        caller.join(10)
        session.close()
    ghost.kill()
    assert out == ["via notify"]


def test_conversation_inputs_go_straight_to_the_sep(live: Live) -> None:
    """Output while the task runs reaches the client; its inputs reach the SEP as
    input frames; only one request ever goes through the queue."""
    _, address, token, seps, region = live
    seen: list[tuple[Any, bool]] = []
    answers = iter(["Ada", "again"])

    def on_output(data: Any, wants_input: bool) -> Any:
        seen.append((data, wants_input))
        return next(answers) if wants_input else None

    with connect(address, token) as session:
        result = session.call("CHAT", None, on_output=on_output)
    assert result == {"greeting": "Hello, Ada!", "second": "again"}
    assert seen == [({"prompt": "name?"}, True), ({"note": "thinking"}, False), (None, True)]
    inputs = [f for s in seps for f in s.frames if f["type"] == "input"]
    assert [f["data"] for f in inputs] == ["Ada", "again"]
    rows = region.run(ops.listener.outcomes(list(range(1, 100))))
    assert len(rows) == 1


def test_pseudo_conversation_carries_the_commarea(live: Live) -> None:
    """RETURN TRANSID: the next input is a new request for ORDER2 with the commarea."""
    _, address, token, seps, _ = live
    with connect(address, token) as session:
        assert session.call("ORDER", "pen") == {"prompt": "how many?"}
        assert session.next_transid == "ORDER2"
        assert session.input(3) == {"item": "pen", "quantity": 3}
        with pytest.raises(CallError) as err:
            session.input(4)
        assert err.value.code == "no_task_waiting" and not err.value.retryable
        assert session.call("ECHO", 1) == 1
    second = _dispatches(seps)[1]["task"]
    assert second["transid"] == "ORDER2" and second["commarea"] == {"item": "pen"}
    assert second["payload"] == 3


def test_sep_lost_in_a_conversation(live: Live) -> None:
    """The SEP of a conversation is gone when the input comes: the client gets
    sep_lost (not retryable) for that request and the session goes on."""
    _, address, token, seps, _ = live
    with connect(address, token) as session:
        session.send({"type": "call", "id": 1, "transid": "CHAT", "data": None})
        accepted = session.receive(timeout=10)
        assert accepted["type"] == "accepted"
        out = session.receive(timeout=10)
        assert out["type"] == "output" and out["wants_input"]
        holder = next(s for s in seps if any(f["type"] == "dispatch" for f in s.frames))
        holder.kill()
        session.send({"type": "input", "id": 1, "data": "Ada"})
        reply = session.receive(timeout=10)
        assert reply["type"] == "error" and reply["code"] == "sep_lost", reply
        assert reply["retryable"] is False and reply["request_id"] == accepted["request_id"]
        assert session.call("ECHO", "goes on") == "goes on"


def test_a_lost_end_frame_is_answered_from_the_history(live: Live) -> None:
    """The SEP committed but its end frame never came: the slow poll answers."""
    _, address, token, _, _ = live
    with connect(address, token) as session:
        assert session.call("SILENT", {"quiet": True}, timeout=10) == {"quiet": True}
        assert session.call("ECHO", 2) == 2


def test_listener_registry_heartbeat_and_reaping(region: Region, db_url: str, conn: Any) -> None:
    """A listener registers with its channel address and beats; it ends the sessions
    of a listener that stopped beating; declared dead itself, it registers again and
    its clients do not notice."""
    define_transactions(region)
    token = create_token(region, "t")
    dead = conn.execute(
        "INSERT INTO dispatcher.listener (region, host, port, pid, address, heartbeat_at) "
        "VALUES ('test', 'gone', 1, 1, 'unix:/gone', now() - interval '1 hour') RETURNING id"
    ).fetchone()["id"]
    orphan = region.register_session(dead, "someone")
    with (
        fake_seps(db_url, "test", 1),
        inprocess_listener(db_url, "test", heartbeat_interval=0.05, dead_after=5) as lst,
    ):
        row = conn.execute(
            "SELECT address, heartbeat_at FROM dispatcher.listener WHERE id = %s",
            [lst.listener_id],
        ).fetchone()
        assert row["address"] == lst.address and lst.address.startswith("unix:")
        wait_until(
            lambda: conn.execute(
                "SELECT heartbeat_at > %s AS moved FROM dispatcher.listener WHERE id = %s",
                [row["heartbeat_at"], lst.listener_id],
            ).fetchone()["moved"]
        )
        gone = "SELECT count(*) AS n FROM dispatcher.session WHERE id = %s"
        wait_until(lambda: conn.execute(gone, [orphan]).fetchone()["n"] == 0)
        with connect(f"127.0.0.1:{lst.port}", token) as session:
            first = lst.listener_id
            conn.execute("DELETE FROM dispatcher.listener WHERE id = %s", [first])
            wait_until(lambda: lst.listener_id != first)
            assert session.call("ECHO", "still") == "still"
            mine = conn.execute(
                "SELECT count(*) AS n FROM dispatcher.session WHERE listener_id = %s",
                [lst.listener_id],
            ).fetchone()["n"]
            assert mine == 1


def test_tcp_channel(region: Region, db_url: str) -> None:
    """--channel-host: SEPs on other machines reach the listener over TCP."""
    define_transactions(region)
    token = create_token(region, "t")
    with (
        fake_seps(db_url, "test", 1) as seps,
        inprocess_listener(db_url, "test", channel_host="127.0.0.1") as lst,
    ):
        assert lst.address.startswith("tcp:127.0.0.1:")
        with connect(f"127.0.0.1:{lst.port}", token) as session:
            assert session.call("CHAT", None, on_output=lambda d, w: "T" if w else None) == {
                "greeting": "Hello, T!",
                "second": "T",
            }
        assert _dispatches(seps)[0]["reply_to"] == lst.address


def _raw(address: str, token: str) -> socket.socket:
    from dispatcher.protocol import encode

    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(encode({"type": "hello", "version": 1, "token": token}))
    return sock


def test_many_sessions_and_a_vandal_lose_nothing(live: Live) -> None:
    """200 sessions call at once while another connection sends garbage: every
    acknowledged request is answered with its own result; the listener stays up."""
    import asyncio

    from listener import connect_async

    _, address, token, _, region = live
    stop = threading.Event()

    def vandal() -> None:
        rng = random.Random(5)
        while not stop.is_set():
            try:
                sock = _raw(address, token)
                for _ in range(50):
                    body = rng.randbytes(rng.randrange(0, 40))
                    sock.sendall(struct.pack(">I", len(body)) + body)
                if rng.random() < 0.5:
                    sock.sendall(struct.pack(">I", 10**9))  # too large: closed
                sock.close()
            except OSError:
                pass
            time.sleep(0.005)  # garbage, not a flood: overload is another test

    async def one(i: int) -> list[Any]:
        s = await connect_async(address, token)
        try:
            return [await s.call("ECHO", {"i": i, "n": n}) for n in range(2)]
        finally:
            await s.close()

    async def main() -> list[Any]:
        return await asyncio.gather(*(one(i) for i in range(200)))

    t = threading.Thread(target=vandal)
    t.start()
    try:
        results = asyncio.run(main())
    finally:
        stop.set()
        t.join()
    assert results == [[{"i": i, "n": n} for n in range(2)] for i in range(200)]
    rows = region.conn.execute(
        "SELECT count(*) AS n FROM dispatcher.request_history WHERE state = 'done'"
    ).fetchone()
    assert rows["n"] == 400


def test_input_or_call_while_a_task_runs(live: Live) -> None:
    """While a task runs and waits for nothing: an input gets no_task_waiting, a second
    call gets busy; neither disturbs the running call, whose result comes after."""
    _, address, token, seps, _ = live
    with connect(address, token) as session:
        session.send({"type": "call", "id": 1, "transid": "SLOW", "data": "done"})
        assert session.receive(timeout=10)["type"] == "accepted"
        session.send({"type": "input", "id": 2, "data": "nobody asked"})
        reply = session.receive(timeout=10)
        assert (reply["type"], reply["code"], reply["id"]) == ("error", "no_task_waiting", 2)
        session.send({"type": "call", "id": 3, "transid": "ECHO", "data": 1})
        reply = session.receive(timeout=10)
        assert (reply["code"], reply["id"], reply["retryable"]) == ("busy", 3, False)
        for sep in seps:
            sep.hold.set()
        final = session.receive(timeout=10)
        assert (final["type"], final["id"], final["data"]) == ("result", 1, "done")
        assert session.call("ECHO", "next") == "next"
