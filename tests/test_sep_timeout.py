"""Timeouts are hard: whatever a program does, its request's outcome after its timeout
is a TaskTimeout abend (or a retry by its policy), never done, and its SEP's slot frees
in bounded time (docs/sep.md, "Timeouts")."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from dispatcher.region import Region
from sep.program import sync_app
from sep.worker import EXIT_TIMED_OUT

from .seps import running_seps, start_sep, supervised, wait_final, wait_registered

APP = "tests.apps.timeouts"


@pytest.fixture
def app_region(region: Region, conn: psycopg.Connection[dict[str, Any]]) -> Region:
    sync_app(region, APP)
    conn.execute("UPDATE dispatcher.transaction SET retry_backoff_s = 0")
    return region


def _timed_out(row: dict[str, Any]) -> bool:
    return row["state"] == "failed" and row["error"]["type"] == "TaskTimeout"


def test_a_result_that_comes_after_the_timeout_is_a_timeout(
    app_region: Region, db_url: str
) -> None:
    """A program that catches its timeout and returns soon after is not recorded done."""
    with running_seps(db_url, "test", 1, app=APP):
        e = app_region.enqueue("T_LATE", None)
        row = wait_final(app_region, e.request_id, timeout=20)
        assert _timed_out(row), row
        # the SEP goes on serving
        assert wait_final(app_region, app_region.enqueue("T_ECHO", 1).request_id)["result"] == 1


@pytest.mark.parametrize("transid", ["T_CATCH", "T_ASYNC_BLOCK", "T_NO_SIGNALS", "T_DB_SLEEP"])
def test_a_task_that_will_not_stop_ends_its_sep(
    app_region: Region, db_url: str, transid: str
) -> None:
    """A task past timeout + grace (catching everything, blocking its event loop or a C
    call, ignoring signals) is abended with TaskTimeout and its SEP process ends."""
    proc = start_sep(db_url, "test", APP)
    try:
        wait_registered(db_url, "test", 1)
        sep_id = app_region.seps()[0]["id"]
        started = time.monotonic()
        e = app_region.enqueue(transid, None)
        row = wait_final(app_region, e.request_id, timeout=60)
        assert _timed_out(row), row
        # bounded (the old SEP ran such a task for ever); not a speed check: a program
        # spinning on its broken connection slows the watchdog thread down (the GIL)
        assert time.monotonic() - started < 60
        assert proc.wait(timeout=10) == EXIT_TIMED_OUT
        seps = {s["id"]: s for s in app_region.seps()}
        assert sep_id not in seps or seps[sep_id]["state"] == "dead"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_task_that_overran_runs_again_by_its_policy_on_a_new_sep(
    app_region: Region, db_url: str
) -> None:
    """With attempts left, an overrun task runs again; the supervisor replaced its SEP."""
    with supervised(db_url, 1, APP):
        e = app_region.enqueue("T_RETRY", None)
        row = wait_final(app_region, e.request_id, timeout=30)
        assert row["state"] == "done" and row["result"] == {"attempt": 2}, row
        live = [s for s in app_region.seps() if s["state"] != "dead"]
        assert len(live) == 1


def test_a_sep_stuck_in_a_c_call_is_ended_by_its_supervisor(
    app_region: Region, db_url: str
) -> None:
    """A C call that holds the GIL stops the SEP's own watchdog: its supervisor kills the
    process, abends the task with TaskTimeout and starts a new SEP."""
    with supervised(db_url, 1, APP):
        started = time.monotonic()
        e = app_region.enqueue("T_GIL", None)
        row = wait_final(app_region, e.request_id, timeout=30)
        assert _timed_out(row), row
        assert "supervisor" in row["error"]["message"]
        assert time.monotonic() - started < 15
        after = app_region.enqueue("T_ECHO", "next")
        assert wait_final(app_region, after.request_id, timeout=30)["result"] == "next"


def test_a_stuck_task_handed_over_by_a_listener_is_ended_too(
    app_region: Region, db_url: str
) -> None:
    """The supervisor's watchdog also ends a stuck task that a listener handed straight
    to the SEP; the caller gets its TaskTimeout abend."""
    from dispatcher.tokens import create_token

    from .listeners import running_listener
    from .wire import Wire

    token = create_token(app_region, "tester")
    with supervised(db_url, 1, APP), running_listener(db_url, "test") as address:
        wire = Wire(address)
        assert wire.hello(token)["type"] == "welcome"
        wire.send({"type": "call", "id": 1, "transid": "T_GIL", "data": None})
        accepted = wire.read()
        assert accepted["type"] == "accepted", accepted
        row = wait_final(app_region, int(accepted["request_id"]), timeout=30)
        assert _timed_out(row), row
        reply = wire.read()
        assert reply["type"] == "error" and reply["detail"]["type"] == "TaskTimeout", reply


def test_a_batching_sep_whose_task_will_not_stop_hands_back_its_batch(
    app_region: Region, db_url: str
) -> None:
    """--batch: the overrun task is a TaskTimeout abend and the requests the SEP had
    prefetched run on another SEP, once each."""
    stuck = app_region.enqueue("T_CATCH", None)
    rest = [app_region.enqueue("T_ECHO", i).request_id for i in range(3)]
    sep = start_sep(db_url, "test", APP, "--batch", "4")
    try:
        assert _wait_state(app_region, stuck.request_id, "running")
        held = [app_region.request(rid) for rid in rest]
        assert all(r["state"] == "dispatched" for r in held), held
        with running_seps(db_url, "test", 1, app=APP):
            assert _timed_out(wait_final(app_region, stuck.request_id, timeout=20))
            assert sep.wait(timeout=10) == EXIT_TIMED_OUT
            for i, rid in enumerate(rest):
                row = wait_final(app_region, rid, timeout=20)
                assert row["state"] == "done" and row["result"] == i
    finally:
        if sep.poll() is None:
            sep.kill()


def _wait_state(region: Region, request_id: int, state: str, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if region.request(request_id)["state"] == state:
            return True
        time.sleep(0.02)
    return False
