"""The internal channel between listeners and SEPs (never exposed to clients).

Each SEP serves a socket whose address it registers (``sep.address``); each listener
serves one too (``listener.address``). Addresses are ``unix:/path`` or ``tcp:host:port``.
A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON: one
object with a ``type``.

Every connection begins with ``{"type": "auth", "secret": S}``, S the region's channel
secret (made by the database, read by listeners and SEPs when they start: the
``channel_secret`` query); a connection whose first frame is anything else, announces
more than AUTH_MAX bytes (not read), or is not whole within AUTH_TIMEOUT, is closed
(logged ``channel_stranger_refused``): a process that cannot read the region's database
cannot hand a SEP a task or a session an output. Then the messages:

Listener -> SEP
- ``dispatch``: ``{"type": "dispatch", "task": TASK, "reply_to": ADDRESS}``: run this
  request, which the enqueue procedure dispatched to you (no database poll needed).
- ``input``: ``{"type": "input", "request_id": N, "data": ANY}``: the session's next
  input for a conversational task waiting in ``ctx.receive()``.
- ``session_ended``: ``{"type": "session_ended", "request_id": N, "session_id": S}``:
  the session of request N ended (its client closed or said bye, or the listener is
  stopping): the task's ``ctx.receive()`` raises ``SessionEnded``, now or when it
  next waits for input.

SEP -> Listener (the listener owning the task's session)
- ``output``: ``{"type": "output", "request_id": N, "session_id": S, "sep_id": N,
  "data": ANY, "wants_input": BOOL}``: ``ctx.send(data)`` while the task runs;
  ``wants_input`` true when the task then waits for input (``ctx.converse``).
- ``await_input``: ``{"type": "await_input", "request_id": N, "session_id": S,
  "sep_id": N}``: the task waits in ``ctx.receive()``.
- ``end``: ``{"type": "end", "request_id": N, "session_id": S, "ok": BOOL,
  "result": ANY, "error": ERROR|null, "next_transid": STR|null}``: the task ended
  (sent after its completion committed).

TASK is :func:`task_to_dict` of a :class:`dispatcher.gateway.Task`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import json
import math
import re
import socket
import struct
from typing import Any
from uuid import UUID

import orjson

from .gateway import Task

__all__ = [
    "AUTH_MAX",
    "AUTH_TIMEOUT",
    "MAX_FRAME",
    "ChannelError",
    "FrameTooLarge",
    "auth_frame",
    "connect_sync",
    "decode_frame",
    "encode_frame",
    "encode_json",
    "is_auth",
    "open_connection",
    "parse_address",
    "parse_json",
    "read_body",
    "read_frame",
    "read_frame_sync",
    "task_from_dict",
    "task_to_dict",
]

MAX_FRAME = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")


class ChannelError(Exception):
    """A broken frame or address on the internal channel."""


def encode_json(value: Any) -> bytes:
    """VALUE as compact JSON, UTF-8 as it is (a text echoed back is as long as it was
    sent). orjson does it when it can; what it cannot write exactly (an integer beyond
    64 bits, a lone surrogate, a non-string key) the standard library writes.

    No value given here may hold a number that is not finite (orjson would write it as
    null): what clients and programs send is checked before (``values.check_data``), and
    what comes from the database cannot hold one."""
    try:
        return orjson.dumps(value, default=_default)
    except TypeError:  # (orjson also stops at 255 levels of nesting)
        pass
    try:
        try:
            text = json.dumps(
                value, separators=(",", ":"), default=_default, ensure_ascii=False, allow_nan=False
            )
            return text.encode()
        except UnicodeEncodeError:  # a lone surrogate: only the escaped form can carry it
            text = json.dumps(value, separators=(",", ":"), default=_default, allow_nan=False)
            return text.encode()
    except RecursionError:  # nested about as deep as a frame may be read: too deep to write
        raise ValueError("the value is nested too deeply to write") from None


def encode_frame(message: dict[str, Any], max_frame: int = MAX_FRAME) -> bytes:
    try:
        body = encode_json(message)
    except ValueError as exc:
        raise ChannelError(f"not JSON: {exc}") from None
    if len(body) > max_frame:
        raise ChannelError(f"frame of {len(body)} bytes exceeds the maximum of {max_frame}")
    return _HEADER.pack(len(body)) + body


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError(f"number {text[:40]} is out of the range of a double")
    return value


# the longest integer read (Python's limit on converting digits, sys.get_int_max_str_digits)
MAX_INT_DIGITS = 4300
# how deep a JSON text may nest: about where the standard library stops (its recursion)
MAX_PARSE_DEPTH = 990
# a run of 19 digits or more: an integer orjson would read as a float (beyond 64 bits)
_LONG_NUMBER = re.compile(rb"[0-9]{19}")


def parse_json(body: bytes) -> Any:
    """The JSON value of BODY (strict: UTF-8 without BOM or encoded surrogates, no
    NaN/Infinity, no number beyond a double); ChannelError for anything else, including
    nesting too deep to parse and integers too long to convert.

    orjson reads what it reads exactly as the standard library does; a body it refuses,
    or that holds a long run of digits (an integer it would turn into a float), is read
    by the standard library, whose answer (a value or the reason) is the one given."""
    if _LONG_NUMBER.search(body) is None:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        else:
            # the standard library cannot read past about 1,000 levels; neither do we,
            # whichever reads (fewer brackets than that: no need to look)
            brackets = body.count(b"[") + body.count(b"{")
            if brackets < MAX_PARSE_DEPTH or _depth(value) <= MAX_PARSE_DEPTH:
                return value
            raise ChannelError("the JSON is nested too deeply to parse")
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_not_json, parse_float=_finite)
    except RecursionError:
        raise ChannelError("the JSON is nested too deeply to parse") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, int digit limit
        if "integer string conversion" in str(exc):  # (Python's words, not the protocol's)
            raise ChannelError(
                f"an integer is longer than {MAX_INT_DIGITS:,} digits (docs/protocol.md)"
            ) from None
        raise ChannelError(f"not JSON: {exc}") from None


def _depth(value: Any) -> int:
    """How deep VALUE nests (iterative: any depth)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            deepest = max(deepest, d)
            stack.extend((item, d + 1) for item in v if isinstance(item, dict | list))
    return deepest


