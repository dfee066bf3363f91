"""The one rule for which request an idle SEP gets, and what enqueue answers (SQL level,
dispatcher_v2)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from dispatcher.region import Region

ENQUEUE = "SELECT * FROM dispatcher_v2.enqueue('test', %s, %s, p_notify => false)"
ENQUEUE_MANY = (
    "SELECT * FROM dispatcher_v2.enqueue_many('test', %s, %s::jsonb[], p_notify => false)"
)


def _sep(region: Region, address: str | None = None) -> int:
    return int(region.register_sep("host", 1, (), address=address)["id"])


def _older_urgent_request(region: Region) -> int:
    """A queued URGENT request (priority 200) while the region's one SEP is idle."""
    region.define_transaction("URGENT", "app:fn", priority=200)
    region.define_transaction("LOW", "app:fn", priority=0)
    region.set(state="stopping")
    urgent = region.enqueue("URGENT", "u").request_id
    region.set(state="running")
    return urgent


@pytest.mark.parametrize("how", ["enqueue", "enqueue_many"])
def test_an_idle_sep_gets_the_highest_priority_request_whoever_enqueues(
    region: Region, conn: psycopg.Connection[dict[str, Any]], how: str
) -> None:
    """enqueue and enqueue_many follow one rule: the idle SEP takes the most urgent
    queued request (here an older one), announced to it by NOTIFY; the new one waits."""
    sep = _sep(region)
    urgent = _older_urgent_request(region)
    conn.execute(f"LISTEN dispatcher_sep_{sep}")
    if how == "enqueue":
        row = conn.execute(ENQUEUE, ["LOW", psycopg.types.json.Jsonb(1)]).fetchone()
    else:
        row = conn.execute(ENQUEUE_MANY, [["LOW"], ["1"]]).fetchone()
    assert row is not None
    assert row["reason"] == "no_idle_sep" and row["sep_id"] is None and row["task"] is None
    held = conn.execute(
        "SELECT id, state, sep_id FROM dispatcher.request WHERE id = %s", [urgent]
    ).fetchone()
    assert held == {"id": urgent, "state": "dispatched", "sep_id": sep}
    conn.commit()
    notes = [n.payload for n in conn.notifies(timeout=1.0, stop_after=1)]
    assert notes == [f"dispatch {urgent}"]


def test_enqueue_answers_with_the_task_and_the_sep_address(
    region: Region, conn: psycopg.Connection[dict[str, Any]]
) -> None:
    """A dispatched request comes back with its task and the SEP's channel address, so
    the caller hands it over without another query."""
    region.define_transaction("T", "app.mod:fn", timeout_s=7.5)
    sep = _sep(region, address="/tmp/sep.sock")
    row = conn.execute(ENQUEUE, ["T", psycopg.types.json.Jsonb({"x": [1, "é"]})]).fetchone()
    assert row is not None and row["reason"] == "dispatched" and row["sep_id"] == sep
    assert row["sep_address"] == "/tmp/sep.sock"
    task = row["task"]
    assert task["request_id"] == row["request_id"] and task["attempt"] == 1
    assert task["transid"] == "T" and task["program"] == "app.mod:fn"
    assert task["payload"] == {"x": [1, "é"]} and task["timeout_s"] == 7.5
    many = conn.execute(ENQUEUE_MANY, [["T", "T"], ["1", "2"]]).fetchall()
    assert [r["reason"] for r in many] == ["no_idle_sep", "no_idle_sep"]


def test_enqueue_many_dispatches_each_new_request_to_a_sep_able_to_run_it(
    region: Region, conn: psycopg.Connection[dict[str, Any]]
) -> None:
    """With SEPs of different capabilities idle, every request of a batch that one of
    them can run is dispatched at once (no SEP is skipped because another cannot)."""
    region.define_transaction("GPU", "app:fn", requires=["gpu"])
    region.define_transaction("CPU", "app:fn")
    plain = int(region.register_sep("host", 1, ())["id"])
    gpu = int(region.register_sep("host", 2, ("gpu",))["id"])
    rows = conn.execute(ENQUEUE_MANY, [["GPU", "GPU"], ["1", "2"]]).fetchall()
    assert [(r["reason"], r["sep_id"]) for r in rows] == [
        ("dispatched", gpu),
        ("no_idle_sep", None),
    ]
    rows = conn.execute(ENQUEUE_MANY, [["GPU", "CPU"], ["3", "4"]]).fetchall()
    assert [(r["reason"], r["sep_id"]) for r in rows] == [
        ("no_idle_sep", None),
        ("dispatched", plain),
    ]


def test_cancel_request_only_while_it_waits(region: Region) -> None:
    """A queued request is cancelled (history 'cancelled', never runs); a running one
    and a finished one are not; an unknown one is UnknownRequest."""
    from dispatcher.errors import UnknownRequest
    from dispatcher.gateway import ops

    region.define_transaction("T", "app:fn")
    queued = region.enqueue("T", 1).request_id
    assert region.run(ops.request.cancel_request("test", queued)) == "cancelled"
    row = region.request(queued)
    assert row["state"] == "cancelled" and row["error"]["type"] == "Cancelled"
    assert region.run(ops.request.cancel_request("test", queued)) == "finished"
    sep = _sep(region)
    running = region.claim_next(sep)
    assert running is None  # nothing queued any more
    held = region.enqueue("T", 2)
    assert held.sep_id == sep
    assert region.run(ops.request.cancel_request("test", held.request_id)) == "running"
    with pytest.raises(UnknownRequest):
        region.run(ops.request.cancel_request("test", 10**12))
    with pytest.raises(UnknownRequest):
        region.run(ops.request.cancel_request("elsewhere", held.request_id))
