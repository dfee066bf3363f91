"""Client sessions and the client protocol (docs/protocol.md): accepting a client, the
hello and its token, the frames of a session (call, input, result_of, ping, bye), and
the end of a session's conversation.

A call's outcome reaches its session through outcomes.py; the tasks and inputs go to
SEPs through routing.py; database work for a client message runs under
Health.guard (health.py)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any
from uuid import UUID

from dispatcher.channel import ChannelError, FrameTooLarge, read_body
from dispatcher.errors import DispatcherError, TooManySessions, UnknownToken
from dispatcher.gateway import ops
from dispatcher.protocol import MAX_FRAME, PROTOCOL_VERSION, ProtocolError, decode, error

from .frames import check_call, error_code, failure_code, frame, token_hash
from .health import Answered, gateway

if TYPE_CHECKING:
    from .group_commit import GroupCommit
    from .health import Health
    from .outcomes import Outcomes
    from .routing import Routing
    from .state import ListenerState

HELLO_TIMEOUT = 10.0
# a client whose unread replies pile up past this is dropped (it must not stall SEPs)
MAX_PENDING_BYTES = 8 * MAX_FRAME


@dataclass
class Call:
    id: Any
    request_id: int
    transid: str
    started: float
    sep_id: int | None = None
    waiting: bool = False
    bound: bool = False


@dataclass(eq=False)  # a session is itself: compared by identity
class Session:
    id: UUID
    user: str
    priority: int
    allow: list[str] | None
    writer: asyncio.StreamWriter
    # the hello's "accepted": false: no accepted frame, a call's result is its only reply
    accepted_frames: bool = True
    call: Call | None = None
    next_transid: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # while a call is being enqueued: what SEPs sent meanwhile (routing.py), replayed
    # once the call's request id is known
    early: list[dict[str, Any]] | None = None

    async def send(self, message: dict[str, Any]) -> None:
        """Send and wait for the socket to take it (backpressure on this client only)."""
        async with self.lock:
            try:
                self.writer.write(frame(message))
                await self.writer.drain()
            except (ConnectionError, RuntimeError):
                pass  # the client went away; its session ends with the connection

    def push(self, message: dict[str, Any]) -> bool:
        """Send without waiting (routing from SEPs must never wait on one client). A
        client that lets more than MAX_PENDING_BYTES of replies pile up is dropped."""
        if self.writer.is_closing():
            return False
        self.writer.write(frame(message))
        transport = self.writer.transport
        if transport.get_write_buffer_size() > MAX_PENDING_BYTES:
            self.writer.close()
            return False
        return True


class ClientSessions:
    """One session per client connection, from its hello to its end."""

    def __init__(
        self,
        state: ListenerState,
        health: Health,
        routing: Routing,
        outcomes: Outcomes,
        enqueuer: GroupCommit,
    ) -> None:
        self.state = state
        self.health = health
        self.routing = routing
        self.outcomes = outcomes
        self.enqueuer = enqueuer

    # --------------------------------------------------------- a connection
    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client connection (the callback of the client socket)."""
        st = self.state
        session: Session | None = None
        try:
            session = await self._hello(reader, writer)
            if session is None:
                return
            while not st.stopping.is_set():
                try:
                    body = await read_body(reader, MAX_FRAME)
                except FrameTooLarge as exc:
                    await session.send(error("frame_too_large", str(exc)))
                    return
                except ChannelError:
                    return  # truncated: the client went away mid-frame
                if body is None:
                    return
                try:
                    msg = decode(body)
                except ProtocolError as exc:
                    await session.send(error(exc.code, exc.message, id=exc.id))
                    continue
                try:
                    await self._handle(session, msg)
                except Answered:
                    pass  # database_unavailable: the client has its answer
                except Exception as exc:  # one bad message never ends the session
                    st.log.exception("message_failed", session=str(session.id))
                    await session.send(
                        error("internal", f"{type(exc).__name__}: {exc}", id=msg.get("id"))
                    )
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the listener is closing
        finally:
            if session is not None:
                st.sessions.pop(session.id, None)
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await self.end_conversation(session)
                # (also when the listener is closing and cancels this task meanwhile)
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    async with st.pool.connection(timeout=2) as conn:
                        await gateway(conn).run(ops.session.end_session(session.id))
            writer.close()

    async def end_conversation(self, s: Session) -> None:
        """S ended (bye, close, listener stopping): tell the SEP running its call, so that
        a task waiting in ctx.receive learns it now (SessionEnded) and its SEP goes free."""
        call = s.call
        if call is None or call.sep_id is None:
            return
        message = {"type": "session_ended", "request_id": call.request_id, "session_id": str(s.id)}
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.routing.hand_over(call.sep_id, message), 2.0)

    async def _reply(self, writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
        """Answer a client that has no session yet."""
        with contextlib.suppress(ConnectionError):
            writer.write(frame(message))
            await writer.drain()

    async def _hello(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Session | None:
        """Read the hello, check its version and token, register the session; None when
        the client was refused (it has its answer) or went away."""
        st = self.state
        try:
            body = await asyncio.wait_for(read_body(reader, MAX_FRAME), HELLO_TIMEOUT)
        except TimeoutError:
            await self._reply(writer, error("bad_hello", "no hello within 10 s"))
            return None
        except FrameTooLarge as exc:
            await self._reply(writer, error("frame_too_large", str(exc)))
            return None
        except ChannelError:
            return None  # the client went away mid-frame
        if body is None:
            return None
        try:
            msg = decode(body)
        except ProtocolError as exc:
            # strict JSON that is no message at all is still not a hello (protocol.md)
            code = "bad_hello" if exc.readable else exc.code
            message = (
                f"the first frame must be a hello: {exc.message}" if exc.readable else exc.message
            )
            await self._reply(writer, error(code, message, id=exc.id))
            return None
        hid = msg.get("id")
        if msg["type"] != "hello":
            await self._reply(writer, error("bad_hello", "the first frame must be a hello", id=hid))
            return None
        version = msg.get("version")
        if type(version) is not int or version != PROTOCOL_VERSION:  # not true, not 1.0
            await self._reply(
                writer,
                error(
                    "bad_hello",
                    f"unsupported protocol version {msg.get('version')!r}; "
                    f"this listener speaks {PROTOCOL_VERSION}",
                    id=hid,
                ),
            )
            return None
        asked = msg.get("accepted")  # (null: not asked, as for every optional field)
        accepted_frames = True if asked is None else asked
        if type(accepted_frames) is not bool:
            await self._reply(
                writer, error("bad_hello", "accepted must be true, false or null", id=hid)
            )
            return None
        token = msg.get("token")
        if not isinstance(token, str) or not token:
            await self._reply(writer, error("unauthorized", "a token is required", id=hid))
            return None
        if st.max_sessions is not None and len(st.sessions) + st.opening >= st.max_sessions:
            await self._reply(
                writer,
                error(
                    "too_many_sessions",
                    f"this listener has its {st.max_sessions} sessions open "
                    "(its --max-sessions); try again later or another listener",
                    id=hid,
                ),
            )
            st.log.warning("session_refused", why="listener_max_sessions", max=st.max_sessions)
            return None
        st.opening += 1  # counted against --max-sessions while the database answers
        try:
            async with self.health.guard(partial(self._reply, writer), hid):
                async with st.pool.connection() as conn:
                    sid, tok = await gateway(conn).run(
                        ops.session.open_session(st.region, st.listener_id, token_hash(token))
                    )
        except Answered:
            return None
        except (UnknownToken, TooManySessions) as exc:
            await self._reply(writer, error(exc.code, exc.message, id=hid))
            if isinstance(exc, TooManySessions):
                st.log.warning("session_refused", why="token_max_sessions", error=exc.message)
            return None
        except DispatcherError as exc:  # e.g. permission_denied: a role without its rights
            st.log.error("hello_failed", error=str(exc))
            await self._reply(writer, error("internal", f"the hello failed: {exc}", id=hid))
            return None
        finally:
            st.opening -= 1
        session = Session(sid, tok.name, tok.priority, tok.allow, writer, accepted_frames)
        st.sessions[sid] = session
        welcome: dict[str, Any] = {
            "type": "welcome",
            **({} if hid is None else {"id": hid}),
            "version": PROTOCOL_VERSION,
            "session_id": str(sid),
            "user": tok.name,
            "region": st.region,
            "max_frame": MAX_FRAME,
        }
        if asked is not None:
            welcome["accepted"] = accepted_frames  # the option is known here
        await session.send(welcome)
        st.log.info("session_started", session=str(sid), user=tok.name)
        return session

    # ----------------------------------------------------- a session's frames
    async def _handle(self, s: Session, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        cid = msg.get("id")
        if kind in ("call", "input"):
            bad = check_call(msg)
            if bad is not None:
                if cid is not None:
                    bad["id"] = cid
                await s.send(bad)
            elif kind == "call":
                transid, data, key = msg["transid"], msg.get("data"), msg.get("key")
                await self._start_call(s, cid, transid, data, None, key, msg.get("routing_key"))
            else:
                await self._input(s, cid, msg.get("data"), msg.get("key"))
        elif kind == "result_of":
            await self._result_of(s, cid, msg.get("request_id"))
        elif kind == "ping":
            await s.send({"type": "pong", "id": cid})
        elif kind == "bye":
            s.writer.close()
        else:
            await s.send(error("bad_frame", f"unknown message type {kind!r}", id=cid))

    async def _start_call(
        self,
        s: Session,
        cid: Any,
        transid: str,
        data: Any,
        commarea: Any,
        key: str | None = None,
        routing_key: str | None = None,
    ) -> None:
        if s.call is not None:
            await s.send(
                error(
                    "busy", f"request {s.call.request_id} is still running in this session", id=cid
                )
            )
            return
        if s.allow is not None and transid not in s.allow:
            await s.send(error("forbidden", f"this token may not run {transid}", id=cid))
            return
        # keys are scoped by the token's name: one user cannot see another's outcome
        scoped = None if key is None else f"{s.user}/{key}"
        # a SEP may take the request from the queue once the enqueue commits and send its
        # output before the answer below is back: kept in s.early until the call is known
        s.early = []
        try:
            async with self.health.guard(s.send, cid):
                e = await self.enqueuer.submit(transid, data, s.id, commarea, scoped, routing_key)
        except DispatcherError as exc:  # (DatabaseUnavailable is one too: the guard's)
            s.early = None
            await s.send(error(error_code(exc), exc.message, id=cid))
            return
        except BaseException:
            s.early = None
            raise
        s.call = Call(cid, e.request_id, transid, asyncio.get_running_loop().time(), e.sep_id)
        s.next_transid = None
        if s.accepted_frames:
            accepted: dict[str, Any] = {
                "type": "accepted",
                "id": cid,
                "request_id": e.request_id,
            }
            if e.duplicate:
                accepted["duplicate"] = True
            # written at once (no wait for the client to read it): the hand-over below
            # is on the critical path of the call
            s.push(accepted)
        self.state.log.info(
            "request_accepted",
            session=str(s.id),
            request_id=e.request_id,
            transid=transid,
            reason=e.reason,
        )
        await self._replay_early(s)
        if e.duplicate:
            # the same key was sent before: answered from the first call's outcome
            await self.outcomes.duplicate(s, e.request_id)
            return
        if e.sep_id is not None and e.task is not None:
            # enqueue answered with the task and the SEP's channel address: hand it over
            await self.routing.dispatch(e.sep_id, e.task, e.sep_address)

    async def _replay_early(self, s: Session) -> None:
        """Route what SEPs sent while the call of S was being enqueued, in order (what
        comes meanwhile joins the end of the list)."""
        early = s.early
        try:
            while early:
                await self.routing.route(s, early.pop(0))
        finally:
            s.early = None

    async def _input(self, s: Session, cid: Any, data: Any, key: str | None = None) -> None:
        call = s.call
        if call is not None and call.waiting and call.sep_id is not None:
            call.waiting = False
            ok = await self.routing.hand_over(
                call.sep_id, {"type": "input", "request_id": call.request_id, "data": data}
            )
            if not ok:
                # the conversation lived in that SEP: the request is given up (the
                # database fails it with SEPLost when the SEP is declared dead), and
                # the session is free for its next call
                s.call = None
                await s.send(
                    error(
                        "sep_lost",
                        "the SEP running this conversation cannot be reached",
                        id=cid,
                        request_id=call.request_id,
                    )
                )
            return
        if call is None and s.next_transid:
            async with self.health.guard(s.send, cid):
                async with self.state.pool.connection() as conn:
                    nxt = await gateway(conn).run(ops.listener.session_next(s.id))
            if nxt is not None and nxt.next_transid:
                await self._start_call(s, cid, nxt.next_transid, data, nxt.commarea, key)
                return
        await s.send(
            error(
                "no_task_waiting",
                "no task waits for input in this session, and no RETURN TRANSID is pending",
                id=cid,
            )
        )

    async def _result_of(self, s: Session, cid: Any, request_id: Any) -> None:
        if type(request_id) is not int:
            await s.send(
                error("bad_frame", "result_of needs a request_id (a positive integer)", id=cid)
            )
            return
        if not 0 < request_id < 2**63:
            await s.send(error("invalid_value", f"request_id {request_id} is out of range", id=cid))
            return
        try:
            async with self.health.guard(s.send, cid):
                async with self.state.pool.connection() as conn:
                    row = await gateway(conn).run(
                        ops.request.show_request(self.state.region, request_id)
                    )
        except DispatcherError as exc:  # (DatabaseUnavailable is one too: the guard's)
            await s.send(error(error_code(exc), exc.message, id=cid))
            return
        if row["state"] == "done":
            await s.send(
                {"type": "result", "id": cid, "request_id": request_id, "data": row["result"]}
            )
        elif row["state"] in ("failed", "cancelled"):
            detail = row["error"] if isinstance(row["error"], dict) else {}
            await s.send(
                error(
                    failure_code(detail),
                    str(detail.get("message", row["state"])),
                    id=cid,
                    request_id=request_id,
                    detail=detail,
                )
            )
        else:
            await s.send(
                {"type": "pending", "id": cid, "request_id": request_id, "state": row["state"]}
            )
