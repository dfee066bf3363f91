"""SQL-level tests of the wake-ups of revision 0007 (sql/schema/100_wakes.sql):
wake_idle_sep wakes a SEP able to run what waits. (A reaped listener's conversations:
tests/test_abandoned_conversation.py.)"""

from __future__ import annotations

import psycopg

from dispatcher.region import Region


def _sep(region: Region, caps: tuple[str, ...] = ()) -> int:
    return int(region.register_sep("host", 1, caps)["id"])


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
    assert left.reason == "no_idle_sep"
    region.control_sep(able, "resume")
    with psycopg.connect(db_url, autocommit=True) as listener:
        for s in (plain, able):
            listener.execute(f"LISTEN dispatcher_sep_{s}")
        region.conn.execute("SELECT dispatcher_v2.wake_idle_sep('test', %s)", (busy,))
        notes = list(listener.notifies(timeout=1))
    assert [(n.channel, n.payload) for n in notes] == [(f"dispatcher_sep_{able}", "wake")]
