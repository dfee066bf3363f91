"""The program API, run by real SEP processes against a real PostgreSQL."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from dispatcher.region import Region
from sep.program import sync_app

from .seps import running_seps, wait_final


@pytest.fixture
def app_region(region: Region, conn: psycopg.Connection[dict[str, Any]]) -> Region:
    conn.execute("CREATE TABLE app_effect (request_id bigint PRIMARY KEY, n integer)")
    sync_app(region, "tests.apps.basic")
    conn.execute("UPDATE dispatcher.transaction SET retry_backoff_s = 0")
    return region


def test_sync_and_async_programs_return_results(app_region: Region, db_url: str) -> None:
    """def and async def programs both run; the result is stored."""
    with running_seps(db_url, "test", 1):
        a = app_region.enqueue("ECHO", {"x": 1})
        b = app_region.enqueue("AECHO", [1, 2])
        assert wait_final(app_region, a.request_id)["result"] == {"x": 1}
        assert wait_final(app_region, b.request_id)["result"] == {"async": [1, 2]}


def test_abend_rolls_back_and_stores_error(
    app_region: Region, db_url: str, conn: psycopg.Connection[dict[str, Any]]
) -> None:
    """An exception fails the request with type/message/traceback; ctx.db writes roll back."""
    with running_seps(db_url, "test", 1):
        e = app_region.enqueue("BOOM", None)
        row = wait_final(app_region, e.request_id)
    assert row["state"] == "failed"
    assert row["error"]["type"] == "ValueError" and row["error"]["message"] == "boom"
    assert "Traceback" in row["error"]["traceback"]
    assert conn.execute("SELECT count(*) AS n FROM app_effect").fetchone() == {"n": 0}


def test_retry_until_max_attempts(app_region: Region, db_url: str) -> None:
    """A transaction with max_attempts 3 runs again after abends, then succeeds."""
    with running_seps(db_url, "test", 1):
        e = app_region.enqueue("FLAKY", None)
        row = wait_final(app_region, e.request_id)
    assert row["state"] == "done" and row["result"] == {"attempt": 3}


def test_db_writes_commit_with_completion(
    app_region: Region, db_url: str, conn: psycopg.Connection[dict[str, Any]]
) -> None:
    """ctx.db writes are visible exactly when the request is done."""
    with running_seps(db_url, "test", 1):
        ids = [app_region.enqueue("WRITE", {"n": i}).request_id for i in range(20)]
        for rid in ids:
            assert wait_final(app_region, rid)["state"] == "done"
    rows = conn.execute("SELECT request_id FROM app_effect ORDER BY 1").fetchall()
    assert [r["request_id"] for r in rows] == ids


def test_start_inside_task_is_protected(app_region: Region, db_url: str) -> None:
    """A START from a task takes effect only if the task commits."""
    with running_seps(db_url, "test", 1):
        ok = app_region.enqueue("STARTER", {})
        bad = app_region.enqueue("STARTER", {"fail": True})
        started = wait_final(app_region, ok.request_id)["result"]["started"]
        assert wait_final(app_region, bad.request_id)["state"] == "failed"
        assert wait_final(app_region, started)["result"] == {"from": ok.request_id}
    rows = app_region.conn.execute(
        "SELECT count(*) AS n FROM dispatcher.request_history WHERE transid = 'ECHO'"
    ).fetchone()
    assert rows == {"n": 1}


def test_timeouts_abend_sync_and_async(app_region: Region, db_url: str) -> None:
    """A task longer than its transaction's timeout abends with TaskTimeout."""
    with running_seps(db_url, "test", 1):
        a = app_region.enqueue("SLEEPY", None)
        b = app_region.enqueue("ASLEEPY", None)
        ra, rb = wait_final(app_region, a.request_id), wait_final(app_region, b.request_id)
    assert ra["error"]["type"] == "TaskTimeout" and rb["error"]["type"] == "TaskTimeout"


def test_transaction_without_program_abends_clearly(app_region: Region, db_url: str) -> None:
    """A TRANSID whose program cannot be imported fails with a clear error."""
    app_region.define_transaction("GHOST", "no_such_module:fn")
    with running_seps(db_url, "test", 1):
        e = app_region.enqueue("GHOST", None)
        row = wait_final(app_region, e.request_id)
    assert row["state"] == "failed" and "not importable" in row["error"]["message"]


def test_async_commit_sep_runs_tasks(app_region: Region, db_url: str) -> None:
    """A SEP started with --async-commit completes tasks like any other."""
    with running_seps(db_url, "test", 1, "--async-commit"):
        e = app_region.enqueue("ECHO", {"fast": True})
        assert wait_final(app_region, e.request_id)["result"] == {"fast": True}


def test_result_that_is_not_json_abends(app_region: Region, db_url: str) -> None:
    """A result that cannot be stored as JSON fails the request clearly; the SEP lives."""
    with running_seps(db_url, "test", 1):
        bad = app_region.enqueue("NOTJSON", None)
        row = wait_final(app_region, bad.request_id)
        assert row["state"] == "failed" and "set" in row["error"]["message"]
        ok = app_region.enqueue("ECHO", 1)
        assert wait_final(app_region, ok.request_id)["result"] == 1


def test_two_apps_may_declare_the_same_transid() -> None:
    """Each app keeps its own declarations, whatever was imported before."""
    from sep.program import load_app

    sample = load_app("dispatcher_examples.sample")
    basic = load_app("tests.apps.basic")
    assert sample["ECHO"].program == "dispatcher_examples.sample:echo"
    assert basic["ECHO"].program == "tests.apps.basic:echo"
    assert (
        load_app("dispatcher_examples.sample")["ECHO"].program == "dispatcher_examples.sample:echo"
    )
