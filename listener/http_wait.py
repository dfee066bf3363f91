"""Waiting for outcomes in the HTTP front (``Prefer: wait=N``): one query of the
history for every request that callers wait for."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from dispatcher.gateway import RequestOutcome, ops

from .health import DB_ERRORS, gateway

if TYPE_CHECKING:
    from .http import HttpFront

__all__ = ["Waiters"]


class Waiters:
    """Requests that HTTP callers wait for (``Prefer: wait=N``): one query of the history
    for all of them, soon after a request is queued, then less and less often."""

    FIRST = 0.01
    MOST = 0.25

    def __init__(self, front: HttpFront) -> None:
        self.front = front
        self.waiting: dict[int, list[asyncio.Future[RequestOutcome]]] = {}
        self.arrived = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def wait(self, request_id: int, timeout: float) -> RequestOutcome | None:
        """The outcome of REQUEST_ID once it has finished, or None after TIMEOUT s."""
        fut: asyncio.Future[RequestOutcome] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(request_id, []).append(fut)
        self.arrived.set()
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None
        finally:
            futs = self.waiting.get(request_id, [])
            if fut in futs:
                futs.remove(fut)
            if not futs:
                self.waiting.pop(request_id, None)

    async def _run(self) -> None:
        delay = self.FIRST
        while True:
            if not self.waiting:
                self.arrived.clear()
                await self.arrived.wait()
                delay = self.FIRST
            await asyncio.sleep(delay)
            if self.arrived.is_set():  # new waiters: their requests may be quick
                self.arrived.clear()
                delay = self.FIRST
            else:
                delay = min(delay * 2, self.MOST)
            await self._poll()

    async def _poll(self) -> None:
        front = self.front
        ids = list(self.waiting)
        if not ids or not front.health.ok:
            return
        try:
            async with front.pool.connection() as conn:
                rows = await gateway(conn).run(ops.listener.outcomes(ids))
        except DB_ERRORS as exc:
            front.health.lost(exc)
            return
        except Exception:  # the poll must never stop
            front.log.exception("http_wait_poll_failed")
            return
        for row in rows:
            for fut in self.waiting.get(row.id, []):
                if not fut.done():
                    fut.set_result(row)
