"""The client wire protocol (dispatcher/protocol.py) and its page (docs/protocol.md)."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.protocol import (
    DEFAULT_PORT,
    ERRORS,
    MAX_FRAME,
    PROTOCOL_VERSION,
    ProtocolError,
    decode,
    encode,
    error,
)

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()


def test_frame_is_a_big_endian_length_then_json() -> None:
    frame = encode({"type": "ping", "id": 1})
    (n,) = struct.unpack(">I", frame[:4])
    assert n == len(frame) - 4
    assert json.loads(frame[4:]) == {"type": "ping", "id": 1}
    assert decode(frame[4:]) == {"type": "ping", "id": 1}


def test_frame_size_limit() -> None:
    """A body of exactly MAX_FRAME bytes is allowed; one byte more is not."""
    overhead = len(encode({"type": "x", "d": ""})) - 4
    assert len(encode({"type": "x", "d": "a" * (MAX_FRAME - overhead)})) == MAX_FRAME + 4
    with pytest.raises(ProtocolError) as err:
        encode({"type": "x", "d": "a" * (MAX_FRAME - overhead + 1)})
    assert err.value.code == "frame_too_large"


@pytest.mark.parametrize(
    "body", [b"", b"{", b"[1]", b'"s"', b"{}", b'{"type": 1}', b"\xff\xfe", b"null"]
)
def test_malformed_bodies_are_bad_frames(body: bytes) -> None:
    with pytest.raises(ProtocolError) as err:
        decode(body)
    assert err.value.code == "bad_frame"


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=200))
def test_decode_raises_only_protocol_errors(body: bytes) -> None:
    try:
        msg = decode(body)
    except ProtocolError as exc:
        assert exc.code == "bad_frame"
    else:
        assert isinstance(msg, dict) and isinstance(msg["type"], str)


def test_error_messages() -> None:
    e = error("database_unavailable", "down", id=3, request_id=9, detail={"a": 1})
    assert e == {
        "type": "error",
        "code": "database_unavailable",
        "message": "down",
        "retryable": True,
        "id": 3,
        "request_id": 9,
        "detail": {"a": 1},
    }
    assert error("forbidden", "no") == {
        "type": "error",
        "code": "forbidden",
        "message": "no",
        "retryable": False,
    }


def test_the_page_documents_every_error_code_with_its_retryable_flag() -> None:
    rows = re.findall(r"^\| `([a-z_]+)` \| (yes|no) \|", DOC, re.MULTILINE)
    documented = {code: flag == "yes" for code, flag in rows}
    assert documented == ERRORS


def test_the_page_states_the_constants() -> None:
    assert f"**{DEFAULT_PORT}**" in DOC
    assert f'"version": {PROTOCOL_VERSION}' in DOC
    assert f"{MAX_FRAME:,}" in DOC
    for kind in ("hello", "welcome", "call", "input", "result_of", "ping", "pong", "bye"):
        assert f"`{kind}`" in DOC or f'"type": "{kind}"' in DOC, kind
    for kind in ("accepted", "output", "waiting", "result", "pending", "error"):
        assert f"| `{kind}` |" in DOC, kind


def test_every_code_the_listener_sends_is_on_the_page() -> None:
    """Each error code written in the listener's source is in ERRORS (and so, by the test
    above, documented with its retryable flag)."""
    root = Path(__file__).resolve().parent.parent / "listener"
    source = "".join(p.read_text() for p in sorted(root.glob("*.py")))
    sent = set(re.findall(r'(?<![.\w])error\(\s*"([a-z_]+)"', source))
    assert sent, "no error(...) calls found: the pattern is stale"
    assert sent <= set(ERRORS), sent - set(ERRORS)
