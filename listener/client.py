"""A Python client of the listener, synchronous and asyncio.

>>> with connect("127.0.0.1:7300", token=TOKEN) as session:
...     session.call("ECHO", {"x": 1})
{'x': 1}

A conversational program's output reaches ``on_output(data, wants_input)``; when
the program waits for input, the callback's return value is sent as the input.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from dispatcher.channel import read_frame, read_frame_sync
from dispatcher.protocol import DEFAULT_PORT, MAX_FRAME, PROTOCOL_VERSION, ProtocolError, encode

__all__ = [
    "AsyncSession",
    "CallError",
    "Session",
    "connect",
    "connect_async",
    "parse_address",
]

OnOutput = Callable[[Any, bool], Any]


def _with_key(
    message: dict[str, Any], key: str | None, routing_key: str | None = None
) -> dict[str, Any]:
    if key is not None:
        message["key"] = key
    if routing_key is not None:
        message["routing_key"] = routing_key
    return message


def _encode(message: dict[str, Any]) -> bytes:
    """MESSAGE as a frame; CallError ``frame_too_large`` (nothing sent) if it cannot be one."""
    try:
        return encode(message)
    except ProtocolError as exc:
        raise CallError(
            {"code": exc.code, "message": f"not sent: {exc.message}", "retryable": False}
        ) from None


class CallError(Exception):
    """An error reply from the listener: ``code``, ``message``, ``retryable``, ``detail``."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.reply = reply
        self.code: str = reply.get("code", "error")
        self.message: str = reply.get("message", "")
        self.retryable: bool = bool(reply.get("retryable"))
        self.request_id: int | None = reply.get("request_id")
        self.detail: dict[str, Any] = reply.get("detail") or {}
        super().__init__(f"{self.code}: {self.message}")


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host:
        return address or "127.0.0.1", DEFAULT_PORT
    if not port.isdigit():
        raise ValueError(f"invalid address {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _tls_context(tls: bool | ssl.SSLContext, cafile: str | None) -> ssl.SSLContext | None:
    if isinstance(tls, ssl.SSLContext):
        return tls
    if not tls:
        return None
    return ssl.create_default_context(cafile=cafile)


class Session:
    """A synchronous client session (one call at a time)."""

    def __init__(self, sock: socket.socket, welcome: dict[str, Any]) -> None:
        self.sock = sock
        self.welcome = welcome
        self.session_id: str = welcome["session_id"]
        self._ids = itertools.count(1)
        self.next_transid: str | None = None
        self.request_id: int | None = None  # of the last call accepted

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(_encode(message))

    def receive(self, timeout: float | None = None) -> dict[str, Any]:
        self.sock.settimeout(timeout)
        msg = read_frame_sync(self.sock, MAX_FRAME)
        if msg is None:
            raise ConnectionError("the listener closed the session")
        return msg

    def call(
        self,
        transid: str,
        data: Any = None,
        *,
        on_output: OnOutput | None = None,
        timeout: float | None = 300.0,
        key: str | None = None,
        routing_key: str | None = None,
    ) -> Any:
        """Run TRANSID with DATA and return its result; raise CallError on an error reply.

        KEY (idempotency key): a call sent again with the same key, after a retryable
        error or from a new session, runs once and answers with the first one's outcome.
        ROUTING_KEY: calls with the same routing key run on the same live SEP.
        """
        cid = next(self._ids)
        msg = {"type": "call", "id": cid, "transid": transid, "data": data}
        self.send(_with_key(msg, key, routing_key))
        return self._follow(cid, on_output, timeout)

    def input(
        self,
        data: Any,
        *,
        on_output: OnOutput | None = None,
        timeout: float | None = 300.0,
        key: str | None = None,
    ) -> Any:
        """Send the session's next input: to a waiting task, or (after RETURN TRANSID) as
        a new request for the transaction the last task named."""
        cid = next(self._ids)
        self.send(_with_key({"type": "input", "id": cid, "data": data}, key))
        return self._follow(cid, on_output, timeout)

    def ping(self, timeout: float | None = 10.0) -> None:
        cid = next(self._ids)
        self.send({"type": "ping", "id": cid})
        self._until(cid, timeout)

    def result_of(self, request_id: int, timeout: float | None = 30.0) -> dict[str, Any]:
        cid = next(self._ids)
        self.send({"type": "result_of", "id": cid, "request_id": request_id})
        return self._until(cid, timeout)

    def _until(self, cid: Any, timeout: float | None) -> dict[str, Any]:
        while True:
            msg = self.receive(timeout)
            if msg.get("id") == cid or msg.get("id") is None:
                if msg["type"] == "error":
                    raise CallError(msg)
                return msg

    def _follow(self, cid: Any, on_output: OnOutput | None, timeout: float | None) -> Any:
        while True:
            msg = self.receive(timeout)
            if msg.get("id") not in (cid, None):
                continue
            kind = msg["type"]
            if kind == "accepted":
                self.request_id = msg.get("request_id")
                continue
            if kind == "result":
                self.next_transid = msg.get("next_transid")
                return msg.get("data")
            if kind == "error":
                raise CallError(msg)
            if kind in ("output", "waiting"):
                wants = kind == "waiting" or bool(msg.get("wants_input"))
                reply = on_output(msg.get("data"), wants) if on_output else None
                if wants:
                    if on_output is None:
                        raise CallError(
                            {
                                "code": "input_needed",
                                "message": "the program waits for input: pass on_output",
                            }
                        )
                    self.send({"type": "input", "id": cid, "data": reply})

    def close(self) -> None:
        try:
            self.send({"type": "bye"})
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    address: str = f"127.0.0.1:{DEFAULT_PORT}",
    token: str | None = None,
    *,
    tls: bool | ssl.SSLContext = False,
    cafile: str | None = None,
    timeout: float = 10.0,
) -> Session:
    """Open a session with a listener; raises CallError if the hello is refused."""
    host, port = parse_address(address)
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ctx = _tls_context(tls, cafile)
    if ctx is not None:
        sock = ctx.wrap_socket(sock, server_hostname=host)
    sock.sendall(encode({"type": "hello", "version": PROTOCOL_VERSION, "token": token or ""}))
    msg = read_frame_sync(sock, MAX_FRAME)
    if msg is None:
        sock.close()
        raise ConnectionError("the listener closed the connection during the hello")
    if msg["type"] != "welcome":
        sock.close()
        raise CallError(msg)
    sock.settimeout(None)
    return Session(sock, msg)