def decode_frame(body: bytes) -> dict[str, Any]:
    message = parse_json(body)
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ChannelError("frame is not an object with a type")
    return message


class FrameTooLarge(ChannelError):
    """A frame header announced more bytes than allowed (the stream cannot resync)."""


async def read_frame(
    reader: asyncio.StreamReader, max_frame: int = MAX_FRAME
) -> dict[str, Any] | None:
    """The next message, or None at a clean end of stream."""
    body = await read_body(reader, max_frame)
    return None if body is None else decode_frame(body)


async def read_body(reader: asyncio.StreamReader, max_frame: int = MAX_FRAME) -> bytes | None:
    """The body of the next frame (not decoded), or None at a clean end of stream."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ChannelError("stream ended inside a frame header") from exc
        return None
    (length,) = _HEADER.unpack(header)
    if length > max_frame:
        raise FrameTooLarge(f"frame of {length} bytes exceeds the maximum of {max_frame}")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise ChannelError("stream ended inside a frame") from exc


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            if chunks:
                raise ChannelError("stream ended inside a frame")
            raise EOFError
        chunks.extend(chunk)
    return bytes(chunks)


def read_frame_sync(sock: socket.socket, max_frame: int = MAX_FRAME) -> dict[str, Any] | None:
    """Blocking twin of :func:`read_frame`."""
    try:
        header = _recv_exactly(sock, _HEADER.size)
    except EOFError:
        return None
    (length,) = _HEADER.unpack(header)
    if length > max_frame:
        raise FrameTooLarge(f"frame of {length} bytes exceeds the maximum of {max_frame}")
    try:
        return decode_frame(_recv_exactly(sock, length))
    except EOFError:
        raise ChannelError("stream ended inside a frame") from None


def parse_address(address: str) -> tuple[str, str | tuple[str, int]]:
    """``unix:/path`` -> ("unix", "/path"); ``tcp:host:port`` -> ("tcp", (host, port))."""
    kind, _, rest = address.partition(":")
    if kind == "unix" and rest:
        return "unix", rest
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        if host and port.isdigit():
            return "tcp", (host.strip("[]"), int(port))
    raise ChannelError(f"invalid channel address {address!r}: use unix:/path or tcp:host:port")


AUTH_TIMEOUT = 10.0  # seconds a channel connection has to send its whole auth frame
AUTH_MAX = 1024  # bytes: a first frame any longer is not an auth frame (read no more)


def auth_frame(secret: str) -> bytes:
    """The first frame of every channel connection."""
    return encode_frame({"type": "auth", "secret": secret})


def is_auth(msg: Any, secret: str) -> bool:
    """Is MSG the auth frame of SECRET (compared in constant time)? Never with no secret."""
    if not secret or not isinstance(msg, dict) or msg.get("type") != "auth":
        return False
    given = msg.get("secret")
    return isinstance(given, str) and hmac.compare_digest(given.encode(), secret.encode())


async def open_connection(
    address: str, *, secret: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A channel connection to ADDRESS, authenticated with the region's SECRET."""
    kind, where = parse_address(address)
    if kind == "unix":
        assert isinstance(where, str)
        reader, writer = await asyncio.open_unix_connection(where)
    else:
        assert isinstance(where, tuple)
        reader, writer = await asyncio.open_connection(where[0], where[1])
    writer.write(auth_frame(secret))
    return reader, writer


def connect_sync(address: str, *, secret: str, timeout: float = 5.0) -> socket.socket:
    """A channel connection to ADDRESS, authenticated with the region's SECRET."""
    kind, where = parse_address(address)
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in where[0] else socket.AF_INET)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    sock.connect(where)
    sock.sendall(auth_frame(secret))
    sock.settimeout(None)
    return sock


def task_to_dict(task: Task) -> dict[str, Any]:
    return {
        "request_id": task.request_id,
        "attempt": task.attempt,
        "transid": task.transid,
        "program": task.program,
        "payload": task.payload,
        "session_id": None if task.session_id is None else str(task.session_id),
        "commarea": task.commarea,
        "timeout_s": task.timeout_s,
        "enqueued_at": task.enqueued_at.isoformat(),
    }


def task_from_dict(d: dict[str, Any]) -> Task:
    try:
        return Task(
            request_id=int(d["request_id"]),
            attempt=int(d["attempt"]),
            transid=str(d["transid"]),
            program=d.get("program"),
            payload=d.get("payload"),
            session_id=None if d.get("session_id") is None else UUID(d["session_id"]),
            commarea=d.get("commarea"),
            timeout_s=d.get("timeout_s"),
            enqueued_at=dt.datetime.fromisoformat(d["enqueued_at"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ChannelError(f"invalid task in frame: {exc}") from exc


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")
