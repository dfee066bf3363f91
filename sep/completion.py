"""How a SEP reports the outcome of a task and gets its next work.

``Completion`` is what the worker's loop talks to: ``claim`` (what the SEP holds,
else new work), ``step`` (run a task, report its outcome, say what to run next) and
``hand_back`` (the SEP stops). Two implementations:

- ``OneByOne`` (here): each outcome with ``complete_v1``, which returns the next task
  in the same round trip;
- ``Batch`` (sep/batch.py, ``sep start --batch K``): K requests per claim, outcomes
  buffered and reported together with ``complete_many_v1``.

Neither knows the worker: what they use of their SEP is ``Host``. The errors of a
completion call are turned into their action in one place, ``Completion._settle``.
"""

from __future__ import annotations

import collections
import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Protocol, TypeVar
from uuid import UUID

import psycopg

from dispatcher.channel import ChannelError, encode_frame
from dispatcher.errors import CompletionRefused, DatabaseUnavailable, DispatcherError
from dispatcher.gateway import Gateway, Op, Task, ops

from .conversation import Conversation, ConversationError
from .ran import Ran

__all__ = ["Completion", "Fault", "Host", "OneByOne", "Todo"]

T = TypeVar("T")
Todo = collections.deque[Task]
_DB_LOST = (psycopg.OperationalError, DatabaseUnavailable)


class Host(Protocol):
    """What a completion may use of the SEP it serves, and nothing more."""

    @property
    def sep_id(self) -> int: ...

    @property
    def log(self) -> Any: ...

    @property
    def stopping(self) -> bool:
        """A stop was asked: take no more work."""
        ...

    dead: bool  # the database declared this SEP dead (a completion may find it out)

    def db(self, op: Op[T]) -> T:
        """Run OP on the SEP's connection, riding out a database restart (reconnect)."""
        ...

    def gateway(self) -> Gateway:
        """The gateway on the SEP's connection, as it is (no retry)."""
        ...

    def reconnect(self) -> None:
        """The connection was lost: open a new one (the open transaction is gone)."""
        ...

    def run_task(
        self,
        task: Task,
        before_tx: Callable[[], None] | None = None,
        before_wait: Callable[[], None] | None = None,
    ) -> Ran | None:
        """Run TASK's program; None if the database was lost meanwhile (reconnected:
        the SEP still holds the task). BEFORE_TX: called before the program's database
        transaction begins; BEFORE_WAIT: before its conversation waits for input."""
        ...

    def forget_listener(self, session: UUID) -> None:
        """The listener of SESSION could not be reached: look it up afresh next time."""
        ...


class Fault(enum.Enum):
    """How a completion call went wrong (``Completion._settle``)."""

    REFUSED = "refused"  # the database refused it: claim afresh (unless declared dead)
    LOST = "lost"  # the database was lost (reconnected): the task(s) run again
    FAILED = "failed"  # the outcome could not be committed (e.g. not JSON, broken tx)


