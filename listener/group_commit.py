"""Group commit: calls that arrive together, from any sessions, share one enqueue call
and one commit (docs/listener.md, "How a request flows")."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

from psycopg_pool import AsyncConnectionPool

from dispatcher.gateway import Enqueued, ops

from .health import DB_ERRORS, gateway

__all__ = ["GroupCommit"]

# (transid, data, session, commarea, idempotency key, routing key), the caller's future
_Call = tuple[str, Any, UUID, Any, str | None, str | None]
_Item = tuple[_Call, "asyncio.Future[Any]"]


class GroupCommit:
    """Requests that arrive together share one enqueue call and one commit.

    A request waits for no timer: each batch is whatever queued up while the previous
    batches were in flight (at most ``max_batch``, at most ``parallel`` batches at
    once). Every caller is answered only after its batch committed. A batch that an
    error spoils (an unknown transaction, say) is retried in halves, so
    that each error reaches only its own caller (halving the batch until it does).
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        region: str,
        max_batch: int = 200,
        parallel: int = 4,
    ) -> None:
        self.pool = pool
        self.region = region
        self.max_batch = max_batch
        self.slots = asyncio.Semaphore(parallel)
        self._flushing: set[asyncio.Task[None]] = set()
        self._inline = False  # a lone call is being enqueued by submit itself
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()

    async def submit(
        self,
        transid: str,
        data: Any,
        session: UUID,
        commarea: Any,
        key: str | None = None,
        routing_key: str | None = None,
    ) -> Enqueued:
        fut: asyncio.Future[Enqueued] = asyncio.get_running_loop().create_future()
        item: _Item = ((transid, data, session, commarea, key, routing_key), fut)
        if self.queue.empty() and not self._flushing and not self._inline:
            # nothing to group with and no batch in flight: enqueue right here, without
            # the hops through the batching task (the latency of a lone call); calls
            # that arrive meanwhile queue up and go together as before
            self._inline = True
            await self.slots.acquire()
            try:
                await self._many([item])
            finally:
                self.slots.release()
                self._inline = False
        else:
            await self.queue.put(item)
        return await fut

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            await self.slots.acquire()
            task = asyncio.create_task(self._flush(batch))
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _flush(self, batch: list[_Item]) -> None:
        try:
            # three parts at once, at most three connections: calls with a commarea (one
            # by one through enqueue), calls with a key, the rest. A new key waits for an
            # enqueue of that key still in flight (its lock); calls without one must not
            # wait with it (and go by the set-based path, which a key would turn off)
            commareas = [b for b in batch if b[0][3] is not None]
            keyed = [b for b in batch if b[0][3] is None and b[0][4] is not None]
            unkeyed = [b for b in batch if b[0][3] is None and b[0][4] is None]

            async def one_by_one(items: list[_Item]) -> None:
                for item in items:
                    await self._many([item])

            await asyncio.gather(
                *([one_by_one(commareas)] if commareas else []),
                *(self._many(p) for p in (unkeyed, keyed) if p),
            )
        finally:
            self.slots.release()

    async def _many(self, batch: list[_Item]) -> None:
        """Enqueue BATCH in one call; if one request spoils it, halve and try again, so
        that an error reaches only its own caller."""
        try:
            async with self.pool.connection() as conn:
                db = gateway(conn)
                if len(batch) == 1:
                    (transid, data, sid, commarea, key, route), _ = batch[0]
                    one = ops.request.enqueue(
                        self.region,
                        transid,
                        data,
                        session=sid,
                        commarea=commarea,
                        idempotency_key=key,
                        origin="listener",
                        notify=False,
                        routing_key=route,
                    )
                    out = [await db.run(one)]
                else:
                    many = ops.request.enqueue_many(
                        self.region,
                        [(c[0], c[1]) for c, _ in batch],
                        sessions=[c[2] for c, _ in batch],
                        idempotency_keys=[c[4] for c, _ in batch],
                        origin="listener",
                        notify=False,
                        routing_keys=[c[5] for c, _ in batch],
                    )
                    out = await db.run(many)
        except (*DB_ERRORS, asyncio.CancelledError) as exc:
            # no point halving: every part would fail the same way
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        except Exception as exc:
            # one request spoiled the batch (a value the database refuses, an unknown
            # transaction, or a fault we did not foresee): only its caller may see it
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(exc)
                return
            half = len(batch) // 2
            await self._many(batch[:half])
            await self._many(batch[half:])
            return
        for (_, fut), e in zip(batch, out, strict=True):
            if not fut.done():
                fut.set_result(e)
