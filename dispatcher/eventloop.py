"""The event loop of the listener and the HTTP front: uvloop where it is installed (a
dependency on Linux and macOS), else asyncio's own. ``DISPATCHER_EVENT_LOOP=asyncio``
chooses asyncio's loop (to compare, or to rule uvloop out when looking for a fault)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["bound_port", "cannot_listen", "loop_factory", "run"]

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes the event loop (None: asyncio's default)."""
    if os.environ.get("DISPATCHER_EVENT_LOOP", "").strip().lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run MAIN to its end on a new event loop (see the module doc)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


def bound_port(server: object, asked: int) -> int:
    """The port SERVER listens on (ASKED 0: the one the system chose). uvloop's server
    is not an ``asyncio.Server`` but has the same ``sockets``; ASKED when it has none."""
    sockets = getattr(server, "sockets", None) or ()
    return int(sockets[0].getsockname()[1]) if sockets else asked


def cannot_listen(what: str, host: str, port: int, exc: OSError) -> OSError:
    """EXC (a bind that failed: a port in use, a host that is no address here) saying
    which socket of WHAT it was: "cannot listen on HOST:PORT (WHAT): reason"."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    reason = reason.split("): ", 1)[-1] if reason.startswith("error while attempting") else reason
    shown = f"[{host}]" if ":" in host else host
    return OSError(f"cannot listen on {shown}:{port} ({what}): {reason}")
