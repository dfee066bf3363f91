"""The region's procedures as methods, for tests, the bench and interactive use.

:class:`Region` is a thin convenience over :mod:`dispatcher.gateway`: each method
builds an operation of :mod:`dispatcher.gateway.ops` and runs it on a synchronous
:class:`~dispatcher.gateway.Gateway`. It has no raw access by query name. The program
itself (listener, SEPs, CLI, event monitor) uses the gateway directly
(``Gateway(conn).run(ops.request.enqueue(region, "ECHO", data))``);
``tests/test_queries_used.py`` checks that it never imports this module.

The names below (Task, Outcome, Enqueued, enqueue_params, ...) are re-exported from
their new homes in the gateway.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from .gateway import Gateway, ops
from .gateway.op import Op, Row
from .gateway.ops.request import enqueue_many_params, enqueue_params
from .gateway.ops.sep import app_capability
from .gateway.ops.transaction import TRANSACTION_FIELDS
from .gateway.records import Enqueued, Outcome, Task

__all__ = [
    "TRANSACTION_FIELDS",
    "Enqueued",
    "Outcome",
    "Region",
    "Task",
    "app_capability",
    "enqueue_many_params",
    "enqueue_params",
    "jsonb",
]

T = TypeVar("T")


def jsonb(value: Any) -> Jsonb:
    return Jsonb(value)


class Region:
    """LEGACY: the procedures of one region, on a synchronous connection."""

    def __init__(self, conn: psycopg.Connection[Any], region: str) -> None:
        self.conn = conn
        self.name = region
        self.gateway = Gateway(conn)

    def run(self, op: Op[T]) -> T:
        """Run an operation of :mod:`dispatcher.gateway.ops` on this connection."""
        return self.gateway.run(op)

    # regions
    def ensure(self) -> Row:
        return self.run(ops.region.ensure_region(self.name))

    def info(self) -> Row:
        return self.run(ops.region.get_region(self.name))

    def set(
        self,
        *,
        max_seps: int | None = None,
        state: str | None = None,
        aging_ms: int | None = None,
        sep_dead_after_s: float | None = None,
        history_retention_s: float | None = None,
    ) -> Row:
        return self.run(
            ops.region.set_region(
                self.name,
                max_seps=max_seps,
                state=state,
                aging_ms=aging_ms,
                sep_dead_after_s=sep_dead_after_s,
                history_retention_s=history_retention_s,
            )
        )

    def status(self) -> Row:
        return self.run(ops.region.region_status(self.name))

    def reap(self) -> Row:
        return self.run(ops.region.reap(self.name))

    # transactions
    def define_transaction(
        self,
        transid: str,
        program: str | None = None,
        *,
        priority: int | None = 0,
        cls: str | None = None,
        timeout_s: float | None = None,
        max_attempts: int | None = 1,
        retry_backoff_s: float | None = 2.0,
        max_backoff_s: float | None = 3600.0,
        requires: Sequence[str] | None = (),
        description: str | None = "",
        given: Collection[str] | None = None,
        by: str = "operator",
        app: str | None = None,
        release: Collection[str] = (),
    ) -> Row:
        """See :func:`dispatcher.gateway.ops.transaction.define_transaction`."""
        return self.run(
            ops.transaction.define_transaction(
                self.name,
                transid,
                program,
                priority=priority,
                cls=cls,
                timeout_s=timeout_s,
                max_attempts=max_attempts,
                retry_backoff_s=retry_backoff_s,
                max_backoff_s=max_backoff_s,
                requires=requires,
                description=description,
                given=given,
                by=by,
                app=app,
                release=release,
            )
        )

    def transactions(self) -> list[Row]:
        return self.run(ops.transaction.list_transactions(self.name))

    def set_class(self, cls: str, max_active: int) -> Row:
        return self.run(ops.transaction.set_class(self.name, cls, max_active))

    def classes(self) -> list[Row]:
        return self.run(ops.transaction.list_classes(self.name))

    # requests
    def enqueue(self, transid: str, payload: Any = None, **kw: Any) -> Enqueued:
        return self.run(ops.request.enqueue(self.name, transid, payload, **kw))

    def enqueue_many(self, items: Sequence[tuple[str, Any]], **kw: Any) -> list[Enqueued]:
        return self.run(ops.request.enqueue_many(self.name, items, **kw))

    def request(self, request_id: int) -> Row:
        return self.run(ops.request.show_request(self.name, request_id))

    # SEPs
    def register_sep(
        self,
        host: str,
        pid: int,
        capabilities: Sequence[str] = (),
        *,
        standby: bool = False,
        address: str | None = None,
        app: str | None = None,
    ) -> Row:
        """See :func:`dispatcher.gateway.ops.sep.register_sep`."""
        return self.run(
            ops.sep.register_sep(
                self.name, host, pid, capabilities, standby=standby, address=address, app=app
            )
        )

    def claim_next(self, sep: int) -> Task | None:
        return self.run(ops.sep.claim_next(sep))

    def begin(self, sep: int, request_id: int) -> Task:
        return self.run(ops.sep.begin_task(sep, request_id))

    def complete(
        self,
        sep: int,
        task: Task,
        *,
        ok: bool,
        result: Any = None,
        error: Any = None,
        take_next: bool = True,
        next_transid: str | None = None,
        commarea: Any = None,
    ) -> Task | None:
        return self.run(
            ops.sep.complete(
                sep,
                task.request_id,
                task.attempt,
                ok=ok,
                result=result,
                error=error,
                take_next=take_next,
                next_transid=next_transid,
                commarea=commarea,
            )
        )

    def claim_batch(self, sep: int, take: int) -> list[Task]:
        """A batching SEP's work: what it holds, else up to TAKE new requests."""
        return self.run(ops.sep.claim_batch(sep, take))

    def complete_many(
        self,
        sep: int,
        outcomes: Sequence[Outcome | str],
        *,
        clock: float | None = None,
        release: Sequence[int] = (),
        take: int = 0,
        running: int | None = None,
    ) -> list[Task]:
        """See :func:`dispatcher.gateway.ops.sep.complete_many`."""
        return self.run(
            ops.sep.complete_many(
                sep, outcomes, clock=clock, release=release, take=take, running=running
            )
        )

    def heartbeat(self, sep: int) -> Row | None:
        return self.run(ops.sep.heartbeat_sep(sep))

    def leave(self, sep: int) -> int:
        return self.run(ops.sep.leave_sep(sep))

    def control_sep(self, sep: int, action: str) -> Row:
        return self.run(ops.sep.control_sep(sep, action))

    def seps(self) -> list[Row]:
        return self.run(ops.sep.list_seps(self.name))

    # sessions
    def register_session(
        self, listener: UUID | None = None, user: str = "", priority: int = 0
    ) -> UUID:
        return self.run(ops.session.register_session(self.name, listener, user, priority))

    def end_session(self, session: UUID) -> bool:
        return self.run(ops.session.end_session(session))
