"""`dispatcher sep start`'s supervisor: a child that dies frees its slot at once, and an
operator's stop ends the restart loop (docs/sep.md, "Running SEPs")."""

from __future__ import annotations

import glob
import os
import signal
import time
from typing import Any

from click.testing import CliRunner

from dispatcher.cli import cli
from dispatcher.region import Region
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
