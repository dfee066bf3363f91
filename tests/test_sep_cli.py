"""`dispatcher sep ...` commands: CliRunner and real subprocesses."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

from click.testing import CliRunner

from dispatcher.cli import cli
from dispatcher.gateway import ops
from dispatcher.region import Region
from sep.program import sync_app

from .seps import ROOT, running_seps, sep_env, sep_start, start_sep, wait_final, wait_registered


def _run(db_url: str, *args: str) -> Any:
    return CliRunner().invoke(
        cli, list(args), env={"DISPATCHER_DATABASE_URL": db_url, "DISPATCHER_REGION": "test"}
    )


def test_sep_start_stops_gracefully_on_sigterm(region: Region, db_url: str) -> None:
    """`dispatcher sep start` as a process: SIGTERM lets the running task finish."""
    proc = sep_start(db_url, 2)
    try:
        wait_registered(db_url, "test", 2)
        e = region.enqueue("HOLD", {"seconds": 1.0})
        deadline = time.monotonic() + 10
        while region.request(e.request_id)["state"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        row = wait_final(region, e.request_id, timeout=1)
        assert row["state"] == "done" and row["result"] == "held"
        assert region.seps() == []
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sep_start_refuses_without_room(region: Region, db_url: str) -> None:
    """More SEPs than the region has room for is a clear error, not a hang."""
    region.set(max_seps=1)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "dispatcher",
            "sep",
            "start",
            "--app",
            "tests.apps.basic",
            "--count",
            "3",
        ],
        env=sep_env(db_url, "test"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "has room for 1 more SEP(s)" in out.stderr and "--standby" in out.stderr


def test_sep_start_unknown_app_is_a_usage_error(region: Region, db_url: str) -> None:
    """An --app that cannot be imported is named in the error."""
    result = _run(db_url, "sep", "start", "--app", "no.such.app")
    assert result.exit_code == 2 and "cannot import app module 'no.such.app'" in result.stderr


def test_sep_list_pause_resume_stop(region: Region, db_url: str) -> None:
    """list --json, pause/resume and stop act through the database on live SEPs."""
    sync_app(region, "tests.apps.basic")
    with running_seps(db_url, "test", 1) as procs:
        rows = json.loads(_run(db_url, "sep", "list", "--json").stdout)
        assert len(rows) == 1 and rows[0]["pid"] == procs[0].pid
        assert rows[0]["silent"] is False and rows[0]["heartbeat_age_s"] < 15
        assert " s ago)" in _run(db_url, "sep", "list").stdout
        sep_id = str(rows[0]["id"])
        assert "pause" in _run(db_url, "sep", "pause", sep_id).stdout
        e = region.enqueue("ECHO", 1)
        time.sleep(0.5)
        assert region.request(e.request_id)["state"] == "queued"
        _run(db_url, "sep", "resume", sep_id)
        assert wait_final(region, e.request_id)["state"] == "done"
        assert _run(db_url, "sep", "stop", "--all").exit_code == 0
        assert procs[0].wait(timeout=30) == 0
    assert _run(db_url, "sep", "stop", "99999").exit_code != 0
    assert _run(db_url, "sep", "stop").exit_code == 2


def test_sep_stop_force_requeues_the_task(region: Region, db_url: str) -> None:
    """stop --force abandons the running task; it is re-queued and runs elsewhere."""
    sync_app(region, "tests.apps.basic")
    with running_seps(db_url, "test", 2):
        e = region.enqueue("HOLD", {"seconds": 1.0})
        deadline = time.monotonic() + 10
        while region.request(e.request_id)["sep_id"] is None and time.monotonic() < deadline:
            time.sleep(0.02)
        victim = region.request(e.request_id)["sep_id"]
        assert _run(db_url, "sep", "stop", "--force", str(victim)).exit_code == 0
        row = wait_final(region, e.request_id, timeout=30)
        assert row["state"] == "done" and row["attempt"] == 2 and row["sep_id"] != victim


def test_sep_stop_force_ends_a_long_task_at_once(region: Region, db_url: str) -> None:
    """stop --force on a SEP in a 60 s task: the process exits within seconds (code 4,
    killed by an operator) and the request is back in the queue."""
    sync_app(region, "tests.apps.basic")
    region.set(state="stopping")
    e = region.enqueue("HOLD", {"seconds": 60})
    proc = start_sep(db_url, "test", "tests.apps.basic", "--poll", "0.2")
    try:
        wait_registered(db_url, "test", 1)
        region.set(state="running")
        deadline = time.monotonic() + 10
        while region.request(e.request_id)["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        victim = str(region.request(e.request_id)["sep_id"])
        assert _run(db_url, "sep", "stop", "--force", victim).exit_code == 0
        assert proc.wait(timeout=10) == 4
        row = region.request(e.request_id)
        assert row["state"] == "queued" and row["error"]["type"] == "SEPLost"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sep_stop_of_a_busy_sep_lets_a_long_task_finish_once(region: Region, db_url: str) -> None:
    """`sep stop ID` on a SEP in a task longer than the region's dead-after limit: it
    keeps beating while it finishes, so it is never declared dead, the task runs once,
    and its supervisor does not start a SEP in its place."""
    sync_app(region, "tests.apps.basic")
    region.set(sep_dead_after_s=1.5)
    proc = sep_start(db_url, 1, "tests.apps.basic", "--heartbeat", "0.3")
    try:
        wait_registered(db_url, "test", 1)
        e = region.enqueue("HOLD", {"seconds": 4.0})
        deadline = time.monotonic() + 10
        while region.request(e.request_id)["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        victim = region.request(e.request_id)["sep_id"]
        assert _run(db_url, "sep", "stop", str(victim)).exit_code == 0
        listed = _run(db_url, "sep", "list").output
        assert "busy (stopping)" in listed, listed  # (docs/state_machine.md)
        deadline = time.monotonic() + 30
        while region.request(e.request_id)["state"] not in ("done", "failed"):
            assert time.monotonic() < deadline
            region.run(ops.region.reap("test"))  # as the region's other SEPs do
            time.sleep(0.2)
        row = region.request(e.request_id)
        assert (row["state"], row["attempt"], row["sep_id"]) == ("done", 1, victim)
        assert proc.wait(timeout=30) == 0  # the supervisor's only SEP was stopped: it ends
        states = {s["id"]: s["state"] for s in region.seps()}
        assert states.get(victim) != "dead" and len(states) <= 1, states
    finally:
        if proc.poll() is None:
            proc.kill()


def test_supervisor_respects_operator_stop(region: Region, db_url: str) -> None:
    """A SEP stopped by `dispatcher sep stop` is not restarted by its supervisor; when
    the operator has stopped them all, the supervisor exits by itself."""
    proc = sep_start(db_url, 2)
    try:
        wait_registered(db_url, "test", 2)
        first = region.seps()[0]["id"]
        assert _run(db_url, "sep", "stop", str(first)).exit_code == 0
        time.sleep(2.0)
        assert [s["id"] for s in region.seps()] != [] and first not in {
            s["id"] for s in region.seps()
        }
        assert len(region.seps()) == 1
        assert _run(db_url, "sep", "stop", "--all").exit_code == 0
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
