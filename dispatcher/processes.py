"""Child processes: they end with their parent; stopping them: SIGTERM, a grace period,
then SIGKILL."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["PARENT_ENV", "child_env", "die_with_parent", "socket_dir", "stop_processes"]

# set by a parent (``up``, a SEP supervisor) for its children: the parent's pid
PARENT_ENV = "DISPATCHER_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def child_env(env: dict[str, str]) -> dict[str, str]:
    """ENV for a child that must not outlive this process (see die_with_parent)."""
    return {**env, PARENT_ENV: str(os.getpid())}


def die_with_parent() -> None:
    """In a child started with child_env: get SIGTERM when the parent dies, even by
    kill -9 (Linux), so that no listener, monitor or SEP is left behind, orphaned; it then
    stops as on any SIGTERM (a SEP finishes its task). Elsewhere, or when not started by
    such a parent, nothing happens."""
    wanted = os.environ.pop(PARENT_ENV, None)
    if wanted is None or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != wanted:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


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


def socket_dir(kind: str) -> Path:
    """A new private folder for this process's unix socket, named
    ``dispatcher-KIND-PID-*`` in the temp folder; the folders of KIND left by processes
    that no longer run (killed -9: nobody removed them) are removed first."""
    base = Path(tempfile.gettempdir())
    for old in base.glob(f"dispatcher-{kind}-*-*"):
        try:
            pid = int(old.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"dispatcher-{kind}-{os.getpid()}-"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
