"""Pure helpers of the client protocol: a reply as a frame, the checks of call and
input frames, error codes, the hash of a token. No I/O and no state."""

from __future__ import annotations

from typing import Any

from dispatcher.channel import encode_frame
from dispatcher.errors import DispatcherError, InvalidValue
from dispatcher.protocol import MAX_FRAME, ProtocolError, encode, error
from dispatcher.tokens import hash_token
from dispatcher.values import check_data, check_text

MAX_KEY = 200


def failure_code(detail: dict[str, Any]) -> str:
    """The error code of a failed or cancelled request, the same for its call, for
    result_of and over HTTP."""
    kind = detail.get("type")
    return {"SEPLost": "sep_lost", "Cancelled": "cancelled"}.get(str(kind), "abend")


def frame(message: dict[str, Any]) -> bytes:
    """MESSAGE as a frame; a reply too large for a frame is replaced by one that fits, so
    that every call still gets exactly one answer: a result becomes the error
    ``result_too_large`` (the result stays stored), an output loses its data (``dropped``),
    an error keeps the first 1,000 characters of its message and no detail."""
    try:
        return encode(message)
    except ProtocolError:
        pass
    kind = message.get("type")
    keep = {k: message[k] for k in ("id", "request_id") if k in message}
    if kind == "result":
        size = len(encode_frame(message, max_frame=2**31)) - 4
        smaller = error(
            "result_too_large",
            f"the result is {size:,} bytes as a frame, over the limit of {MAX_FRAME:,}: "
            "the request is done and its result is stored, but it cannot be sent",
            id=keep.get("id"),
            request_id=keep.get("request_id"),
        )
    elif kind == "output":
        smaller = {**message, "data": None, "dropped": "too_large"}
    else:
        smaller = {
            **{k: v for k, v in message.items() if k != "detail"},
            "message": str(message.get("message", ""))[:1000],
        }
    for k in ("id", "request_id"):
        if k in smaller and len(encode_frame({k: smaller[k]}, max_frame=2**31)) > 4096:
            del smaller[k]  # an id too large to echo
    return encode(smaller)


def token_hash(token: str) -> bytes:
    """The stored hash of TOKEN (b"" for a string no token can be: it finds nothing)."""
    try:
        return hash_token(token)
    except UnicodeEncodeError:  # a lone surrogate
        return b""


def check_key(key: Any, name: str = "key") -> dict[str, Any] | None:
    """The error for a bad idempotency or routing key (None when KEY is absent or good)."""
    if key is None:
        return None
    if not isinstance(key, str):
        return error("bad_frame", f"{name} must be a string of 1-{MAX_KEY} characters")
    if not 0 < len(key) <= MAX_KEY:
        return error("invalid_value", f"{name} must be 1-{MAX_KEY} characters, not {len(key)}")
    try:
        check_text(key, f"the {name}")
    except InvalidValue as exc:
        return error("invalid_value", exc.message)
    return None


def check_call(msg: dict[str, Any]) -> dict[str, Any] | None:
    """The error for a call or input frame whose fields are missing, mistyped or out of
    range (None when it may go on): bad_frame for a missing or mistyped field,
    invalid_value for a value out of range (docs/protocol.md)."""
    if msg["type"] == "call":
        transid = msg.get("transid")
        if not isinstance(transid, str):
            return error("bad_frame", "call needs a transid (a string)")
        try:
            check_text(transid, "the transid")
        except InvalidValue as exc:
            return error("invalid_value", exc.message)
    bad = check_key(msg.get("key"))
    if bad is None and msg["type"] == "call":
        bad = check_key(msg.get("routing_key"), "routing_key")
    if bad is not None:
        return bad
    try:
        check_data(msg.get("data"))
    except InvalidValue as exc:
        return error("invalid_value", exc.message)
    return None


def error_code(exc: DispatcherError) -> str:
    """The code a client gets for EXC (invalid_value for any code it does not know)."""
    return {
        "unknown_transaction": "unknown_transaction",
        "invalid_value": "invalid_value",
        "unknown_request": "unknown_request",
        "database_unavailable": "database_unavailable",
    }.get(exc.code, "invalid_value")
