"""The two runners of operations: :class:`Gateway` on a synchronous psycopg
connection, :class:`AsyncGateway` on an asyncio one.

``run(op)`` executes the operation's named query with its bound parameters on the
connection (in its current transaction, if one is open), and returns the decoded
value. A database error of the dispatcher's own comes out as its
:class:`dispatcher.errors.DispatcherError` subclass: that translation happens here
and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import psycopg
from psycopg.rows import dict_row

from ..errors import translate
from ..queries import QUERIES
from .op import Op, Result

__all__ = ["AsyncGateway", "Gateway", "InRegion", "RegionGateway", "translated"]

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
    """Runs operations on an asyncio connection (any row factory)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def run(self, op: Op[T]) -> T:
        sql = QUERIES[op.query]
        with translated():
            async with self.conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(sql, op.params)
                rows = await cur.fetchall() if cur.description else []
                result = Result(rows, cur.rowcount)
        return op.decode(result)


class InRegion(Protocol):
    """A runner bound to one region (its ``name``): what helpers that work on one
    region take (the legacy :class:`dispatcher.region.Region` is one)."""

    @property
    def name(self) -> str: ...

    def run(self, op: Op[T]) -> T: ...
