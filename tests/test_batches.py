"""SQL-level tests of SEP-side batching (sql/schema/050_batches.sql)."""

from __future__ import annotations

import datetime as dt
import itertools
import time
from typing import Any

import psycopg
import pytest

from dispatcher.errors import CompletionRefused
from dispatcher.region import Outcome, Region, Task

Conn = psycopg.Connection[dict[str, Any]]


def sep(region: Region) -> int:
    return int(region.register_sep("host", 1, ())["id"])


def queued(region: Region, items: list[tuple[str, Any]]) -> list[int]:
    """Enqueue ITEMS while no SEP may take them, so that one claim sees them all."""
    region.set(state="stopping")
    ids = [e.request_id for e in region.enqueue_many(items)]
    region.set(state="running")
    return ids


def states(region: Region) -> dict[int, tuple[str, int | None, int]]:
    return {
        r["id"]: (r["state"], r["sep_id"], r["attempt"])
        for r in region.conn.execute(
            "SELECT id, state, sep_id, attempt FROM dispatcher.request ORDER BY id"
        ).fetchall()
    }


def done(tasks: list[Task]) -> list[Outcome]:
    """Each task ran 1 ms, one after the other, ending just before the report."""
    now = time.monotonic()
    return [
        Outcome(
            t,
            True,
            {"echo": t.payload},
            started=now - 0.002 * (len(tasks) - i),
            ended=now - 0.002 * (len(tasks) - i) + 0.001,
        )
        for i, t in enumerate(tasks)
    ]


def test_claim_batch_takes_k_in_priority_order_one_running(region: Region) -> None:
    """claim_batch takes up to K requests, highest priority first; the first runs, the
    others are dispatched to the SEP and listed in sep.held."""
    region.define_transaction("T", "app:fn")
    s = sep(region)
    ids = [region.enqueue("T", i, user_priority=p).request_id for i, p in enumerate([0, 9, 5, 1])]
    # enqueue dispatched the first to the idle SEP; that one is returned first
    tasks = region.claim_batch(s, 3)
    assert [t.request_id for t in tasks] == [ids[0]]
    region.complete_many(s, done(tasks))
    tasks = region.claim_batch(s, 2)
    assert [t.request_id for t in tasks] == [ids[1], ids[2]]
    st = states(region)
    assert st[ids[1]] == ("running", s, 1)
    assert st[ids[2]] == ("dispatched", s, 1)
    assert st[ids[3]][0] == "queued"  # priority 1 < 5
    row = region.conn.execute("SELECT * FROM dispatcher.sep WHERE id = %s", [s]).fetchone()
    assert row is not None
    assert row["state"] == "busy" and row["held"] == [ids[2]]
    # a reconnecting SEP gets back exactly what it holds
    assert [t.request_id for t in region.claim_batch(s, 5)] == [ids[1], ids[2]]


def test_complete_many_reports_and_takes_the_next_batch(region: Region) -> None:
    """One call moves a batch to the history (results, session state) and returns the
    next batch; the history times follow the SEP's order without overlapping."""
    region.define_transaction("T", "app:fn")
    ids = queued(region, [("T", i) for i in range(7)])
    s = sep(region)
    first = region.claim_batch(s, 4)
    assert [t.request_id for t in first] == ids[:4]
    second = region.complete_many(s, done(first), take=4)
    assert [t.request_id for t in second] == ids[4:]
    hist = region.conn.execute(
        "SELECT id, state, result, started_at, finished_at FROM dispatcher.request_history "
        "ORDER BY started_at"
    ).fetchall()
    assert [h["id"] for h in hist] == ids[:4]
    assert all(h["state"] == "done" for h in hist)
    assert hist[2]["result"] == {"echo": 2}
    for a, b in itertools.pairwise(hist):
        assert a["started_at"] < b["started_at"]
    rest = region.complete_many(s, done(second), take=4)
    assert rest == []
    row = region.conn.execute("SELECT * FROM dispatcher.sep WHERE id = %s", [s]).fetchone()
    assert row is not None
    assert (row["state"], row["held"], row["tasks_run"]) == ("idle", [], 7)


def test_complete_many_abends_retry_or_fail_and_releases_go_back(region: Region) -> None:
    """An abend in a batch follows complete_v1's rules; released requests go back to
    the queue with their attempt not counted; a flush with take 0 keeps the rest held."""
    region.define_transaction("R", "app:fn", max_attempts=2)
    ids = queued(region, [("R", i) for i in range(4)])
    s = sep(region)
    batch = region.claim_batch(s, 4)
    assert len(batch) == 4
    report = [Outcome(batch[0], True), Outcome(batch[1], False, error={"type": "Boom"})]
    assert region.complete_many(s, report) == []  # take 0: only a report
    st = states(region)
    assert ids[0] not in st
    assert st[ids[1]][0] == "queued"  # attempt 1 of 2: retried
    assert st[ids[2]] == ("dispatched", s, 1)
    row = region.conn.execute("SELECT * FROM dispatcher.sep WHERE id = %s", [s]).fetchone()
    assert row is not None and row["state"] == "busy" and row["held"] == ids[2:]
    # stopping: the rest is handed back, attempts not counted
    assert region.complete_many(s, [], release=[ids[2], ids[3]]) == []
    st = states(region)
    assert st[ids[2]] == ("queued", None, 0) and st[ids[3]] == ("queued", None, 0)
    row = region.conn.execute("SELECT * FROM dispatcher.sep WHERE id = %s", [s]).fetchone()
    assert row is not None and row["state"] == "idle" and row["held"] == []


