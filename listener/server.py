"""The listener: client sessions over a socket (docs/protocol.md, docs/listener.md).

Each client connection is a session registered in the region database. A call goes
through the enqueue procedure; when it returns a SEP, the listener hands the task to
that SEP over the internal channel (no database poll); else a SEP takes it itself.
SEPs send a task's output and its end straight back to the listener's own channel
socket, and the listener routes them to the session. A slow poll of outcomes is the
safety net for an end frame that never came (a SEP that died after its commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import socket
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from dispatcher.channel import (
    ChannelError,
    FrameTooLarge,
    encode_frame,
    open_connection,
    read_body,
    read_frame,
    task_to_dict,
)
from dispatcher.database import Backoff
from dispatcher.errors import DatabaseUnavailable, DispatcherError, InvalidValue
from dispatcher.logs import get_logger
from dispatcher.protocol import (
    MAX_FRAME,
    PROTOCOL_VERSION,
    ProtocolError,
    decode,
    encode,
    error,
)
from dispatcher.region import AsyncRegion, Enqueued, Task
from dispatcher.tokens import hash_token
from dispatcher.values import check_data, check_text

__all__ = ["Listener"]

HELLO_TIMEOUT = 10.0
# how long the transaction definitions (program, timeout) put in dispatch frames are cached
TX_CACHE_TTL = 5.0
# a client whose unread replies pile up past this is dropped (it must not stall SEPs)
MAX_PENDING_BYTES = 8 * MAX_FRAME
MAX_KEY = 200
_DB_ERRORS = (psycopg.OperationalError, PoolTimeout, DatabaseUnavailable)


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
    call: Call | None = None
    next_transid: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, message: dict[str, Any]) -> None:
        """Send and wait for the socket to take it (backpressure on this client only)."""
        async with self.lock:
            try:
                self.writer.write(_frame(message))
                await self.writer.drain()
            except (ConnectionError, RuntimeError):
                pass  # the client went away; its session ends with the connection

    def push(self, message: dict[str, Any]) -> bool:
        """Send without waiting (routing from SEPs must never wait on one client). A
        client that lets more than MAX_PENDING_BYTES of replies pile up is dropped."""
        if self.writer.is_closing():
            return False
        self.writer.write(_frame(message))
        transport = self.writer.transport
        if transport.get_write_buffer_size() > MAX_PENDING_BYTES:
            self.writer.close()
            return False
        return True


class Listener:
    def __init__(
        self,
        url: str,
        region: str,
        host: str = "127.0.0.1",
        port: int = 7300,
        tls: ssl.SSLContext | None = None,
        heartbeat_interval: float = 2.0,
        dead_after: float = 10.0,
        poll_interval: float = 1.0,
        channel_host: str | None = None,
    ) -> None:
        self.url = url
        self.region = region
        self.host = host
        self.port = port
        self.tls = tls
        self.heartbeat_interval = heartbeat_interval
        self.dead_after = dead_after
        self.poll_interval = poll_interval
        self.channel_host = channel_host
        self.db_ok = True
        self.log = get_logger("listener", region=region, pid=os.getpid())
        self.sessions: dict[UUID, Session] = {}
        self.listener_id: UUID | None = None
        self.address = ""
        self.stopping = asyncio.Event()
        self._sockdir = Path(tempfile.mkdtemp(prefix="dispatcher-listener-"))
        self._sep_links: dict[int, tuple[asyncio.StreamWriter, str]] = {}
        self._channel_writers: set[asyncio.StreamWriter] = set()
        self._tx_cache: dict[str, tuple[str | None, float | None]] = {}
        # sessions whose call (a key sent again) waits for another session's request
        self._duplicates: dict[int, list[Session]] = {}
        self._tx_loaded = -TX_CACHE_TTL
        self._tasks: list[asyncio.Task[Any]] = []
        self.pool = AsyncConnectionPool(
            url,
            min_size=2,
            max_size=16,
            open=False,
            timeout=5.0,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "application_name": "dispatcher-listener",
            },
        )
        self._client_server: asyncio.Server | None = None
        self._channel_server: asyncio.Server | None = None
        self.enqueuer = GroupCommit(self.pool, region)

    # ---------------------------------------------------------------- life
    async def start(self) -> None:
        await self.pool.open(wait=False)
        if self.channel_host:
            self._channel_server = await asyncio.start_server(
                self._channel_client, self.channel_host, 0
            )
            cport = int(self._channel_server.sockets[0].getsockname()[1])
            self.address = f"tcp:{self.channel_host}:{cport}"
        else:
            path = self._sockdir / "listener.sock"
            self._channel_server = await asyncio.start_unix_server(self._channel_client, str(path))
            os.chmod(path, 0o666)
            self.address = f"unix:{path}"
        await self._register()
        self._client_server = await asyncio.start_server(
            self._client, self.host, self.port, ssl=self.tls, limit=MAX_FRAME + 8
        )
        sock = self._client_server.sockets[0]
        self.port = int(sock.getsockname()[1])
        self._tasks = [
            asyncio.create_task(self.enqueuer.run()),
            asyncio.create_task(self._heartbeat()),
            asyncio.create_task(self._poll_outcomes()),
        ]
        self.log.info(
            "listener_started",
            host=self.host,
            port=self.port,
            listener=str(self.listener_id),
            tls=self.tls is not None,
        )

    async def _register(self) -> None:
        backoff = Backoff()
        while True:
            try:
                async with self.pool.connection() as conn:
                    r = AsyncRegion(conn, self.region)
                    row = (
                        await r.rows(
                            "register_listener",
                            region=self.region,
                            host=socket.gethostname(),
                            port=self.port,
                            pid=os.getpid(),
                            address=self.address,
                        )
                    )[0]
                self.listener_id = UUID(str(row["id"]))
                return
            except _DB_ERRORS as exc:
                delay = backoff.next_delay()
                self.log.warning("database_unavailable", error=str(exc).strip(), retry_in_s=delay)
                await asyncio.sleep(delay)

    async def serve(self) -> None:
        await self.start()
        await self.stopping.wait()
        await self.close()

    async def close(self, grace: float = 10.0) -> None:
        self.stopping.set()
        if self._client_server is not None:
            self._client_server.close()
        # a conversation waiting for its client would wait out the grace: end it now
        await asyncio.gather(*(self._end_conversation(s) for s in self.sessions.values()))
        deadline = asyncio.get_running_loop().time() + grace
        while any(s.call for s in self.sessions.values()):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        for s in list(self.sessions.values()):
            if s.call is not None:
                await s.send(
                    error(
                        "shutting_down",
                        "the listener is stopping; fetch the result later with result_of",
                        id=s.call.id,
                        request_id=s.call.request_id,
                    )
                )
            s.writer.close()
        for t in self._tasks:
            t.cancel()
        if self.listener_id is not None:
            with contextlib.suppress(Exception):
                async with self.pool.connection(timeout=2) as conn:
                    await AsyncRegion(conn, self.region).rows(
                        "leave_listener", listener=self.listener_id
                    )
        if self._channel_server is not None:
            self._channel_server.close()
        for writer, _ in self._sep_links.values():
            writer.close()
        for writer in list(self._channel_writers):
            writer.close()
        await self.pool.close()
        shutil.rmtree(self._sockdir, ignore_errors=True)
        self.log.info("listener_stopped")

    # ------------------------------------------------------ database health
    def _db_lost(self, exc: BaseException) -> None:
        """Note that the database is unreachable: until a probe gets through, calls are
        answered at once with database_unavailable (retryable), not after a timeout."""
        if isinstance(exc, PoolTimeout):
            return  # every connection busy (overload), or the pool still reconnecting
        if self.db_ok:
            self.db_ok = False
            self.log.warning("database_unavailable", error=str(exc).strip())
            task = asyncio.create_task(self._probe())
            self._tasks.append(task)
            task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _probe(self) -> None:
        backoff = Backoff(first=0.1, max_delay=2.0)
        while not self.stopping.is_set():
            await asyncio.sleep(backoff.next_delay())
            try:
                await self.pool.check()  # drop the connections the restart broke
                async with self.pool.connection(timeout=2.0) as conn:
                    await AsyncRegion(conn, self.region).rows("listener_ping")
            except Exception as exc:
                self.log.info(
                    "database_still_unavailable", error=str(exc).strip(), attempt=backoff.attempt
                )
                continue
            self.db_ok = True
            self.log.info("database_reconnected", attempts=backoff.attempt)
            return

    def _unavailable(self, cid: Any = None, exc: BaseException | None = None) -> dict[str, Any]:
        detail = f": {str(exc).strip()}" if exc is not None else ""
        return error(
            "database_unavailable",
            f"the region database is unavailable, retry later{detail}",
            id=cid,
        )

    async def _heartbeat(self) -> None:
        beats = 0
        while not self.stopping.is_set():
            await asyncio.sleep(self.heartbeat_interval)
            try:
                async with self.pool.connection() as conn:
                    r = AsyncRegion(conn, self.region)
                    alive = (await r.rows("heartbeat_listener", listener=self.listener_id))[0]
                    if not alive["alive"]:
                        self.log.error("listener_was_declared_dead")
                        await self._register()
                        for old, s in list(self.sessions.items()):
                            s.id = await r.register_session(self.listener_id, s.user, s.priority)
                            self.sessions[s.id] = self.sessions.pop(old)
                    beats += 1
                    if beats % 5 == 0:
                        n = (
                            await r.rows(
                                "reap_listeners", region=self.region, dead_after_s=self.dead_after
                            )
                        )[0]["reaped"]
                        if n:
                            self.log.warning("listeners_reaped", count=n)
            except _DB_ERRORS as exc:
                self._db_lost(exc)
                self.log.warning("heartbeat_failed", error=str(exc).strip())
            except Exception as exc:  # the heartbeat must never stop
                self.log.exception("heartbeat_failed", error=str(exc).strip())

    async def _poll_outcomes(self) -> None:
        """Safety net: deliver outcomes whose end frame never arrived."""
        while not self.stopping.is_set():
            await asyncio.sleep(self.poll_interval)
            if not self.db_ok:
                continue
            now = asyncio.get_running_loop().time()
            calls: dict[int, list[Session]] = {}
            for s in list(self.sessions.values()):
                if s.call is not None and now - s.call.started > self.poll_interval:
                    # (several sessions may wait for one request: calls with one key)
                    calls.setdefault(s.call.request_id, []).append(s)
            if not calls:
                continue
            try:
                await self._deliver_outcomes(calls)
            except _DB_ERRORS as exc:
                self._db_lost(exc)
            except Exception:  # the safety net must never stop
                self.log.exception("poll_outcomes_failed")

    async def _deliver_outcomes(self, calls: dict[int, list[Session]]) -> None:
        """Answer the calls among CALLS (request id -> the sessions waiting for it) whose
        request has finished."""
        async with self.pool.connection() as conn:
            r = AsyncRegion(conn, self.region)
            rows = await r.rows("outcomes", ids=list(calls))
            for row in rows:
                for s in calls[row["id"]]:
                    if s.call is None or s.call.request_id != row["id"]:
                        continue
                    nxt = None
                    if row["state"] == "done":
                        found = await r.rows("session_next", session=s.id)
                        nxt = found[0]["next_transid"] if found else None
                    await self._finish(
                        s, row["id"], row["state"] == "done", row["result"], row["error"], nxt
                    )

    # ------------------------------------------------------------- clients
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session: Session | None = None
        try:
            session = await self._hello(reader, writer)
            if session is None:
                return
            while not self.stopping.is_set():
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
                except Exception as exc:  # one bad message never ends the session
                    self.log.exception("message_failed", session=str(session.id))
                    await session.send(
                        error("internal", f"{type(exc).__name__}: {exc}", id=msg.get("id"))
                    )
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the listener is closing
        finally:
            if session is not None:
                self.sessions.pop(session.id, None)
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await self._end_conversation(session)
                # (also when the listener is closing and cancels this task meanwhile)
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    async with self.pool.connection(timeout=2) as conn:
                        await AsyncRegion(conn, self.region).end_session(session.id)
            writer.close()

    async def _end_conversation(self, s: Session) -> None:
        """S ended (bye, close, listener stopping): tell the SEP running its call, so that
        a task waiting in ctx.receive learns it now (SessionEnded) and its SEP goes free."""
        call = s.call
        if call is None or call.sep_id is None:
            return
        message = {"type": "session_ended", "request_id": call.request_id, "session_id": str(s.id)}
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._hand_over(call.sep_id, message), 2.0)

    async def _reply(self, writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(_frame(message))
            await writer.drain()

    async def _hello(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Session | None:
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
            await self._reply(writer, error(exc.code, exc.message, id=exc.id))
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
        token = msg.get("token")
        if not isinstance(token, str) or not token:
            await self._reply(writer, error("unauthorized", "a token is required", id=hid))
            return None
        if not self.db_ok:
            await self._reply(writer, self._unavailable(hid))
            return None
        try:
            async with self.pool.connection() as conn:
                r = AsyncRegion(conn, self.region)
                found = await r.rows("find_token", region=self.region, hash=_token_hash(token))
                if not found:
                    await self._reply(writer, error("unauthorized", "unknown token", id=hid))
                    return None
                tok = found[0]
                sid = await r.register_session(self.listener_id, tok["name"], tok["priority"])
        except _DB_ERRORS as exc:
            self._db_lost(exc)
            await self._reply(writer, self._unavailable(hid, exc=exc))
            return None
        session = Session(sid, tok["name"], tok["priority"], tok["allow"], writer)
        self.sessions[sid] = session
        await session.send(
            {
                "type": "welcome",
                **({} if hid is None else {"id": hid}),
                "version": PROTOCOL_VERSION,
                "session_id": str(sid),
                "user": tok["name"],
                "region": self.region,
                "max_frame": MAX_FRAME,
            }
        )
        self.log.info("session_started", session=str(sid), user=tok["name"])
        return session

    async def _handle(self, s: Session, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        cid = msg.get("id")
        if kind in ("call", "input"):
            bad = _check_call(msg)
            if bad is not None:
                if cid is not None:
                    bad["id"] = cid
                await s.send(bad)
            elif kind == "call":
                transid, data, key = msg["transid"], msg.get("data"), msg.get("key")
                await self._start_call(s, cid, transid, data, None, key)
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
        self, s: Session, cid: Any, transid: str, data: Any, commarea: Any, key: str | None = None
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
        if not self.db_ok:
            await s.send(self._unavailable(cid))
            return
        # keys are scoped by the token's name: one user cannot see another's outcome
        scoped = None if key is None else f"{s.user}/{key}"
        try:
            e = await self.enqueuer.submit(transid, data, s.id, commarea, scoped)
            program = await self._program(transid)
        except _DB_ERRORS as exc:
            self._db_lost(exc)
            await s.send(self._unavailable(cid, exc))
            return
        except DispatcherError as exc:
            await s.send(error(_code(exc), exc.message, id=cid))
            return
        s.call = Call(cid, e.request_id, transid, asyncio.get_running_loop().time(), e.sep_id)
        s.next_transid = None
        accepted: dict[str, Any] = {"type": "accepted", "id": cid, "request_id": e.request_id}
        if e.duplicate:
            accepted["duplicate"] = True
        # written at once (no wait for the client to read it): the hand-over below is on
        # the critical path of the call
        s.push(accepted)
        self.log.info(
            "request_accepted",
            session=str(s.id),
            request_id=e.request_id,
            transid=transid,
            reason=e.reason,
        )
        if e.duplicate:
            # the same key was sent before: answer from the history if it is finished,
            # else as soon as the first call's end frame comes (or the outcome poll)
            self._duplicates.setdefault(e.request_id, []).append(s)
            with contextlib.suppress(*_DB_ERRORS):
                await self._deliver_outcomes({e.request_id: [s]})
            return
        if e.sep_id is not None:
            task = Task(
                e.request_id,
                1,
                transid,
                program[0],
                data,
                s.id,
                commarea,
                program[1],
                dt.datetime.now(dt.UTC),
            )
            await self._hand_over(
                e.sep_id, {"type": "dispatch", "task": task_to_dict(task), "reply_to": self.address}
            )

    async def _program(self, transid: str) -> tuple[str | None, float | None]:
        """(program, timeout) of TRANSID for dispatch frames, cached for TX_CACHE_TTL."""
        now = asyncio.get_running_loop().time()
        found = self._tx_cache.get(transid)
        if found is not None and now - self._tx_loaded < TX_CACHE_TTL:
            return found
        async with self.pool.connection() as conn:
            rows = await AsyncRegion(conn, self.region).rows(
                "list_transactions", region=self.region
            )
        self._tx_cache = {row["transid"]: (row["program"], row["timeout_s"]) for row in rows}
        self._tx_loaded = now
        return self._tx_cache.get(transid, (None, None))

    async def _sep_writer(self, sep_id: int) -> asyncio.StreamWriter:
        link = self._sep_links.get(sep_id)
        if link is not None and not link[0].is_closing():
            return link[0]
        async with self.pool.connection() as conn:
            rows = await AsyncRegion(conn, self.region).rows("sep_address", sep=sep_id)
        if not rows or not rows[0]["address"]:
            raise ChannelError(f"SEP {sep_id} has no channel address")
        _, writer = await open_connection(rows[0]["address"])
        self._sep_links[sep_id] = (writer, rows[0]["address"])
        return writer

    async def _hand_over(self, sep_id: int, message: dict[str, Any]) -> bool:
        """Send a frame to a SEP (on a kept link; once more on a fresh one if that link
        broke); for a dispatch that fails, fall back to NOTIFY."""
        for attempt in (1, 2):
            try:
                writer = await self._sep_writer(sep_id)
                writer.write(encode_frame(message))
                await writer.drain()
                return True
            except (OSError, ChannelError, *_DB_ERRORS) as exc:
                link = self._sep_links.pop(sep_id, None)
                if link is not None:
                    link[0].close()
                if attempt == 1 and link is not None:
                    continue  # the kept link was stale: try a fresh connection
                self.log.warning("sep_unreachable", sep=sep_id, error=str(exc))
                break
        if message["type"] == "dispatch":
            request_id = message["task"]["request_id"]
            try:
                async with self.pool.connection() as conn:
                    await AsyncRegion(conn, self.region).rows(
                        "notify_sep_dispatch", sep=sep_id, request=request_id
                    )
                self.log.info("dispatch_by_notify", sep=sep_id, request_id=request_id)
            except Exception as exc:  # the SEP's slow poll still finds it
                self.log.warning("notify_failed", sep=sep_id, error=str(exc).strip())
        return False

    async def _input(self, s: Session, cid: Any, data: Any, key: str | None = None) -> None:
        call = s.call
        if call is not None and call.waiting and call.sep_id is not None:
            call.waiting = False
            ok = await self._hand_over(
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
            if not self.db_ok:
                await s.send(self._unavailable(cid))
                return
            try:
                async with self.pool.connection() as conn:
                    rows = await AsyncRegion(conn, self.region).rows("session_next", session=s.id)
            except _DB_ERRORS as exc:
                self._db_lost(exc)
                await s.send(self._unavailable(cid, exc))
                return
            nxt = rows[0] if rows else {"next_transid": None, "commarea": None}
            if nxt["next_transid"]:
                await self._start_call(s, cid, nxt["next_transid"], data, nxt["commarea"], key)
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
        if not self.db_ok:
            await s.send(self._unavailable(cid))
            return
        try:
            async with self.pool.connection() as conn:
                row = await AsyncRegion(conn, self.region).request(request_id)
        except _DB_ERRORS as exc:
            self._db_lost(exc)
            await s.send(self._unavailable(cid, exc))
            return
        except DispatcherError as exc:
            await s.send(error(_code(exc), exc.message, id=cid))
            return
        if row["state"] == "done":
            await s.send(
                {"type": "result", "id": cid, "request_id": request_id, "data": row["result"]}
            )
        elif row["state"] in ("failed", "cancelled"):
            detail = row["error"] if isinstance(row["error"], dict) else {}
            await s.send(
                error(
                    _failure_code(detail),
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

    async def _finish(
        self,
        s: Session,
        request_id: int,
        ok: bool,
        result: Any,
        err: Any,
        next_transid: str | None,
    ) -> None:
        waiting = self._duplicates.get(request_id)
        if waiting is not None and s in waiting:
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
                _failure_code(detail),
                str(detail.get("message", "the task failed")),
                id=call.id,
                request_id=request_id,
                detail=detail,
            )
        if not s.push(reply):
            self.log.warning("client_dropped", session=str(s.id), request_id=request_id)
        self.log.info("request_answered", session=str(s.id), request_id=request_id, ok=ok)

    async def _final(self, request_id: int) -> bool:
        """Has REQUEST_ID finished for good (not requeued for another attempt)? When the
        database cannot tell, False: the outcome poll answers the call later."""
        try:
            async with self.pool.connection() as conn:
                rows = await AsyncRegion(conn, self.region).rows("outcomes", ids=[request_id])
        except _DB_ERRORS as exc:
            self._db_lost(exc)
            return False
        return bool(rows)

    # ------------------------------------------------------- SEP channel
    async def _channel_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._channel_writers.add(writer)
        try:
            while True:
                try:
                    msg = await read_frame(reader)
                except ChannelError as exc:
                    self.log.warning("channel_frame_refused", error=str(exc))
                    return
                if msg is None:
                    return
                try:
                    await self._from_sep(msg)
                except Exception:  # one bad frame never ends the SEP's link
                    self.log.exception("channel_message_failed", type=msg.get("type"))
        except (ConnectionError, asyncio.CancelledError):
            pass  # the SEP went away, or the listener is closing
        finally:
            self._channel_writers.discard(writer)
            writer.close()

    async def _from_sep(self, msg: dict[str, Any]) -> None:
        try:
            s = self.sessions.get(UUID(str(msg.get("session_id"))))
        except ValueError:
            return
        if s is None:
            return
        rid = msg.get("request_id")
        call = s.call
        if call is None or call.request_id != rid:
            return
        kind = msg["type"]
        if kind in ("output", "await_input") and not call.bound:
            call.bound = True
            with contextlib.suppress(Exception):
                async with self.pool.connection() as conn:
                    await AsyncRegion(conn, self.region).rows(
                        "bind_session", sep=msg.get("sep_id", call.sep_id), session=s.id
                    )
        if kind == "output":
            call.sep_id = msg.get("sep_id", call.sep_id)
            call.waiting = bool(msg.get("wants_input"))
            s.push(
                {
                    "type": "output",
                    "id": call.id,
                    "request_id": rid,
                    "data": msg.get("data"),
                    "wants_input": call.waiting,
                }
            )
        elif kind == "await_input":
            call.sep_id = msg.get("sep_id", call.sep_id)
            call.waiting = True
            s.push({"type": "waiting", "id": call.id, "request_id": rid})
        elif kind == "end":
            if not msg.get("ok") and not await self._final(int(rid)):
                # the attempt failed but the request will run again (its retry policy):
                # the caller gets the final outcome, delivered when it is known
                self.log.info("request_retry_pending", session=str(s.id), request_id=rid)
                return
            ok, result, err = bool(msg.get("ok")), msg.get("result"), msg.get("error")
            await self._finish(s, int(rid), ok, result, err, msg.get("next_transid"))
            for other in list(self._duplicates.get(int(rid), ())):
                await self._finish(other, int(rid), ok, result, err, None)


_Item = tuple[tuple[str, Any, UUID, Any, str | None], "asyncio.Future[Any]"]


class GroupCommit:
    """Requests that arrive together share one enqueue call and one commit.

    A request waits for no timer: each batch is whatever queued up while the previous
    batches were in flight (at most ``max_batch``, at most ``parallel`` batches at
    once). Every caller is answered only after its batch committed. A batch that an
    error spoils (an unknown transaction, say) is retried in halves, so
    that each error reaches only its own caller (halving the batch until it does).
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        region: str,
        max_batch: int = 200,
        parallel: int = 4,
    ) -> None:
        self.pool = pool
        self.region = region
        self.max_batch = max_batch
        self.slots = asyncio.Semaphore(parallel)
        self._flushing: set[asyncio.Task[None]] = set()
        self._inline = False  # a lone call is being enqueued by submit itself
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()

    async def submit(
        self, transid: str, data: Any, session: UUID, commarea: Any, key: str | None = None
    ) -> Enqueued:
        fut: asyncio.Future[Enqueued] = asyncio.get_running_loop().create_future()
        item: _Item = ((transid, data, session, commarea, key), fut)
        if self.queue.empty() and not self._flushing and not self._inline:
            # nothing to group with and no batch in flight: enqueue right here, without
            # the hops through the batching task (the latency of a lone call); calls
            # that arrive meanwhile queue up and go together as before
            self._inline = True
            await self.slots.acquire()
            try:
                await self._many([item])
            finally:
                self.slots.release()
                self._inline = False
        else:
            await self.queue.put(item)
        return await fut

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            await self.slots.acquire()
            task = asyncio.create_task(self._flush(batch))
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _flush(self, batch: list[_Item]) -> None:
        try:
            plain = [b for b in batch if b[0][3] is None]
            for item in [b for b in batch if b[0][3] is not None]:
                await self._many([item])  # a commarea goes through enqueue_v1 itself
            if plain:
                await self._many(plain)
        finally:
            self.slots.release()

    async def _many(self, batch: list[_Item]) -> None:
        """Enqueue BATCH in one call; if one request spoils it, halve and try again, so
        that an error reaches only its own caller."""
        try:
            async with self.pool.connection() as conn:
                r = AsyncRegion(conn, self.region)
                if len(batch) == 1:
                    (transid, data, sid, commarea, key), _ = batch[0]
                    out = [
                        await r.enqueue(
                            transid,
                            data,
                            session=sid,
                            commarea=commarea,
                            idempotency_key=key,
                            origin="listener",
                            notify=False,
                        )
                    ]
                else:
                    out = await r.enqueue_many(
                        [(t, d) for (t, d, _, _, _), _ in batch],
                        sessions=[sid for (_, _, sid, _, _), _ in batch],
                        idempotency_keys=[k for (_, _, _, _, k), _ in batch],
                        origin="listener",
                        notify=False,
                    )
        except (*_DB_ERRORS, asyncio.CancelledError) as exc:
            # no point halving: every part would fail the same way
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        except Exception as exc:
            # one request spoiled the batch (a value the database refuses, an unknown
            # transaction, or a fault we did not foresee): only its caller may see it
            if len(batch) == 1:
                if not batch[0][1].done():
                    batch[0][1].set_exception(exc)
                return
            half = len(batch) // 2
            await self._many(batch[:half])
            await self._many(batch[half:])
            return
        for (_, fut), e in zip(batch, out, strict=True):
            if not fut.done():
                fut.set_result(e)


