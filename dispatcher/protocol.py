"""The client wire protocol, shared by the listener and its clients (docs/protocol.md).

A frame is a 4-byte big-endian unsigned length, then that many bytes of UTF-8 JSON:
one object with a ``type``. Frames are at most :data:`MAX_FRAME` bytes.
"""

from __future__ import annotations

from typing import Any

from .channel import ChannelError, encode_frame, parse_json

__all__ = [
    "DEFAULT_PORT",
    "ERRORS",
    "MAX_FRAME",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "decode",
    "encode",
    "error",
]

PROTOCOL_VERSION = 1
MAX_FRAME = 1024 * 1024
DEFAULT_PORT = 7300

# code -> retryable: can the same message succeed if sent again later?
ERRORS: dict[str, bool] = {
    "bad_frame": False,  # not JSON, not an object, unknown type, missing field
    "frame_too_large": False,  # longer than MAX_FRAME: the connection is closed
    "bad_hello": False,  # first frame not a hello, or an unsupported version
    "unauthorized": False,  # missing or wrong token
    # a hello past the listener's --max-sessions or the token's max sessions: the
    # connection is closed; a hello later, or to another listener, may be welcome
    "too_many_sessions": True,
    "forbidden": False,  # the token may not run this transaction
    "unknown_transaction": False,
    "invalid_value": False,
    "busy": False,  # a call is already in flight in this session
    "no_task_waiting": False,  # input, but no task waits and no RETURN TRANSID is pending
    "unknown_request": False,
    "abend": False,  # the program failed; detail has type, message, traceback
    # the SEP running the task died: the request failed for good (a call sent again with
    # the same key answers the same); only a new call runs it again
    "sep_lost": False,
    # cancelled while queued (request cancel, DELETE /v1/requests/ID): it never ran
    "cancelled": False,
    "database_unavailable": True,  # the region database is down or restarting
    "shutting_down": True,  # the listener is stopping
    "result_too_large": False,  # the outcome does not fit in a frame (it stays stored)
    "internal": True,
}


class ProtocolError(Exception):
    """A frame the peer sent that breaks the protocol (``id``: the frame's, if it had one)."""

    def __init__(self, code: str, message: str, id: Any = None, readable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id
        # the frame was strict JSON, only not a message (no object, no type)
        self.readable = readable


def encode(message: dict[str, Any]) -> bytes:
    try:
        return encode_frame(message, MAX_FRAME)
    except ChannelError as exc:
        raise ProtocolError("frame_too_large", str(exc)) from exc


def decode(body: bytes) -> dict[str, Any]:
    """The message in BODY; ProtocolError ``bad_frame`` (with the message's ``id`` when
    the body was a JSON object) for anything that is not an object with a string type."""
    try:
        message = parse_json(body)
    except ChannelError as exc:
        raise ProtocolError("bad_frame", str(exc)) from exc
    if not isinstance(message, dict):
        raise ProtocolError("bad_frame", "a frame must be a JSON object with a type", readable=True)
    if not isinstance(message.get("type"), str):
        raise ProtocolError(
            "bad_frame", 'a frame needs a "type" (a string)', id=message.get("id"), readable=True
        )
    return message


def error(
    code: str,
    message: str,
    *,
    id: Any = None,
    request_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "error",
        "code": code,
        "message": message,
        "retryable": ERRORS.get(code, False),
    }
    if id is not None:
        out["id"] = id
    if request_id is not None:
        out["request_id"] = request_id
    if detail:
        out["detail"] = detail
    return out