class Completion(ABC):
    """How a SEP reports the outcome of a task and gets its next work."""

    # errors of a completion call that fail the outcome (not the SEP)
    failures: ClassVar[tuple[type[Exception], ...]] = (psycopg.Error, DispatcherError)

    def __init__(self, host: Host) -> None:
        self.host = host

    @abstractmethod
    def claim(self) -> list[Task]:
        """What this SEP holds, else new work."""

    @abstractmethod
    def step(self, task: Task, todo: Todo) -> Todo:
        """Run TASK (TODO: what else is in hand), report its outcome now or later;
        return what to run next."""

    @abstractmethod
    def hand_back(self, todo: Iterable[Task]) -> None:
        """The SEP stops (not declared dead): report what ran, hand back TODO."""

    # ---------------------------------------------------------------- shared
    def _settle(self, call: Callable[[], T], ran: Ran | None = None, **fields: Any) -> T | Fault:
        """Make the completion CALL (of RAN, or of the buffered outcomes when None) and
        turn its errors into the right action; FIELDS go with the refused and failed
        log events.

        - refused: the program's transaction is rolled back and the SEP asks the
          database whether it was declared dead -> ``Fault.REFUSED`` (claim afresh);
        - database lost: reconnect -> ``Fault.LOST`` (claim what the SEP holds: the
          task runs again);
        - one of ``failures``: the program's transaction is rolled back and RAN abends
          with the error -> ``Fault.FAILED`` (report the abend).
        """
        log = self.host.log if ran is None else ran.log
        try:
            return call()
        except CompletionRefused as exc:
            log.error("completion_refused", error=str(exc), **fields)
            if ran is not None:
                ran.rollback()
            self._check_alive()
            return Fault.REFUSED
        except _DB_LOST as exc:
            log.warning("database_lost_at_completion", error=str(exc).strip())
            self.host.reconnect()
            return Fault.LOST
        except self.failures as exc:
            if ran is not None:
                ran.rollback()
            log.error("completion_failed", error=str(exc), **fields)
            if ran is not None:
                ran.abend(exc, "")
            return Fault.FAILED

    def _log_retry(self, ran: Ran) -> None:
        """After an abend: when its transaction's retry policy runs it again, say when
        (``request_retry_scheduled``, with the delay); else it failed for good."""
        try:
            retry = self.host.gateway().run(ops.request.retry_of(ran.task.request_id))
        except Exception as exc:  # a log line is never worth a task
            ran.log.warning("retry_unknown", error=str(exc).strip())
            return
        if retry is None:
            ran.log.warning("request_failed", attempt=ran.task.attempt)
        else:
            ran.log.info(
                "request_retry_scheduled",
                next_attempt=retry["next_attempt"],
                retry_in_s=round(float(retry["retry_in_s"]), 3),
            )

    def _check_alive(self) -> None:
        """After a refusal: was this SEP declared dead?"""
        h = self.host
        state = h.db(ops.sep.sep_state(h.sep_id))
        if state is None or state.state == "dead":
            h.dead = True

    def _finished(self, rans: Sequence[Ran]) -> None:
        """Log the tasks whose outcomes are committed, and tell their listeners: the ends
        for one listener go in one write."""
        ends: dict[str, list[tuple[Ran, Conversation, bytes]]] = {}
        for ran in rans:
            self._log_finished(ran)
            c = ran.conversation
            if c is None or not c.address:  # (no listener: the session ended before)
                continue
            try:
                frame = encode_frame(c.end_message(ran.ok, ran.result, ran.error, ran.next_transid))
            except ChannelError as exc:  # a result over the channel's limit: the outcome
                ran.log.warning("end_not_sent", error=str(exc))  # poll answers its client
                continue
            ends.setdefault(c.address, []).append((ran, c, frame))
        for address, group in ends.items():
            try:
                group[0][1].links.send_frames(address, b"".join(f for _, _, f in group))
            except ConversationError as exc:
                # the session may have moved to another listener: forget it; the
                # listener's outcome poll answers the client anyway
                for r, c, _ in group:
                    self.host.forget_listener(c.session_id)
                    r.log.warning("listener_unreachable", error=str(exc))

    def _log_finished(self, ran: Ran) -> None:
        elapsed_ms = round((ran.ended - ran.started) * 1000, 3)
        if ran.ok:
            ran.log.info("request_done", ms=elapsed_ms)
        else:
            error = ran.error or {}
            ran.log.warning(
                "request_abended",
                ms=elapsed_ms,
                error_type=error.get("type"),
                error=error.get("message"),
            )
            self._log_retry(ran)


class OneByOne(Completion):
    """One request per claim; each outcome committed with ``complete_v1``, which
    returns the next task in the same round trip."""

    # a result that is not JSON is found as the outcome is sent
    failures = (psycopg.Error, DispatcherError, TypeError, ValueError)

    def claim(self) -> list[Task]:
        task = self._claim_next()
        return [] if task is None else [task]

    def step(self, task: Task, todo: Todo) -> Todo:
        nxt = self._execute(task)
        todo.extend([] if nxt is None else [nxt])
        return todo

    def hand_back(self, todo: Iterable[Task]) -> None:
        """Nothing to report: the SEP leaving hands back what it holds."""

    def _claim_next(self) -> Task | None:
        return self.host.db(ops.sep.claim_next(self.host.sep_id))

    def _execute(self, task: Task) -> Task | None:
        """Run one task and complete it; return the next task (same round trip)."""
        ran = self.host.run_task(task)
        if ran is None:
            return self._claim_next()  # re-runs the task we hold
        nxt = self._settle(lambda: self._complete(ran), ran)
        if nxt is Fault.REFUSED:
            return None if self.host.dead else self._claim_next()
        if nxt is Fault.LOST:
            return self._claim_next()  # the task runs again
        if nxt is Fault.FAILED:
            nxt = self._complete_abend(ran)  # abended by _settle, its writes undone
        self._finished([ran])
        return nxt

    def _complete(self, ran: Ran) -> Task | None:
        if not ran.ok:
            return self._complete_abend(ran)
        nxt = self.host.gateway().run(
            ops.sep.complete(
                self.host.sep_id,
                ran.task.request_id,
                ran.task.attempt,
                ok=True,
                result=ran.result,
                take_next=not self.host.stopping,
                next_transid=ran.next_transid,
                commarea=ran.commarea,
            )
        )
        ran.commit()
        return nxt

    def _complete_abend(self, ran: Ran) -> Task | None:
        """Report an abend (outside the program's rolled-back transaction)."""
        return self.host.db(
            ops.sep.complete(
                self.host.sep_id,
                ran.task.request_id,
                ran.task.attempt,
                ok=False,
                error=ran.error,
                take_next=not self.host.stopping,
            )
        )
