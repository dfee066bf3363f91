"""What a program sees of its task: ``ctx``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

import psycopg

from dispatcher.gateway import Gateway, Task, ops
from dispatcher.values import check_reqid

if TYPE_CHECKING:
    from .conversation import Conversation

__all__ = ["ReturnTransid", "TaskContext", "TaskTimeout"]


class TaskTimeout(Exception):
    """The task ran longer than its transaction's timeout."""


@dataclass(frozen=True)
class ReturnTransid:
    """End of task naming the transaction for the session's next input (CICS RETURN
    TRANSID COMMAREA): ``return ctx.return_transid("NEXT", commarea={...}, output=...)``."""

    transid: str
    commarea: Any = None
    output: Any = None


class TaskContext:
    """The task a program runs: its data, its database transaction, its session.

    - ``ctx.data``: the request's JSON value; ``ctx.commarea``: the state passed by
      the previous task of a pseudo-conversation (RETURN TRANSID), or None.
    - ``ctx.db``: a psycopg connection inside the task's database transaction, which
      commits together with the request's completion (a syncpoint): the program's
      writes happen exactly once with its completion, or not at all.
    - ``ctx.start(...)``: START another transaction, only if this task commits.
    - ``ctx.send(data)``, ``ctx.receive(timeout=...)``: conversational output and input.
    """

    def __init__(
        self,
        task: Task,
        region: str,
        conn: psycopg.Connection[Any],
        log: Any,
        conversation: Conversation | None,
        begin: Callable[[], None],
    ) -> None:
        self.task = task
        self.region_name = region
        self._conn = conn
        self.log = log
        self._conversation = conversation
        self._begin = begin
        self.db_used = False

    @property
    def data(self) -> Any:
        return self.task.payload

    @property
    def request_id(self) -> int:
        return self.task.request_id

    @property
    def session_id(self) -> UUID | None:
        return self.task.session_id

    @property
    def attempt(self) -> int:
        return self.task.attempt

    @property
    def transid(self) -> str:
        return self.task.transid

    @property
    def commarea(self) -> Any:
        return self.task.commarea

    @property
    def db(self) -> psycopg.Connection[Any]:
        """The task's database transaction (begun on first use)."""
        if not self.db_used:
            self._begin()
            self.db_used = True
        return self._conn

    def start(
        self,
        transid: str,
        data: Any = None,
        *,
        priority: int = 0,
        reqid: str | None = None,
        after: float | dt.timedelta | None = None,
        at: dt.datetime | None = None,
    ) -> int | str:
        """START ``transid`` with ``data``, protected: it takes effect only if this task
        commits. Without ``after``/``at`` the request is queued at once (its id is
        returned); with one, a timer is set (its REQID is returned). A ``reqid`` is 1-200
        characters without "/" (InvalidValue otherwise)."""
        if reqid is not None:
            check_reqid(reqid)
        if after is not None or at is not None:
            import importlib

            timers: Any = importlib.import_module("dispatcher.timers")
            return timers.start_in_transaction(  # type: ignore[no-any-return]
                self.db,
                self.region_name,
                transid,
                data,
                after=after,
                at=at,
                priority=priority,
                reqid=reqid,
            )
        e = Gateway(self.db).run(
            ops.request.enqueue(
                self.region_name,
                transid,
                data,
                user_priority=priority,
                idempotency_key=reqid,
                origin="start",
            )
        )
        return e.request_id

    def send(self, data: Any) -> None:
        """Send output to the session's client while the task runs."""
        self._need_conversation().send(data, wants_input=False)

    def receive(self, timeout: float | None = 300.0) -> Any:
        """Wait for the session's next input (routed straight to this SEP)."""
        return self._need_conversation().receive(timeout)

    def converse(self, data: Any, timeout: float | None = 300.0) -> Any:
        """Send output that asks for input, and wait for the reply."""
        conv = self._need_conversation()
        conv.send(data, wants_input=True)
        return conv.receive(timeout, announce=False)

    def return_transid(
        self, transid: str, commarea: Any = None, output: Any = None
    ) -> ReturnTransid:
        """End the task naming the transaction for the session's next input."""
        return ReturnTransid(transid, commarea, output)

    def _need_conversation(self) -> Conversation:
        if self._conversation is None:
            raise RuntimeError(
                f"request {self.request_id} has no client session: "
                "ctx.send/ctx.receive need a request that came through a listener"
            )
        return self._conversation
