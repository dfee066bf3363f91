"""`dispatcher sep start`'s supervisor: a child that dies frees its slot at once, and an
operator's stop ends the restart loop (docs/sep.md, "Running SEPs"); the core's process
supervisor under it (and under `dispatcher up`): restarts with backoff, stops all."""

from __future__ import annotations

import glob
import os
import signal
import sys
import time
from typing import Any

from click.testing import CliRunner

from dispatcher.cli import cli
from dispatcher.database import Backoff
from dispatcher.region import Region
from dispatcher.supervision import NEVER, Child, ProcessSupervisor
from sep.program import sync_app
from sep.worker import sockdir_glob

from .seps import supervised, wait_final


def _live(region: Region) -> list[dict[str, Any]]:
    return [s for s in region.seps() if s["state"] != "dead"]


def _wait(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_killed_sep_is_fenced_and_replaced_at_once(region: Region, db_url: str) -> None:
    """kill -9 of a SEP in a full region: its supervisor declares it dead at once (its
    request runs again elsewhere) and its restart gets the slot, long before the
    heartbeat would have declared it dead."""
    region.set(max_seps=3)
    sync_app(region, "tests.apps.basic")
    with supervised(db_url, 3):
        e = region.enqueue("HOLD", {"seconds": 2})
        assert _wait(lambda: region.request(e.request_id)["state"] == "running", 10)
        victim = region.request(e.request_id)["sep_id"]
        pid = next(s["pid"] for s in region.seps() if s["id"] == victim)
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        assert _wait(
            lambda: len(_live(region)) == 3 and victim not in {s["id"] for s in _live(region)},
            8,
        ), region.seps()
        assert time.monotonic() - killed < 8  # the region declares silence dead after 15 s
        row = wait_final(region, e.request_id, timeout=30)
        assert row["state"] == "done" and row["attempt"] == 2 and row["sep_id"] != victim
        assert glob.glob(sockdir_glob(pid)) == []  # the dead child's socket folder is gone
        survivors = [s["pid"] for s in _live(region)]
        assert all(glob.glob(sockdir_glob(p)) for p in survivors)
    # stopped gracefully, the others removed theirs
    assert [p for p in survivors if glob.glob(sockdir_glob(p))] == []


def test_operator_stop_ends_a_pending_restart(region: Region, db_url: str) -> None:
    """A slot waiting to restart (its SEP died, no room) is not restarted once the
    operator has stopped the SEPs that run: the supervisor exits."""
    region.set(max_seps=3)
    with supervised(db_url, 3) as proc:
        region.set(max_seps=2)  # the newest SEP turns standby at its next heartbeat
        assert _wait(lambda: any(s["standby"] for s in region.seps()), 10)
        standby = next(s for s in region.seps() if s["standby"])
        os.kill(standby["pid"], signal.SIGKILL)  # its restart finds no room
        assert _wait(lambda: len(_live(region)) == 2, 25)
        time.sleep(2.0)  # the restart was refused: the slot waits 10 s
        env = {"DISPATCHER_DATABASE_URL": db_url, "DISPATCHER_REGION": "test"}
        assert CliRunner().invoke(cli, ["sep", "stop", "--all"], env=env).exit_code == 0
        assert proc.wait(timeout=6) == 0
        assert _live(region) == []


class _Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def _add(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    info = warning = error = _add

    def named(self, event: str) -> list[dict[str, Any]]:
        return [kw for e, kw in self.events if e == event]


def _exiting(code: int) -> list[str]:
    return [sys.executable, "-c", f"raise SystemExit({code})"]


def _until_exited(sup: ProcessSupervisor, n: int = 1, timeout: float = 10) -> list[Any]:
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(seen) < n:
        assert time.monotonic() < deadline
        time.sleep(0.02)
        seen += sup.check()
    return seen


def test_a_child_that_exits_is_restarted_with_backoff() -> None:
    """Exits are noticed and restarted after 0.1 s, 0.2 s, 0.4 s ... (the Backoff), with
    the supervisor's log events; a child that ran long enough starts from 0.1 s again."""
    log = _Log()
    sup = ProcessSupervisor(log, first_delay=0.1, max_delay=0.4, healthy_after=3600)
    child = sup.add("crasher", _exiting(3), dict(os.environ))
    sup.start_all()
    for _ in range(4):
        assert [(c.name, rc) for c, rc in _until_exited(sup)] == [("crasher", 3)]
    assert [e["restart_in_s"] for e in log.named("process_exited")] == [0.1, 0.2, 0.4, 0.4]
    assert log.named("process_exited")[0] == {
        "process": "crasher",
        "returncode": 3,
        "restart_in_s": 0.1,
    }
    assert len(log.named("process_started")) == 4 and child.pid > 0
    sup.stop_all(5)


def test_a_child_that_ran_long_enough_starts_its_backoff_again() -> None:
    log = _Log()
    sup = ProcessSupervisor(log, first_delay=0.1, max_delay=10, healthy_after=0.2)
    sup.add("slow", [sys.executable, "-c", "import time; time.sleep(0.6); exit(3)"], {})
    sup.start_all()
    _until_exited(sup, 3)
    assert [e["restart_in_s"] for e in log.named("process_exited")] == [0.1, 0.1, 0.1]
    sup.stop_all(5)


def test_the_exit_hook_decides() -> None:
    """on_exit: NEVER (the child is finished, the hook logged why) or a delay of its own;
    None: the usual backoff."""
    log = _Log()
    decided: list[tuple[str, int]] = []

    def on_exit(child: Child, rc: int, now: float) -> float | None:
        decided.append((child.name, rc))
        return {0: NEVER, 5: 0.0}.get(rc)

    sup = ProcessSupervisor(log, first_delay=0.1, on_exit=on_exit)
    done = sup.add("done", _exiting(0), dict(os.environ), slot=0)
    again = sup.add("again", _exiting(5), dict(os.environ), slot=1)
    sup.start_all()
    _until_exited(sup, 3)
    assert done.finished and not again.finished
    assert decided.count(("done", 0)) == 1 and decided.count(("again", 5)) >= 2
    assert log.named("process_exited") == []  # the hook decided every exit
    assert {e["slot"] for e in log.named("process_started")} == {0, 1}
    sup.stop_all(5)


def test_stop_all_stops_every_child_in_order() -> None:
    """SIGTERM in the order asked, SIGKILL after the grace; the return codes."""
    log = _Log()
    sup = ProcessSupervisor(log, new_session=True)
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
    ]
    sup.add("b", sleep, dict(os.environ))
    sup.add("a", stubborn, dict(os.environ))
    sup.start_all()
    time.sleep(0.5)  # the stubborn one ignores SIGTERM by now
    stopped = sup.stop_all(1.0, order=lambda c: c.name)
    assert [(c.name, rc) for c, rc in stopped] == [("a", -signal.SIGKILL), ("b", -signal.SIGTERM)]
    assert len(log.named("process_killed")) == 1 and sup.stopping


def test_backoff_never_overflows() -> None:
    b = Backoff(first=0.1, max_delay=5.0)
    assert [b.next_delay() for _ in range(3)] == [0.1, 0.2, 0.4]
    assert [b.next_delay() for _ in range(5000)][-1] == 5.0
    b.reset()
    assert b.next_delay() == 0.1


def test_a_new_socket_folder_sweeps_those_of_dead_processes() -> None:
    """socket_dir removes the folders of its kind left by processes that no longer run
    (a SEP or listener killed -9), and keeps those of live ones."""
    import subprocess as sp
    import sys as _sys
    import tempfile
    from pathlib import Path

    from dispatcher.processes import socket_dir

    gone = sp.Popen([_sys.executable, "-c", "pass"])
    gone.wait()
    base = Path(tempfile.gettempdir())
    stale = base / f"dispatcher-sep-{gone.pid}-test"
    stale.mkdir(exist_ok=True)
    (stale / "sep.sock").write_text("")
    live = Path(tempfile.mkdtemp(prefix="dispatcher-sep-1-"))  # pid 1 always runs
    mine = socket_dir("sep")
    try:
        assert not stale.exists() and live.exists() and mine.exists()
    finally:
        for p in (live, mine):
            p.rmdir()
