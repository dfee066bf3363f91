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
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from dispatcher.database import connect
from dispatcher.errors import DispatcherError, NoRoom
from dispatcher.logs import get_logger
from dispatcher.processes import child_env, stop_processes
from dispatcher.region import Region

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


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    failures: int = 0
    restart_at: float = 0.0
    operator_stopped: bool = False
    started_at: float = field(default_factory=time.monotonic)


class Supervisor:
    def __init__(
        self,
        url: str,
        region: str,
        app: str,
        count: int,
        capabilities: tuple[str, ...] = (),
        standby: bool = False,
        poll_interval: float = 1.0,
        heartbeat_interval: float = 2.0,
        reap_interval: float = 5.0,
        async_commit: bool = False,
        batch: int = 1,
        batch_window_ms: float = 5.0,
    ) -> None:
        self.url = url
        self.region = region
        self.app = app
        self.count = count
        self.capabilities = capabilities
        self.standby = standby
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.reap_interval = reap_interval
        self.async_commit = async_commit
        self.batch = batch
        self.batch_window_ms = batch_window_ms
        self.stopping = False
        self.log = get_logger("sep.supervisor", region=region)
        self.host = socket.gethostname()  # as the SEPs register it
        self._conn: psycopg.Connection[Any] | None = None

    def check_room(self) -> None:
        """Refuse at once, with the numbers, when the region has no room for N SEPs."""
        if self.standby:
            return
        with connect(self.url, application_name="dispatcher-supervisor") as conn:
            region = Region(conn, self.region)
            region.reap()  # SEPs of a crashed run hold no slot
            info = region.info()
            row = region.row("active_seps", region=self.region)
        active = int(row["n"]) if row else 0
        free = info["max_seps"] - active
        if self.count > free:
            raise NoRoom(
                f"region {self.region!r} has room for {max(free, 0)} more SEP(s) "
                f"(max {info['max_seps']}, {active} running), not {self.count}",
                hint="start fewer, raise it with dispatcher region set --max-seps N, "
                "or start them with --standby",
            )

    def _argv(self) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "sep",
            "--app",
            self.app,
            "--poll",
            str(self.poll_interval),
            "--heartbeat",
            str(self.heartbeat_interval),
        ]
        for cap in self.capabilities:
            argv += ["--capability", cap]
        if self.standby:
            argv.append("--standby")
        if self.async_commit:
            argv.append("--async-commit")
        if self.batch > 1:
            argv += ["--batch", str(self.batch), "--batch-window", str(self.batch_window_ms)]
        return argv

    def _start(self, slot: _Slot) -> None:
        env = {**os.environ, "DISPATCHER_DATABASE_URL": self.url, "DISPATCHER_REGION": self.region}
        slot.proc = subprocess.Popen(self._argv(), env=child_env(env))  # ends with us
        slot.started_at = time.monotonic()
        self.log.info("sep_process_started", slot=slot.index, pid=slot.proc.pid)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if not self.stopping:
            self.stopping = True
            # logged from a thread: the handler may have interrupted a write to stderr
            threading.Thread(
                target=self.log.info, args=("supervisor_stopping",), kwargs={"signal": signum}
            ).start()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        slots = [_Slot(i) for i in range(self.count)]
        for slot in slots:
            self._start(slot)
        last_reap = last_watch = time.monotonic()
        exit_code = 0
        while not self.stopping:
            time.sleep(0.2)
            now = time.monotonic()
            stopped_now = [self._check(slot, now) for slot in slots]
            if any(stopped_now) and all(s.proc is None for s in slots):
                # the operator stopped what was running: a slot waiting to restart (a
                # crash, no room) is not restarted behind the operator's back
                self.log.info("all_seps_stopped")
                break
            if all(s.proc is None and s.restart_at == float("inf") for s in slots):
                if all(s.operator_stopped for s in slots):
                    self.log.info("all_seps_stopped")
                else:
                    self.log.error("no_sep_can_run")
                    exit_code = 1
                break
            if now - last_watch >= WATCHDOG_INTERVAL:
                last_watch = now
                self._watch(slots, now)
            if now - last_reap >= self.reap_interval:
                last_reap = now
                self._reap()
        self._stop_all(slots)
        return exit_code

    def _check(self, slot: _Slot, now: float) -> bool:
        """Start or restart SLOT's process when due; True if the operator just stopped it."""
        if slot.proc is None:
            if now >= slot.restart_at:
                self._start(slot)
            return False
        rc = slot.proc.poll()
        if rc is None:
            if now - slot.started_at > 30:
                slot.failures = 0
            return False
        pid = slot.proc.pid
        slot.proc = None
        for leftover in glob.glob(sockdir_glob(pid)):  # a child that died left its socket
            shutil.rmtree(leftover, ignore_errors=True)
        if rc in (EXIT_STOPPED, EXIT_KILLED) and self.stopping:
            slot.restart_at = float("inf")  # it stopped as we asked: nothing to report
            self.log.info("sep_process_stopped", slot=slot.index, returncode=rc)
            return False
        if rc in (EXIT_STOPPED, EXIT_KILLED) and not self.stopping:
            # `dispatcher sep stop [--force]`: the operator's word is final
            slot.restart_at = float("inf")
            slot.operator_stopped = True
            self.log.info("sep_process_stopped_by_operator", slot=slot.index, returncode=rc)
            return True
        if rc in (BAD_APP_EXIT, NO_ROOM_EXIT):
            slot.restart_at = float("inf") if rc == BAD_APP_EXIT else now + 10.0
            self.log.error("sep_process_refused", slot=slot.index, returncode=rc)
            return False
        self._declare_dead(pid, rc)  # its slot is free for the restart at once
        if rc == EXIT_TIMED_OUT:
            # its task overran and was abended; the process itself was sound
            slot.restart_at = now
            self.log.warning("sep_process_timed_out", slot=slot.index, returncode=rc)
            return False
        slot.failures += 1
        delay = min(30.0, 0.25 * 2 ** min(slot.failures, 7))
        slot.restart_at = now + delay
        self.log.warning("sep_process_died", slot=slot.index, returncode=rc, restart_in_s=delay)
        return False

    # ------------------------------------------------------------ database
    def _region(self) -> Region:
        """The region on the supervisor's connection (opened again when lost)."""
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.url, application_name="dispatcher-supervisor")
        return Region(self._conn, self.region)

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
            region = self._region()
            row = region.row("sep_of_process", region=self.region, host=self.host, pid=pid)
            if row is not None:
                region.control_sep(int(row["id"]), "kill")
                self.log.warning("sep_declared_dead", sep=row["id"], pid=pid, returncode=returncode)
        except (psycopg.Error, DispatcherError) as exc:
            # the region's reaper declares it dead when its heartbeat stops
            self._db_failed("declare_dead_failed", exc)

    def _watch(self, slots: list[_Slot], now: float) -> None:
        """Kill a child whose task overran its timeout by WATCHDOG_GRACE, abend the task
        with TaskTimeout, and restart the slot."""
        by_pid = {s.proc.pid: s for s in slots if s.proc is not None}
        if not by_pid:
            return
        try:
            rows = self._region().rows(
                "overdue_seps",
                region=self.region,
                host=self.host,
                pids=list(by_pid),
                grace=WATCHDOG_GRACE,
            )
        except (psycopg.Error, DispatcherError) as exc:
            self._db_failed("watchdog_failed", exc)
            return
        for row in rows:
            slot = by_pid.get(int(row["pid"]))
            if slot is None or slot.proc is None:
                continue
            self.log.error(
                "sep_task_overran",
                slot=slot.index,
                sep=row["sep_id"],
                request_id=row["request_id"],
                timeout_s=row["timeout_s"],
            )
            slot.proc.kill()
            slot.proc.wait()
            slot.proc = None
            slot.restart_at = now
            error = timeout_error(float(row["timeout_s"]), "its supervisor ended the SEP process")
            try:
                end_overdue_task(
                    self._region(),
                    int(row["sep_id"]),
                    int(row["request_id"]),
                    int(row["attempt"]),
                    error,
                )
            except (psycopg.Error, DispatcherError) as exc:
                self._db_failed("timeout_fence_failed", exc)

    def _reap(self) -> None:
        try:
            out = self._region().reap()
            if out["dead_seps"] or out["expired"]:
                self.log.warning("reaped", **out)
        except (psycopg.Error, DispatcherError) as exc:
            self._db_failed("reap_failed", exc)

    def _stop_all(self, slots: list[_Slot], grace: float = 120.0) -> None:
        procs = [s.proc for s in slots if s.proc is not None]
        stop_processes(procs, grace, self.log)
        for p in procs:
            if p.returncode not in (EXIT_STOPPED, EXIT_KILLED):
                self._declare_dead(p.pid, p.returncode)  # e.g. killed after the grace
        if self._conn is not None:
            self._conn.close()
        self.log.info("supervisor_stopped")
