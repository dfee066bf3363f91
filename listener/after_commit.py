"""An enqueuer's look after its commit (docs/dispatch.md, "No lost wake-up").

A request left queued because no SEP was idle (``Enqueued.left_queued``) is looked for
again once its enqueue has committed: ``dispatch_queued`` hands queued requests to the
SEPs idle by then. A SEP that went idle while the enqueue was in flight is seen by this
look, or sees the request in its own look after its rest committed.

Looks are coalesced: one runs at a time per process, and a look asked for while one is
in flight runs once more after it (the one in flight may have begun before the asking
enqueue committed). Under load that is at most one look per round trip, whatever the
number of batches.
"""

from __future__ import annotations

import asyncio
from typing import Any

from psycopg_pool import AsyncConnectionPool

from dispatcher.gateway import AsyncGateway, ops

__all__ = ["LookAfterCommit"]


class LookAfterCommit:
    """Runs ``dispatch_queued`` for REGION after commits that left requests queued."""

    def __init__(self, pool: AsyncConnectionPool[Any], region: str, log: Any) -> None:
        self.pool = pool
        self.region = region
        self.log = log
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def ask(self) -> None:
        """An enqueue that left a request queued has committed: look (soon, once more
        than any look already in flight)."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._again = False
        self._task = asyncio.create_task(self._looks())

    async def _looks(self) -> None:
        while True:
            try:
                async with self.pool.connection() as conn:
                    await AsyncGateway(conn).run(ops.request.dispatch_queued(self.region))
            except Exception as exc:  # the SEPs' safety polls still find the requests
                self.log.warning("dispatch_queued_failed", error=str(exc).strip())
            if not self._again:
                return
            self._again = False

    async def close(self) -> None:
        """Wait for the look in flight (at shutdown)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
