"""SQL-level tests of the two looks after commit (revision 0007,
sql/schema/100_look_after_commit.sql): dispatch_queued (the enqueuer's) and
work_waiting (the SEP's). The race they settle together is tested in
tests/test_invariants.py (test_no_lost_wakeup...)."""

from __future__ import annotations

from typing import Any

import psycopg

from dispatcher.gateway import Task
from dispatcher.region import Region

Conn = psycopg.Connection[dict[str, Any]]


def _sep(region: Region, caps: tuple[str, ...] = ()) -> int:
    return int(region.register_sep("host", 1, caps)["id"])


def _idle_beside_a_queued_request(region: Region) -> tuple[int, int]:
    """A SEP that rests while a request it may run is queued (it was busy when the
    request came, and finished without taking more): the state the looks exist for."""
    region.define_transaction("T", "app:fn")
    s = _sep(region)
    first = region.enqueue("T", 1)
    assert first.sep_id == s
    task = region.begin(s, first.request_id)
    left = region.enqueue("T", 2)
    assert left.reason == "no_idle_sep" and left.left_queued
    assert region.complete(s, task, ok=True, take_next=False) is None
    assert region.request(left.request_id)["state"] == "queued"
    return s, left.request_id


def test_dispatch_queued_hands_a_queued_request_to_a_sep_idle_now(
    region: Region, db_url: str
) -> None:
    """dispatch_queued gives the idle SEP the queued request (dispatched to it,
    announced by NOTIFY 'dispatch ID') and says how many it handed out."""
    s, rid = _idle_beside_a_queued_request(region)
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute(f"LISTEN dispatcher_sep_{s}")
        assert region.dispatch_queued() == 1
        note = next(listener.notifies(timeout=5, stop_after=1))
    assert note.payload == f"dispatch {rid}"
    row = region.request(rid)
    assert (row["state"], row["sep_id"]) == ("dispatched", s)
    assert region.dispatch_queued() == 0  # nothing left to hand out
    assert region.begin(s, rid).request_id == rid


def test_dispatch_queued_wakes_an_idle_sep_whose_row_is_held(region: Region, db_url: str) -> None:
    """An idle SEP whose row another transaction holds (it is looking itself, say) is
    not waited for: it is woken ('wake') to look again, and the request stays queued."""
    s, rid = _idle_beside_a_queued_request(region)
    with (
        psycopg.connect(db_url, autocommit=True) as listener,
        psycopg.connect(db_url) as holder,
    ):
        listener.execute(f"LISTEN dispatcher_sep_{s}")
        holder.execute("SELECT 1 FROM dispatcher.sep WHERE id = %s FOR UPDATE", (s,))
        assert region.dispatch_queued() == 0
        note = next(listener.notifies(timeout=5, stop_after=1))
        holder.rollback()
    assert note.payload == "wake"
    assert region.request(rid)["state"] == "queued"
    assert region.dispatch_queued() == 1  # once the row is free


def test_dispatch_queued_passes_over_seps_that_may_not_run_the_request(region: Region) -> None:
    """A paused SEP, or one without the capability the request requires, gets nothing;
    a region that is not running hands out nothing."""
    region.define_transaction("T", "app:fn", requires=["gpu"])
    plain = _sep(region)
    gpu = _sep(region, ("gpu",))
    region.control_sep(gpu, "pause")
    e = region.enqueue("T", 1)
    assert e.left_queued
    assert region.dispatch_queued() == 0
    region.control_sep(gpu, "resume")
    region.set(state="stopping")
    assert region.dispatch_queued() == 0
    region.set(state="running")
    assert region.dispatch_queued() == 1
    assert region.request(e.request_id)["sep_id"] == gpu
    assert plain != gpu


def test_work_waiting_says_whether_a_sep_may_take_queued_work(region: Region) -> None:
    """work_waiting is true for an idle SEP beside a request it may run, and false when
    it is busy, paused, lacks the capability, or nothing is queued."""
    s, rid = _idle_beside_a_queued_request(region)
    assert region.work_waiting(s) is True
    region.control_sep(s, "pause")
    assert region.work_waiting(s) is False
    region.control_sep(s, "resume")
    other = _sep(region, ("gpu",))
    region.define_transaction("G", "app:fn", requires=["gpu"])
    assert region.work_waiting(other) is True  # T requires nothing: any SEP may run it
    task = region.claim_next(s)
    assert isinstance(task, Task) and task.request_id == rid
    assert region.work_waiting(s) is False  # busy
    assert region.work_waiting(other) is False  # nothing queued
    g = region.enqueue("G", 1)
    assert g.sep_id == other  # idle and able: dispatched at once
    region.complete(s, task, ok=True, take_next=False)
    region.enqueue("G", 2)  # queued: the only gpu SEP is busy
    assert region.work_waiting(s) is False  # it lacks gpu
    assert region.work_waiting(12345) is False  # no such SEP


def test_a_freed_class_slot_wakes_a_sep_able_to_run_what_waits(region: Region, db_url: str) -> None:
    """wake_idle_sep (a class slot came free, requests were released or requeued) wakes,
    for what the head of the queue requires, the longest-idle SEP able to run it: never
    only a SEP that cannot (which left a class request beside an idle SEP that could)."""
    region.define_transaction("X", "app:fn", requires=["x"])
    plain = _sep(region)  # idle the longest, cannot run X
    able = _sep(region, ("x",))
    busy = _sep(region, ("x",))
    region.control_sep(able, "pause")
    e = region.enqueue("X", 1)
    assert e.sep_id == busy
    region.begin(busy, e.request_id)
    left = region.enqueue("X", 2)
    assert left.left_queued
    region.control_sep(able, "resume")
    with psycopg.connect(db_url, autocommit=True) as listener:
        for s in (plain, able):
            listener.execute(f"LISTEN dispatcher_sep_{s}")
        region.conn.execute("SELECT dispatcher_v2.wake_idle_sep('test', %s)", (busy,))
        notes = list(listener.notifies(timeout=1))
    assert [(n.channel, n.payload) for n in notes] == [(f"dispatcher_sep_{able}", "wake")]
