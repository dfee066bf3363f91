"""The region database's procedures, called from Python.

One method per procedure in ``sql/schema/020_procedures.sql``; the SQL text comes
from ``sql/queries`` by name. :class:`Region` works on a synchronous psycopg
connection, :class:`AsyncRegion` on an asyncio one; both share the argument and
result shapes defined here. Database errors of our own come out as
:class:`dispatcher.errors.DispatcherError` subclasses.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from .errors import UnknownRequest, translate
from .queries import QUERIES
from .values import check_data, check_text, scrub

__all__ = [
    "TRANSACTION_FIELDS",
    "AsyncRegion",
    "Enqueued",
    "Outcome",
    "Region",
    "Task",
    "app_capability",
    "enqueue_params",
    "jsonb",
]

Row = dict[str, Any]


def jsonb(value: Any) -> Jsonb:
    return Jsonb(value)


@dataclass(frozen=True)
class Task:
    """A request handed to a SEP to run."""

    request_id: int
    attempt: int
    transid: str
    program: str | None
    payload: Any
    session_id: UUID | None
    commarea: Any
    timeout_s: float | None
    enqueued_at: dt.datetime

    @classmethod
    def from_row(cls, row: Row) -> Task:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Outcome:
    """How a task of a batch ended, as a batching SEP reports it (complete_many_v1).

    ``started``/``ended``: the SEP's clock (``time.monotonic()``) when the task started
    and ended; the report carries the clock's value at the time of the report, so the
    procedure places them on the server's clock."""

    task: Task
    ok: bool
    result: Any = None
    error: Any = None
    next_transid: str | None = None
    commarea: Any = None
    started: float = 0.0
    ended: float = 0.0

    def encode(self) -> str:
        """The outcome as one element of a report (raises TypeError/ValueError when the
        result or COMMAREA is not JSON)."""
        if self.ok:
            check_data(self.result, "the result")
        if self.commarea is not None:
            check_data(self.commarea, "the COMMAREA")
        return json.dumps(
            {
                "id": self.task.request_id,
                "attempt": self.task.attempt,
                "ok": self.ok,
                "result": self.result,
                "error": scrub(self.error),
                "next_transid": self.next_transid,
                "commarea": self.commarea,
                "started": self.started,
                "ended": self.ended,
            },
            separators=(",", ":"),
        )


@dataclass(frozen=True)
class Enqueued:
    """What the enqueue procedure did with a request.

    ``reason`` is ``dispatched`` (``sep_id`` is the SEP that got it), ``no_idle_sep``,
    ``max_seps``, ``class_full``, ``region_stopping`` or ``duplicate``.
    """

    request_id: int
    sep_id: int | None
    reason: str
    duplicate: bool

    @classmethod
    def from_row(cls, row: Row) -> Enqueued:
        return cls(row["request_id"], row["sep_id"], row["reason"], row["duplicate"])


def enqueue_params(
    region: str,
    transid: str,
    payload: Any = None,
    *,
    session: UUID | None = None,
    user_priority: int = 0,
    idempotency_key: str | None = None,
    deadline: dt.datetime | None = None,
    commarea: Any = None,
    origin: str = "api",
    notify: bool = True,
) -> dict[str, Any]:
    _check_request(transid, payload, idempotency_key)
    if commarea is not None:
        check_data(commarea, "the COMMAREA")
    return {
        "region": region,
        "transid": transid,
        "payload": Jsonb(payload),
        "session": session,
        "user_priority": user_priority,
        "idempotency_key": idempotency_key,
        "deadline": deadline,
        "commarea": None if commarea is None else Jsonb(commarea),
        "origin": origin,
        "notify": notify,
    }


def enqueue_many_params(
    region: str,
    items: Sequence[tuple[str, Any]],
    *,
    sessions: Sequence[UUID | None] | None = None,
    user_priorities: Sequence[int] | None = None,
    idempotency_keys: Sequence[str | None] | None = None,
    origin: str = "api",
    notify: bool = True,
) -> dict[str, Any]:
    keys = list(idempotency_keys) if idempotency_keys is not None else [None] * len(items)
    for (transid, payload), key in zip(items, keys, strict=True):
        _check_request(transid, payload, key)
    return {
        "region": region,
        "transids": [t for t, _ in items],
        "payloads": [Jsonb(p) for _, p in items],
        "sessions": list(sessions) if sessions is not None else None,
        "user_priorities": list(user_priorities) if user_priorities is not None else None,
        "idempotency_keys": list(idempotency_keys) if idempotency_keys is not None else None,
        "origin": origin,
        "notify": notify,
    }


