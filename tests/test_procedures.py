"""SQL-level tests of the dispatch procedures (sql/schema/020_procedures.sql)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from dispatcher.errors import (
    CompletionRefused,
    InvalidValue,
    NoRoom,
    UnknownRegion,
    UnknownSEP,
    UnknownSession,
    UnknownTransaction,
)
from dispatcher.region import Region

Conn = psycopg.Connection[dict[str, Any]]


def sep(region: Region, caps: tuple[str, ...] = (), standby: bool = False) -> int:
    return int(region.register_sep("host", 1, caps, standby=standby)["id"])


def test_ensure_region_is_idempotent_and_validates_names(region: Region) -> None:
    """ensure_region creates a region once; a bad name is a clear InvalidValue."""
    assert region.ensure()["max_seps"] == 8
    assert Region(region.conn, "test").ensure()["name"] == "test"
    with pytest.raises(InvalidValue, match="invalid region name"):
        Region(region.conn, "bad name!").ensure()


def test_unknown_region_is_reported(conn: Conn) -> None:
    """Calling a procedure for a region that does not exist raises UnknownRegion."""
    with pytest.raises(UnknownRegion, match="unknown region 'nowhere'"):
        Region(conn, "nowhere").info()
    with pytest.raises(UnknownRegion):
        Region(conn, "nowhere").enqueue("ECHO", 1)


def test_set_region_rejects_out_of_range_values(region: Region) -> None:
    """max SEPs and state are checked with a clear message."""
    with pytest.raises(InvalidValue, match="max SEPs"):
        region.set(max_seps=-1)
    with pytest.raises(InvalidValue, match="state"):
        region.set(state="sleeping")
    assert region.set(max_seps=3)["max_seps"] == 3


def test_define_transaction_validates(region: Region) -> None:
    """Priority outside 0..255, a malformed program path or TRANSID are refused."""
    with pytest.raises(InvalidValue, match="priority"):
        region.define_transaction("T1", "app:fn", priority=256)
    with pytest.raises(InvalidValue, match="program"):
        region.define_transaction("T1", "not a path")
    with pytest.raises(InvalidValue, match="transaction id"):
        region.define_transaction("bad id", "app:fn")
    row = region.define_transaction("T1", "app:fn", priority=7, requires=["gpu"])
    assert (row["priority"], row["requires"]) == (7, ["gpu"])
    row = region.define_transaction("T1", "app:other")
    assert row["program"] == "app:other" and row["priority"] == 0


def test_enqueue_unknown_transaction_and_bad_priority(region: Region) -> None:
    """Unknown TRANSID and user priority out of range raise their own errors."""
    with pytest.raises(UnknownTransaction, match="unknown transaction 'NOPE'"):
        region.enqueue("NOPE", {})
    region.define_transaction("T", "app:fn")
    with pytest.raises(InvalidValue, match="priority"):
        region.enqueue("T", {}, user_priority=300)


def test_enqueue_with_no_sep_queues(region: Region) -> None:
    """With no SEP registered, a request is queued and the reason says why."""
    region.define_transaction("T", "app:fn")
    e = region.enqueue("T", {"a": 1})
    assert e.sep_id is None and e.reason == "no_idle_sep"
    assert region.request(e.request_id)["state"] == "queued"


def test_enqueue_dispatches_to_idle_sep_and_notifies(region: Region, db_url: str) -> None:
    """The enqueue call picks an idle SEP and notifies its channel in the same call."""
    region.define_transaction("T", "app:fn")
    s = sep(region)
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute(f"LISTEN dispatcher_sep_{s}")
        e = region.enqueue("T", {"a": 1})
        assert (e.sep_id, e.reason) == (s, "dispatched")
        note = next(listener.notifies(timeout=5, stop_after=1))
        assert note.payload == f"dispatch {e.request_id}"
    task = region.begin(s, e.request_id)
    assert task.payload == {"a": 1} and task.attempt == 1 and task.program == "app:fn"


def test_effective_priority_adds_session_tx_user_capped(region: Region) -> None:
    """Effective priority = session + transaction + user, capped at 255."""
    region.define_transaction("T", "app:fn", priority=100)
    session = region.register_session(user="u", priority=100)
    e = region.enqueue("T", None, session=session, user_priority=20)
    assert region.request(e.request_id)["priority"] == 220
    e = region.enqueue("T", None, session=session, user_priority=200)
    assert region.request(e.request_id)["priority"] == 255


def test_unknown_session_is_refused(region: Region) -> None:
    """A request naming a session that does not exist raises UnknownSession."""
    import uuid

    region.define_transaction("T", "app:fn")
    with pytest.raises(UnknownSession):
        region.enqueue("T", None, session=uuid.uuid4())


def test_complete_returns_next_by_priority_then_fifo(region: Region) -> None:
    """complete hands the SEP the highest priority request, FIFO within a priority."""
    region.define_transaction("LOW", "app:fn", priority=1)
    region.define_transaction("HIGH", "app:fn", priority=50)
    s = sep(region)
    first = region.enqueue("LOW", 0)
    task = region.begin(s, first.request_id)
    ids = [region.enqueue("LOW", i).request_id for i in range(3)]
    ids_high = [region.enqueue("HIGH", i).request_id for i in range(3)]
    order = []
    while True:
        nxt = region.complete(s, task, ok=True, result=None)
        if nxt is None:
            break
        order.append(nxt.request_id)
        task = nxt
    assert order == ids_high + ids


def test_complete_moves_request_to_history_with_result(region: Region) -> None:
    """A finished request leaves the hot table; its outcome stays retrievable."""
    region.define_transaction("T", "app:fn")
    s = sep(region)
    e = region.enqueue("T", {"x": 1})
    task = region.begin(s, e.request_id)
    assert region.complete(s, task, ok=True, result={"y": 2}) is None
    row = region.request(e.request_id)
    assert row["state"] == "done" and row["result"] == {"y": 2}
    n = region.conn.execute("SELECT count(*) AS n FROM dispatcher.request").fetchone()
    assert n is not None and n["n"] == 0
    seps = region.seps()
    assert seps[0]["state"] == "idle" and seps[0]["tasks_run"] == 1


def test_abend_retries_then_fails(region: Region) -> None:
    """An abend re-queues until max_attempts, then the request fails with its error."""
    region.define_transaction("T", "app:fn", max_attempts=2)
    region.conn.execute("UPDATE dispatcher.transaction SET retry_backoff_s = 0")
    s = sep(region)
    e = region.enqueue("T", None)
    task = region.begin(s, e.request_id)
    err = {"type": "ValueError", "message": "boom", "traceback": "..."}
    retry = region.complete(s, task, ok=False, error=err)
    assert retry is not None and retry.request_id == e.request_id and retry.attempt == 2
    assert region.complete(s, retry, ok=False, error=err) is None
    row = region.request(e.request_id)
    assert row["state"] == "failed" and row["error"]["message"] == "boom"
    assert row["attempt"] == 2


def test_completion_by_old_attempt_is_refused(region: Region) -> None:
    """A completion is fenced by SEP and attempt number."""
    region.define_transaction("T", "app:fn")
    s1, s2 = sep(region), sep(region)
    e = region.enqueue("T", None)
    task = region.begin(e.sep_id or 0, e.request_id)
    other = s2 if e.sep_id == s1 else s1
    with pytest.raises(CompletionRefused):
        region.complete(other, task, ok=True)
    region.control_sep(e.sep_id or 0, "kill")
    with pytest.raises(CompletionRefused):
        region.complete(e.sep_id or 0, task, ok=True)
    # the request went back to the queue and runs again on the other SEP with attempt 2
    again = region.claim_next(other)
    assert again is not None and again.request_id == e.request_id and again.attempt == 2


def test_register_sep_respects_max_seps_unless_standby(region: Region) -> None:
    """A SEP beyond max SEPs is refused (NoRoom) unless it is a standby."""
    region.set(max_seps=1)
    sep(region)
    with pytest.raises(NoRoom, match="no room"):
        sep(region)
    assert sep(region, standby=True) > 0


def test_standby_sep_takes_a_slot_only_when_free(region: Region) -> None:
    """Standby SEPs wait for a slot: running tasks never exceed max SEPs."""
    region.set(max_seps=1)
    region.define_transaction("T", "app:fn")
    a = sep(region)
    b = sep(region, standby=True)
    e1 = region.enqueue("T", 1)
    e2 = region.enqueue("T", 2)
    assert e1.sep_id == a and e2.reason == "no_idle_sep"
    assert region.claim_next(b) is None
    assert region.leave(a) == 1
    task = region.claim_next(b)
    assert task is not None and task.request_id == e1.request_id
    assert not region.seps()[0]["standby"]


def test_class_max_active(region: Region) -> None:
    """A class at max active gets no more dispatches until a task of it finishes."""
    region.set_class("pay", 1)
    region.define_transaction("PAY", "app:fn", cls="pay")
    region.define_transaction("OTHER", "app:fn")
    s1, s2 = sep(region), sep(region)
    e1 = region.enqueue("PAY", 1)
    e2 = region.enqueue("PAY", 2)
    assert e1.reason == "dispatched" and e2.reason == "class_full"
    other_sep = s2 if e1.sep_id == s1 else s1
    assert region.claim_next(other_sep) is None
    task = region.begin(e1.sep_id or 0, e1.request_id)
    nxt = region.complete(e1.sep_id or 0, task, ok=True)
    assert nxt is not None and nxt.request_id == e2.request_id


def test_capabilities_match(region: Region) -> None:
    """A request that requires a capability goes only to a SEP that has it."""
    region.define_transaction("GPU", "app:fn", requires=["gpu"])
    plain = sep(region)
    e = region.enqueue("GPU", None)
    assert e.reason == "no_idle_sep"
    assert region.claim_next(plain) is None
    gpu = sep(region, ("gpu", "x"))
    task = region.claim_next(gpu)
    assert task is not None and task.request_id == e.request_id


def test_pause_resume_stop(region: Region) -> None:
    """Paused SEPs take no work; resume makes them idle; stop drains them."""
    region.define_transaction("T", "app:fn")
    s = sep(region)
    assert region.control_sep(s, "pause")["state"] == "unavailable"
    assert region.enqueue("T", None).reason == "no_idle_sep"
    assert region.claim_next(s) is None
    assert region.control_sep(s, "resume")["state"] == "idle"
    task = region.claim_next(s)
    assert task is not None
    region.control_sep(s, "stop")
    region.enqueue("T", None)
    assert region.complete(s, task, ok=True) is None
    assert region.seps()[0]["state"] == "draining"
    assert region.leave(s) == 0
    assert region.seps() == []
    with pytest.raises(UnknownSEP):
        region.control_sep(s, "pause")
    with pytest.raises(InvalidValue):
        region.control_sep(sep(region), "explode")


def test_leave_requeues_held_request(region: Region) -> None:
    """A SEP that leaves with a request hands it back to the queue."""
    region.define_transaction("T", "app:fn")
    s = sep(region)
    e = region.enqueue("T", None)
    assert region.leave(s) == 1
    assert region.request(e.request_id)["state"] == "queued"


def test_reap_declares_silent_seps_dead(region: Region) -> None:
    """A SEP that stopped beating is declared dead and its request re-queued."""
    region.define_transaction("T", "app:fn")
    region.set(sep_dead_after_s=0.5)
    s = sep(region)
    e = region.enqueue("T", None)
    region.conn.execute(
        "UPDATE dispatcher.sep SET heartbeat_at = now() - interval '1 minute' WHERE id = %s", [s]
    )
    out = region.reap()
    assert out["dead_seps"] == 1 and out["requeued"] == 1
    assert region.request(e.request_id)["state"] == "queued"
    assert region.seps()[0]["state"] == "dead"
    assert region.heartbeat(s) == {
        "state": "dead",
        "paused": False,
        "stop_requested": False,
        "standby": False,
    }


def test_reap_fails_expired_requests(region: Region) -> None:
    """A queued request past its deadline is failed with DeadlineExpired."""
    import datetime as dt

    region.define_transaction("T", "app:fn")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    e = region.enqueue("T", None, deadline=past)
    assert region.reap()["expired"] == 1
    row = region.request(e.request_id)
    assert row["state"] == "failed" and row["error"]["type"] == "DeadlineExpired"


def test_idempotency_key_deduplicates(region: Region) -> None:
    """A second enqueue with the same key returns the first request, before and after it ran."""
    region.define_transaction("T", "app:fn")
    e1 = region.enqueue("T", 1, idempotency_key="k1")
    e2 = region.enqueue("T", 2, idempotency_key="k1")
    assert e2.duplicate and e2.request_id == e1.request_id
    s = sep(region)
    task = region.claim_next(s)
    assert task is not None
    region.complete(s, task, ok=True)
    e3 = region.enqueue("T", 3, idempotency_key="k1")
    assert e3.duplicate and e3.request_id == e1.request_id


def test_enqueue_many(region: Region) -> None:
    """enqueue_many queues a batch in one call and reports each request."""
    region.define_transaction("T", "app:fn")
    sep(region)
    out = region.enqueue_many([("T", i) for i in range(5)])
    assert [o.reason for o in out] == ["dispatched"] + ["no_idle_sep"] * 4
    assert len({o.request_id for o in out}) == 5
    assert [region.request(o.request_id)["payload"] for o in out] == [0, 1, 2, 3, 4]
    with pytest.raises(UnknownTransaction):
        region.enqueue_many([("T", 1), ("NOPE", 2)])


def test_sessions_register_and_end(region: Region) -> None:
    """A session is registered with its priority and ended."""
    s = region.register_session(user="alice", priority=3)
    assert region.end_session(s) is True
    assert region.end_session(s) is False
    with pytest.raises(InvalidValue):
        region.register_session(priority=999)


def test_region_stopping_holds_dispatch(region: Region) -> None:
    """While a region is stopping, requests queue but are not dispatched."""
    region.define_transaction("T", "app:fn")
    s = sep(region)
    region.set(state="stopping")
    assert region.enqueue("T", None).reason == "region_stopping"
    assert region.claim_next(s) is None
    region.set(state="running")
    assert region.claim_next(s) is not None


def test_lowering_max_seps_turns_newest_sep_standby(region: Region) -> None:
    """With max SEPs lowered, the newest SEP turns standby at its heartbeat and rests."""
    region.define_transaction("T", "app:fn")
    s1, s2 = sep(region), sep(region)
    e1, e2 = region.enqueue("T", 1), region.enqueue("T", 2)
    region.enqueue("T", 3)
    region.set(max_seps=1)
    assert region.heartbeat(s1)["standby"] is False
    assert region.heartbeat(s2)["standby"] is True
    t2 = region.begin(s2, e2.request_id if e2.sep_id == s2 else e1.request_id)
    assert region.complete(s2, t2, ok=True) is None
    t1 = region.begin(s1, e1.request_id if e1.sep_id == s1 else e2.request_id)
    assert region.complete(s1, t1, ok=True) is not None


def test_enqueue_many_dispatches_to_every_idle_sep_by_priority(region: Region, db_url: str) -> None:
    """A batch fills every idle SEP with the highest-priority requests queued; one that
    takes an older request (not of the batch) is told by NOTIFY even with notify off."""
    region.define_transaction("LOW", "app:fn", priority=1)
    region.define_transaction("HIGH", "app:fn", priority=9)
    s1, s2 = sep(region), sep(region)
    for s in (s1, s2):
        region.control_sep(s, "pause")
    old = region.enqueue("LOW", "old")
    assert old.reason == "no_idle_sep"
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute(f"LISTEN dispatcher_sep_{s1}")
        listener.execute(f"LISTEN dispatcher_sep_{s2}")
        for s in (s1, s2):
            region.control_sep(s, "resume")
        for _ in listener.notifies(timeout=0.5):
            pass  # the resume notices
        out = region.enqueue_many([("LOW", "a"), ("HIGH", "b"), ("LOW", "c")], notify=False)
        notes = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
    assert [region.request(o.request_id)["payload"] for o in out] == ["a", "b", "c"]
    assert [o.reason for o in out] == ["no_idle_sep", "dispatched", "no_idle_sep"]
    assert region.request(old.request_id)["state"] == "dispatched"
    assert notes == [f"dispatch {old.request_id}"]
    assert {r["current_request"] for r in region.seps()} == {out[1].request_id, old.request_id}


def test_silent_seps_hold_no_slot_at_registration(region: Region) -> None:
    """SEPs of a crashed run that stopped beating do not keep a new SEP out."""
    region.set(max_seps=1, sep_dead_after_s=1)
    stale = sep(region)
    region.conn.execute(
        "UPDATE dispatcher.sep SET heartbeat_at = now() - interval '1 minute' WHERE id = %s",
        [stale],
    )
    fresh = sep(region)
    states = {r["id"]: r["state"] for r in region.seps()}
    assert states == {stale: "dead", fresh: "idle"}
