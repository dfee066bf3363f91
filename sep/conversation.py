"""A task's link to the listener of its session: output out, input in (dispatcher.channel)."""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Callable
from typing import Any
from uuid import UUID

from dispatcher.channel import ChannelError, connect_sync, encode_frame
from dispatcher.values import check_data

__all__ = ["Conversation", "ConversationError", "ListenerLinks", "SessionEnded"]


class ConversationError(Exception):
    """The session's listener cannot be reached, or no input came in time."""


class SessionEnded(ConversationError):
    """The task's client session ended (the client closed, said bye, or its listener
    stopped; or the SEP is stopping): ``ctx.receive`` and ``ctx.converse`` raise it at
    once, waiting or not, since no input will ever come (``ctx.send`` output is
    dropped). Uncaught, it abends the task (error type ``SessionEnded``)."""


class _Ended:
    """Put in a task's input queue when its session ends (wakes a waiting receive)."""


class ListenerLinks:
    """One socket per listener address, reused across tasks; reopened when broken."""

    def __init__(self, secret: str = "") -> None:
        self._socks: dict[str, socket.socket] = {}
        self._lock = threading.Lock()
        self.secret = secret  # the region's channel secret (set once the SEP knows it)

    def send(self, address: str, message: dict[str, Any]) -> None:
        self.send_frames(address, encode_frame(message))

    def send_frames(self, address: str, frame: bytes) -> None:
        """Encoded frames to the listener at ADDRESS in one write (the ends of a batch's
        tasks: one system call, one wake-up of the listener, not one per task)."""
        with self._lock:
            for attempt in (1, 2):
                sock = self._socks.get(address)
                try:
                    if sock is None:
                        sock = connect_sync(address, secret=self.secret)
                        self._socks[address] = sock
                    sock.sendall(frame)
                    return
                except (OSError, ChannelError) as exc:
                    self._drop(address)
                    if attempt == 2:
                        raise ConversationError(
                            f"listener at {address} unreachable: {exc}"
                        ) from exc

    def _drop(self, address: str) -> None:
        sock = self._socks.pop(address, None)
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            for address in list(self._socks):
                self._drop(address)


class Conversation:
    """Output and input of one running task with a client session."""

    def __init__(
        self,
        links: ListenerLinks,
        address: str,
        request_id: int,
        session_id: UUID,
        sep_id: int,
        inputs: queue.Queue[Any],
    ) -> None:
        self.links = links
        self.address = address
        self.request_id = request_id
        self.session_id = session_id
        self.sep_id = sep_id
        self.inputs = inputs
        # called before the task waits for input (a batching SEP reports its buffer)
        self.before_wait: Callable[[], None] | None = None
        self.ended: str | None = None  # why the session ended, once it has

    def deliver(self, data: Any) -> None:
        """The session's next input (from the listener)."""
        self.inputs.put(data)

    def end_session(self, why: str) -> None:
        """The session ended: a waiting ``receive`` raises SessionEnded at once, and
        so does every later one (callable from any thread)."""
        if self.ended is None:
            self.ended = why
            self.inputs.put(_Ended())

    def _check_session(self) -> None:
        if self.ended is not None:
            raise SessionEnded(f"the session of request {self.request_id} ended: {self.ended}")

    def send(self, data: Any, *, wants_input: bool) -> None:
        """Send DATA to the session's client; InvalidValue (to the program) for what is
        not strict JSON, as for a result (a number that is not finite, say)."""
        check_data(data, "the output")
        if self.ended is not None:
            return  # no client to show it to (a receive that follows raises)
        message = {
            "type": "output",
            "request_id": self.request_id,
            "session_id": str(self.session_id),
            "sep_id": self.sep_id,
            "data": data,
            "wants_input": wants_input,
        }
        try:
            frame = encode_frame(message)
        except ChannelError:  # over the channel's limit: it arrives as the protocol says
            frame = encode_frame({**message, "data": None, "dropped": "too_large"})
        self.links.send_frames(self.address, frame)

    def receive(self, timeout: float | None, announce: bool = True) -> Any:
        self._check_session()
        if self.before_wait is not None:
            self.before_wait()
        if announce:
            self.links.send(
                self.address,
                {
                    "type": "await_input",
                    "request_id": self.request_id,
                    "session_id": str(self.session_id),
                    "sep_id": self.sep_id,
                },
            )
        try:
            data = self.inputs.get(timeout=timeout)
        except queue.Empty:
            raise ConversationError(
                f"no input for request {self.request_id} within {timeout} s"
            ) from None
        if isinstance(data, _Ended):
            self.inputs.put(data)  # for a later receive too
            self._check_session()
        return data

    def end_message(
        self, ok: bool, result: Any, error: Any, next_transid: str | None
    ) -> dict[str, Any]:
        """The frame that tells the listener the task ended (sent once its outcome is
        committed: ListenerLinks.send_frames, one write for a report's ends)."""
        return {
            "type": "end",
            "request_id": self.request_id,
            "session_id": str(self.session_id),
            "ok": ok,
            "result": result,
            "error": error,
            "next_transid": next_transid,
        }