def _check_request(transid: str, payload: Any, idempotency_key: str | None) -> None:
    """The limits of dispatcher.values, checked before anything reaches the database."""
    check_text(transid, "the transaction id")
    check_data(payload)
    if idempotency_key is not None:
        check_text(idempotency_key, "the idempotency key")


# The fields of a transaction definition, as define_transaction_v2 names them.
TRANSACTION_FIELDS = (
    "program",
    "priority",
    "class",
    "timeout",
    "max_attempts",
    "retry_backoff",
    "max_backoff",
    "requires",
    "description",
)


def app_capability(app: str) -> str:
    """The capability of SEPs running app module APP, required by the transactions
    that ``tx sync --app APP`` stores."""
    return f"app:{app}"


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        mine = translate(exc)
        if mine is None:
            raise
        raise mine from exc


class Region:
    """The procedures of one region, on a synchronous connection (dict rows)."""

    def __init__(self, conn: psycopg.Connection[Any], region: str) -> None:
        self.conn = conn
        self.name = region

    def rows(self, query: str, **params: Any) -> list[Row]:
        with _translated(), self.conn.cursor() as cur:
            cur.execute(QUERIES[query], params)
            return [dict(r) for r in cur.fetchall()] if cur.description else []

    def row(self, query: str, **params: Any) -> Row | None:
        found = self.rows(query, **params)
        return found[0] if found else None

    def _one(self, query: str, **params: Any) -> Row:
        found = self.row(query, **params)
        assert found is not None, f"{query} returned no row"
        return found

    # regions
    def ensure(self) -> Row:
        return self._one("ensure_region", region=self.name)

    def info(self) -> Row:
        return self._one("get_region", region=self.name)

    def set(
        self,
        *,
        max_seps: int | None = None,
        state: str | None = None,
        aging_ms: int | None = None,
        sep_dead_after_s: float | None = None,
        history_retention_s: float | None = None,
    ) -> Row:
        return self._one(
            "set_region",
            region=self.name,
            max_seps=max_seps,
            state=state,
            aging_ms=aging_ms,
            sep_dead_after_s=sep_dead_after_s,
            history_retention_s=history_retention_s,
        )

    def status(self) -> Row:
        return self._one("region_status", region=self.name)

    def reap(self) -> Row:
        return self._one("reap", region=self.name)

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
        """Define or redefine TRANSID (define_transaction_v2).

        ``given``: the fields this call sets (names in :data:`TRANSACTION_FIELDS`;
        default: all of them); the others keep their value, or their default for a new
        transaction. ``by="operator"`` (``tx define``) records the fields given as the
        operator's, which ``by="app"`` (``tx sync``) then leaves alone; ``app``: with
        ``by="app"``, the app module that declares the transaction (its requests then
        need the SEP capability ``app:MODULE``). ``release``: fields an operator hands
        back to the app."""
        return self._one(
            "define_transaction",
            region=self.name,
            transid=transid,
            given=list(TRANSACTION_FIELDS if given is None else given),
            by=by,
            program=program,
            priority=priority,
            **{"class": cls},
            timeout_s=timeout_s,
            max_attempts=max_attempts,
            retry_backoff_s=retry_backoff_s,
            max_backoff_s=max_backoff_s,
            requires=None if requires is None else list(requires),
            description=description,
            app=app,
            release=list(release),
        )

    def transactions(self) -> list[Row]:
        return self.rows("list_transactions", region=self.name)

    def set_class(self, cls: str, max_active: int) -> Row:
        return self._one("set_class", region=self.name, **{"class": cls}, max_active=max_active)

    def classes(self) -> list[Row]:
        return self.rows("list_classes", region=self.name)

    # requests
    def enqueue(self, transid: str, payload: Any = None, **kw: Any) -> Enqueued:
        return Enqueued.from_row(
            self._one("enqueue", **enqueue_params(self.name, transid, payload, **kw))
        )

    def enqueue_many(self, items: Sequence[tuple[str, Any]], **kw: Any) -> list[Enqueued]:
        rows = self.rows("enqueue_many", **enqueue_many_params(self.name, items, **kw))
        return [Enqueued.from_row(r) for r in rows]

    def request(self, request_id: int) -> Row:
        found = self.row("show_request", region=self.name, id=request_id)
        if found is None:
            raise UnknownRequest(f"unknown request {request_id} in region {self.name!r}")
        return found

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
        """Register a SEP. ``app``: the app module it runs; it then also has the
        capability ``app:MODULE`` that ``tx sync --app MODULE`` makes the app's
        transactions require (see :func:`app_capability`)."""
        caps = list(capabilities)
        if app is not None and app_capability(app) not in caps:
            caps.append(app_capability(app))
        return self._one(
            "register_sep",
            region=self.name,
            host=host,
            pid=pid,
            capabilities=caps,
            standby=standby,
            address=address,
        )

    def claim_next(self, sep: int) -> Task | None:
        found = self.row("claim_next", sep=sep)
        return Task.from_row(found) if found else None

    def begin(self, sep: int, request_id: int) -> Task:
        return Task.from_row(self._one("begin_task", sep=sep, request=request_id))

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
        if ok:
            check_data(result, "the result")
        if commarea is not None:
            check_data(commarea, "the COMMAREA")
        found = self.row(
            "complete",
            sep=sep,
            request=task.request_id,
            attempt=task.attempt,
            ok=ok,
            result=Jsonb(result),
            error=None if error is None else Jsonb(scrub(error)),
            take_next=take_next,
            next_transid=next_transid,
            commarea=None if commarea is None else Jsonb(commarea),
        )
        return Task.from_row(found) if found else None

    def claim_batch(self, sep: int, take: int) -> list[Task]:
        """A batching SEP's work: what it holds, else up to TAKE new requests."""
        return [Task.from_row(r) for r in self.rows("claim_batch", sep=sep, take=take)]

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
        """Report a batch's outcomes (each an Outcome, or one already encoded) in one
        call; CLOCK: the SEP's clock now (default: time.monotonic()); with TAKE > 0 also
        get the next batch; RUNNING: a held request the SEP starts now."""
        report = "[" + ",".join(o if isinstance(o, str) else o.encode() for o in outcomes) + "]"
        found = self.rows(
            "complete_many",
            sep=sep,
            report=report,
            clock=time.monotonic() if clock is None else clock,
            release=list(release),
            take=take,
            running=running,
        )
        return [Task.from_row(r) for r in found]

    def heartbeat(self, sep: int) -> Row | None:
        return self.row("heartbeat_sep", sep=sep)

    def leave(self, sep: int) -> int:
        return int(self._one("leave_sep", sep=sep)["requeued"])

    def control_sep(self, sep: int, action: str) -> Row:
        return self._one("control_sep", sep=sep, action=action)

    def seps(self) -> list[Row]:
        return self.rows("list_seps", region=self.name)

    # sessions
    def register_session(
        self, listener: UUID | None = None, user: str = "", priority: int = 0
    ) -> UUID:
        row = self._one(
            "register_session", region=self.name, listener=listener, user=user, priority=priority
        )
        return UUID(str(row["id"]))

    def end_session(self, session: UUID) -> bool:
        return bool(self._one("end_session", session=session)["ended"])


