"""Pure helpers of the client protocol: a reply as a frame, the checks of call and
input frames, error codes, the hash of a token. No I/O and no state."""

from __future__ import annotations

from typing import Any

from dispatcher.channel import ChannelError, encode_frame
from dispatcher.errors import DispatcherError, InvalidValue
from dispatcher.protocol import MAX_FRAME, ProtocolError, encode, error
from dispatcher.tokens import hash_token
from dispatcher.values import MAX_KEY, check_data, check_text, transid_problem


def failure_code(detail: dict[str, Any]) -> str:
    """The error code of a failed or cancelled request, the same for its call, for
    result_of and over HTTP."""
    kind = detail.get("type")
    return {"SEPLost": "sep_lost", "Cancelled": "cancelled"}.get(str(kind), "abend")


def _echoable(value: Any) -> bool:
    """Can VALUE (a message's id) be echoed in a reply: written as JSON in 4 KiB?"""
    try:
        return len(encode_frame({"id": value}, max_frame=2**31)) <= 4096
    except ChannelError:  # nested too deeply to write
        return False


def frame(message: dict[str, Any]) -> bytes:
    """MESSAGE as a frame; a reply that cannot be sent as it is is replaced by one that
    can, so that every call still gets exactly one answer: an id that cannot be echoed
    (about 1 MiB, or nested too deeply to write) is left out; then a result too large
    becomes the error ``result_too_large`` (the result stays stored), an output loses
    its data (``dropped``), an error keeps the first 1,000 characters of its message and
    no detail."""
    try:
        return encode(message)
    except ProtocolError:
        pass
    if "id" in message and not _echoable(message["id"]):
        message = {k: v for k, v in message.items() if k != "id"}
        try:
            return encode(message)
        except ProtocolError:
            pass
    kind = message.get("type")
    if kind == "result":
        try:
            size = f"{len(encode_frame(message, max_frame=2**31)) - 4:,} bytes as a frame"
        except ChannelError:
            size = "too deeply nested to write as JSON"
        smaller = error(
            "result_too_large",
            f"the result is {size}, over the limit of {MAX_FRAME:,}: "
            "the request is done and its result is stored, but it cannot be sent",
            id=message.get("id"),
            request_id=message.get("request_id"),
        )
    elif kind == "output":
        smaller = {**message, "data": None, "dropped": "too_large"}
    else:
        smaller = {
            **{k: v for k, v in message.items() if k != "detail"},
            "message": str(message.get("message", ""))[:1000],
        }
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
        unknown = transid_problem(transid)
        if unknown is not None:  # (the database is not asked: no such name can exist)
            return error("unknown_transaction", unknown)
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
