"""One client's bad input never harms another's: values PostgreSQL refuses, deep
nesting, results larger than a frame, replies that carry their id, retried calls.

Everything here runs against a real listener process and real SEP processes, with a
client written from docs/protocol.md alone (tests/wire.py)."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.protocol import MAX_FRAME
from dispatcher.region import Region
from dispatcher.tokens import create_token
from dispatcher.values import MAX_DEPTH

from .listeners import running_listener
from .seps import running_seps
from .wire import Wire

APP = "tests.apps.basic"
DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()


@pytest.fixture(scope="module")
def live(module_region: Region, module_db_url: str) -> Iterator[tuple[str, str, Region]]:
    """3 SEPs of the test app and one listener, shared by the tests of this module (each
    counts only its own requests): (address, token, region)."""
    from sep.program import sync_app

    region, url = module_region, module_db_url
    sync_app(region, APP)
    token = create_token(region, "tester")
    with running_seps(url, "test", 3, app=APP), running_listener(url, "test") as address:
        yield address, token, region


def _session(address: str, token: str) -> Wire:
    w = Wire(address)
    assert w.hello(token)["type"] == "welcome"
    return w


def _still_serves(w: Wire) -> None:
    w.send({"type": "ping", "id": "after"})
    assert w.read() == {"type": "pong", "id": "after"}


BAD_VALUES = {
    "nul in a string": rb'{"s": "bad\u0000"}',
    "nul in a key": rb'{"k\u0000": 1}',
    "lone surrogate": rb'["\ud800"]',
    "lone low surrogate in a key": rb'{"\udc00": 1}',
    "too deep": b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),
}


@pytest.mark.parametrize("bad", list(BAD_VALUES), ids=list(BAD_VALUES))
def test_a_refused_value_fails_alone_among_39_good_calls(
    live: tuple[str, str, Region], bad: str
) -> None:
    """A value PostgreSQL cannot store, sent with 39 good calls from other sessions,
    gets invalid_value (not retryable); every good call is stored and runs."""
    address, token, region = live
    sessions = [_session(address, token) for _ in range(40)]
    go = threading.Barrier(40)
    replies: list[list[dict[str, Any]]] = [[] for _ in range(40)]

    def one(i: int) -> None:
        w = sessions[i]
        data = BAD_VALUES[bad] if i == 17 else json.dumps({"n": i}).encode()
        body = b'{"type":"call","id":%d,"transid":"ECHO","data":%s}' % (i, data)
        go.wait()
        w.send_body(body)
        first = w.read()
        replies[i].append(first)
        if first["type"] == "accepted":
            replies[i].append(w.read())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    bad_reply = replies[17]
    assert len(bad_reply) == 1, bad_reply
    assert bad_reply[0]["type"] == "error" and bad_reply[0]["code"] == "invalid_value"
    assert bad_reply[0]["retryable"] is False and bad_reply[0]["id"] == 17
    for i, r in enumerate(replies):
        if i != 17:
            assert [m["type"] for m in r] == ["accepted", "result"], (i, r)
            assert r[1]["data"] == {"n": i} and r[1]["id"] == i
    ids = [r[0]["request_id"] for i, r in enumerate(replies) if i != 17]
    stored = region.conn.execute(
        "SELECT count(*) AS n FROM dispatcher.request_history WHERE id = ANY(%s)", [ids]
    ).fetchone()
    assert stored is not None and stored["n"] == 39
    _still_serves(sessions[17])
    for w in sessions:
        w.close()


@pytest.mark.parametrize(
    "body",
    [
        b'{"type":"call","id":1,"transid":"ECHO","data":' + b"[" * 3000 + b"]" * 3000 + b"}",
        b'{"type":"call","id":1,"transid":"ECHO","data":' + b"9" * 5000 + b"}",
        b'{"type":"call","id":1,"transid":"ECHO","data":NaN}',
        b'{"type":"call","id":1,"transid":"ECHO","data":[Infinity]}',
    ],
    ids=["3000 deep", "5000-digit number", "NaN", "Infinity"],
)
def test_a_frame_that_cannot_be_parsed_is_a_bad_frame_and_the_session_goes_on(
    live: tuple[str, str, Region], body: bytes
) -> None:
    """Nesting too deep to parse, numbers too long, NaN: bad_frame, and the session goes on."""
    address, token, _ = live
    with _session(address, token) as w:
        w.send_body(body)
        reply = w.read()
        assert reply["type"] == "error" and reply["code"] == "bad_frame", reply
        assert reply["retryable"] is False
        _still_serves(w)


def test_data_at_the_nesting_limit_runs(live: tuple[str, str, Region]) -> None:
    """Data nested exactly MAX_DEPTH levels deep is accepted and echoed back."""
    address, token, _ = live
    data: Any = []
    for _ in range(MAX_DEPTH - 1):
        data = [data]
    with _session(address, token) as w:
        w.send({"type": "call", "id": 1, "transid": "ECHO", "data": data})
        assert w.read()["type"] == "accepted"
        reply = w.read()
        assert reply["type"] == "result" and reply["data"] == data


def test_a_result_larger_than_a_frame_is_one_error_reply(live: tuple[str, str, Region]) -> None:
    """A 2 MB result, and a 1 MiB call echoed back, each get exactly one error
    result_too_large (with id and request_id) right after accepted; result_of says the same."""
    address, token, region = live
    with _session(address, token) as w:
        w.send({"type": "call", "id": "big", "transid": "BIG", "data": None})
        accepted = w.read()
        assert accepted["type"] == "accepted"
        reply = w.read()
        assert reply["type"] == "error" and reply["code"] == "result_too_large", reply
        assert reply["id"] == "big" and reply["request_id"] == accepted["request_id"]
        assert reply["retryable"] is False
        assert region.request(accepted["request_id"])["state"] == "done"
        w.send({"type": "result_of", "id": "again", "request_id": accepted["request_id"]})
        again = w.read()
        assert again["code"] == "result_too_large" and again["id"] == "again"

        # under the frame limit as sent, over it as echoed back (1e9 comes back as
        # 1000000000.0): the result grows past the limit
        head = b'{"type":"call","id":2,"transid":"ECHO","data":['
        n = (MAX_FRAME - len(head) - 2) // 4
        body = head + b",".join([b"1e9"] * n) + b"]}"
        assert len(body) <= MAX_FRAME
        w.send_body(body)
        assert w.read()["type"] == "accepted"
        echoed = w.read()
        assert echoed["type"] == "error" and echoed["code"] == "result_too_large"
        assert echoed["id"] == 2
        _still_serves(w)


def test_every_reply_to_a_hello_carries_its_id(live: tuple[str, str, Region]) -> None:
    """welcome, unauthorized and bad_hello answer a hello with its id."""
    address, token, _ = live
    with Wire(address) as w:
        welcome = w.hello(token, id="h1")
        assert welcome["type"] == "welcome" and welcome["id"] == "h1"
    with Wire(address) as w:
        refused = w.hello("dsp_wrong", id={"n": 2})
        assert refused["code"] == "unauthorized" and refused["id"] == {"n": 2}
    with Wire(address) as w:
        refused = w.hello("", id=3)
        assert refused["code"] == "unauthorized" and refused["id"] == 3
    with Wire(address) as w:
        w.send({"type": "call", "id": 4})
        refused = w.read()
        assert refused["code"] == "bad_hello" and refused["id"] == 4
    with Wire(address) as w:  # strict JSON, but no message: still not a hello
        w.send({"id": "h15"})
        refused = w.read()
        assert refused["code"] == "bad_hello" and refused["id"] == "h15", refused
    for body in (b"[1]", b'"hello"', b'{"type": 1}'):
        with Wire(address) as w:
            w.send_body(body)
            refused = w.read()
            assert refused["code"] == "bad_hello", (body, refused)
    with Wire(address) as w:
        w.send({"type": "hello", "version": 99, "token": token, "id": 5})
        refused = w.read()
        assert refused["code"] == "bad_hello" and refused["id"] == 5
    for version in (True, 1.0, "1", None):
        with Wire(address) as w:
            w.send({"type": "hello", "version": version, "token": token, "id": 7})
            refused = w.read()
            assert refused["code"] == "bad_hello" and refused["id"] == 7, version
    with Wire(address) as w:
        refused = w.hello("dsp_\ud800", id=6)
        assert refused["code"] == "unauthorized" and refused["id"] == 6


def _bad_input_rows() -> list[tuple[str, str]]:
    """The rows of the page's "Bad input" table: (frame sent, answer's type or code)."""
    section = DOC.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\{.*\})` \| `([a-z_]+)` \|", section, re.MULTILINE)
    assert len(rows) >= 10, "the Bad input table of docs/protocol.md is missing"
    return rows


@pytest.mark.parametrize("frame,answer", _bad_input_rows())
def test_the_page_bad_input_table_holds_on_a_live_listener(
    live: tuple[str, str, Region], frame: str, answer: str
) -> None:
    """Each row of docs/protocol.md's Bad input table is what the live listener answers,
    with the frame's id, and the session goes on."""
    address, token, _ = live
    with _session(address, token) as w:
        w.send_body(frame.encode())
        reply = w.read()
        got = reply["code"] if reply["type"] == "error" else reply["type"]
        assert got == answer, reply
        sent = json.loads(frame)
        if "id" in sent:
            assert reply.get("id") == sent["id"], reply
        _still_serves(w)


