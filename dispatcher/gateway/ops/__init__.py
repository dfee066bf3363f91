"""The database operations, one module per concept (as ``sql/queries`` groups them):
one function per named query, each returning an :class:`~dispatcher.gateway.op.Op`.

Run one with ``Gateway(conn).run(op)`` or ``await AsyncGateway(conn).run(op)``::

    from dispatcher.gateway import Gateway, ops

    e = Gateway(conn).run(ops.request.enqueue("main", "ECHO", {"x": 1}))
"""

from . import (
    listener,
    metrics,
    migrate,
    region,
    request,
    role,
    sep,
    session,
    stats,
    status_page,
    timer,
    transaction,
)

__all__ = [
    "listener",
    "metrics",
    "migrate",
    "region",
    "request",
    "role",
    "sep",
    "session",
    "stats",
    "status_page",
    "timer",
    "transaction",
]
