"""The values the operations return: what the procedures hand back, as typed records.

:class:`Task`, :class:`Outcome`, :class:`Enqueued` are the dispatcher's own vocabulary;
the small records below them are the rows that programs read field by field.
Listings meant for people (``tx list``, ``sep list``, status, stats) stay dict rows.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any
from uuid import UUID

from ..values import check_data, scrub
from .op import Row

__all__ = [
    "DueTimer",
    "Enqueued",
    "Outcome",
    "OverdueSep",
    "RequestOutcome",
    "SepState",
    "SessionNext",
    "Task",
    "Token",
]


def _uuid(value: Any) -> UUID | None:
    return None if value is None or isinstance(value, UUID) else UUID(str(value))


def _time(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


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
    def from_row(cls, row: Mapping[str, Any]) -> Task:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})

    @classmethod
    def decode(cls, value: Any) -> Task | None:
        """A task carried in one column: a JSON object (or its text), a record
        (a sequence in field order) or an object with the fields; None stays None."""
        if value is None:
            return None
        if isinstance(value, str | bytes):
            value = json.loads(value)
        names = [f.name for f in fields(cls)]
        if isinstance(value, Mapping):
            raw = {k: value[k] for k in names}
        elif isinstance(value, Sequence):
            raw = dict(zip(names, value, strict=True))
        else:
            raw = {k: getattr(value, k) for k in names}
        return cls(
            request_id=int(raw["request_id"]),
            attempt=int(raw["attempt"]),
            transid=str(raw["transid"]),
            program=None if raw["program"] is None else str(raw["program"]),
            payload=raw["payload"],
            session_id=_uuid(raw["session_id"]),
            commarea=raw["commarea"],
            timeout_s=_float(raw["timeout_s"]),
            enqueued_at=_time(raw["enqueued_at"]),
        )


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
    ``max_seps``, ``class_full``, ``region_stopping`` or ``duplicate``. ``task`` and
    ``sep_address``: when the procedure returns them (columns ``task`` and
    ``sep_address``), the task as the SEP runs it and the SEP's channel address, so
    that a listener hands the task over in one call; None otherwise.
    """

    request_id: int
    sep_id: int | None
    reason: str
    duplicate: bool
    task: Task | None = None
    sep_address: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Enqueued:
        address = row.get("sep_address")
        return cls(
            row["request_id"],
            row["sep_id"],
            row["reason"],
            row["duplicate"],
            Task.decode(row.get("task")),
            None if address is None else str(address),
        )


@dataclass(frozen=True)
class Token:
    """A client token's rights (never the token: only its hash is stored)."""

    name: str
    allow: list[str] | None
    priority: int

    @classmethod
    def from_row(cls, row: Row) -> Token:
        allow = row["allow"]
        return cls(str(row["name"]), None if allow is None else list(allow), int(row["priority"]))


@dataclass(frozen=True)
class SessionNext:
    """A session's pseudo-conversation: the transaction its next input goes to."""

    next_transid: str | None
    commarea: Any

    @classmethod
    def from_row(cls, row: Row) -> SessionNext:
        return cls(row["next_transid"], row["commarea"])


@dataclass(frozen=True)
class RequestOutcome:
    """A finished request, as its history keeps it."""

    id: int
    state: str
    result: Any
    error: Any

    @classmethod
    def from_row(cls, row: Row) -> RequestOutcome:
        return cls(int(row["id"]), str(row["state"]), row["result"], row["error"])


@dataclass(frozen=True)
class SepState:
    state: str
    paused: bool
    stop_requested: bool
    standby: bool

    @classmethod
    def from_row(cls, row: Row) -> SepState:
        return cls(
            str(row["state"]),
            bool(row["paused"]),
            bool(row["stop_requested"]),
            bool(row["standby"]),
        )


@dataclass(frozen=True)
class OverdueSep:
    """A SEP whose current task ran past its timeout plus the grace (the watchdog)."""

    sep_id: int
    pid: int
    request_id: int
    attempt: int
    timeout_s: float

    @classmethod
    def from_row(cls, row: Row) -> OverdueSep:
        return cls(
            int(row["sep_id"]),
            int(row["pid"]),
            int(row["request_id"]),
            int(row["attempt"]),
            float(row["timeout_s"]),
        )


@dataclass(frozen=True)
class DueTimer:
    """A due timer, claimed (locked) by a monitor; ``now``: the database clock at the
    claim, ``lag_ms``: how late it is then."""

    id: int
    region: str
    reqid: str
    transid: str
    payload: Any
    priority: int
    due_at: dt.datetime
    cron: str | None
    tz: str | None
    now: dt.datetime
    lag_ms: float

    @classmethod
    def from_row(cls, row: Row) -> DueTimer:
        return cls(
            int(row["id"]),
            str(row["region"]),
            str(row["reqid"]),
            str(row["transid"]),
            row["payload"],
            int(row["priority"]),
            row["due_at"],
            row["cron"],
            row["tz"],
            row["now"],
            float(row["lag_ms"]),
        )
