"""A client written from docs/protocol.md alone: raw frames over a socket, no library."""

from __future__ import annotations

import json
import socket
import struct
from typing import Any


class Wire:
    """One raw connection to a listener: send bodies, read replies as dicts."""

    def __init__(self, address: str, timeout: float = 30.0) -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)

    def send_body(self, body: bytes) -> None:
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def send(self, message: Any) -> None:
        self.send_body(json.dumps(message).encode())

    def read(self) -> dict[str, Any]:
        header = self._exactly(4)
        (n,) = struct.unpack(">I", header)
        reply = json.loads(self._exactly(n))
        assert isinstance(reply, dict)
        return reply

    def closed(self) -> bool:
        """True if the listener closed the connection (nothing more to read)."""
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, TimeoutError):
            return True

    def hello(self, token: str, **extra: Any) -> dict[str, Any]:
        self.send({"type": "hello", "version": 1, "token": token, **extra})
        return self.read()

    def _exactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("the listener closed the connection")
            out.extend(chunk)
        return bytes(out)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
