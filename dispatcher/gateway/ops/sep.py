"""SEPs: register, claim and complete tasks, heartbeat, leave, control; the
supervisor's and the watchdog's queries (sql/queries/sep.sql)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from ...values import check_data, scrub
from ..op import Op, Result, Row, all_rows, each, nothing, one, one_row, optional, scalar
from ..records import Outcome, OverdueSep, SepState, Task

__all__ = [
    "active_seps",
    "app_capability",
    "async_commit",
    "begin_task",
    "bound_waits",
    "claim_batch",
    "claim_next",
    "complete",
    "complete_many",
    "control_sep",
    "end_backend",
    "heartbeat_sep",
    "leave_sep",
    "list_seps",
    "overdue_seps",
    "register_sep",
    "sample_done_count",
    "sep_of_process",
    "sep_state",
    "session_listener_address",
]


def app_capability(app: str) -> str:
    """The capability of SEPs running app module APP, required by the transactions
    that ``tx sync --app APP`` stores."""
    return f"app:{app}"


def _address(result: Result) -> str | None:
    if not result.rows or not result.rows[0]["address"]:
        return None
    return str(result.rows[0]["address"])


def register_sep(
    region: str,
    host: str,
    pid: int,
    capabilities: Sequence[str] = (),
    *,
    standby: bool = False,
    address: str | None = None,
    app: str | None = None,
) -> Op[Row]:
    """Register a SEP. ``app``: the app module it runs; it then also has the
    capability ``app:MODULE`` that ``tx sync --app MODULE`` makes the app's
    transactions require (see :func:`app_capability`)."""
    caps = list(capabilities)
    if app is not None and app_capability(app) not in caps:
        caps.append(app_capability(app))
    params = {
        "region": region,
        "host": host,
        "pid": pid,
        "capabilities": caps,
        "standby": standby,
        "address": address,
    }
    return Op("register_sep", params, one_row("register_sep"))


def claim_next(sep: int) -> Op[Task | None]:
    return Op("claim_next", {"sep": sep}, optional(Task.from_row))


def begin_task(sep: int, request_id: int) -> Op[Task]:
    """The SEP starts the request handed to it (dispatched)."""
    params = {"sep": sep, "request": request_id}
    return Op("begin_task", params, one("begin_task", Task.from_row))


def complete(
    sep: int,
    request_id: int,
    attempt: int,
    *,
    ok: bool,
    result: Any = None,
    error: Any = None,
    take_next: bool = True,
    next_transid: str | None = None,
    commarea: Any = None,
) -> Op[Task | None]:
    """The SEP's task ended; with TAKE_NEXT, its next task (or None)."""
    if ok:
        check_data(result, "the result")
    if commarea is not None:
        check_data(commarea, "the COMMAREA")
    params = {
        "sep": sep,
        "request": request_id,
        "attempt": attempt,
        "ok": ok,
        "result": Jsonb(result),
        "error": None if error is None else Jsonb(scrub(error)),
        "take_next": take_next,
        "next_transid": next_transid,
        "commarea": None if commarea is None else Jsonb(commarea),
    }
    return Op("complete", params, optional(Task.from_row))


def claim_batch(sep: int, take: int) -> Op[list[Task]]:
    """A batching SEP's work: what it holds, else up to TAKE new requests."""
    return Op("claim_batch", {"sep": sep, "take": take}, each(Task.from_row))


def complete_many(
    sep: int,
    outcomes: Sequence[Outcome | str],
    *,
    clock: float | None = None,
    release: Sequence[int] = (),
    take: int = 0,
    running: int | None = None,
) -> Op[list[Task]]:
    """Report a batch's outcomes (each an Outcome, or one already encoded) in one
    call; CLOCK: the SEP's clock now (default: time.monotonic()); with TAKE > 0 also
    get the next batch; RUNNING: a held request the SEP starts now."""
    report = "[" + ",".join(o if isinstance(o, str) else o.encode() for o in outcomes) + "]"
    params = {
        "sep": sep,
        "report": report,
        "clock": time.monotonic() if clock is None else clock,
        "release": list(release),
        "take": take,
        "running": running,
    }
    return Op("complete_many", params, each(Task.from_row))


def heartbeat_sep(sep: int) -> Op[Row | None]:
    """The SEP is alive; its orders (state, paused, stop_requested, standby ...)."""
    return Op("heartbeat_sep", {"sep": sep}, optional(dict))


def leave_sep(sep: int) -> Op[int]:
    """The SEP leaves; how many requests it held went back to the queue."""
    return Op("leave_sep", {"sep": sep}, scalar("leave_sep", "requeued", int))


def control_sep(sep: int, action: str) -> Op[Row]:
    """pause, resume, stop or kill a SEP (lost: as kill, its process ended)."""
    return Op("control_sep", {"sep": sep, "action": action}, one_row("control_sep"))


def list_seps(region: str) -> Op[list[Row]]:
    return Op("list_seps", {"region": region}, all_rows)


def session_listener_address(session: UUID | None) -> Op[str | None]:
    """The channel address of the listener holding SESSION (None: none known)."""
    return Op("session_listener_address", {"session": session}, _address)


def sep_state(sep: int) -> Op[SepState | None]:
    return Op("sep_state", {"sep": sep}, optional(SepState.from_row))


def active_seps(region: str) -> Op[int]:
    """SEPs that hold a slot of the region's max SEPs."""
    return Op("active_seps", {"region": region}, scalar("active_seps", "n", int))


def sample_done_count(region: str, transid: str) -> Op[int]:
    """Finished (done) requests of TRANSID: the sample app's COUNT program."""
    params = {"region": region, "transid": transid}
    return Op("sample_done_count", params, scalar("sample_done_count", "n", int))


def async_commit() -> Op[None]:
    """This connection's commits stop waiting for the WAL flush (``--async-commit``)."""
    return Op("async_commit", {}, nothing)


def bound_waits(seconds: float) -> Op[None]:
    """No lock or statement on this connection waits longer than SECONDS."""
    return Op("bound_waits", {"ms": str(max(1, int(seconds * 1000)))}, nothing)


def sep_of_process(region: str, host: str, pid: int) -> Op[int | None]:
    """The live SEP that process PID on HOST registered."""
    params = {"region": region, "host": host, "pid": pid}
    return Op("sep_of_process", params, optional(lambda row: int(row["id"])))


def overdue_seps(region: str, host: str, pids: Sequence[int], grace: float) -> Op[list[OverdueSep]]:
    """Among the SEPs of processes PIDS on HOST, those whose task overran its timeout
    plus GRACE seconds."""
    params = {"region": region, "host": host, "pids": list(pids), "grace": grace}
    return Op("overdue_seps", params, each(OverdueSep.from_row))


def end_backend(pid: int) -> Op[bool]:
    """End the database backend PID (its transaction rolls back)."""
    return Op("end_backend", {"pid": pid}, scalar("end_backend", "ended", bool))
