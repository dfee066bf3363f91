"""Outcomes: answering a call when its request has finished.

Mostly the SEP's ``end`` frame brings the outcome (routing.py hands it here). A slow
poll of the history is the safety net for an end frame that never came (a SEP that
died after its commit, a listener that was re-registered), and a call repeated with
its key is answered from the first call's outcome."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from dispatcher.gateway import ops
from dispatcher.protocol import error

from .frames import failure_code
from .health import DB_ERRORS, Health, gateway
from .sessions import Session
from .state import ListenerState


class Outcomes:
    def __init__(self, state: ListenerState, health: Health, poll_interval: float) -> None:
        self.state = state
        self.health = health
        self.poll_interval = poll_interval
        # sessions whose call (a key sent again) waits for another session's request
        self._duplicates: dict[int, list[Session]] = {}

    async def poll(self) -> None:
        """Safety net: deliver outcomes whose end frame never arrived."""
        st = self.state
        while not st.stopping.is_set():
            await asyncio.sleep(self.poll_interval)
            if not self.health.ok:
                continue
            now = asyncio.get_running_loop().time()
            calls: dict[int, list[Session]] = {}
            for s in list(st.sessions.values()):
                if s.call is not None and now - s.call.started > self.poll_interval:
                    # (several sessions may wait for one request: calls with one key)
                    calls.setdefault(s.call.request_id, []).append(s)
            if not calls:
                continue
            try:
                await self._deliver(calls)
            except DB_ERRORS as exc:
                self.health.lost(exc)
            except Exception:  # the safety net must never stop
                st.log.exception("poll_outcomes_failed")

    async def duplicate(self, s: Session, request_id: int) -> None:
        """S called with a key sent before, that of REQUEST_ID: answer from the history
        if it is finished, else as soon as the first call's end frame comes (or the
        poll)."""
        self._duplicates.setdefault(request_id, []).append(s)
        with contextlib.suppress(*DB_ERRORS):
            await self._deliver({request_id: [s]})

    async def ended(self, s: Session, msg: dict[str, Any]) -> None:
        """The SEP's end frame MSG for the call of S (and of the sessions that sent its
        key again)."""
        rid: Any = msg.get("request_id")
        if not msg.get("ok") and not await self._final(int(rid)):
            # the attempt failed but the request will run again (its retry policy):
            # the caller gets the final outcome, delivered when it is known
            self.state.log.info("request_retry_pending", session=str(s.id), request_id=rid)
            return
        ok, result, err = bool(msg.get("ok")), msg.get("result"), msg.get("error")
        await self.finish(s, int(rid), ok, result, err, msg.get("next_transid"))
        for other in list(self._duplicates.get(int(rid), ())):
            await self.finish(other, int(rid), ok, result, err, None)

    async def _deliver(self, calls: dict[int, list[Session]]) -> None:
        """Answer the calls among CALLS (request id -> the sessions waiting for it) whose
        request has finished."""
        st = self.state
        async with st.pool.connection() as conn:
            db = gateway(conn)
            for row in await db.run(ops.listener.outcomes(list(calls))):
                for s in calls[row.id]:
                    if s.call is None or s.call.request_id != row.id:
                        continue
                    nxt = None
                    # a call answered from an earlier request with its key ran nothing:
                    # the RETURN TRANSID of the session is not its own
                    if row.state == "done" and s not in self._duplicates.get(row.id, ()):
                        found = await db.run(ops.listener.session_next(s.id))
                        nxt = found.next_transid if found else None
                    await self.finish(s, row.id, row.state == "done", row.result, row.error, nxt)

    async def _final(self, request_id: int) -> bool:
        """Has REQUEST_ID finished for good (not requeued for another attempt)? When the
        database cannot tell, False: the outcome poll answers the call later."""
        st = self.state
        try:
            async with st.pool.connection() as conn:
                rows = await gateway(conn).run(ops.listener.outcomes([request_id]))
        except DB_ERRORS as exc:
            self.health.lost(exc)
            return False
        return bool(rows)

    async def finish(
        self,
        s: Session,
        request_id: int,
        ok: bool,
        result: Any,
        err: Any,
        next_transid: str | None,
    ) -> None:
        """Answer the call of S with the outcome of REQUEST_ID (once: a call already
        answered, or another call of S, is left alone); S is free for its next call."""
        waiting = self._duplicates.get(request_id)
        duplicate = waiting is not None and s in waiting
        if waiting is not None and duplicate:
            waiting.remove(s)
            if not waiting:
                del self._duplicates[request_id]
        call = s.call
        if call is None or call.request_id != request_id:
            return
        s.call = None
        s.next_transid = next_transid if ok else None
        if ok:
            reply: dict[str, Any] = {
                "type": "result",
                "id": call.id,
                "request_id": request_id,
                "data": result,
            }
            if next_transid:
                reply["next_transid"] = next_transid
        else:
            detail = err if isinstance(err, dict) else {"message": str(err)}
            reply = error(
                failure_code(detail),
                str(detail.get("message", "the task failed")),
                id=call.id,
                request_id=request_id,
                detail=detail,
            )
        if duplicate:  # answered from the request its key found (as accepted said)
            reply["duplicate"] = True
        if not s.push(reply):
            self.state.log.warning("client_dropped", session=str(s.id), request_id=request_id)
        self.state.log.info("request_answered", session=str(s.id), request_id=request_id, ok=ok)