AsyncOnOutput = Callable[[Any, bool], Awaitable[Any] | Any]


class AsyncSession:
    """An asyncio client session (one call at a time)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, welcome: dict[str, Any]
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.welcome = welcome
        self.session_id: str = welcome["session_id"]
        self._ids = itertools.count(1)
        self.next_transid: str | None = None

    async def send(self, message: dict[str, Any]) -> None:
        self.writer.write(_encode(message))
        await self.writer.drain()

    async def receive(self) -> dict[str, Any]:
        msg = await read_frame(self.reader, MAX_FRAME)
        if msg is None:
            raise ConnectionError("the listener closed the session")
        return msg

    async def call(
        self,
        transid: str,
        data: Any = None,
        *,
        on_output: AsyncOnOutput | None = None,
        key: str | None = None,
        routing_key: str | None = None,
    ) -> Any:
        """Run TRANSID with DATA and return its result (see :meth:`Session.call`)."""
        cid = next(self._ids)
        msg = {"type": "call", "id": cid, "transid": transid, "data": data}
        await self.send(_with_key(msg, key, routing_key))
        return await self._follow(cid, on_output)

    async def input(
        self, data: Any, *, on_output: AsyncOnOutput | None = None, key: str | None = None
    ) -> Any:
        cid = next(self._ids)
        await self.send(_with_key({"type": "input", "id": cid, "data": data}, key))
        return await self._follow(cid, on_output)

    async def result_of(self, request_id: int) -> dict[str, Any]:
        """The outcome of a request by id: a ``result`` or ``pending`` message."""
        cid = next(self._ids)
        await self.send({"type": "result_of", "id": cid, "request_id": request_id})
        while True:
            msg = await self.receive()
            if msg.get("id") in (cid, None):
                if msg["type"] == "error":
                    raise CallError(msg)
                return msg

    async def _follow(self, cid: Any, on_output: AsyncOnOutput | None) -> Any:
        while True:
            msg = await self.receive()
            if msg.get("id") not in (cid, None):
                continue
            kind = msg["type"]
            if kind == "result":
                self.next_transid = msg.get("next_transid")
                return msg.get("data")
            if kind == "error":
                raise CallError(msg)
            if kind in ("output", "waiting"):
                wants = kind == "waiting" or bool(msg.get("wants_input"))
                reply = on_output(msg.get("data"), wants) if on_output else None
                if asyncio.iscoroutine(reply) or isinstance(reply, asyncio.Future):
                    reply = await reply
                if wants:
                    if on_output is None:
                        raise CallError(
                            {
                                "code": "input_needed",
                                "message": "the program waits for input: pass on_output",
                            }
                        )
                    await self.send({"type": "input", "id": cid, "data": reply})

    async def close(self) -> None:
        try:
            await self.send({"type": "bye"})
        except (OSError, RuntimeError):
            pass
        self.writer.close()

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def connect_async(
    address: str = f"127.0.0.1:{DEFAULT_PORT}",
    token: str | None = None,
    *,
    tls: bool | ssl.SSLContext = False,
    cafile: str | None = None,
) -> AsyncSession:
    host, port = parse_address(address)
    ctx = _tls_context(tls, cafile)
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, limit=MAX_FRAME + 8)
    writer.write(encode({"type": "hello", "version": PROTOCOL_VERSION, "token": token or ""}))
    await writer.drain()
    msg = await read_frame(reader, MAX_FRAME)
    if msg is None or msg["type"] != "welcome":
        writer.close()
        raise CallError(msg or {"code": "closed", "message": "closed during hello"})
    return AsyncSession(reader, writer, msg)
