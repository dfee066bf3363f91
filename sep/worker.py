"""One SEP: an OS process that runs one task at a time.

The loop: register, LISTEN on its channel, then claim work; run a task inside its own
database transaction; report the outcome with ``complete_v1``, which returns the next
task in the same round trip (or batched: sep/completion.py); when there is none, wait
for a NOTIFY, a task handed over by a listener on the SEP's channel socket, or the slow
safety poll.
"""

from __future__ import annotations

import asyncio
import collections
import os
import queue
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import psycopg

from dispatcher.channel import (
    AUTH_MAX,
    AUTH_TIMEOUT,
    ChannelError,
    is_auth,
    read_frame_sync,
    task_from_dict,
)
from dispatcher.database import Backoff, connect, connect_with_retry
from dispatcher.errors import CompletionRefused, DatabaseUnavailable, DispatcherError, UnknownSEP
from dispatcher.gateway import Gateway, Op, Task, ops
from dispatcher.logs import get_logger
from dispatcher.processes import socket_dir

from .batch import Batch
from .completion import Completion, OneByOne
from .context import ReturnTransid, TaskContext, TaskTimeout
from .conversation import Conversation, ListenerLinks
from .program import AppError, ProgramDef, load_app, resolve_program
from .ran import Ran

__all__ = [
    "EXIT_TIMED_OUT",
    "TIMEOUT_GRACE",
    "SEPConfig",
    "Worker",
    "end_overdue_task",
    "timeout_error",
]

_DB_LOST = (psycopg.OperationalError, DatabaseUnavailable)

# Exit codes of a SEP process, read by the supervisor: stopped and killed by an
# operator are final; declared dead is restarted like a crash.
EXIT_STOPPED = 0
EXIT_KILLED = 4
EXIT_DECLARED_DEAD = 5
# The SEP ended itself because a task overran its timeout (the task is abended with
# TaskTimeout and the SEP declared dead first): restarted at once.
EXIT_TIMED_OUT = 6
# How long past its timeout a task that ignores the timeout may go on before the SEP
# ends its process (docs/sep.md, "Timeouts").
TIMEOUT_GRACE = 2.0
# the longest a step of the watchdog's fence may wait on a lock or a statement
FENCE_WAIT_S = 10.0
# connections to a SEP's channel socket at once (listeners keep one link each)
MAX_CHANNEL_LINKS = 256
T = TypeVar("T")


def timeout_error(timeout: float, how: str) -> dict[str, Any]:
    """The error of a task that ran past its timeout (the SEP's or its supervisor's)."""
    return {
        "type": TaskTimeout.__name__,
        "message": f"task ran longer than its timeout of {timeout} s; {how}",
        "traceback": "",
    }


def end_overdue_task(
    db: Gateway, sep: int, request: int, attempt: int, error: dict[str, Any]
) -> None:
    """Fence a SEP whose task overran: in one transaction, abend the task with ERROR
    (it fails, or runs again by its retry policy) and declare the SEP dead (what else it
    holds is re-queued; its own late completion is refused). Either step is skipped
    when the database already settled it."""
    conn = db.conn
    with conn.transaction():
        for step in ("complete", "kill"):
            try:
                with conn.transaction():  # a savepoint: a refused step spoils nothing
                    if step == "complete":
                        db.run(
                            ops.sep.complete(
                                sep, request, attempt, ok=False, error=error, take_next=False
                            )
                        )
                    else:
                        db.run(ops.sep.control_sep(sep, "lost"))
            except (CompletionRefused, UnknownSEP):
                pass


@dataclass
class _Watch:
    """The task the watchdog watches: when it started (monotonic) and its timeout."""

    task: Task
    started: float
    timeout: float | None
    fencing: bool = False


from .options import SEPConfig  # noqa: E402  (one definition of the SEP options)

SOCKDIR_PREFIX = "dispatcher-sep-"


def sockdir_glob(pid: int) -> str:
    """The pattern of the channel socket folder of SEP process PID."""
    return str(Path(tempfile.gettempdir()) / f"{SOCKDIR_PREFIX}{pid}-*")


class _Stop(Exception):
    pass


