"""Runs N SEP processes in the foreground: restarts the ones that die, reaps dead SEPs
of the region, and stops them all gracefully on SIGTERM or Ctrl-C (each finishes its
current task first)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from dispatcher.database import connect
from dispatcher.errors import DispatcherError, NoRoom
from dispatcher.logs import get_logger
from dispatcher.processes import stop_processes
from dispatcher.region import Region

from .worker import EXIT_KILLED, EXIT_STOPPED

__all__ = ["Supervisor"]

NO_ROOM_EXIT = 3
BAD_APP_EXIT = 2


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
        slot.proc = subprocess.Popen(self._argv(), env=env)
        slot.started_at = time.monotonic()
        self.log.info("sep_process_started", slot=slot.index, pid=slot.proc.pid)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if not self.stopping:
            self.stopping = True
            self.log.info("supervisor_stopping", signal=signum)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        slots = [_Slot(i) for i in range(self.count)]
        for slot in slots:
            self._start(slot)
        last_reap = time.monotonic()
        exit_code = 0
        while not self.stopping:
            time.sleep(0.2)
            now = time.monotonic()
            for slot in slots:
                self._check(slot, now)
            if all(s.proc is None and s.restart_at == float("inf") for s in slots):
                if all(s.operator_stopped for s in slots):
                    self.log.info("all_seps_stopped")
                else:
                    self.log.error("no_sep_can_run")
                    exit_code = 1
                break
            if now - last_reap >= self.reap_interval:
                last_reap = now
                self._reap()
        self._stop_all(slots)
        return exit_code

    def _check(self, slot: _Slot, now: float) -> None:
        if slot.proc is None:
            if now >= slot.restart_at:
                self._start(slot)
            return
        rc = slot.proc.poll()
        if rc is None:
            if now - slot.started_at > 30:
                slot.failures = 0
            return
        slot.proc = None
        if rc in (EXIT_STOPPED, EXIT_KILLED) and not self.stopping:
            # `dispatcher sep stop [--force]`: the operator's word is final
            slot.restart_at = float("inf")
            slot.operator_stopped = True
            self.log.info("sep_process_stopped_by_operator", slot=slot.index, returncode=rc)
            return
        if rc in (BAD_APP_EXIT, NO_ROOM_EXIT):
            slot.restart_at = float("inf") if rc == BAD_APP_EXIT else now + 10.0
            self.log.error("sep_process_refused", slot=slot.index, returncode=rc)
            return
        slot.failures += 1
        delay = min(30.0, 0.25 * 2 ** min(slot.failures, 7))
        slot.restart_at = now + delay
        self.log.warning("sep_process_died", slot=slot.index, returncode=rc, restart_in_s=delay)

    def _reap(self) -> None:
        try:
            with connect(self.url, application_name="dispatcher-supervisor") as conn:
                out = Region(conn, self.region).reap()
            if out["dead_seps"] or out["expired"]:
                self.log.warning("reaped", **out)
        except (psycopg.Error, DispatcherError) as exc:
            self.log.warning("reap_failed", error=str(exc).strip())

    def _stop_all(self, slots: list[_Slot], grace: float = 120.0) -> None:
        stop_processes([s.proc for s in slots if s.proc is not None], grace, self.log)
        self.log.info("supervisor_stopped")