def test_a_dead_sep_loses_its_whole_batch_and_cannot_report_it(region: Region) -> None:
    """Declared dead, a batching SEP's prefetched requests are all re-queued and its
    report is refused (fenced), leaving nothing half-recorded."""
    region.define_transaction("T", "app:fn")
    ids = queued(region, [("T", i) for i in range(3)])
    s = sep(region)
    batch = region.claim_batch(s, 3)
    region.control_sep(s, "kill")
    assert all(v[0] == "queued" for v in states(region).values())
    with pytest.raises(CompletionRefused):
        region.complete_many(s, done(batch), take=3)
    assert set(states(region)) == set(ids)
    # another SEP runs them: the old attempts cannot be reported
    other = sep(region)
    again = region.claim_batch(other, 3)
    assert [t.attempt for t in again] == [2, 2, 2]
    with pytest.raises(CompletionRefused):
        region.complete_many(other, done(batch))
    region.complete_many(other, done(again))
    assert states(region) == {}


def test_leave_hands_back_a_batch(region: Region) -> None:
    """A SEP that leaves with a batch in hand re-queues all of it."""
    region.define_transaction("T", "app:fn")
    queued(region, [("T", i) for i in range(5)])
    s = sep(region)
    assert len(region.claim_batch(s, 5)) == 5
    assert region.leave(s) == 5
    assert all(v[0] == "queued" for v in states(region).values())


def test_batches_never_take_more_of_a_class_than_its_max(region: Region) -> None:
    """Prefetched requests count against a class's max active."""
    region.define_transaction("C", "app:fn", cls="small")
    region.define_transaction("T", "app:fn")
    region.set_class("small", 2)
    queued(region, [("C", i) for i in range(4)] + [("T", 9)])
    a, b = sep(region), sep(region)
    got = region.claim_batch(a, 10)
    assert [t.transid for t in got] == ["C", "C", "T"]
    assert [t.transid for t in region.claim_batch(b, 10)] == []
    n = region.conn.execute(
        "SELECT count(*) AS n FROM dispatcher.request WHERE class = 'small' AND state <> 'queued'"
    ).fetchone()
    assert n is not None and n["n"] == 2


def test_complete_many_refuses_a_report_that_is_not_a_list(region: Region) -> None:
    """A report that is not a JSON array is refused with DP003 and a clear message;
    an outcome that is not JSON never reaches the database."""
    s = sep(region)
    with pytest.raises(psycopg.Error, match="JSON array") as caught:
        region.conn.execute("SELECT * FROM dispatcher.complete_many_v1(%s, '{\"id\": 1}', 0)", [s])
    assert caught.value.sqlstate == "DP003"
    task = Task(1, 1, "T", None, None, None, None, None, dt.datetime.now(dt.UTC))
    for not_storable in ({1, 2}, "bad\x00", {"k": float("nan")}, ["\ud800"]):
        with pytest.raises((TypeError, ValueError)):
            Outcome(task, True, not_storable).encode()
    # an error's text is the SEP's own: it is stored whatever it quotes
    assert "\\u0000" not in Outcome(task, False, None, {"message": "bad\x00"}).encode()


def test_history_times_follow_the_sep_clock(region: Region) -> None:
    """started/ended of a report are placed on the server's clock without overlap."""
    region.define_transaction("T", "app:fn")
    queued(region, [("T", i) for i in range(3)])
    s = sep(region)
    batch = region.claim_batch(s, 3)
    time.sleep(0.1)  # the tasks "ran" in the last 60 ms, 10 ms each, 10 ms apart
    outcomes = [
        Outcome(t, True, started=0.94 + 0.02 * i, ended=0.95 + 0.02 * i)
        for i, t in enumerate(batch)
    ]
    region.complete_many(s, outcomes, clock=1.0)
    rows = region.conn.execute(
        "SELECT started_at, finished_at FROM dispatcher.request_history ORDER BY id"
    ).fetchall()
    spans = [(r["finished_at"] - r["started_at"]).total_seconds() for r in rows]
    gaps = [
        (b["started_at"] - a["finished_at"]).total_seconds() for a, b in itertools.pairwise(rows)
    ]
    assert all(abs(x - 0.01) < 0.002 for x in spans), spans
    assert all(abs(x - 0.01) < 0.002 for x in gaps), gaps


def test_session_state_is_kept_by_a_batch(region: Region) -> None:
    """RETURN TRANSID in a batch sets the session's next transaction and commarea."""
    region.define_transaction("T", "app:fn")
    session = region.register_session(None, "u", 0)
    e = region.enqueue("T", 1, session=session)
    s = sep(region)
    batch = region.claim_batch(s, 2)
    assert [t.request_id for t in batch] == [e.request_id]
    region.complete_many(s, [Outcome(batch[0], True, next_transid="T", commarea={"n": 1})])
    row = region.conn.execute(
        "SELECT next_transid, commarea FROM dispatcher.session WHERE id = %s", [session]
    ).fetchone()
    assert row == {"next_transid": "T", "commarea": {"n": 1}}