def _shut(sock: socket.socket) -> None:
    """End a channel connection whose first frame did not come in time."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _request_id(msg: dict[str, Any]) -> int:
    try:
        return int(msg.get("request_id", 0))
    except (TypeError, ValueError):
        return 0


class Worker:
    def __init__(self, config: SEPConfig) -> None:
        self.config = config
        self.log = get_logger("sep", region=config.region, pid=os.getpid())
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.inputs: dict[int, Conversation] = {}  # running conversations by request
        self.inputs_lock = threading.Lock()
        # requests whose session ended before their conversation began
        self._ended: collections.OrderedDict[int, str] = collections.OrderedDict()
        self._watch_lock = threading.Lock()
        self._watched: _Watch | None = None
        self._kill_exit = EXIT_KILLED  # exit code when the database says "kill"
        self._listeners: dict[UUID, str] = {}  # session -> its listener's channel address
        self._ran: set[tuple[int, int]] = set()  # (request, attempt) run lately
        self._ran_order: collections.deque[tuple[int, int]] = collections.deque()
        self.links = ListenerLinks()
        self.programs: dict[str, ProgramDef] = {}
        self.sep_id = 0
        self.stopping = False
        self.dead = False
        # the SEP has left the region (it beats until then: a stop lets its task finish)
        self.left = False
        self.conn: psycopg.Connection[Any] | None = None
        self.loop = asyncio.new_event_loop()
        # named by pid: a supervisor removes the folder of a child that died (sockdir_glob)
        self._sockdir = socket_dir("sep")
        self.address = ""
        self._server: socket.socket | None = None
        self._channel_lock = threading.Lock()
        self._channel_links = 0
        # how the SEP reports outcomes and gets work (sep/completion.py): chosen once
        self._completion: Completion = (
            Batch(self, config.batch, config.batch_window) if config.batch > 1 else OneByOne(self)
        )

    # ------------------------------------------------------------------ setup
    def run(self) -> int:
        """Run until stopped; the exit code. The channel's socket directory goes with
        the process, however it ends (a refused start included)."""
        try:
            return self._run()
        finally:
            shutil.rmtree(self._sockdir, ignore_errors=True)

    def _run(self) -> int:
        if self.config.app:
            self.programs = load_app(self.config.app)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        self._serve_channel()
        conn = connect_with_retry(
            self.config.url, application_name="dispatcher-sep", should_stop=lambda: self.stopping
        )
        if conn is None:
            return 0
        self.conn = conn
        self._session_settings()
        # the internal channel's secret: what listeners send first, what SEPs send them
        self.links.secret = Gateway(conn).run(ops.region.channel_secret(self.config.region))
        row = Gateway(conn).run(
            ops.sep.register_sep(
                self.config.region,
                socket.gethostname(),
                os.getpid(),
                self.config.capabilities,
                standby=self.config.standby,
                address=self.address,
                app=self.config.app,
            )
        )
        self.sep_id = int(row["id"])
        self.log = self.log.bind(sep=self.sep_id)
        self.log.info(
            "sep_started",
            address=self.address,
            standby=row["standby"],
            capabilities=list(row["capabilities"]),
        )
        listening = threading.Event()
        threading.Thread(target=self._listen, args=(listening,), daemon=True).start()
        listening.wait(30)
        threading.Thread(target=self._heartbeat, daemon=True).start()
        threading.Thread(target=self._watchdog, daemon=True).start()
        try:
            self._loop()
        except _Stop:
            pass
        finally:
            self._leave()
        return EXIT_DECLARED_DEAD if self.dead else EXIT_STOPPED

    def _on_term(self, signum: int, _frame: Any) -> None:
        if not self.stopping:
            self.stopping = True
            # the rest from a thread: this handler may have interrupted the main thread
            # while it held the lock of the event queue or of stderr (not reentrant)
            threading.Thread(target=self._stopping, args=(signum,), daemon=True).start()

    def _stopping(self, signum: int) -> None:
        self.log.info("sep_stopping", signal=signum)
        self.events.put(("stop", None))
        # a conversation waiting for its client would hold the stop up: end it
        self._end_conversations("the SEP is stopping")

    def _end_conversations(self, why: str) -> None:
        with self.inputs_lock:
            running = list(self.inputs.values())
        for conversation in running:
            conversation.end_session(why)

    def _session_ended(self, request_id: int, why: str) -> None:
        """A listener says the session of REQUEST_ID ended: its conversation ends now,
        or as soon as it begins."""
        with self.inputs_lock:
            conversation = self.inputs.get(request_id)
            if conversation is None:
                self._ended[request_id] = why
                while len(self._ended) > 10_000:
                    self._ended.popitem(last=False)
        if conversation is not None:
            conversation.end_session(why)

    def _serve_channel(self) -> None:
        path = self._sockdir / "sep.sock"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        os.chmod(path, 0o666)
        server.listen(64)
        self._server = server
        self.address = f"unix:{path}"
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                sock, _ = server.accept()
            except OSError:
                return
            with self._channel_lock:
                full = self._channel_links >= MAX_CHANNEL_LINKS
                if not full:
                    self._channel_links += 1
            if full:  # listeners keep one link each: this many is a flood
                self.log.warning("channel_link_refused", links=MAX_CHANNEL_LINKS)
                sock.close()
                continue
            threading.Thread(target=self._read_channel, args=(sock,), daemon=True).start()

    def _read_channel(self, sock: socket.socket) -> None:
        try:
            self._serve_link(sock)
        finally:
            with self._channel_lock:
                self._channel_links -= 1

    def _serve_link(self, sock: socket.socket) -> None:
        with sock:
            # the first frame must be the region's secret, whole within AUTH_TIMEOUT and
            # short (dispatcher/channel.py): a timer cuts a peer that trickles it
            cut = threading.Timer(AUTH_TIMEOUT, _shut, args=(sock,))
            cut.start()
            try:
                first = read_frame_sync(sock, AUTH_MAX)
            except (ChannelError, OSError) as exc:
                first = {"error": str(exc)}
            finally:
                cut.cancel()
            if not is_auth(first, self.links.secret):
                kind = first.get("type") if isinstance(first, dict) else None
                self.log.warning(
                    "channel_stranger_refused", first_frame=str(kind) if kind else "none"
                )
                return
            while True:
                try:
                    msg = read_frame_sync(sock)
                except (ChannelError, OSError) as exc:
                    self.log.warning("channel_frame_refused", error=str(exc))
                    return
                if msg is None:
                    return
                if msg["type"] == "dispatch":
                    try:
                        task = task_from_dict(msg["task"])
                        reply_to = msg.get("reply_to")
                        if task.session_id is not None and isinstance(reply_to, str):
                            self._remember_listener(task.session_id, reply_to)
                        self.events.put(("task", task))
                    except (ChannelError, KeyError) as exc:
                        self.log.warning("channel_frame_refused", error=str(exc))
                elif msg["type"] == "input":
                    with self.inputs_lock:
                        conversation = self.inputs.get(_request_id(msg))
                    if conversation is not None:
                        conversation.deliver(msg.get("data"))
                    else:
                        self.log.warning("input_without_task", request_id=msg.get("request_id"))
                elif msg["type"] == "session_ended":
                    self.log.info("session_ended", request_id=msg.get("request_id"))
                    self._session_ended(_request_id(msg), "the client's session ended")

    def _listen(self, ready: threading.Event) -> None:
        """NOTIFY on the SEP's channel -> events. Reconnects with backoff."""
        channel = f"dispatcher_sep_{self.sep_id}"
        while not self.stopping:
            conn = connect_with_retry(
                self.config.url,
                application_name="dispatcher-sep-listen",
                should_stop=lambda: self.stopping,
            )
            if conn is None:
                return
            try:
                with conn:
                    conn.execute(f'LISTEN "{channel}"')
                    ready.set()
                    self.events.put(("wake", None))  # look once after (re)listening
                    for note in conn.notifies():
                        self._on_operator(note.payload)
                        self.events.put(("notify", note.payload))
                        if self.stopping:
                            return
            except psycopg.Error as exc:
                self.log.warning("listen_lost", error=str(exc).strip())
                time.sleep(0.2)

    def _on_operator(self, payload: str) -> None:
        """Operator actions take effect at once, even while a task runs: `sep stop`
        lets the task in hand finish and takes no more (a batch hands back the rest);
        `sep stop --force` ends the process now (the database already re-queued the
        task). So does the end of a session whose listener was reaped: the task's wait
        for input ends (SessionEnded)."""
        if payload.startswith("session_ended "):
            # the listener of a session this SEP converses with is gone (reaped)
            try:
                request_id = int(payload.split()[1])
            except ValueError:
                return
            self.log.info("session_ended", request_id=request_id, by="database")
            self._session_ended(request_id, "the client's session ended (its listener is gone)")
        elif payload == "stop" and not self.stopping:
            self.stopping = True
            self.log.info("sep_stopping", by="operator")
        elif payload == "kill":
            self.log.warning("sep_killed_by_operator")
            os._exit(self._kill_exit)

    def _heartbeat(self) -> None:
        beats = 0
        conn: psycopg.Connection[Any] | None = None
        # beats go on while a stopping SEP finishes its task (sep stop, SIGTERM): a
        # silent SEP is declared dead and its task run again elsewhere
        while not self.left and not self.dead:
            try:
                if conn is None or conn.closed:
                    conn = connect(self.config.url, application_name="dispatcher-sep-heartbeat")
                db = Gateway(conn)
                row = db.run(ops.sep.heartbeat_sep(self.sep_id))
                if self.left:
                    return  # it left meanwhile (its row is gone): not declared dead
                if row is None or row["state"] == "dead":
                    self.log.error("sep_declared_dead")
                    self.dead = True
                    self.events.put(("dead", None))
                    # a task waiting for input would keep the process (and its slot) until
                    # its timeout: the conversation is over (its request already failed)
                    self._end_conversations("the SEP was declared dead")
                    return
                if row["stop_requested"]:
                    self.events.put(("notify", "stop"))
                beats += 1
                if beats % self.config.reap_every == 0:
                    out = db.run(ops.region.reap(self.config.region))
                    if out["dead_seps"] or out["expired"]:
                        self.log.warning("reaped", **out)
            except (psycopg.Error, DispatcherError) as exc:
                self.log.warning("heartbeat_failed", error=str(exc).strip())
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(self.config.heartbeat_interval)

    # ------------------------------------------------------------------ loop
    def _session_settings(self) -> None:
        if self.config.async_commit:
            self.gateway().run(ops.sep.async_commit())

    # What a completion sees of the worker (sep/completion.py, Host): sep_id, log,
    # stopping, dead, gateway, reconnect, db, run_task, forget_listener.
    def gateway(self) -> Gateway:
        assert self.conn is not None
        return Gateway(self.conn)

    def reconnect(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg.Error:
                pass
        self.log.warning("database_lost")
        conn = connect_with_retry(
            self.config.url, application_name="dispatcher-sep", should_stop=lambda: self.stopping
        )
        if conn is None:
            raise _Stop
        self.conn = conn
        self._session_settings()

    def db(self, op: Op[T]) -> T:
        """Run OP, riding out a database restart (reconnect with backoff)."""
        backoff = Backoff()
        while True:
            try:
                return self.gateway().run(op)
            except _DB_LOST as exc:
                self.log.warning(
                    "database_unavailable", error=str(exc).strip(), retry_in_s=backoff.first
                )
                time.sleep(backoff.next_delay())
                self.reconnect()

    def _loop(self) -> None:
        todo: collections.deque[Task] = collections.deque(self._completion.claim())
        while not self.stopping and not self.dead:
            if todo:
                todo = self._completion.step(todo.popleft(), todo)
                continue
            try:
                kind, value = self.events.get(timeout=self.config.poll_interval)
            except queue.Empty:
                kind, value = "poll", None
            if kind == "task":
                # a listener's hand-over of a request this SEP already took from the
                # database (claim found it dispatched here first): never run twice
                if (value.request_id, value.attempt) not in self._ran:
                    todo.append(value)
            elif kind == "notify":
                todo.extend(self._on_notify(str(value)))
            elif kind in ("wake", "poll"):
                todo.extend(self._completion.claim())
            elif kind in ("stop", "dead"):
                break
        if not self.dead:
            self._completion.hand_back(todo)

    def _on_notify(self, payload: str) -> list[Task]:
        if payload.startswith("session_ended "):
            return []  # (acted on by the listening thread: _on_operator)
        if payload.startswith("dispatch "):
            try:
                task = self.db(ops.sep.begin_task(self.sep_id, int(payload.split()[1])))
            except CompletionRefused:
                return self._completion.claim()  # already taken (handed over)
            return [] if (task.request_id, task.attempt) in self._ran else [task]
        if payload == "kill":
            self.log.warning("sep_killed_by_operator")
            os._exit(self._kill_exit)
        if payload == "stop":
            self.stopping = True
            return []
        return self._completion.claim()

    def _program(self, task: Task) -> Any:
        d = self.programs.get(task.transid)
        if d is not None:
            return d.function
        if not task.program:
            raise AppError(f"transaction {task.transid} has no program")
        return resolve_program(task.program)

    def forget_listener(self, session: UUID) -> None:
        with self.inputs_lock:
            self._listeners.pop(session, None)

    def _remember_listener(self, session: UUID, address: str) -> None:
        with self.inputs_lock:
            if len(self._listeners) > 10_000:
                self._listeners.clear()
            self._listeners[session] = address

    def _conversation(self, task: Task) -> Conversation | None:
        """The link to the listener of the task's session (its address is remembered from
        the listener's hand-over, else read once per session from the database)."""
        if task.session_id is None:
            return None
        with self.inputs_lock:
            address = self._listeners.get(task.session_id)
        if address is None:
            address = self.gateway().run(ops.sep.session_listener_address(task.session_id))
            if address is not None:
                self._remember_listener(task.session_id, address)
        conversation = Conversation(
            self.links, address or "", task.request_id, task.session_id, self.sep_id, queue.Queue()
        )
        with self.inputs_lock:
            self.inputs[task.request_id] = conversation
            why = self._ended.pop(task.request_id, None)
        if address is None:
            # the session ended before its task began: no client to converse with
            why = "the client's session ended before the task began"
        if why is not None:
            conversation.end_session(why)
        return conversation

    def run_task(
        self,
        task: Task,
        before_tx: Callable[[], None] | None = None,
        before_wait: Callable[[], None] | None = None,
    ) -> Ran | None:
        """Run one task's program; None if the database was lost meanwhile (reconnected:
        the task is still held by this SEP and runs again)."""
        log = self.log.bind(request_id=task.request_id, transid=task.transid, attempt=task.attempt)
        log.info("request_running")
        key = (task.request_id, task.attempt)
        self._ran.add(key)
        self._ran_order.append(key)
        if len(self._ran_order) > 10_000:
            self._ran.discard(self._ran_order.popleft())
        assert self.conn is not None
        conn = self.conn
        ran = Ran(task, log)

        def begin() -> None:
            if before_tx is not None:
                before_tx()
            t = conn.transaction()
            t.__enter__()
            ran.tx.append(t)

        try:
            ran.conversation = self._conversation(task)
        except _DB_LOST:
            self.reconnect()
            return None
        if ran.conversation is not None:
            ran.conversation.before_wait = before_wait
        ctx = TaskContext(task, self.config.region, conn, log, ran.conversation, begin)
        ran.started = time.monotonic()
        overdue = False
        try:
            self._watch(task, ran.started)
            value = self._run_program(task, ctx)
            overdue = self._unwatch()
            if isinstance(value, ReturnTransid):
                ran.result, ran.next_transid, ran.commarea = (
                    value.output,
                    value.transid,
                    value.commarea,
                )
            else:
                ran.result = value
        except _DB_LOST as exc:
            self._unwatch()
            log.warning("database_lost_during_task", error=str(exc).strip())
            self._drop_inputs(task)
            self.reconnect()
            return None
        except BaseException as exc:
            overdue = self._unwatch()
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            ran.abend(exc, traceback.format_exc())
            if ran.tx:
                try:
                    ran.tx.pop().__exit__(type(exc), exc, exc.__traceback__)
                except psycopg.Error:
                    pass
        if overdue and (ran.ok or (ran.error or {}).get("type") != TaskTimeout.__name__):
            # whatever the program did with its timeout (caught it, blocked past it),
            # an outcome that comes after it is a timeout: never done
            ran.abend(TaskTimeout(f"task ran longer than its timeout of {task.timeout_s} s"), "")
            ran.rollback()
        ran.ended = time.monotonic()
        self._drop_inputs(task)
        return ran

    def _drop_inputs(self, task: Task) -> None:
        with self.inputs_lock:
            self.inputs.pop(task.request_id, None)

    def _run_program(self, task: Task, ctx: TaskContext) -> Any:
        fn = self._program(task)
        timeout = task.timeout_s
        d = self.programs.get(task.transid)
        if asyncio.iscoroutinefunction(fn) or (d is not None and d.is_async):
            coro = fn(ctx)
            if timeout:
                coro = asyncio.wait_for(coro, timeout)
            try:
                return self.loop.run_until_complete(coro)
            except TimeoutError:
                raise TaskTimeout(f"task ran longer than its timeout of {timeout} s") from None
        if not timeout:
            return fn(ctx)

        def on_alarm(_signum: int, _frame: Any) -> None:
            raise TaskTimeout(f"task ran longer than its timeout of {timeout} s")

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            return fn(ctx)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    # -------------------------------------------------------------- timeouts
    def _watch(self, task: Task, started: float) -> None:
        with self._watch_lock:
            self._watched = _Watch(task, started, task.timeout_s)

    def _unwatch(self) -> bool:
        """The task's program is over: stop watching it. True if it overran its timeout.
        If the watchdog is already ending the process, wait for that (the task's outcome
        is the watchdog's to report)."""
        with self._watch_lock:
            w, self._watched = self._watched, None
        if w is not None and w.fencing:
            while True:
                time.sleep(60)
        if w is None or not w.timeout:
            return False
        return time.monotonic() - w.started > w.timeout

    def _watchdog(self) -> None:
        """A task that runs TIMEOUT_GRACE past its timeout (its program caught the
        timeout, or blocks where no signal reaches it) ends the process: the task is
        abended with TaskTimeout and the SEP declared dead; its supervisor starts a
        new one."""
        while True:
            time.sleep(0.1)
            with self._watch_lock:
                w = self._watched
                if w is None or not w.timeout or w.fencing:
                    continue
                if time.monotonic() < w.started + w.timeout + TIMEOUT_GRACE:
                    continue
                w.fencing = True
            self._end_overdue(w)

    def _end_overdue(self, w: _Watch) -> None:
        task = w.task
        self._kill_exit = EXIT_TIMED_OUT  # our own "kill" notice must not read as an operator's
        self.log.error(
            "task_overran_timeout",
            request_id=task.request_id,
            transid=task.transid,
            timeout_s=w.timeout,
            grace_s=TIMEOUT_GRACE,
        )
        # the program may spin (catching everything on its broken connection): let this
        # thread have the interpreter back quickly after each wait; the process ends anyway
        sys.setswitchinterval(0.0001)
        began = time.monotonic()
        try:
            with connect(self.config.url, application_name="dispatcher-sep-watchdog") as conn:
                db = Gateway(conn)
                db.run(ops.sep.bound_waits(FENCE_WAIT_S))
                if self.conn is not None and not self.conn.closed:
                    # the task's transaction goes now, even inside a long statement
                    db.run(ops.sep.end_backend(self.conn.info.backend_pid))
                end_overdue_task(
                    db,
                    self.sep_id,
                    task.request_id,
                    task.attempt,
                    timeout_error(w.timeout or 0.0, f"the SEP ended it {TIMEOUT_GRACE} s later"),
                )
        except Exception as exc:  # the process ends all the same; its supervisor fences it
            self.log.error(
                "timeout_fence_failed",
                error=str(exc).strip(),
                after_s=round(time.monotonic() - began, 2),
            )
        else:
            took = time.monotonic() - began
            if took > 1.0:
                self.log.warning("timeout_fence_slow", after_s=round(took, 2))
        finally:
            os._exit(EXIT_TIMED_OUT)

    def _leave(self) -> None:
        self.stopping = True
        self.left = True
        self.links.close()
        if self._server is not None:
            self._server.close()
        shutil.rmtree(self._sockdir, ignore_errors=True)
        if self.dead or self.conn is None:
            return
        try:
            requeued = self.gateway().run(ops.sep.leave_sep(self.sep_id))
            self.log.info("sep_left", requeued=requeued)
        except (psycopg.Error, UnknownSEP, DispatcherError) as exc:
            self.log.warning("sep_leave_failed", error=str(exc).strip())
