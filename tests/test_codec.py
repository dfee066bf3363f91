"""The JSON of frames (dispatcher/channel.py): orjson reads and writes what it can, the
standard library the rest, and a value comes out the same whichever did the work."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.channel import ChannelError, encode_json, parse_json

# every value a frame may carry: integers well past 64 bits, any finite float, any text
# (lone surrogates included: the listener answers those with invalid_value)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same JSON type all the way down (1 is not 1.0)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float) and isinstance(b, float) and a == 0.0 == b:
        return math.copysign(1, a) == math.copysign(1, b)
    return type(a) is type(b) and a == b


@settings(max_examples=200, deadline=None)
@given(VALUES)
def test_a_value_reads_back_as_itself(value: Any) -> None:
    """What encode_json writes, parse_json reads back as the same value and types."""
    assert _same(parse_json(encode_json(value)), value)


@settings(max_examples=200, deadline=None)
@given(VALUES)
def test_parse_reads_as_the_standard_library_does(value: Any) -> None:
    """Any JSON the standard library writes is read as the standard library reads it."""
    text = json.dumps(value)
    assert _same(parse_json(text.encode()), json.loads(text))


@pytest.mark.parametrize(
    "body",
    [b"NaN", b"[Infinity]", b"1e400", b"-1e400", b"\xef\xbb\xbf1", b'"\xed\xa0\x80"', b"[", b""],
    ids=["NaN", "Infinity", "1e400", "-1e400", "BOM", "encoded surrogate", "cut", "empty"],
)
def test_what_is_not_strict_json_is_refused(body: bytes) -> None:
    """NaN, infinities, numbers beyond a double, a BOM, bad UTF-8: a ChannelError."""
    with pytest.raises(ChannelError):
        parse_json(body)


def test_long_integers_stay_exact() -> None:
    """An integer beyond 64 bits is read as that integer, not as a float."""
    for text in ("18446744073709551616", "-9223372036854775809", "9" * 4300):
        assert parse_json(text.encode()) == int(text)
        assert parse_json(b'{"n":[%s]}' % text.encode()) == {"n": [int(text)]}


def test_an_output_that_is_not_strict_json_is_refused_to_the_program() -> None:
    """ctx.send of NaN, an infinity or a NUL raises InvalidValue in the program, and
    nothing is sent (orjson would write NaN as null: no such value reaches a frame)."""
    import queue
    import uuid

    from dispatcher.errors import InvalidValue
    from sep.conversation import Conversation, ListenerLinks

    sent: list[Any] = []

    class Links(ListenerLinks):
        def send_frames(self, address: str, frame: bytes) -> None:
            sent.append(json.loads(frame[4:]))  # (one frame: its 4-byte length, then JSON)

    conv = Conversation(Links(), "unix:/nowhere", 1, uuid.uuid4(), 1, queue.Queue())
    for bad in (math.nan, [math.inf], {"x": -math.inf}, "a\x00b"):
        with pytest.raises(InvalidValue):
            conv.send(bad, wants_input=False)
    conv.send({"fine": 1.5}, wants_input=False)
    assert [m["data"] for m in sent] == [{"fine": 1.5}]


def test_text_is_written_as_utf8_and_a_lone_surrogate_escaped() -> None:
    """Text goes out as UTF-8 as it is; a lone surrogate, which UTF-8 cannot carry, as
    its escape."""
    assert encode_json({"t": "é€😀"}) == '{"t":"é€😀"}'.encode()
    assert encode_json("\ud800") == b'"\\ud800"'
    assert encode_json({1: True}) == b'{"1":true}'


def test_nesting_beyond_about_a_thousand_levels_is_refused_whoever_reads() -> None:
    """orjson could read deeper than the standard library: the limit is the same for both
    (a long digit run sends a body to the standard library)."""
    from dispatcher.channel import MAX_PARSE_DEPTH

    ok = MAX_PARSE_DEPTH - 20
    assert parse_json(b"[" * ok + b"]" * ok) is not None
    for tail in (b"", b"[1234567890123456789012]"):
        body = b"[" * 3000 + tail + b"]" * 3000
        with pytest.raises(ChannelError, match="nested too deeply"):
            parse_json(body)


def test_ctx_start_refuses_a_reqid_shaped_like_a_clients_key() -> None:
    """ctx.start(reqid=...) takes 1-200 characters without "/" (a client's key is
    NAME/KEY: a START must never answer for one); InvalidValue before any database work."""
    import datetime as dt

    from dispatcher.errors import InvalidValue
    from dispatcher.gateway import Task
    from sep.context import TaskContext

    task = Task(1, 1, "T", None, None, None, None, None, dt.datetime.now(dt.UTC))
    ctx = TaskContext(task, "r", None, None, None, lambda: None)  # type: ignore[arg-type]
    for bad in ("alice/k", "", "x" * 201, "a\x00b"):
        with pytest.raises(InvalidValue):
            ctx.start("ECHO", 1, reqid=bad)


def test_an_integer_too_long_to_read_is_said_in_the_protocols_words() -> None:
    """An integer of 4,301 digits is refused naming the limit of docs/protocol.md (not
    Python's advice to raise it); 4,300 digits are read."""

    with pytest.raises(ChannelError) as caught:
        parse_json(b'{"a": ' + b"7" * 4301 + b"}")
    assert "4,300 digits" in str(caught.value) and "sys." not in str(caught.value)
    assert parse_json(b'{"a": ' + b"7" * 4300 + b"}")["a"] == int("7" * 4300)
