"""Stopping child processes: SIGTERM, a grace period, then SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["stop_processes"]


def stop_processes(
    procs: Sequence[subprocess.Popen[Any]], grace: float, log: Any = None, group: bool = False
) -> None:
    """SIGTERM each process still running, wait up to GRACE seconds in all, then SIGKILL
    (the whole process group when GROUP) what is left."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            if log is not None:
                log.warning("process_killed", pid=p.pid)
            if group:
                os.killpg(p.pid, signal.SIGKILL)
            else:
                p.kill()
            p.wait()
