"""Batching SEPs (``--batch K``) as real processes: outcomes reported together, yet
none waits behind a slow task, conversations work, a stop hands back what never ran."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from dispatcher.region import Region
from dispatcher.tokens import create_token
from listener import connect
from sep.program import sync_app

from .listeners import running_listener
from .seps import running_seps, start_sep, wait_final, wait_registered

BATCH = ("--batch", "10", "--poll", "0.2")


def _queued_batch(region: Region, items: list[tuple[str, Any]]) -> list[int]:
    """Enqueue ITEMS while no SEP may take them, so that one claim sees them all."""
    region.set(state="stopping")
    ids = [e.request_id for e in region.enqueue_many(items)]
    region.set(state="running")
    return ids


def test_fast_outcomes_are_reported_before_a_slow_task_runs(region: Region, db_url: str) -> None:
    """Five quick tasks and a 2 s one in one batch: the quick ones are done (committed)
    while the slow one still runs."""
    sync_app(region, "tests.apps.basic")
    with running_seps(db_url, "test", 1, *BATCH):
        ids = _queued_batch(region, [("ECHO", i) for i in range(5)] + [("HOLD", {"seconds": 2})])
        for rid in ids[:5]:
            assert wait_final(region, rid, timeout=10)["state"] == "done"
        # (had the quick outcomes waited for the slow task, all six would be done now)
        assert region.request(ids[5])["state"] == "running"
        assert wait_final(region, ids[5])["result"] == "held"


def test_one_bad_result_abends_alone_and_writes_keep_their_syncpoint(
    region: Region, db_url: str, conn: Any
) -> None:
    """In one batch: a result that is not JSON abends its task only; a task that writes
    and then fails leaves no write; a task that writes commits it with its outcome."""
    conn.execute("CREATE TABLE app_effect (request_id bigint PRIMARY KEY, n integer)")
    sync_app(region, "tests.apps.basic")
    with running_seps(db_url, "test", 1, *BATCH):
        ids = _queued_batch(
            region,
            [
                ("ECHO", 1),
                ("NOTJSON", None),
                ("ECHO", 2),
                ("BOOM", None),
                ("WRITE", {"n": 7}),
                ("ECHO", 3),
            ],
        )
        rows = [wait_final(region, rid) for rid in ids]
    assert [r["state"] for r in rows] == ["done", "failed", "done", "failed", "done", "done"]
    assert rows[1]["error"]["type"] == "InvalidValue"
    assert "not JSON" in rows[1]["error"]["message"]
    assert rows[3]["error"]["type"] == "ValueError"
    assert [r["result"] for r in (rows[0], rows[2], rows[5])] == [1, 2, 3]
    effects = conn.execute("SELECT request_id, n FROM app_effect").fetchall()
    assert effects == [{"request_id": ids[4], "n": 7}]


@pytest.mark.parametrize("how", ["SIGTERM", "sep stop"])
def test_graceful_stop_hands_back_what_never_started(region: Region, db_url: str, how: str) -> None:
    """SIGTERM or `sep stop` during a batch: the task in hand finishes; the rest go back
    to the queue with their attempt not counted, and another SEP runs them."""
    sync_app(region, "tests.apps.basic")
    ids = _queued_batch(region, [("HOLD", {"seconds": 0.5}) for _ in range(6)])
    proc = start_sep(db_url, "test", "tests.apps.basic", *BATCH)
    deadline = time.monotonic() + 30
    while region.request(ids[0])["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    held = region.conn.execute(
        "SELECT count(*) AS n FROM dispatcher.request WHERE state = 'dispatched'"
    ).fetchone()
    assert held is not None and held["n"] == 5  # prefetched by the batch
    time.sleep(0.2)  # (the claim marks the first running; let its program begin)
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    else:
        region.control_sep(region.request(ids[0])["sep_id"], "stop")
    assert proc.wait(timeout=30) == 0
    first = region.request(ids[0])
    # the task in hand finished (a stop that came before its program began, on a slow
    # machine, hands it back unstarted with the rest)
    assert first["state"] == "done" or (first["state"], first["attempt"]) == ("queued", 0)
    rest = [region.request(rid) for rid in ids[1:]]
    assert all(r["state"] == "queued" and r["attempt"] == 0 for r in rest), rest
    with running_seps(db_url, "test", 2, *BATCH):
        assert all(wait_final(region, rid)["attempt"] == 1 for rid in ids)


def test_sessions_and_conversations_through_batching_seps(region: Region, db_url: str) -> None:
    """Through a listener: calls, a conversation and a pseudo-conversation behave as
    with one-by-one SEPs."""
    app = "dispatcher_examples.sample"
    sync_app(region, app)
    token = create_token(region, "tester")
    with (
        running_seps(db_url, "test", 2, *BATCH, app=app),
        running_listener(db_url, "test") as address,
        connect(address, token) as s,
    ):
        wait_registered(db_url, "test", 2)
        assert [s.call("ECHO", i) for i in range(50)] == list(range(50))
        assert s.call("CHAT", None, on_output=lambda data, wants: "Ada") == {
            "greeting": "Hello, Ada!"
        }
        first = s.call("ORDER", {"item": "pen"})
        assert "How many pens" in first["prompt"] and s.next_transid == "ORDER2"
        assert s.input(4) == {"ordered": {"item": "pen", "quantity": 4}}


def test_statistics_do_not_count_a_batch_as_running_at_once(region: Region, db_url: str) -> None:
    """The history times of batched tasks follow the SEP's order, so the exact peak of
    tasks running at once never exceeds max SEPs, while running and after."""
    import datetime as dt

    from dispatcher.stats import region_stats

    region.set(max_seps=2)
    sync_app(region, "tests.apps.basic")
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    items: list[tuple[str, Any]] = [("ECHO", i) for i in range(150)]
    items += [("HOLD", {"seconds": 0.01}) for _ in range(30)]
    with running_seps(db_url, "test", 2, *BATCH):
        ids = _queued_batch(region, items)
        peaks = []
        while region.request(ids[-1])["state"] not in ("done", "failed"):
            peaks.append(region_stats(region, since)["peak_running"])
            time.sleep(0.02)
        for rid in ids:
            wait_final(region, rid)
    stats = region_stats(region, since)
    assert stats["tasks"] == len(items)
    assert max([stats["peak_running"], *peaks]) <= 2, (stats, peaks)
