"""A small fake SEP for listener tests, and a listener running in this process.

The fake SEP is real: it registers with ``register_sep_v1`` and an address, serves a
unix socket speaking dispatcher/channel.py, runs one task at a time in a thread, sends
``output``/``await_input``/``end`` frames to the task's listener and completes tasks
with ``complete_v1``. Its programs are the functions of :data:`PROGRAMS`, chosen by
TRANSID. Every frame it receives is kept in ``frames``.
"""

from __future__ import annotations

import asyncio
import os
import queue
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from dispatcher.channel import (
    ChannelError,
    connect_sync,
    encode_frame,
    is_auth,
    read_frame_sync,
    task_from_dict,
)
from dispatcher.database import connect
from dispatcher.errors import DispatcherError
from dispatcher.gateway import ops
from dispatcher.region import Region, Task
from listener.server import Listener

TRANSACTIONS = ("ECHO", "CHAT", "ORDER", "ORDER2", "ABEND", "SLOW", "SILENT")


def define_transactions(region: Region) -> None:
    for transid in TRANSACTIONS:
        region.define_transaction(transid, f"fake.programs:{transid.lower()}")


class Ended(Exception):
    """The program ends with RETURN TRANSID."""

    def __init__(self, result: Any, next_transid: str, commarea: Any) -> None:
        self.result, self.next_transid, self.commarea = result, next_transid, commarea


class FakeSEP:
    def __init__(self, db_url: str, region: str, address: str | None = None) -> None:
        self.db_url = db_url
        self.region_name = region
        self.frames: list[dict[str, Any]] = []
        self.tasks: queue.Queue[tuple[Task, str]] = queue.Queue()
        self.inputs: queue.Queue[Any] = queue.Queue()
        self._dir = Path(tempfile.mkdtemp(prefix="fake-sep-"))
        self._server: socket.socket | None = None
        self.stopped = threading.Event()
        self.hold = threading.Event()  # SLOW waits for this
        self._conns: list[socket.socket] = []
        self.done: set[tuple[int, int]] = set()
        with connect(db_url) as conn:
            self.secret = Region(conn, region).run(ops.region.channel_secret(region))
        if address is None:
            path = self._dir / "sep.sock"
            self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._server.bind(str(path))
            self._server.listen(16)
            address = f"unix:{path}"
            threading.Thread(target=self._accept, daemon=True).start()
        self.address = address
        with connect(db_url) as conn:
            row = Region(conn, region).register_sep("fake", os.getpid(), address=address)
        self.sep_id = int(row["id"])
        threading.Thread(target=self._work, daemon=True).start()

    # ------------------------------------------------------------ channel
    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                sock, _ = self._server.accept()
            except OSError:
                return
            self._conns.append(sock)
            threading.Thread(target=self._read, args=(sock,), daemon=True).start()

    def _read(self, sock: socket.socket) -> None:
        with sock:
            try:
                if not is_auth(read_frame_sync(sock), self.secret):
                    return  # a stranger (dispatcher/channel.py)
            except (ChannelError, OSError):
                return
            while not self.stopped.is_set():
                try:
                    msg = read_frame_sync(sock)
                except (ChannelError, OSError):
                    return
                if msg is None:
                    return
                self.frames.append(msg)
                if msg["type"] == "dispatch":
                    self.tasks.put((task_from_dict(msg["task"]), msg["reply_to"]))
                elif msg["type"] == "input":
                    self.inputs.put(msg["data"])

    def kill(self) -> None:
        """The SEP's process is gone: its socket no longer accepts."""
        self.stopped.set()
        if self._server is not None:
            self._server.close()
            for p in self._dir.glob("*"):
                p.unlink()
        for sock in self._conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -------------------------------------------------------------- tasks
    def _work(self) -> None:
        """Like a SEP: run what is handed over; complete and take the next in one call;
        poll the queue now and then."""
        try:
            self._loop()
        except Exception:
            if not self.stopped.is_set():
                raise

    def _loop(self) -> None:
        links: dict[str, socket.socket] = {}
        nxt: Task | None = None
        while not self.stopped.is_set():
            if nxt is not None:
                nxt = self.run(nxt, self._reply_address(nxt), links)
                continue
            try:
                task, reply_to = self.tasks.get(timeout=0.1)
            except queue.Empty:
                try:
                    with connect(self.db_url) as conn:
                        nxt = Region(conn, self.region_name).claim_next(self.sep_id)
                except (psycopg.Error, DispatcherError):
                    time.sleep(0.2)  # the database is away: look again later
                continue
            nxt = self.run(task, reply_to, links)

    def _reply_address(self, task: Task) -> str:
        with connect(self.db_url) as conn:
            address = Region(conn, self.region_name).run(
                ops.sep.session_listener_address(task.session_id)
            )
        return address or ""

    def run(self, task: Task, reply_to: str, links: dict[str, socket.socket]) -> Task | None:
        # a dispatch frame can race with claim_next returning the same request: run once
        if (task.request_id, task.attempt) in self.done:
            return None
        self.done.add((task.request_id, task.attempt))

        def send(msg: dict[str, Any]) -> None:
            base = {"request_id": task.request_id, "session_id": str(task.session_id)}
            if reply_to not in links:
                links[reply_to] = connect_sync(reply_to, secret=self.secret)
            links[reply_to].sendall(encode_frame({**base, "sep_id": self.sep_id, **msg}))

        program = PROGRAMS[task.transid]
        ok, result, error, nxt, commarea = True, None, None, None, None
        try:
            result = program(self, task, send)
        except Ended as end:
            result, nxt, commarea = end.result, end.next_transid, end.commarea
        except Exception as exc:
            ok, error = False, {"type": type(exc).__name__, "message": str(exc)}
        if self.stopped.is_set():
            return None  # died mid-task
        with connect(self.db_url) as conn:
            following = Region(conn, self.region_name).complete(
                self.sep_id,
                task,
                ok=ok,
                result=result,
                error=error,
                take_next=not self.stopped.is_set(),
                next_transid=nxt,
                commarea=commarea,
            )
        if task.transid != "SILENT" and reply_to:  # SILENT: the end frame is lost
            send({"type": "end", "ok": ok, "result": result, "error": error, "next_transid": nxt})
        return following

    def receive(self, timeout: float = 30) -> Any:
        return self.inputs.get(timeout=timeout)


