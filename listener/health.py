"""Database health: the listener's registration and heartbeat, the reaping of dead
listeners, and what happens when the region database is lost (docs/listener.md,
"Reliability"): calls are answered ``database_unavailable`` at once while a probe
waits for the database to come back.

``Health.guard`` is the one place where database work done for a client message
turns a lost database into the client's answer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout

from dispatcher.database import Backoff
from dispatcher.errors import DatabaseUnavailable
from dispatcher.gateway import AsyncGateway, ops
from dispatcher.protocol import error

from .state import ListenerState

# the errors that mean the database cannot be reached (or no connection is free)
DB_ERRORS = (psycopg.OperationalError, PoolTimeout, DatabaseUnavailable)
# a database that hangs (stopped, swapping, packets dropped) is given this long to answer
# a statement; then the work is answered database_unavailable (AsyncGateway)
ANSWER_WITHIN = 5.0


def gateway(conn: psycopg.AsyncConnection[Any]) -> AsyncGateway:
    """A gateway whose statements answer within ANSWER_WITHIN, else DatabaseUnavailable."""
    return AsyncGateway(conn, ANSWER_WITHIN)


# how a reply reaches the client: Session.send, or a write before the session exists
Answer = Callable[[dict[str, Any]], Awaitable[None]]


class Answered(Exception):
    """Raised by Health.guard once the client has its answer (database_unavailable):
    the handling of that client message ends there."""


class ListenerStopped(Exception):
    """The listener was asked to stop before it could register."""


class Health:
    def __init__(self, state: ListenerState, heartbeat_interval: float, dead_after: float) -> None:
        self.state = state
        self.heartbeat_interval = heartbeat_interval
        self.dead_after = dead_after
        self.ok = True  # False from a database failure until a probe gets through
        self.probes: list[asyncio.Task[Any]] = []

    # ------------------------------------------------------- registration
    async def register(self) -> None:
        """Register the listener (its host, port, pid and channel address), retrying
        until the database answers; read the region's channel secret first."""
        st = self.state
        backoff = Backoff()
        while True:
            try:
                op = ops.listener.register_listener(
                    st.region, socket.gethostname(), st.port, os.getpid(), st.address
                )
                async with st.pool.connection() as conn:
                    db = gateway(conn)
                    if not st.channel_secret:
                        st.channel_secret = await db.run(ops.region.channel_secret(st.region))
                    st.listener_id = await db.run(op)
                return
            except DB_ERRORS as exc:
                delay = backoff.next_delay()
                st.log.warning("database_unavailable", error=str(exc).strip(), retry_in_s=delay)
                # SIGTERM while the database is away: stop now, do not wait for it
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(st.stopping.wait(), delay)
                if st.stopping.is_set():
                    raise ListenerStopped("stopped before the database answered") from exc

    async def leave(self) -> None:
        """On a clean stop: the database ends the listener's sessions (best effort)."""
        st = self.state
        if st.listener_id is not None:
            with contextlib.suppress(Exception):
                async with st.pool.connection(timeout=2) as conn:
                    await gateway(conn).run(ops.listener.leave_listener(st.listener_id))

    async def heartbeat(self) -> None:
        """Beat every heartbeat_interval; register again (with the open sessions) when
        the listener was declared dead; every 5th beat, reap dead listeners."""
        st = self.state
        beats = 0
        while not st.stopping.is_set():
            await asyncio.sleep(self.heartbeat_interval)
            try:
                async with st.pool.connection() as conn:
                    db = gateway(conn)
                    if st.listener_id is None or not await db.run(
                        ops.listener.heartbeat_listener(st.listener_id)
                    ):
                        st.log.error("listener_was_declared_dead")
                        await self.register()
                        for old, s in list(st.sessions.items()):
                            s.id = await db.run(
                                ops.session.register_session(
                                    st.region, st.listener_id, s.user, s.priority
                                )
                            )
                            st.sessions[s.id] = st.sessions.pop(old)
                    beats += 1
                    if beats % 5 == 0:
                        n = await db.run(ops.listener.reap_listeners(st.region, self.dead_after))
                        if n:
                            st.log.warning("listeners_reaped", count=n)
            except DB_ERRORS as exc:
                self.lost(exc)
                st.log.warning("heartbeat_failed", error=str(exc).strip())
            except Exception as exc:  # the heartbeat must never stop
                st.log.exception("heartbeat_failed", error=str(exc).strip())

    # ---------------------------------------------------- a lost database
    def lost(self, exc: BaseException) -> None:
        """Note that the database is unreachable: until a probe gets through, calls are
        answered at once with database_unavailable (retryable), not after a timeout."""
        if isinstance(exc, PoolTimeout):
            return  # every connection busy (overload), or the pool still reconnecting
        if self.ok:
            self.ok = False
            self.state.log.warning("database_unavailable", error=str(exc).strip())
            task = asyncio.create_task(self._probe())
            self.probes.append(task)
            task.add_done_callback(lambda t: self.probes.remove(t) if t in self.probes else None)

    async def _probe(self) -> None:
        st = self.state
        backoff = Backoff(first=0.1, max_delay=2.0)
        while not st.stopping.is_set():
            await asyncio.sleep(backoff.next_delay())
            try:
                await st.pool.check()  # drop the connections the restart broke
                async with st.pool.connection(timeout=2.0) as conn:
                    await gateway(conn).run(ops.listener.listener_ping())
            except Exception as exc:
                st.log.info(
                    "database_still_unavailable", error=str(exc).strip(), attempt=backoff.attempt
                )
                continue
            self.ok = True
            st.log.info("database_reconnected", attempts=backoff.attempt)
            return

    def unavailable(self, cid: Any = None, exc: BaseException | None = None) -> dict[str, Any]:
        """The database_unavailable error for the client message CID."""
        detail = f": {str(exc).strip()}" if exc is not None else ""
        return error(
            "database_unavailable",
            f"the region database is unavailable, retry later{detail}",
            id=cid,
        )

    @contextlib.asynccontextmanager
    async def guard(self, answer: Answer, cid: Any) -> AsyncIterator[None]:
        """Database work done for the client message CID::

            async with health.guard(session.send, cid):
                ...  # the database work

        With the database known to be lost, the work is not tried: the client is
        answered database_unavailable at once. A database error during the work marks
        the database lost (lost()) and the client is answered database_unavailable,
        with the error. Either way Answered is raised: the handling of that message
        ends there (the client loop catches it). Any other error passes through."""
        if not self.ok:
            await answer(self.unavailable(cid))
            raise Answered
        try:
            yield
        except DB_ERRORS as exc:
            self.lost(exc)
            await answer(self.unavailable(cid, exc))
            raise Answered from exc
