"""The event loop of the listener and the HTTP front (dispatcher/eventloop.py)."""

from __future__ import annotations

import asyncio

import pytest

from dispatcher import eventloop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_uvloop_unless_asyncio_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """run() uses uvloop when it is installed; DISPATCHER_EVENT_LOOP=asyncio chooses
    asyncio's own loop."""
    monkeypatch.delenv("DISPATCHER_EVENT_LOOP", raising=False)
    assert eventloop.run(_loop_module()) == "uvloop"
    monkeypatch.setenv("DISPATCHER_EVENT_LOOP", " AsyncIO ")
    assert eventloop.run(_loop_module()) == "asyncio"


def test_port_zero_is_reported_as_the_port_bound_on_either_loop() -> None:
    """bound_port: the port the system chose for port 0, on uvloop's server as on
    asyncio's (uvloop's is not an asyncio.Server)."""
    import socket

    from dispatcher.eventloop import bound_port

    async def main() -> int:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        try:
            port = bound_port(server, 0)
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
            return port
        finally:
            server.close()

    assert eventloop.run(main()) > 0
    with asyncio.Runner() as runner:
        assert runner.run(main()) > 0
    assert bound_port(object(), 7380) == 7380
