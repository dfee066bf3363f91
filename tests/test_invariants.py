"""Invariants 1, 3 and 4 of ARCHITECTURE.md under real concurrency (many connections)."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

from dispatcher.database import connect
from dispatcher.region import Region

MAX_SEPS = 5
CLASS_MAX = 2
SEPS = 8
ENQUEUERS = 3
PER_ENQUEUER = 1000


def _check(conn: Any) -> list[str]:
    """Every invariant that can be seen in one snapshot of the region database."""
    problems = []
    row = conn.execute(
        """
        SELECT
          (SELECT count(*) FROM dispatcher.request WHERE state IN ('dispatched', 'running'))
            AS running,
          (SELECT count(*) FROM dispatcher.request
             WHERE state IN ('dispatched', 'running') AND class = 'c') AS class_running,
          (SELECT count(*) FROM dispatcher.sep WHERE state = 'busy') AS busy,
          (SELECT count(*) FROM (SELECT current_request FROM dispatcher.sep
             WHERE current_request IS NOT NULL GROUP BY current_request HAVING count(*) > 1) d)
            AS doubly_held,
          (SELECT count(*) FROM dispatcher.request r JOIN dispatcher.sep s ON s.id = r.sep_id
             WHERE r.state <> 'queued' AND s.current_request IS DISTINCT FROM r.id) AS mismatched
        """
    ).fetchone()
    if row["running"] > MAX_SEPS:
        problems.append(f"{row['running']} running > max SEPs {MAX_SEPS}")
    if row["busy"] > MAX_SEPS:
        problems.append(f"{row['busy']} busy SEPs > max SEPs {MAX_SEPS}")
    if row["class_running"] > CLASS_MAX:
        problems.append(f"{row['class_running']} of class c running > {CLASS_MAX}")
    if row["doubly_held"]:
        problems.append("a request is held by two SEPs")
    if row["mismatched"]:
        problems.append(f"{row['mismatched']} running requests not held by their SEP")
    return problems


@pytest.mark.slow
def test_concurrent_enqueue_and_complete_keep_invariants(db_url: str) -> None:
    """8 SEP connections and 3 enqueuers: no double dispatch, max SEPs and class max hold."""
    setup = connect(db_url)
    region = Region(setup, "inv")
    region.ensure()
    region.set(max_seps=MAX_SEPS)
    region.set_class("c", CLASS_MAX)
    region.define_transaction("PLAIN", "app:fn", priority=1)
    region.define_transaction("CLS", "app:fn", cls="c", priority=3)
    region.define_transaction("RETRY", "app:fn", max_attempts=2)
    setup.execute("UPDATE dispatcher.transaction SET retry_backoff_s = 0")
    sep_ids = [
        int(region.register_sep("h", i, [], standby=i >= MAX_SEPS)["id"]) for i in range(SEPS)
    ]

    held: dict[int, int] = {}
    held_lock = threading.Lock()
    completed: list[int] = []
    errors: list[str] = []
    done_enqueuing = threading.Event()
    stop = threading.Event()

    def take(sep_id: int, request_id: int) -> None:
        with held_lock:
            if request_id in held:
                errors.append(f"request {request_id} given to {sep_id} while {held[request_id]}")
            held[request_id] = sep_id

    def run_sep(sep_id: int) -> None:
        conn = connect(db_url)
        r = Region(conn, "inv")
        rnd = random.Random(sep_id)
        try:
            task = None
            while not stop.is_set():
                if task is None:
                    task = r.claim_next(sep_id)
                    if task is None:
                        if done_enqueuing.is_set() and not _queued(conn):
                            return
                        time.sleep(0.001)
                        continue
                take(sep_id, task.request_id)
                ok = not (task.transid == "RETRY" and task.attempt == 1 and rnd.random() < 0.5)
                with held_lock:
                    held.pop(task.request_id, None)
                    if ok or task.attempt >= 2:
                        completed.append(task.request_id)
                task = r.complete(sep_id, task, ok=ok, result={"sep": sep_id})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(f"SEP {sep_id}: {exc!r}")
        finally:
            conn.close()

    def run_enqueuer(n: int) -> None:
        conn = connect(db_url)
        r = Region(conn, "inv")
        rnd = random.Random(100 + n)
        try:
            for _ in range(PER_ENQUEUER):
                r.enqueue(rnd.choice(["PLAIN", "CLS", "RETRY"]), {"n": n})
        except Exception as exc:  # pragma: no cover
            errors.append(f"enqueuer {n}: {exc!r}")
        finally:
            conn.close()

    checks = 0

    def run_checker() -> None:
        nonlocal checks
        conn = connect(db_url)
        try:
            while not stop.is_set():
                for p in _check(conn):
                    errors.append(p)
                checks += 1
        finally:
            conn.close()

    seps = [threading.Thread(target=run_sep, args=(s,)) for s in sep_ids]
    enqueuers = [threading.Thread(target=run_enqueuer, args=(n,)) for n in range(ENQUEUERS)]
    checker = threading.Thread(target=run_checker)
    for t in [*seps, *enqueuers, checker]:
        t.start()
    for t in enqueuers:
        t.join()
    done_enqueuing.set()
    deadline = time.monotonic() + 60
    while any(t.is_alive() for t in seps) and time.monotonic() < deadline and not errors:
        time.sleep(0.05)
    stop.set()
    for t in seps:
        t.join()
    checker.join()
    assert not errors, "\n".join(errors[:3])
    total = ENQUEUERS * PER_ENQUEUER
    assert len(completed) == total
    assert len(set(completed)) == total
    row = setup.execute(
        "SELECT count(*) AS n, count(DISTINCT id) AS d FROM dispatcher.request_history"
    ).fetchone()
    assert row is not None and row["n"] == total and row["d"] == total
    assert checks > 10
    setup.close()


def _queued(conn: Any) -> bool:
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM dispatcher.request) AS q").fetchone()
    return bool(row["q"])


def test_priority_order_under_concurrent_enqueue(db_url: str) -> None:
    """While one SEP drains, concurrent enqueuers of mixed priority: each dispatch is the
    highest-priority request queued when it was picked (checked from the dispatch log)."""
    setup = connect(db_url)
    region = Region(setup, "prio")
    region.ensure()
    region.set(max_seps=1)
    for p in (0, 10, 20, 30):
        region.define_transaction(f"P{p}", "app:fn", priority=p)
    sep_id = int(region.register_sep("h", 1, [])["id"])
    # fill the queue while the SEP is busy with a first request
    first = region.enqueue("P0", None)
    task = region.begin(sep_id, first.request_id)
    rnd = random.Random(7)
    for _ in range(300):
        region.enqueue(f"P{rnd.choice((0, 10, 20, 30))}", None)
    seen: list[int] = []
    while task is not None:
        task = region.complete(sep_id, task, ok=True)
        if task is not None:
            seen.append(region.request(task.request_id)["priority"])
    assert seen == sorted(seen, reverse=True)
    setup.close()


def test_no_lost_wakeup_when_sep_goes_idle_during_enqueue(db_url: str) -> None:
    """A request enqueued while the only SEP is going idle is never left queued beside
    an idle SEP: either the completion picks it up or the enqueue dispatches it."""
    setup = connect(db_url)
    region = Region(setup, "wake")
    region.ensure()
    region.define_transaction("T", "app:fn")
    sep_id = int(region.register_sep("h", 1, [])["id"])
    sep_conn, enq_conn = connect(db_url), connect(db_url)
    sep_region, enq_region = Region(sep_conn, "wake"), Region(enq_conn, "wake")
    failures = []
    for i in range(300):
        first = region.enqueue("T", i)
        task = (
            region.claim_next(sep_id)
            if first.sep_id is None
            else region.begin(sep_id, first.request_id)
        )
        assert task is not None
        barrier = threading.Barrier(2)
        out: dict[str, Any] = {}

        def complete(barrier: Any = barrier, out: Any = out, task: Any = task) -> None:
            barrier.wait()
            out["next"] = sep_region.complete(sep_id, task, ok=True)

        def enqueue(barrier: Any = barrier, out: Any = out, i: int = i) -> None:
            barrier.wait()
            out["enq"] = enq_region.enqueue("T", -i)

        threads = [threading.Thread(target=complete), threading.Thread(target=enqueue)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        nxt, enq = out["next"], out["enq"]
        if nxt is not None:
            assert nxt.request_id == enq.request_id
            region.complete(sep_id, nxt, ok=True)
        elif enq.sep_id == sep_id:
            region.complete(sep_id, region.begin(sep_id, enq.request_id), ok=True)
        else:
            failures.append((i, enq.reason))
            region.complete(sep_id, region.claim_next(sep_id), ok=True)  # type: ignore[arg-type]
    assert not failures
    for c in (setup, sep_conn, enq_conn):
        c.close()


def test_a_second_enqueue_of_one_key_waits_for_the_first_to_commit(
    region: Region, db_url: str
) -> None:
    """Enqueues of one idempotency key go one at a time: the second waits (on the key's
    advisory lock) until the first commits, then answers duplicate with its id."""
    region.define_transaction("T", "app:fn")
    first = connect(db_url, autocommit=False)
    try:
        e1 = Region(first, "test").enqueue("T", 1, idempotency_key="k")  # not committed
        got: list[Any] = []
        other = threading.Thread(
            target=lambda: got.append(
                Region(connect(db_url), "test").enqueue("T", 2, idempotency_key="k")
            )
        )
        other.start()
        deadline = time.monotonic() + 10
        waiting = None
        while time.monotonic() < deadline and waiting is None:
            waiting = region.conn.execute(
                "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).fetchone()
            time.sleep(0.02)
        assert waiting is not None, "the second enqueue did not wait on the key's lock"
        assert not got
        first.commit()
        other.join(10)
        assert got and got[0].duplicate and got[0].request_id == e1.request_id
    finally:
        first.close()


def _enqueue_key(r: Region, key: str, go: threading.Barrier, ids: list[int]) -> None:
    go.wait()
    ids.append(r.enqueue("T", key, idempotency_key=key).request_id)


def test_one_key_sent_at_once_by_many_makes_one_request_even_when_it_finishes_at_once(
    region: Region, db_url: str
) -> None:
    """16 connections enqueue one new key at the same moment while a SEP claims and
    completes whatever is queued as fast as it can, 25 rounds: every key ends as one
    request (in the queue or the history), and every enqueue answered with its id."""
    region.define_transaction("T", "app:fn")
    sep = int(region.register_sep("host", 1, ())["id"])
    conns = [Region(connect(db_url), "test") for _ in range(16)]
    stop = threading.Event()

    from dispatcher.region import Outcome

    def work() -> None:
        r = Region(connect(db_url), "test")
        while not stop.is_set():
            for t in r.claim_batch(sep, 10):
                r.complete_many(sep, [Outcome(t, True, 1)])
            time.sleep(0.0005)

    worker = threading.Thread(target=work)
    worker.start()
    try:
        for n in range(25):
            key = f"race-{n}"
            go = threading.Barrier(len(conns))
            ids: list[int] = []

            threads = [threading.Thread(target=_enqueue_key, args=(r, key, go, ids)) for r in conns]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert len(ids) == len(conns) and len(set(ids)) == 1, (key, sorted(set(ids)))
            rows = region.conn.execute(
                "SELECT (SELECT count(*) FROM dispatcher.request WHERE idempotency_key = %(k)s)"
                " + (SELECT count(*) FROM dispatcher.request_history"
                "    WHERE idempotency_key = %(k)s) AS n",
                {"k": key},
            ).fetchone()
            assert rows is not None and rows["n"] == 1, key
    finally:
        stop.set()
        worker.join(10)


def test_a_stored_key_is_answered_at_once_while_its_lock_is_held(
    region: Region, db_url: str
) -> None:
    """A key whose request is stored (queued, running or finished) is answered as a
    duplicate without waiting for the key's lock: a long transaction that holds it (a
    task that STARTs with that reqid, say) stalls nobody who sends a known key."""
    region.define_transaction("T", "app:fn")
    first = region.enqueue("T", 1, idempotency_key="known")
    holder = connect(db_url, autocommit=False)
    try:
        holder.execute("SELECT pg_advisory_xact_lock(dispatcher_v2.key_lock('test', 'known'))")
        got: list[Any] = []
        other = threading.Thread(
            target=lambda: got.append(
                Region(connect(db_url), "test").enqueue("T", 2, idempotency_key="known")
            )
        )
        other.start()
        other.join(5)
        assert got, "an enqueue of a stored key waited for the key's lock"
        assert got[0].duplicate and got[0].request_id == first.request_id
    finally:
        holder.rollback()
        holder.close()
