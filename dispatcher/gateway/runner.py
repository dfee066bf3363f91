"""The two runners of operations: :class:`Gateway` on a synchronous psycopg
connection, :class:`AsyncGateway` on an asyncio one.

``run(op)`` executes the operation's named query with its bound parameters on the
connection (in its current transaction, if one is open), and returns the decoded
value. A database error of the dispatcher's own comes out as its
:class:`dispatcher.errors.DispatcherError` subclass: that translation happens here
and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import psycopg
from psycopg.rows import dict_row

from ..errors import DatabaseUnavailable, translate
from ..queries import QUERIES
from .op import Op, Result

__all__ = [
    "AsyncGateway",
    "Gateway",
    "InRegion",
    "RegionGateway",
    "answered_within",
    "checked_within",
    "translated",
]

T = TypeVar("T")


@contextmanager
def translated() -> Iterator[None]:
    """Turn a psycopg error of ours into its DispatcherError (others pass unchanged)."""
    try:
        yield
    except psycopg.Error as exc:
        mine = translate(exc)
        if mine is None:
            raise
        raise mine from exc


class Gateway:
    """Runs operations on a synchronous connection (any row factory)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def run(self, op: Op[T]) -> T:
        sql = QUERIES[op.query]
        with translated(), self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(sql, op.params)
            rows = cur.fetchall() if cur.description else []
            result = Result(rows, cur.rowcount)
        return op.decode(result)

    def at(self, region: str) -> RegionGateway:
        """This gateway bound to REGION (for helpers that take an :class:`InRegion`)."""
        return RegionGateway(self.conn, region)


class RegionGateway(Gateway):
    """A :class:`Gateway` that knows which region it works for (its ``name``)."""

    def __init__(self, conn: psycopg.Connection[Any], region: str) -> None:
        super().__init__(conn)
        self.name = region


class AsyncGateway:
    """Runs operations on an asyncio connection (any row factory).

    ANSWER_WITHIN (seconds): a database that does not answer in that time (a server
    that hangs: stopped, swapping, a network that drops packets) raises
    DatabaseUnavailable then, instead of waiting as long as it hangs. The statement
    goes on unwinding in the background (psycopg cancels it, or the connection is
    closed: the pool closes a connection returned while a statement still runs)."""

    def __init__(
        self, conn: psycopg.AsyncConnection[Any], answer_within: float | None = None
    ) -> None:
        self.conn = conn
        self.answer_within = answer_within

    async def run(self, op: Op[T]) -> T:
        if self.answer_within is None:
            return await self._run(op)
        return await answered_within(self._run(op), self.answer_within)

    async def _run(self, op: Op[T]) -> T:
        sql = QUERIES[op.query]
        with translated():
            async with self.conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(sql, op.params)
                rows = await cur.fetchall() if cur.description else []
                result = Result(rows, cur.rowcount)
        return op.decode(result)


# database work given up on (answered_within), still unwinding
_unwinding: set[asyncio.Future[Any]] = set()


async def answered_within(work: Coroutine[Any, Any, T], seconds: float) -> T:
    """The value of WORK (database work) if it comes within SECONDS, else
    DatabaseUnavailable then. WORK is interrupted twice: psycopg answers the first
    interruption by asking the server to cancel the statement (up to 10 s when the
    server hangs, holding the connection), and the second by closing the connection,
    so that the caller's connection is released at once (the pool drops it)."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.wait_for(asyncio.shield(task), seconds)
    except TimeoutError:
        _unwinding.add(task)
        task.add_done_callback(_unwound)
        task.cancel()
        await asyncio.sleep(0)  # (the first interruption reaches it)
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
        raise DatabaseUnavailable(f"the database did not answer within {seconds:g} s") from None
    except asyncio.CancelledError:
        task.cancel()
        raise


def checked_within(
    seconds: float,
) -> Callable[[psycopg.AsyncConnection[Any]], Coroutine[Any, Any, None]]:
    """A pool's ``check``: a connection taken from the pool answers an empty query within
    SECONDS, else it is dropped (after a restart of the database the idle connections
    are broken; a database that hangs would hang an unbounded check too)."""
    from psycopg_pool import AsyncConnectionPool

    async def check(conn: psycopg.AsyncConnection[Any]) -> None:
        await answered_within(AsyncConnectionPool.check_connection(conn), seconds)

    return check


def _unwound(work: asyncio.Future[Any]) -> None:
    _unwinding.discard(work)
    if not work.cancelled():
        work.exception()  # (retrieved: its caller was answered already)


class InRegion(Protocol):
    """A runner bound to one region (its ``name``): what helpers that work on one
    region take (the legacy :class:`dispatcher.region.Region` is one)."""

    @property
    def name(self) -> str: ...

    def run(self, op: Op[T]) -> T: ...