def _failure_code(detail: dict[str, Any]) -> str:
    """The error code of a failed request, the same for its call and for result_of."""
    return "sep_lost" if detail.get("type") == "SEPLost" else "abend"


def _frame(message: dict[str, Any]) -> bytes:
    """MESSAGE as a frame; a reply too large for a frame is replaced by one that fits, so
    that every call still gets exactly one answer: a result becomes the error
    ``result_too_large`` (the result stays stored), an output loses its data (``dropped``),
    an error keeps the first 1,000 characters of its message and no detail."""
    try:
        return encode(message)
    except ProtocolError:
        pass
    kind = message.get("type")
    keep = {k: message[k] for k in ("id", "request_id") if k in message}
    if kind == "result":
        size = len(encode_frame(message, max_frame=2**31)) - 4
        smaller = error(
            "result_too_large",
            f"the result is {size:,} bytes as a frame, over the limit of {MAX_FRAME:,}: "
            "the request is done and its result is stored, but it cannot be sent",
            id=keep.get("id"),
            request_id=keep.get("request_id"),
        )
    elif kind == "output":
        smaller = {**message, "data": None, "dropped": "too_large"}
    else:
        smaller = {
            **{k: v for k, v in message.items() if k != "detail"},
            "message": str(message.get("message", ""))[:1000],
        }
    for k in ("id", "request_id"):
        if k in smaller and len(encode_frame({k: smaller[k]}, max_frame=2**31)) > 4096:
            del smaller[k]  # an id too large to echo
    return encode(smaller)


