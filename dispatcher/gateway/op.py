"""A database operation as a value: ``Op[T]`` = a named query, its bound parameters,
and the decoder that turns what the query returned into a ``T``.

An operation is built by a plain function of :mod:`dispatcher.gateway.ops` and run by
a runner (:class:`~dispatcher.gateway.runner.Gateway` on a synchronous connection,
:class:`~dispatcher.gateway.runner.AsyncGateway` on an asyncio one); building one
touches no connection, so each operation is written once and runs both ways.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = [
    "Op",
    "Result",
    "Row",
    "all_rows",
    "each",
    "nothing",
    "one",
    "one_row",
    "optional",
    "rowcount",
    "scalar",
]

T = TypeVar("T")
U = TypeVar("U")

Row = dict[str, Any]


@dataclass(frozen=True)
class Result:
    """What a statement returned: its rows (as dicts; none for a statement without
    result columns) and its row count (rows changed by an UPDATE, DELETE, INSERT)."""

    rows: list[Row]
    rowcount: int


@dataclass(frozen=True)
class Op(Generic[T]):
    """One run of the named query QUERY (``sql/queries``) with PARAMS bound, decoded
    into a T by DECODE. Every value reaches the database as a bound parameter."""

    query: str
    params: Mapping[str, Any]
    decode: Callable[[Result], T]

    def map(self, fn: Callable[[T], U]) -> Op[U]:
        """The same statement, its decoded value passed through FN."""
        decode = self.decode
        return Op(self.query, self.params, lambda r: fn(decode(r)))


# Decoders ---------------------------------------------------------------------------


def all_rows(result: Result) -> list[Row]:
    return result.rows


def rowcount(result: Result) -> int:
    return result.rowcount


def nothing(result: Result) -> None:
    return None


def one(query: str, fn: Callable[[Row], T]) -> Callable[[Result], T]:
    """Exactly one row is expected (a procedure's result), decoded by FN."""

    def decode(result: Result) -> T:
        assert result.rows, f"{query} returned no row"
        return fn(result.rows[0])

    return decode


def optional(fn: Callable[[Row], T]) -> Callable[[Result], T | None]:
    """The first row decoded by FN, or None when there is none."""

    def decode(result: Result) -> T | None:
        return fn(result.rows[0]) if result.rows else None

    return decode


def each(fn: Callable[[Row], T]) -> Callable[[Result], list[T]]:
    """Every row, decoded by FN."""

    def decode(result: Result) -> list[T]:
        return [fn(r) for r in result.rows]

    return decode


def one_row(query: str) -> Callable[[Result], Row]:
    """Exactly one row is expected, returned as it is."""
    return one(query, _same)


def _same(row: Row) -> Row:
    return row


def scalar(query: str, column: str, kind: Callable[[Any], T]) -> Callable[[Result], T]:
    """The value of COLUMN in the one row, converted by KIND (int, bool, str ...)."""
    return one(query, lambda row: kind(row[column]))