class AsyncRegion:
    """The procedures a listener needs, on an asyncio connection (dict rows)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], region: str) -> None:
        self.conn = conn
        self.name = region

    async def rows(self, query: str, **params: Any) -> list[Row]:
        with _translated():
            async with self.conn.cursor() as cur:
                await cur.execute(QUERIES[query], params)
                return [dict(r) for r in await cur.fetchall()] if cur.description else []

    async def _one(self, query: str, **params: Any) -> Row:
        found = await self.rows(query, **params)
        assert found, f"{query} returned no row"
        return found[0]

    async def enqueue(self, transid: str, payload: Any = None, **kw: Any) -> Enqueued:
        row = await self._one("enqueue", **enqueue_params(self.name, transid, payload, **kw))
        return Enqueued.from_row(row)

    async def enqueue_many(self, items: Sequence[tuple[str, Any]], **kw: Any) -> list[Enqueued]:
        rows = await self.rows("enqueue_many", **enqueue_many_params(self.name, items, **kw))
        return [Enqueued.from_row(r) for r in rows]

    async def register_session(
        self, listener: UUID | None = None, user: str = "", priority: int = 0
    ) -> UUID:
        row = await self._one(
            "register_session", region=self.name, listener=listener, user=user, priority=priority
        )
        return UUID(str(row["id"]))

    async def end_session(self, session: UUID) -> bool:
        return bool((await self._one("end_session", session=session))["ended"])

    async def request(self, request_id: int) -> Row:
        found = await self.rows("show_request", region=self.name, id=request_id)
        if not found:
            raise UnknownRequest(f"unknown request {request_id} in region {self.name!r}")
        return found[0]
