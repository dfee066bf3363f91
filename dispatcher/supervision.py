"""Supervising child processes: start them, notice when one exits, restart it with a
``Backoff`` (reset once it has run long enough), stop them all with a grace period.

One supervisor for every parent: ``dispatcher up`` (listener, event monitor, SEP
supervisor) and the SEP supervisor (its SEP processes, sep/supervisor.py). What a
parent knows about its children (an exit code that means "do not restart", fencing a
dead SEP in the database) it says in an ``on_exit`` hook.
"""

from __future__ import annotations

import math
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .database import Backoff
from .processes import child_env, stop_processes

__all__ = ["NEVER", "Child", "ExitHook", "ProcessSupervisor"]

NEVER = math.inf  # a restart delay: the child is not started again


@dataclass
class Child:
    """One supervised process: ARGV started with ENV (see child_env), restarted with
    BACKOFF; LOG_FIELDS name it in the log (process="listener", slot=3)."""

    name: str
    argv: Sequence[str]
    env: dict[str, str]
    backoff: Backoff
    log_fields: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    pid: int = 0  # of the last process started (proc is None once it exited)
    restart_at: float = 0.0  # while proc is None: when to start it (NEVER: not again)
    started_at: float = 0.0

    @property
    def finished(self) -> bool:
        """Exited and not to be started again."""
        return self.proc is None and self.restart_at == NEVER


# on_exit(child, returncode, now): the delay before the child's restart (NEVER: none;
# the hook logged why), or None for the usual: a restart after the next backoff delay,
# logged as the supervisor's exit event
ExitHook = Callable[[Child, int, float], float | None]


class ProcessSupervisor:
    """Children started, restarted and stopped; the caller's loop calls ``check()``.

    LOG gets STARTED_EVENT (pid) when a child starts and EXITED_EVENT (returncode,
    restart_in_s) when one exits and is restarted after a backoff delay; FIRST_DELAY and
    MAX_DELAY are those of each child's backoff, reset after the child ran HEALTHY_AFTER
    seconds. NEW_SESSION: each child in a process group of its own (Ctrl-C of a terminal
    reaches the supervisor only; stop_all kills the whole group).
    """

    def __init__(
        self,
        log: Any,
        *,
        started_event: str = "process_started",
        exited_event: str = "process_exited",
        first_delay: float = 1.0,
        max_delay: float = 30.0,
        healthy_after: float = 30.0,
        new_session: bool = False,
        on_exit: ExitHook | None = None,
    ) -> None:
        self.log = log
        self.started_event = started_event
        self.exited_event = exited_event
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.healthy_after = healthy_after
        self.new_session = new_session
        self.on_exit = on_exit
        self.children: list[Child] = []
        self.stopping = False

    def add(self, name: str, argv: Sequence[str], env: dict[str, str], **log_fields: Any) -> Child:
        """A child to supervise (started by start_all, or by check when added later)."""
        child = Child(
            name,
            list(argv),
            env,
            Backoff(first=self.first_delay, max_delay=self.max_delay),
            log_fields or {"process": name},
        )
        self.children.append(child)
        return child

    def start(self, child: Child) -> None:
        # it ends with us, even on kill -9 (die_with_parent)
        child.proc = subprocess.Popen(
            child.argv, env=child_env(child.env), start_new_session=self.new_session
        )
        child.pid = child.proc.pid
        child.started_at = time.monotonic()
        child.restart_at = 0.0
        self.log.info(self.started_event, **child.log_fields, pid=child.proc.pid)

    def start_all(self) -> None:
        for child in self.children:
            self.start(child)

    def check(self, now: float | None = None) -> list[tuple[Child, int]]:
        """Start the children whose restart is due, notice those that exited (and
        schedule their restart); the children that exited, with their return codes."""
        now = time.monotonic() if now is None else now
        exited: list[tuple[Child, int]] = []
        for child in self.children:
            if child.proc is None:
                if now >= child.restart_at:
                    self.start(child)
                continue
            rc = child.proc.poll()
            if rc is None:
                if now - child.started_at > self.healthy_after:
                    child.backoff.reset()  # it ran well: its next crash is a first one
                continue
            child.proc = None
            exited.append((child, rc))
            delay = self.on_exit(child, rc, now) if self.on_exit is not None else None
            if delay is None:
                delay = child.backoff.next_delay()
                self.log.warning(
                    self.exited_event, **child.log_fields, returncode=rc, restart_in_s=delay
                )
            child.restart_at = now + delay
        return exited

    def kill(self, child: Child, restart_in: float = 0.0) -> None:
        """SIGKILL the child (e.g. a SEP stuck in a task) and start it again."""
        if child.proc is not None:
            child.proc.kill()
            child.proc.wait()
            child.proc = None
        child.restart_at = time.monotonic() + restart_in

    @property
    def running(self) -> list[Child]:
        return [c for c in self.children if c.proc is not None]

    def stop_all(
        self, grace: float, order: Callable[[Child], int] | None = None
    ) -> list[tuple[Child, int]]:
        """SIGTERM the children that run (in ORDER), wait up to GRACE seconds in all,
        then SIGKILL what is left; the children stopped, with their return codes."""
        self.stopping = True
        running = sorted(self.running, key=order) if order is not None else self.running
        procs = [c.proc for c in running if c.proc is not None]
        stop_processes(procs, grace, self.log, group=self.new_session)
        return [(c, p.returncode) for c, p in zip(running, procs, strict=True)]

    @contextmanager
    def stopping_on_signals(self, on_signal: Callable[[int], None] | None = None) -> Iterator[None]:
        """While in the block, SIGTERM and SIGINT set ``stopping`` (ON_SIGNAL is called at
        the first); the handlers that were there before come back after."""

        def handler(signum: int, _frame: Any) -> None:
            first = not self.stopping
            self.stopping = True
            if first and on_signal is not None:
                on_signal(signum)

        old_int = signal.signal(signal.SIGINT, handler)
        old_term = signal.signal(signal.SIGTERM, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