def _token_hash(token: str) -> bytes:
    """The stored hash of TOKEN (b"" for a string no token can be: it finds nothing)."""
    try:
        return hash_token(token)
    except UnicodeEncodeError:  # a lone surrogate
        return b""


def _check_key(key: Any) -> dict[str, Any] | None:
    """The error for a bad idempotency key (None when KEY is absent or good)."""
    if key is None:
        return None
    if not isinstance(key, str):
        return error("bad_frame", f"key must be a string of 1-{MAX_KEY} characters")
    if not 0 < len(key) <= MAX_KEY:
        return error("invalid_value", f"key must be 1-{MAX_KEY} characters, not {len(key)}")
    try:
        check_text(key, "the key")
    except InvalidValue as exc:
        return error("invalid_value", exc.message)
    return None


def _check_call(msg: dict[str, Any]) -> dict[str, Any] | None:
    """The error for a call or input frame whose fields are missing, mistyped or out of
    range (None when it may go on): bad_frame for a missing or mistyped field,
    invalid_value for a value out of range (docs/protocol.md)."""
    if msg["type"] == "call":
        transid = msg.get("transid")
        if not isinstance(transid, str):
            return error("bad_frame", "call needs a transid (a string)")
        try:
            check_text(transid, "the transid")
        except InvalidValue as exc:
            return error("invalid_value", exc.message)
    bad = _check_key(msg.get("key"))
    if bad is not None:
        return bad
    try:
        check_data(msg.get("data"))
    except InvalidValue as exc:
        return error("invalid_value", exc.message)
    return None


def _code(exc: DispatcherError) -> str:
    return {
        "unknown_transaction": "unknown_transaction",
        "invalid_value": "invalid_value",
        "unknown_request": "unknown_request",
        "database_unavailable": "database_unavailable",
    }.get(exc.code, "invalid_value")
