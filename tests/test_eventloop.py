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