def test_a_call_that_succeeds_on_its_third_attempt_answers_its_result(
    live: tuple[str, str, Region],
) -> None:
    """A call to a transaction retried twice gets only its final outcome, not the first
    attempt's error."""
    address, token, _ = live
    with _session(address, token) as w:
        w.send({"type": "call", "id": 1, "transid": "FLAKY", "data": None})
        assert w.read()["type"] == "accepted"
        reply = w.read()
        assert reply["type"] == "result", reply
        assert reply["data"] == {"attempt": 3}


@pytest.mark.parametrize("data", [None, "surrogate"], ids=["nul", "surrogate"])
def test_a_result_postgres_refuses_abends_its_task_alone(
    live: tuple[str, str, Region], data: Any
) -> None:
    """A program returning a value PostgreSQL cannot store: its call gets one abend
    (InvalidValue, stored), its SEP goes on, and the next call runs."""
    address, token, region = live
    with _session(address, token) as w:
        w.send({"type": "call", "id": 1, "transid": "NULOUT", "data": data})
        accepted = w.read()
        assert accepted["type"] == "accepted"
        reply = w.read()
        assert reply["type"] == "error" and reply["code"] == "abend", reply
        assert reply["detail"]["type"] == "InvalidValue"
        assert region.request(accepted["request_id"])["state"] == "failed"
        w.send({"type": "call", "id": 2, "transid": "ECHO", "data": "next"})
        assert w.read()["type"] == "accepted"
        assert w.read()["data"] == "next"