Send = Callable[[dict[str, Any]], None]


def _echo(sep: FakeSEP, task: Task, send: Send) -> Any:
    return task.payload


def _chat(sep: FakeSEP, task: Task, send: Send) -> Any:
    send({"type": "output", "data": {"prompt": "name?"}, "wants_input": True})
    name = sep.receive()
    send({"type": "output", "data": {"note": "thinking"}, "wants_input": False})
    send({"type": "await_input"})
    second = sep.receive()
    return {"greeting": f"Hello, {name}!", "second": second}


def _order(sep: FakeSEP, task: Task, send: Send) -> Any:
    raise Ended({"prompt": "how many?"}, "ORDER2", {"item": task.payload})


def _order2(sep: FakeSEP, task: Task, send: Send) -> Any:
    return {"item": (task.commarea or {}).get("item"), "quantity": task.payload}


def _abend(sep: FakeSEP, task: Task, send: Send) -> Any:
    raise ValueError("the program failed")


def _slow(sep: FakeSEP, task: Task, send: Send) -> Any:
    sep.hold.wait(30)
    return task.payload


PROGRAMS: dict[str, Callable[[FakeSEP, Task, Send], Any]] = {
    "ECHO": _echo,
    "CHAT": _chat,
    "ORDER": _order,
    "ORDER2": _order2,
    "ABEND": _abend,
    "SLOW": _slow,
    "SILENT": _echo,
}


@contextmanager
def fake_seps(db_url: str, region: str, count: int = 1) -> Iterator[list[FakeSEP]]:
    seps = [FakeSEP(db_url, region) for _ in range(count)]
    try:
        yield seps
    finally:
        for s in seps:
            s.kill()


@contextmanager
def inprocess_listener(db_url: str, region: str, **kw: Any) -> Iterator[Listener]:
    """A Listener serving on an ephemeral port, in its own thread and event loop."""
    box: dict[str, Any] = {}
    ready = threading.Event()

    def run() -> None:
        async def main() -> None:
            lst = Listener(db_url, region, "127.0.0.1", 0, **kw)
            box["listener"], box["loop"] = lst, asyncio.get_running_loop()
            try:
                await lst.start()
            except BaseException as exc:
                box["error"] = exc
                ready.set()
                raise
            ready.set()
            await lst.stopping.wait()
            await lst.close(grace=2)

        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30), "listener did not start"
    if "error" in box:
        raise box["error"]
    try:
        yield box["listener"]
    finally:
        box["loop"].call_soon_threadsafe(box["listener"].stopping.set)
        thread.join(30)


def wait_until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")
