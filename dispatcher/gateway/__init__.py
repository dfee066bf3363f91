"""The gateway: the one door to the region database.

- :mod:`.op`: ``Op[T]``, an operation as a value (named query, bound parameters,
  decoder), and the decoders;
- :mod:`.ops`: the operations, one function per named query of ``sql/queries``,
  grouped one module per concept;
- :mod:`.records`: the typed values they return (:class:`Task`, :class:`Enqueued` ...);
- :mod:`.runner`: :class:`Gateway` (sync) and :class:`AsyncGateway` (asyncio), which
  run any operation and translate the database's errors.

Usage::

    from dispatcher.gateway import AsyncGateway, Gateway, ops

    task = Gateway(conn).run(ops.sep.claim_next(sep_id))           # Task | None
    sid = await AsyncGateway(aconn).run(ops.session.register_session("main"))  # UUID
"""

from . import ops
from .op import Op, Result, Row
from .records import (
    DueTimer,
    Enqueued,
    Outcome,
    OverdueSep,
    RequestOutcome,
    SepState,
    SessionNext,
    Task,
    Token,
)
from .runner import (
    AsyncGateway,
    Gateway,
    InRegion,
    RegionGateway,
    answered_within,
    checked_within,
    translated,
)

__all__ = [
    "AsyncGateway",
    "DueTimer",
    "Enqueued",
    "Gateway",
    "InRegion",
    "Op",
    "Outcome",
    "OverdueSep",
    "RegionGateway",
    "RequestOutcome",
    "Result",
    "Row",
    "SepState",
    "SessionNext",
    "Task",
    "Token",
    "answered_within",
    "checked_within",
    "ops",
    "translated",
]