@pytest.mark.parametrize(
    "body",
    [
        b'{"type":"ping","id":1e400}',
        b'{"type":"ping","id":{"a":[-1e999]}}',
        b'{"type":"ping","id":"\xed\xa0\x80"}',
        b'\xef\xbb\xbf{"type":"ping","id":1}',
    ],
    ids=["1e400", "-1e999 nested", "encoded surrogate", "BOM"],
)
def test_the_listener_never_sends_what_is_not_strict_json(
    live: tuple[str, str, Region], body: bytes
) -> None:
    """Numbers beyond a double, encoded surrogates, a BOM: bad_frame, never echoed back
    as Infinity or a lone surrogate (which strict JSON parsers cannot read)."""
    address, token, _ = live
    with _session(address, token) as w:
        w.send_body(body)
        header = w._exactly(4)
        raw = w._exactly(int.from_bytes(header, "big"))
        assert b"Infinity" not in raw and b"\\ud800" not in raw
        reply = json.loads(raw)
        assert reply["type"] == "error" and reply["code"] == "bad_frame", reply
        _still_serves(w)


def test_integers_of_up_to_4300_digits_run(live: tuple[str, str, Region]) -> None:
    """The page's limit: an integer of exactly 4,300 digits runs and comes back whole."""
    address, token, _ = live
    with _session(address, token) as w:
        w.send_body(b'{"type":"call","id":1,"transid":"ECHO","data":' + b"9" * 4300 + b"}")
        assert w.read()["type"] == "accepted"
        reply = w.read()
        assert reply["type"] == "result" and reply["data"] == int("9" * 4300)


