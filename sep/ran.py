"""A task that a SEP ran: its outcome, until that outcome is committed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import psycopg

from dispatcher.gateway import Outcome, Task

from .conversation import Conversation
from .program import GiveUp, RetryLater

__all__ = ["Ran"]


@dataclass
class Ran:
    """How a task ended, with what its completion needs: the program's open database
    transaction (``tx``) and the link to its client (``conversation``)."""

    task: Task
    log: Any
    ok: bool = True
    result: Any = None
    error: dict[str, Any] | None = None
    next_transid: str | None = None
    commarea: Any = None
    tx: list[Any] = field(default_factory=list)
    conversation: Conversation | None = None
    started: float = 0.0  # time.monotonic()
    ended: float = 0.0
    encoded: str = ""  # the outcome as a batch report carries it (sep/batch.py)

    def outcome(self) -> Outcome:
        return Outcome(
            self.task,
            self.ok,
            self.result,
            self.error,
            self.next_transid,
            self.commarea,
            self.started,
            self.ended,
        )

    def abend(self, exc: BaseException, tb: str) -> None:
        """The task failed with EXC: no result, no next transaction."""
        self.ok = False
        self.result = None
        self.next_transid = None
        self.commarea = None
        self.error = {"type": type(exc).__name__, "message": str(exc), "traceback": tb}
        after = getattr(exc, "after", None) if isinstance(exc, RetryLater) else None
        if isinstance(after, int | float) and math.isfinite(after) and after > 0:
            self.error["retry_after_s"] = min(float(after), 7 * 86400.0)
        if isinstance(exc, GiveUp):
            self.error["retryable"] = False

    def commit(self) -> None:
        """Commit the program's transaction (it carries the task's completion)."""
        if self.tx:
            self.tx.pop().__exit__(None, None, None)

    def rollback(self) -> None:
        """Roll the program's transaction back (its writes are undone)."""
        while self.tx:
            try:
                self.tx.pop().__exit__(RuntimeError, RuntimeError("rolled back"), None)
            except (psycopg.Error, RuntimeError):
                pass
