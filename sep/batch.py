"""A batching SEP (``sep start --batch K``): its next K requests in one call, the
outcomes of the tasks it ran reported in one call that also takes the next K.

It still runs one task at a time. What changes is when an outcome is committed:

- a task that does not touch ``ctx.db`` has its outcome buffered; the buffer is
  reported when the batch in hand is used up (that call also takes the next batch),
  before a task starts if the oldest buffered outcome has waited ``window`` seconds
  or the task's transaction is not known to run faster than ``window`` (its last
  run here took longer, or it has not run here yet), before a conversation waits
  for input, and when the SEP stops (handing back what it never started);
- a task that uses ``ctx.db`` first reports the buffer, then commits its own outcome
  in its own transaction, with its writes (the syncpoint is per task, as without
  batching);
- the client of a task hears its outcome only once the outcome is committed.

A SEP that dies loses the outcomes it had not reported: those requests run again
(at-least-once). See docs/sep.md, "Batches".
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Sequence

from dispatcher.gateway import Task, ops

from .completion import Completion, Fault, Host, Todo
from .ran import Ran

__all__ = ["Batch"]


class Batch(Completion):
    """The batch a SEP has in hand and the outcomes it has not reported yet: the
    batched ``Completion`` (sep/completion.py)."""

    def __init__(self, host: Host, size: int, window: float) -> None:
        super().__init__(host)
        self.size = size
        self.window = window
        self.buffer: list[Ran] = []
        self.last_run: dict[str, float] = {}  # transid -> seconds its last run took

    # ------------------------------------------------------------------ steps
    def claim(self) -> list[Task]:
        return self.host.db(ops.sep.claim_batch(self.host.sep_id, self.size))

    def step(self, task: Task, todo: Todo) -> Todo:
        """Run TASK (the rest of the batch is TODO); return what to run next."""
        if self.buffer and self._due(task):
            if self.report(take=0, running=task.request_id) is None:
                return self.reclaim()
        ran = self.host.run_task(task, before_tx=self._before_tx, before_wait=self._before_wait)
        if ran is None:
            return self.reclaim()
        if len(self.last_run) > 10_000:
            self.last_run.clear()
        self.last_run[task.transid] = ran.ended - ran.started
        _encode(ran)
        take = 0 if todo or self.host.stopping else self.size
        if ran.tx:
            nxt = self._report_own(ran, take)
        else:
            self.buffer.append(ran)
            nxt = self.report(take=take) if take else []
        if nxt is None:
            return self.reclaim()
        todo.extend(nxt)
        return todo

    def hand_back(self, todo: Iterable[Task]) -> None:
        """The SEP stops: report what ran, hand back what never started."""
        release = [t.request_id for t in todo]
        if self.buffer or release:
            self.report(take=0, release=release)

    def reclaim(self) -> Todo:
        """After a lost database or a refused report: start again from what the
        database says this SEP holds (unreported tasks run again)."""
        self.buffer.clear()
        if self.host.dead:
            return collections.deque()
        return collections.deque(self.claim())

    # ---------------------------------------------------------------- reports
    def _due(self, task: Task) -> bool:
        """Report the buffer before TASK runs? Yes if the oldest outcome has waited the
        window, or TASK may run longer than the window."""
        expected = self.last_run.get(task.transid)
        if expected is None or expected >= self.window:
            return True
        return time.monotonic() - self.buffer[0].ended >= self.window

    def _before_tx(self) -> None:
        # a task's own transaction must not carry the outcomes of others: report them
        if self.buffer:
            self._send(self.buffer, take=0, release=())
            self._done(self.buffer)
            self.buffer = []

    def _before_wait(self) -> None:
        # a conversation may wait long for its client: do not keep others waiting
        if self.buffer:
            self._before_tx()

    def _send(
        self, rans: Sequence[Ran], take: int, release: Sequence[int], running: int | None = None
    ) -> list[Task]:
        return self.host.gateway().run(
            ops.sep.complete_many(
                self.host.sep_id,
                [r.encoded for r in rans],
                release=release,
                take=take,
                running=running,
            )
        )

    def _done(self, rans: Sequence[Ran]) -> None:
        self._finished(rans)

    def report(
        self, take: int, release: Sequence[int] = (), running: int | None = None
    ) -> list[Task] | None:
        """Report the buffer (and take the next batch when TAKE > 0); None when the
        database was lost or the report refused or failed: the caller reclaims."""
        nxt = self._settle(
            lambda: self._send(self.buffer, take, release, running), tasks=len(self.buffer)
        )
        if isinstance(nxt, Fault):
            return None
        self._done(self.buffer)
        self.buffer = []
        return nxt

    def _report_own(self, ran: Ran, take: int) -> list[Task] | None:
        """A task that used ctx.db: its outcome commits with its writes."""
        if ran.ok:
            nxt = self._settle(lambda: self._commit_own(ran, take), ran)
            if nxt is Fault.REFUSED or nxt is Fault.LOST:
                return None
            if nxt is not Fault.FAILED:
                return nxt
            # e.g. the program broke its transaction: the task abended, its writes undone
            _encode(ran)
        ran.rollback()
        self.buffer.append(ran)
        return self.report(take=take) if take else []

    def _commit_own(self, ran: Ran, take: int) -> list[Task]:
        nxt = self._send([ran], take, ())
        ran.commit()
        self._done([ran])
        return nxt


def _encode(ran: Ran) -> None:
    """Encode the outcome once, as the task ends. A result or COMMAREA that is not JSON
    abends its task alone, not the batch."""
    try:
        ran.encoded = ran.outcome().encode()
    except (TypeError, ValueError) as exc:
        ran.log.error("completion_failed", error=str(exc))
        ran.abend(exc, "")
        ran.encoded = ran.outcome().encode()