def test_calls_sent_together_with_one_key_all_get_the_outcome_at_once(
    live: tuple[str, str, Region],
) -> None:
    """12 sessions send one new key at the same moment: one request runs, and every
    session gets its result at once (not one session per outcome poll)."""
    address, token, region = live
    sessions = [_session(address, token) for _ in range(12)]
    go = threading.Barrier(12)
    took: list[float] = []
    results: list[dict[str, Any]] = []
    ids: set[int] = set()
    key = f"same-{time.time_ns()}"

    def one(w: Wire) -> None:
        go.wait()
        start = time.monotonic()
        w.send({"type": "call", "id": 1, "transid": "ECHO", "data": 7, "key": key})
        accepted = w.read()
        assert accepted["type"] == "accepted"
        ids.add(accepted["request_id"])
        results.append(w.read())
        took.append(time.monotonic() - start)

    threads = [threading.Thread(target=one, args=(w,)) for w in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 12 and all(r["type"] == "result" and r["data"] == 7 for r in results)
    # one at a time per 1 s outcome poll took 12 s (5 s: room for a SEP's 1 s poll, when
    # the enqueue met its row busy with its heartbeat, on a loaded machine)
    assert max(took) < 5.0, sorted(took)
    assert len(ids) == 1, ids  # one request for the twelve calls
    n = region.conn.execute(
        "SELECT count(*) AS n FROM dispatcher.request_history WHERE id = ANY(%s)", [list(ids)]
    ).fetchone()
    assert n is not None and n["n"] == 1
    for w in sessions:
        w.close()


@pytest.mark.parametrize("depth", [300, 980])
def test_an_id_too_deep_to_echo_still_gets_every_reply(
    live: tuple[str, str, Region], depth: int
) -> None:
    """A call whose id nests deeper than a reply can be written (but not too deep to read)
    is accepted and answered, the replies without the id; a shallower deep id is echoed."""
    address, token, _ = live
    deep = b"[" * depth + b"]" * depth
    with _session(address, token) as w:
        w.send_body(b'{"type":"call","transid":"ECHO","data":"deep id","id":' + deep + b"}")
        accepted, result = w.read(), w.read()
        assert accepted["type"] == "accepted" and result["type"] == "result", (accepted, result)
        assert result["data"] == "deep id"
        if depth == 300:
            assert json.dumps(result["id"]).encode().replace(b" ", b"") == deep
        w.send_body(b'{"type":"ping","id":' + deep + b"}")
        assert w.read()["type"] == "pong"
        _still_serves(w)


def test_a_session_that_asks_for_no_accepted_frames_gets_only_the_outcome(
    live: tuple[str, str, Region],
) -> None:
    """hello "accepted": false: the welcome says so, and a call's one reply is its
    result or error, with the request id; "accepted": true (or null) is the default;
    any other value is bad_hello."""
    address, token, _ = live
    with Wire(address) as w:
        welcome = w.hello(token, accepted=False)
        assert welcome["type"] == "welcome" and welcome["accepted"] is False
        for n in range(3):
            w.send({"type": "call", "id": n, "transid": "ECHO", "data": n})
            reply = w.read()
            assert reply["type"] == "result" and reply["id"] == n and reply["data"] == n
            assert reply["request_id"] > 0
        w.send({"type": "call", "id": "b", "transid": "BOOM"})
        failed = w.read()
        assert failed["type"] == "error" and failed["code"] == "abend", failed
        assert failed["id"] == "b" and failed["request_id"] > 0
        w.send({"type": "call", "id": "u", "transid": "NOPE"})
        assert w.read()["code"] == "unknown_transaction"
        for name in ("EC\nHO", "x" * 5000, ""):  # no transaction can have these names
            w.send({"type": "call", "id": "n", "transid": name})
            reply = w.read()
            assert reply["code"] == "unknown_transaction" and reply["id"] == "n", reply
            assert len(reply["message"]) < 150, reply  # (not the whole name back)
        _still_serves(w)
    with Wire(address) as w:
        assert w.hello(token, accepted=True)["accepted"] is True
        w.send({"type": "call", "id": 1, "transid": "ECHO", "data": 1})
        assert w.read()["type"] == "accepted"
        assert w.read()["type"] == "result"
    with Wire(address) as w:
        assert "accepted" not in w.hello(token)  # a client that did not ask hears nothing new
    with Wire(address) as w:
        assert "accepted" not in w.hello(token, accepted=None)
        w.send({"type": "call", "id": 1, "transid": "ECHO", "data": 1})
        assert w.read()["type"] == "accepted"
    for bad in ("no", 0, 1, [], {"x": 1}):
        with Wire(address) as w:
            refused = w.hello(token, accepted=bad, id=9)
            assert refused["code"] == "bad_hello" and refused["id"] == 9, bad
            assert w.closed()


def test_a_result_over_the_channels_limit_is_answered_and_the_sep_goes_on(
    live: tuple[str, str, Region],
) -> None:
    """A result larger than a channel frame (16 MiB) cannot go to the listener in the
    SEP's end frame: the client still gets its one answer (result_too_large, from the
    outcome poll), and the SEPs go on serving."""
    address, token, region = live
    before = {s["id"]: s["pid"] for s in region.seps() if s["state"] != "dead"}
    with Wire(address, timeout=60) as w:
        assert w.hello(token, accepted=False)["type"] == "welcome"
        w.send({"type": "call", "id": "big", "transid": "BIG", "data": {"size": 17_000_000}})
        reply = w.read()
        assert reply["type"] == "error" and reply["code"] == "result_too_large", reply
        assert reply["id"] == "big"
        for n in range(6):
            w.send({"type": "call", "id": n, "transid": "ECHO", "data": n})
            assert w.read()["data"] == n
    after = {s["id"]: s["pid"] for s in region.seps() if s["state"] != "dead"}
    assert after == before  # the same SEP processes, none lost
    for pid in before.values():
        os.kill(pid, 0)  # (raises if the process is gone)


@pytest.mark.parametrize("size", [2_000_000, 17_000_000])
def test_an_output_too_large_to_send_arrives_dropped(
    live: tuple[str, str, Region], size: int
) -> None:
    """An output over the client's frame (1 MiB) or over the SEP's channel (16 MiB)
    arrives with data null and dropped too_large; the task goes on to its result."""
    address, token, _ = live
    with Wire(address, timeout=60) as w:
        assert w.hello(token, accepted=False)["type"] == "welcome"
        w.send({"type": "call", "id": 1, "transid": "BIGOUT", "data": {"size": size}})
        out = w.read()
        assert out["type"] == "output" and out["data"] is None, {**out, "data": "..."}
        assert out["dropped"] == "too_large" and out["id"] == 1
        assert w.read() == {
            "type": "result",
            "id": 1,
            "request_id": out["request_id"],
            "data": "sent",
        }
