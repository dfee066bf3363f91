"""Runs N SEP processes in the foreground: restarts the ones that die, reaps dead SEPs
of the region, and stops them all gracefully on SIGTERM or Ctrl-C (each finishes its
current task first).

A child that dies is fenced at once: its SEP is declared dead in the database (what it
held is re-queued by the usual rules, a late completion from it is refused) so that
its restart finds its slot free. A child whose task overruns its timeout by more than
its own watchdog allows (a C call that never lets go, a stopped process) is killed and
its task abended with TaskTimeout. When the operator stops the SEPs that were running
(``sep stop``), slots waiting to restart are not restarted: the supervisor exits.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import sys
import threading
import time
from typing import Any

import psycopg

from dispatcher.database import connect
from dispatcher.errors import DispatcherError, NoRoom
from dispatcher.gateway import Gateway, ops
from dispatcher.logs import get_logger
from dispatcher.supervision import NEVER, Child, ProcessSupervisor

from .options import SEPConfig, argv
from .worker import (
    EXIT_DECLARED_DEAD,
    EXIT_KILLED,
    EXIT_STOPPED,
    EXIT_TIMED_OUT,
    TIMEOUT_GRACE,
    end_overdue_task,
    sockdir_glob,
    timeout_error,
)

__all__ = ["Supervisor"]

NO_ROOM_EXIT = 3
BAD_APP_EXIT = 2
# a task this long past its timeout is ended by the supervisor (the SEP's own watchdog
# acts TIMEOUT_GRACE after the timeout; this one is for a SEP that cannot)
WATCHDOG_GRACE = 2 * TIMEOUT_GRACE + 1.0
WATCHDOG_INTERVAL = 1.0


class Supervisor:
    """COUNT processes of ``python -m sep`` run with CONFIG (its URL and region go to
    them through the environment), on the core's ProcessSupervisor: a crash is restarted
    after 0.5 s, 1 s, 2 s ... 30 s (from 0.5 s again after 30 s of running)."""

    def __init__(self, config: SEPConfig, count: int, reap_interval: float = 5.0) -> None:
        self.config = config
        self.url = config.url
        self.region = config.region
        self.count = count
        self.reap_interval = reap_interval
        self.log = get_logger("sep.supervisor", region=config.region)
        self.host = socket.gethostname()  # as the SEPs register it
        self._conn: psycopg.Connection[Any] | None = None
        self.procs = ProcessSupervisor(
            self.log,
            started_event="sep_process_started",
            exited_event="sep_process_died",
            first_delay=0.5,
            max_delay=30.0,
            healthy_after=30.0,
            on_exit=self._on_exit,
        )
        self._operator_stopped: set[str] = set()  # children stopped by `dispatcher sep stop`
        self._stopped_now = False

    @property
    def stopping(self) -> bool:
        return self.procs.stopping

    def check_room(self) -> None:
        """Refuse at once, with the numbers, when the region has no room for N SEPs."""
        if self.config.standby:
            return
        with connect(self.url, application_name="dispatcher-supervisor") as conn:
            db = Gateway(conn)
            db.run(ops.region.reap(self.region))  # SEPs of a crashed run hold no slot
            info = db.run(ops.region.get_region(self.region))
            active = db.run(ops.sep.active_seps(self.region))
        free = info["max_seps"] - active
        if self.count > free:
            raise NoRoom(
                f"region {self.region!r} has room for {max(free, 0)} more SEP(s) "
                f"(max {info['max_seps']}, {active} running), not {self.count}",
                hint="start fewer, raise it with dispatcher region set --max-seps N, "
                "or start them with --standby",
            )

    def _argv(self) -> list[str]:
        return [sys.executable, "-m", "sep", *argv(self.config)]

    def _on_signal(self, signum: int) -> None:
        # logged from a thread: the handler may have interrupted a write to stderr
        threading.Thread(
            target=self.log.info, args=("supervisor_stopping",), kwargs={"signal": signum}
        ).start()

    def run(self) -> int:
        env = {**os.environ, "DISPATCHER_DATABASE_URL": self.url, "DISPATCHER_REGION": self.region}
        for i in range(self.count):
            self.procs.add(f"sep-{i}", self._argv(), env, slot=i)
        with self.procs.stopping_on_signals(self._on_signal):
            self.procs.start_all()
            exit_code = self._loop()
            self._stop_all()
        return exit_code

    def _loop(self) -> int:
        last_reap = last_watch = time.monotonic()
        children = self.procs.children
        while not self.stopping:
            time.sleep(0.2)
            now = time.monotonic()
            self._stopped_now = False
            self.procs.check(now)
            if self.stopping:
                # a signal came during the sleep (a terminal's Ctrl-C reaches the SEPs
                # too): what ended meanwhile ended as asked
                break
            if self._stopped_now and all(c.proc is None for c in children):
                # the operator stopped what was running: a slot waiting to restart (a
                # crash, no room) is not restarted behind the operator's back
                self.log.info("all_seps_stopped")
                return 0
            if all(c.finished for c in children):
                if all(c.name in self._operator_stopped for c in children):
                    self.log.info("all_seps_stopped")
                    return 0
                self.log.error("no_sep_can_run")
                return 1
            if now - last_watch >= WATCHDOG_INTERVAL:
                last_watch = now
                self._watch(now)
            if now - last_reap >= self.reap_interval:
                last_reap = now
                self._reap()
        return 0

    def _on_exit(self, child: Child, rc: int, now: float) -> float | None:
        """What a SEP's exit code means: the delay before its restart (NEVER: none), or
        None for a crash (restarted with backoff, logged as sep_process_died)."""
        slot, pid = child.log_fields["slot"], child.pid
        for leftover in glob.glob(sockdir_glob(pid)):  # a child that died left its socket
            shutil.rmtree(leftover, ignore_errors=True)
        if rc in (EXIT_STOPPED, EXIT_KILLED) and self.stopping:
            # it stopped as we asked: nothing to report
            self.log.info("sep_process_stopped", slot=slot, returncode=rc)
            return NEVER
        if rc in (EXIT_STOPPED, EXIT_KILLED):
            # `dispatcher sep stop [--force]`: the operator's word is final
            self._operator_stopped.add(child.name)
            self._stopped_now = True
            self.log.info("sep_process_stopped_by_operator", slot=slot, returncode=rc)
            return NEVER
        if rc in (BAD_APP_EXIT, NO_ROOM_EXIT):
            self.log.error("sep_process_refused", slot=slot, returncode=rc)
            return NEVER if rc == BAD_APP_EXIT else 10.0
        self._declare_dead(pid, rc)  # its slot is free for the restart at once
        if rc == EXIT_TIMED_OUT:
            # its task overran and was abended; the process itself was sound
            self.log.warning("sep_process_timed_out", slot=slot, returncode=rc)
            return 0.0
        return None  # a crash: restarted with backoff

    # ------------------------------------------------------------ database
    def _db(self) -> Gateway:
        """The gateway on the supervisor's connection (opened again when lost)."""
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.url, application_name="dispatcher-supervisor")
        return Gateway(self._conn)

    def _db_failed(self, what: str, exc: BaseException) -> None:
        self.log.warning(what, error=str(exc).strip())
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def _declare_dead(self, pid: int, returncode: int) -> None:
        """Fence the SEP of a child that died: declared dead, what it held re-queued
        (by the usual rules), a late completion from it refused."""
        if returncode == EXIT_DECLARED_DEAD:
            return  # the database said so already
        try:
            db = self._db()
            sep = db.run(ops.sep.sep_of_process(self.region, self.host, pid))
            if sep is not None:
                db.run(ops.sep.control_sep(sep, "lost"))
                self.log.warning("sep_declared_dead", sep=sep, pid=pid, returncode=returncode)
        except (psycopg.Error, DispatcherError) as exc:
            # the region's reaper declares it dead when its heartbeat stops
            self._db_failed("declare_dead_failed", exc)

    def _watch(self, now: float) -> None:
        """Kill a child whose task overran its timeout by WATCHDOG_GRACE, abend the task
        with TaskTimeout, and restart the slot."""
        by_pid = {c.proc.pid: c for c in self.procs.running if c.proc is not None}
        if not by_pid:
            return
        try:
            overdue = self._db().run(
                ops.sep.overdue_seps(self.region, self.host, list(by_pid), WATCHDOG_GRACE)
            )
        except (psycopg.Error, DispatcherError) as exc:
            self._db_failed("watchdog_failed", exc)
            return
        for o in overdue:
            child = by_pid.get(o.pid)
            if child is None or child.proc is None:
                continue
            self.log.error(
                "sep_task_overran",
                slot=child.log_fields["slot"],
                sep=o.sep_id,
                request_id=o.request_id,
                timeout_s=o.timeout_s,
            )
            self.procs.kill(child)  # and restart it
            error = timeout_error(o.timeout_s, "its supervisor ended the SEP process")
            try:
                end_overdue_task(self._db(), o.sep_id, o.request_id, o.attempt, error)
            except (psycopg.Error, DispatcherError) as exc:
                self._db_failed("timeout_fence_failed", exc)

    def _reap(self) -> None:
        try:
            out = self._db().run(ops.region.reap(self.region))
            if out["dead_seps"] or out["expired"]:
                self.log.warning("reaped", **out)
        except (psycopg.Error, DispatcherError) as exc:
            self._db_failed("reap_failed", exc)

    def _stop_all(self, grace: float = 120.0) -> None:
        for child, rc in self.procs.stop_all(grace):
            if rc not in (EXIT_STOPPED, EXIT_KILLED):
                self._declare_dead(child.pid, rc)  # e.g. killed after the grace
        if self._conn is not None:
            self._conn.close()
        self.log.info("supervisor_stopped")
