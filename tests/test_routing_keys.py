"""Routing by key: requests with the same routing key run on the same live SEP while it
lives; when it dies or leaves, only its keys move (rendezvous hashing in SQL)."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from typing import Any

import psycopg
import pytest

from dispatcher.errors import InvalidValue
from dispatcher.region import Region
from sep.program import sync_app
from tests.seps import running_seps

APP = "dispatcher_examples.sample"


def _drain(region: Region, seps: list[int]) -> dict[int, int]:
    """Run every queued request on the fake SEPs SEPS, round robin; request id -> SEP."""
    ran: dict[int, int] = {}
    held = {s: region.claim_next(s) for s in seps}
    while any(t is not None for t in held.values()):
        for s, task in list(held.items()):
            if task is not None:
                ran[task.request_id] = s
                held[s] = region.complete(s, task, ok=True)
            else:
                held[s] = region.claim_next(s)
    return ran


def _keys_to_seps(ran: dict[int, int], key_of: dict[int, str]) -> dict[str, set[int]]:
    found: dict[str, set[int]] = defaultdict(set)
    for rid, sep in ran.items():
        found[key_of[rid]].add(sep)
    return found


def test_a_key_stays_on_one_sep_and_only_a_lost_seps_keys_move(region: Region) -> None:
    """SQL level, 4 SEPs, 200 keys x 5 requests: each key runs on exactly one SEP (its
    owner); after one SEP is stopped by force, the keys of the others keep their SEP and
    only the lost SEP's keys move (each to one SEP)."""
    region.define_transaction("T", "app:fn")
    seps = [int(region.register_sep("host", i, ())["id"]) for i in range(4)]
    keys = [f"customer-{i}" for i in range(200)]
    region.set(state="stopping")
    order = [k for k in keys for _ in range(5)]
    random.Random(7).shuffle(order)
    out = region.enqueue_many([("T", k) for k in order], routing_keys=order)
    key_of = {e.request_id: k for e, k in zip(out, order, strict=True)}
    region.set(state="running")
    before = _keys_to_seps(_drain(region, seps), key_of)
    assert set(before) == set(keys)
    assert all(len(s) == 1 for s in before.values()), before
    assert len({next(iter(s)) for s in before.values()}) == 4  # every SEP owns some keys

    lost = seps[1]
    region.control_sep(lost, "kill")
    survivors = [s for s in seps if s != lost]
    region.set(state="stopping")
    again = region.enqueue_many([("T", k) for k in order], routing_keys=order)
    key_of = {e.request_id: k for e, k in zip(again, order, strict=True)}
    region.set(state="running")
    after = _keys_to_seps(_drain(region, survivors), key_of)
    assert all(len(s) == 1 for s in after.values()), after
    for k in keys:
        if before[k] != {lost}:
            assert after[k] == before[k], k  # a survivor's key did not move
    moved = [k for k in keys if before[k] == {lost}]
    assert moved and all(after[k] <= set(survivors) for k in moved)


def test_an_idle_owner_gets_its_keyed_request_at_once_and_no_other_sep_does(
    region: Region,
) -> None:
    """enqueue hands a keyed request to its owner when the owner is idle, and waits
    (no_idle_sep) when the owner is busy, even with other SEPs idle."""
    region.define_transaction("T", "app:fn")
    seps = [int(region.register_sep("host", i, ())["id"]) for i in range(3)]
    first = region.enqueue("T", 1, routing_key="k")
    assert first.reason == "dispatched" and first.sep_id in seps
    second = region.enqueue("T", 2, routing_key="k")
    assert second.reason == "no_idle_sep"  # its owner is busy; the other two stay idle
    task = region.begin(first.sep_id or 0, first.request_id)
    nxt = region.complete(first.sep_id or 0, task, ok=True)
    assert nxt is not None and nxt.request_id == second.request_id


@pytest.mark.parametrize("key", ["", "x" * 201, "a\x00b"])
def test_a_bad_routing_key_is_invalid_value_and_nothing_is_stored(
    region: Region, conn: psycopg.Connection[dict[str, Any]], key: str
) -> None:
    """An empty, overlong (over 200 characters) or NUL-bearing key is refused before it
    reaches the database."""
    region.define_transaction("T", "app:fn")
    with pytest.raises(InvalidValue):
        region.enqueue("T", 1, routing_key=key)
    with pytest.raises(InvalidValue):
        region.enqueue_many([("T", 1)], routing_keys=[key])
    row = conn.execute("SELECT count(*) AS n FROM dispatcher.request").fetchone()
    assert row is not None and row["n"] == 0


def _wait_done(conn: psycopg.Connection[dict[str, Any]], ids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT count(*) AS n FROM dispatcher.request_history"
            " WHERE id = ANY(%s) AND state = 'done'",
            [ids],
        ).fetchone()
        if row is not None and row["n"] == len(ids):
            return
        time.sleep(0.1)
    raise AssertionError(f"not all {len(ids)} requests done in {timeout} s")


def _seps_by_key(
    conn: psycopg.Connection[dict[str, Any]], key_of: dict[int, str]
) -> dict[str, set[int]]:
    rows = conn.execute(
        "SELECT id, sep_id FROM dispatcher.request_history WHERE id = ANY(%s)", [list(key_of)]
    ).fetchall()
    found: dict[str, set[int]] = defaultdict(set)
    for row in rows:
        found[key_of[row["id"]]].add(row["sep_id"])
    return found


@pytest.mark.slow
def test_4000_requests_over_100_keys_on_4_sep_processes_then_one_killed(
    region: Region, conn: psycopg.Connection[dict[str, Any]], db_url: str
) -> None:
    """Real SEP processes: 4,000 requests over 100 keys on 4 SEPs: every key's requests
    ran on one SEP. One SEP is killed (-9) and declared dead: of the next 4,000, the
    keys of the 3 others ran on the same SEP as before; only the dead SEP's keys moved."""
    sync_app(region, APP)
    region.set(sep_dead_after_s=1.0)
    keys = [f"k{i}" for i in range(100)]
    order = [keys[i % 100] for i in range(4_000)]
    random.Random(3).shuffle(order)

    def send() -> dict[int, str]:
        key_of: dict[int, str] = {}
        for start in range(0, len(order), 500):
            part = order[start : start + 500]
            out = region.enqueue_many([("ECHO", {"k": k}) for k in part], routing_keys=part)
            key_of.update({e.request_id: k for e, k in zip(out, part, strict=True)})
        return key_of

    with running_seps(db_url, "test", 4, "--heartbeat", "0.2", app=APP) as procs:
        first = send()
        _wait_done(conn, list(first), 120)
        before = _seps_by_key(conn, first)
        assert set(before) == set(keys)
        assert all(len(s) == 1 for s in before.values()), before
        owners = {next(iter(s)) for s in before.values()}
        assert len(owners) == 4

        victim = procs[0]
        row = conn.execute(
            "SELECT id FROM dispatcher.sep WHERE pid = %s AND state <> 'dead'", [victim.pid]
        ).fetchone()
        assert row is not None
        lost = int(row["id"])
        victim.kill()
        victim.wait(10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = conn.execute("SELECT state FROM dispatcher.sep WHERE id = %s", [lost])
            found = state.fetchone()
            if found is None or found["state"] == "dead":
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the killed SEP was not declared dead")

        second = send()
        _wait_done(conn, list(second), 120)
        after = _seps_by_key(conn, second)
        assert all(len(s) == 1 for s in after.values()), after
        for k in keys:
            if before[k] == {lost}:
                assert lost not in after[k]
            else:
                assert after[k] == before[k], (k, before[k], after[k])
