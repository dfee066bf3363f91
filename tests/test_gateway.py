"""The gateway: one operation, run by the sync and the async runner alike; the
database's errors come out translated; records decode what the procedures return."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any, TypeVar
from uuid import UUID, uuid4

import psycopg
import pytest

from dispatcher.errors import InvalidValue, UnknownRegion, UnknownRequest, UnknownTransaction
from dispatcher.gateway import AsyncGateway, Enqueued, Gateway, Op, Task, ops
from dispatcher.gateway.op import Result
from dispatcher.region import Region

T = TypeVar("T")


def _run_async(db_url: str, op: Op[T]) -> T:
    async def go() -> T:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            return await AsyncGateway(conn).run(op)

    return asyncio.run(go())


def _setup(conn: psycopg.Connection[Any]) -> Gateway:
    db = Gateway(conn)
    db.run(ops.region.ensure_region("test"))
    db.run(ops.transaction.define_transaction("test", "ECHO", "app:echo"))
    return db


def test_sync_and_async_runners_give_the_same_results(
    conn: psycopg.Connection[Any], db_url: str
) -> None:
    db = _setup(conn)
    sync_e = db.run(ops.request.enqueue("test", "ECHO", {"n": 1}))
    async_e = _run_async(db_url, ops.request.enqueue("test", "ECHO", {"n": 2}))
    assert isinstance(sync_e, Enqueued) and isinstance(async_e, Enqueued)
    assert (sync_e.reason, async_e.reason) == ("no_idle_sep", "no_idle_sep")
    assert async_e.request_id == sync_e.request_id + 1
    assert sync_e.task is None and sync_e.sep_address is None  # today's rows lack them

    for op in (
        ops.request.show_request("test", sync_e.request_id),
        ops.transaction.list_transactions("test"),
        ops.region.get_region("test"),
        ops.timer.timer_status("test"),
    ):
        sync_row, async_row = db.run(op), _run_async(db_url, op)
        assert sync_row == async_row, op.query
    shown = db.run(ops.request.show_request("test", sync_e.request_id))
    assert (shown["state"], shown["payload"]) == ("queued", {"n": 1})

    sid = _run_async(db_url, ops.session.register_session("test", None, "u", 1))
    assert isinstance(sid, UUID)
    assert db.run(ops.session.end_session(sid)) is True
    assert _run_async(db_url, ops.session.end_session(sid)) is False
    assert db.run(ops.listener.listener_ping()) is True
    assert _run_async(db_url, ops.listener.listener_ping()) is True
    assert db.run(ops.sep.active_seps("test")) == 0
    assert db.run(ops.listener.session_next(uuid4())) is None


def test_a_sep_claims_and_completes_through_the_gateway(conn: psycopg.Connection[Any]) -> None:
    db = _setup(conn)
    e = db.run(ops.request.enqueue("test", "ECHO", 7))
    sep = int(db.run(ops.sep.register_sep("test", "h", 1, app="m"))["id"])
    task = db.run(ops.sep.claim_next(sep))
    assert isinstance(task, Task) and task.request_id == e.request_id and task.payload == 7
    state = db.run(ops.sep.sep_state(sep))
    assert state is not None and state.state == "busy"
    nxt = db.run(ops.sep.complete(sep, task.request_id, task.attempt, ok=True, result=[7]))
    assert nxt is None
    (out,) = db.run(ops.listener.outcomes([e.request_id]))
    assert (out.id, out.state, out.result) == (e.request_id, "done", [7])
    assert db.run(ops.sep.sample_done_count("test", "ECHO")) == 1
    assert db.run(ops.sep.sep_of_process("test", "h", 1)) == sep
    assert db.run(ops.sep.leave_sep(sep)) == 0


def test_errors_are_translated_by_both_runners(conn: psycopg.Connection[Any], db_url: str) -> None:
    db = _setup(conn)
    with pytest.raises(UnknownRegion):
        db.run(ops.region.get_region("nowhere"))
    with pytest.raises(UnknownRegion):
        _run_async(db_url, ops.region.get_region("nowhere"))
    with pytest.raises(UnknownTransaction):
        db.run(ops.request.enqueue("test", "NOPE"))
    with pytest.raises(UnknownTransaction):
        _run_async(db_url, ops.request.enqueue("test", "NOPE"))
    with pytest.raises(InvalidValue):
        db.run(ops.session.register_session("test", priority=999))
    with pytest.raises(UnknownRequest):  # raised by the decoder: no row
        _run_async(db_url, ops.request.show_request("test", 10**12))
    # an error that is not one of ours passes unchanged (as metrics expects)
    conn.execute("DROP TABLE dispatcher_xr.firing CASCADE")
    with pytest.raises(psycopg.errors.UndefinedTable):
        db.run(ops.timer.timer_status("test"))
    with pytest.raises(psycopg.errors.UndefinedTable):
        _run_async(db_url, ops.timer.timer_status("test"))


def test_legacy_region_delegates_to_the_gateway(region: Region) -> None:
    """The legacy face returns what the operations return."""
    region.define_transaction("ECHO", "app:echo")
    e = region.enqueue("ECHO", 1)
    assert region.request(e.request_id) == region.run(
        ops.request.show_request("test", e.request_id)
    )
    assert region.run(ops.transaction.list_transactions("test")) == region.transactions()
    assert not hasattr(region, "rows") and not hasattr(region, "row")  # no raw access


def test_enqueued_decodes_a_task_and_sep_address_when_the_row_has_them() -> None:
    at = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    session = uuid4()
    fields = {
        "request_id": 5,
        "attempt": 1,
        "transid": "ECHO",
        "program": "app:echo",
        "payload": {"x": 1},
        "session_id": str(session),
        "commarea": None,
        "timeout_s": 2,
        "enqueued_at": at.isoformat(),
    }
    base = {"request_id": 5, "sep_id": 3, "reason": "dispatched", "duplicate": False}
    want = Task(5, 1, "ECHO", "app:echo", {"x": 1}, session, None, 2.0, at)
    for carried in (fields, json.dumps(fields), tuple(fields.values())):
        e = Enqueued.from_row({**base, "task": carried, "sep_address": "tcp://h:1"})
        assert e.task == want and e.sep_address == "tcp://h:1"
    assert Enqueued.from_row({**base, "task": None, "sep_address": None}).task is None


def test_decoders_see_rows_and_rowcount() -> None:
    op = ops.timer.purge_firings("r", 1.0, 10)
    assert op.decode(Result([], 4)) == 4
    assert ops.timer.next_due("r").decode(Result([{"in_s": None}], 1)) is None
    assert ops.timer.next_due("r").decode(Result([{"in_s": 1.5}], 1)) == 1.5
    assert ops.listener.sep_address(1).decode(Result([], 0)) is None
    doubled = ops.sep.active_seps("r").map(lambda n: n * 2)
    assert doubled.query == "active_seps" and doubled.decode(Result([{"n": 3}], 1)) == 6
