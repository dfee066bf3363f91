"""Routing between the listener and the SEPs over the internal channel
(dispatcher/channel.py): the hand-over of a task or an input to a SEP on a kept link
(NOTIFY when the SEP cannot be reached; the task and the SEP's address come from the
enqueue procedure's answer), and the listener's own channel socket, where SEPs send a
task's output and end, routed here to the session that owns the task."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any
from uuid import UUID

from dispatcher.channel import (
    AUTH_MAX,
    AUTH_TIMEOUT,
    ChannelError,
    encode_frame,
    is_auth,
    open_connection,
    read_frame,
    task_to_dict,
)
from dispatcher.gateway import Task, ops

from .health import DB_ERRORS, gateway
from .outcomes import Outcomes
from .sessions import Session
from .state import ListenerState

# a session's SEP messages kept while its call is being enqueued (a conversation's
# output and input waits; more is a SEP gone wrong)
MAX_EARLY = 1000


class Routing:
    def __init__(self, state: ListenerState, outcomes: Outcomes) -> None:
        self.state = state
        self.outcomes = outcomes
        self._sep_links: dict[int, tuple[asyncio.StreamWriter, str]] = {}
        self._channel_writers: set[asyncio.StreamWriter] = set()
        self._channel_server: asyncio.Server | None = None
        self._telling: set[asyncio.Task[bool]] = set()  # session_ended to SEPs, in flight

    # ------------------------------------------------------ the channel socket
    async def start(self, channel_host: str | None, path: Path) -> None:
        """Open the channel socket (TCP on CHANNEL_HOST, else the unix socket PATH) and
        set the listener's address."""
        if channel_host:
            self._channel_server = await asyncio.start_server(self._channel_client, channel_host, 0)
            cport = int(self._channel_server.sockets[0].getsockname()[1])
            self.state.address = f"tcp:{channel_host}:{cport}"
        else:
            self._channel_server = await asyncio.start_unix_server(self._channel_client, str(path))
            os.chmod(path, 0o666)
            self.state.address = f"unix:{path}"

    def close(self) -> None:
        """Close the channel socket, the links to SEPs and the SEPs' connections."""
        if self._channel_server is not None:
            self._channel_server.close()
        for writer, _ in self._sep_links.values():
            writer.close()
        for writer in list(self._channel_writers):
            writer.close()

    # ---------------------------------------------------------------- to SEPs
    async def dispatch(self, sep_id: int, task: Task, address: str | None) -> None:
        """Hand TASK to the SEP the enqueue procedure chose (at ADDRESS, its channel, as
        enqueue answered); its output and its end come back to this listener's channel
        (reply_to)."""
        await self.hand_over(
            sep_id,
            {"type": "dispatch", "task": task_to_dict(task), "reply_to": self.state.address},
            address,
        )

    async def _sep_writer(self, sep_id: int, address: str | None) -> asyncio.StreamWriter:
        link = self._sep_links.get(sep_id)
        if link is not None and not link[0].is_closing():
            return link[0]
        if address is None:
            async with self.state.pool.connection() as conn:
                address = await gateway(conn).run(ops.listener.sep_address(sep_id))
        if not address:
            raise ChannelError(f"SEP {sep_id} has no channel address")
        _, writer = await open_connection(address, secret=self.state.channel_secret)
        self._sep_links[sep_id] = (writer, address)
        return writer

    async def hand_over(
        self, sep_id: int, message: dict[str, Any], address: str | None = None
    ) -> bool:
        """Send a frame to a SEP (on a kept link; once more on a fresh one if that link
        broke; ADDRESS: its channel, when known, else looked up); for a dispatch that
        fails, fall back to NOTIFY."""
        st = self.state
        for attempt in (1, 2):
            try:
                writer = await self._sep_writer(sep_id, address)
                writer.write(encode_frame(message))
                await writer.drain()
                return True
            except (OSError, ChannelError, *DB_ERRORS) as exc:
                link = self._sep_links.pop(sep_id, None)
                if link is not None:
                    link[0].close()
                if attempt == 1 and link is not None:
                    continue  # the kept link was stale: try a fresh connection
                st.log.warning("sep_unreachable", sep=sep_id, error=str(exc))
                break
        if message["type"] == "dispatch":
            request_id = message["task"]["request_id"]
            try:
                async with st.pool.connection() as conn:
                    await gateway(conn).run(ops.listener.notify_sep_dispatch(sep_id, request_id))
                st.log.info("dispatch_by_notify", sep=sep_id, request_id=request_id)
            except Exception as exc:  # the SEP's slow poll still finds it
                st.log.warning("notify_failed", sep=sep_id, error=str(exc).strip())
        return False

    # -------------------------------------------------------------- from SEPs
    async def _channel_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._channel_writers.add(writer)
        try:
            try:
                first = await asyncio.wait_for(read_frame(reader, AUTH_MAX), AUTH_TIMEOUT)
            except (ChannelError, TimeoutError) as exc:
                first = {"error": str(exc) or "no frame in time"}
            if not is_auth(first, self.state.channel_secret):
                self._stranger(writer, first)
                return
            while True:
                try:
                    msg = await read_frame(reader)
                except ChannelError as exc:
                    self.state.log.warning("channel_frame_refused", error=str(exc))
                    return
                if msg is None:
                    return
                try:
                    await self._from_sep(msg)
                except Exception:  # one bad frame never ends the SEP's link
                    self.state.log.exception("channel_message_failed", type=msg.get("type"))
        except (ConnectionError, asyncio.CancelledError):
            pass  # the SEP went away, or the listener is closing
        finally:
            self._channel_writers.discard(writer)
            writer.close()

    def _stranger(self, writer: asyncio.StreamWriter, first: Any) -> None:
        """A connection to the channel socket that did not begin with the region's
        secret: closed unread, and said in the log (never the secret it sent)."""
        peer = writer.get_extra_info("peername")
        kind = first.get("type") if isinstance(first, dict) else None
        self.state.log.warning(
            "channel_stranger_refused",
            peer=str(peer) if peer else "unix",
            first_frame=str(kind) if kind is not None else "none",
        )

    async def _from_sep(self, msg: dict[str, Any]) -> None:
        """Route MSG (output, await_input or end) to the session whose call it is about.
        While the session's call is being enqueued, MSG waits in the session's early
        list (a SEP may take the request from the queue and speak before the enqueue's
        answer is back: sessions.py replays the list once the call is known)."""
        try:
            s = self.state.sessions.get(UUID(str(msg.get("session_id"))))
        except ValueError:
            return
        if s is None:
            self._no_client(msg)  # the session ended
            return
        if s.early is not None:
            if len(s.early) < MAX_EARLY:
                s.early.append(msg)
            return
        await self.route(s, msg)

    def _no_client(self, msg: dict[str, Any]) -> None:
        """MSG is about a request that no call of this listener waits for (its session
        ended, or its call was answered): a task that waits for input is told now that
        none will come (SessionEnded), instead of waiting out its receive timeout.
        Output is dropped."""
        if msg.get("type") != "await_input" and not (
            msg.get("type") == "output" and msg.get("wants_input")
        ):
            return
        sep, rid = msg.get("sep_id"), msg.get("request_id")
        if not isinstance(sep, int) or not isinstance(rid, int):
            return
        message = {
            "type": "session_ended",
            "request_id": rid,
            "session_id": str(msg.get("session_id")),
        }
        task = asyncio.create_task(asyncio.wait_for(self.hand_over(sep, message), 2.0))
        self._telling.add(task)
        task.add_done_callback(self._told)

    def _told(self, task: asyncio.Task[bool]) -> None:
        self._telling.discard(task)
        if not task.cancelled():
            task.exception()  # (retrieved: a SEP that cannot be told times out its wait)

    async def route(self, s: Session, msg: dict[str, Any]) -> None:
        """MSG for the call of S; a message about another request than S's call is not
        for any client (_no_client)."""
        st = self.state
        rid = msg.get("request_id")
        call = s.call
        if call is None or call.request_id != rid:
            self._no_client(msg)
            return
        kind = msg["type"]
        if kind in ("output", "await_input") and not call.bound:
            call.bound = True
            with contextlib.suppress(Exception):
                async with st.pool.connection() as conn:
                    sep = msg.get("sep_id", call.sep_id)
                    if isinstance(sep, int):
                        await gateway(conn).run(ops.listener.bind_session(s.id, sep))
        if kind == "output":
            call.sep_id = msg.get("sep_id", call.sep_id)
            call.waiting = bool(msg.get("wants_input"))
            output = {
                "type": "output",
                "id": call.id,
                "request_id": rid,
                "data": msg.get("data"),
                "wants_input": call.waiting,
            }
            if msg.get("dropped") == "too_large":  # (too large for the SEP's channel)
                output["dropped"] = "too_large"
            s.push(output)
        elif kind == "await_input":
            call.sep_id = msg.get("sep_id", call.sep_id)
            call.waiting = True
            s.push({"type": "waiting", "id": call.id, "request_id": rid})
        elif kind == "end":
            await self.outcomes.ended(s, msg)
