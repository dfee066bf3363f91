"""SEPs killed with SIGKILL in the middle of thousands of tasks: nothing lost, nothing
done twice, limits hold, higher priority goes first (invariants 1, 3, 4, 5)."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from typing import Any

import psycopg
import pytest

from dispatcher.database import connect
from dispatcher.processes import stop_processes
from dispatcher.region import Region
from sep.program import sync_app

from .seps import start_sep, wait_registered

MAX_SEPS = 4
CLASS_MAX = 2
TASKS = 3000
SEP_ARGS = ("--poll", "0.2", "--heartbeat", "0.3")


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 8], ids=["one-by-one", "batch-8"])
def test_kill_9_seps_during_a_run(region: Region, db_url: str, conn: Any, batch: int) -> None:
    """kill -9 a SEP every 0.4 s while 3000 tasks run: every request is done, its
    database effects exactly once; with --batch, tasks without ctx.db are mixed in."""
    conn.execute("CREATE TABLE app_effect (request_id bigint PRIMARY KEY, n integer)")
    region.set(max_seps=MAX_SEPS, sep_dead_after_s=1.0)
    sync_app(region, "tests.apps.basic")
    region.set_class("c", CLASS_MAX)
    region.define_transaction("CWRITE", "tests.apps.basic:write", cls="c")
    region.define_transaction("HIWRITE", "tests.apps.basic:write", priority=100)
    sep_args = (*SEP_ARGS, "--batch", str(batch))
    procs = [start_sep(db_url, "test", "tests.apps.basic", *sep_args) for _ in range(MAX_SEPS)]
    wait_registered(db_url, "test", MAX_SEPS)

    rnd = random.Random(42)
    kinds = ["WRITE"] * 6 + ["CWRITE"] * 3 + ["HIWRITE"] + ["ECHO"] * (4 if batch > 1 else 0)
    items = [(rnd.choice(kinds), {"n": i}) for i in range(TASKS)]
    ids = []
    for start in range(0, TASKS, 500):
        ids += [e.request_id for e in region.enqueue_many(items[start : start + 500])]
    hi = {rid for rid, (kind, _) in zip(ids, items, strict=True) if kind == "HIWRITE"}

    problems: list[str] = []
    stop = threading.Event()

    def sample() -> None:
        with connect(db_url) as c:
            while not stop.is_set():
                row = c.execute(
                    """SELECT
                      (SELECT count(*) FROM dispatcher.request
                         WHERE state = ANY (%s)) AS running,
                      (SELECT count(*) FROM dispatcher.request
                         WHERE state <> 'queued' AND class = 'c') AS cls,
                      (SELECT count(*) FROM dispatcher.sep WHERE state = 'busy') AS busy""",
                    # a batch's prefetched requests are 'dispatched', not running
                    [["running"] if batch > 1 else ["running", "dispatched"]],
                ).fetchone()
                if row["running"] > MAX_SEPS or row["busy"] > MAX_SEPS:
                    problems.append(f"running {row}")
                if row["cls"] > CLASS_MAX:
                    problems.append(f"class {row}")
                time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    kills = 0
    deadline = time.monotonic() + 150
    try:
        while time.monotonic() < deadline:
            remaining = conn.execute("SELECT count(*) AS n FROM dispatcher.request").fetchone()
            if remaining["n"] == 0:
                break
            time.sleep(0.4)
            if kills < 12:
                victim = rnd.randrange(len(procs))
                os.kill(procs[victim].pid, signal.SIGKILL)
                procs[victim].wait()
                procs[victim] = start_sep(
                    db_url, "test", "tests.apps.basic", *sep_args, "--standby"
                )
                kills += 1
    finally:
        stop.set()
        sampler.join()
        stop_processes(procs, 30)

    assert kills >= 5
    assert not problems, problems[:5]
    hist = conn.execute(
        "SELECT id, state, attempt FROM dispatcher.request_history ORDER BY finished_at, id"
    ).fetchall()
    assert len(hist) == TASKS, f"{len(hist)} of {TASKS} finished"
    assert all(h["state"] == "done" for h in hist)
    writes = sum(1 for kind, _ in items if kind != "ECHO")
    effects = conn.execute("SELECT count(*) AS n, count(DISTINCT request_id) AS d FROM app_effect")
    assert effects.fetchone() == {"n": writes, "d": writes}
    assert max(h["attempt"] for h in hist) > 1, "some request should have been re-run"
    order = {h["id"]: i for i, h in enumerate(hist)}
    hi_rank = sum(order[i] for i in hi) / len(hi)
    lo_rank = sum(order[i] for i in ids if i not in hi) / (TASKS - len(hi))
    assert hi_rank < lo_rank / 2, (hi_rank, lo_rank)


def test_completion_from_declared_dead_sep_is_refused(
    region: Region, db_url: str, conn: psycopg.Connection[dict[str, Any]]
) -> None:
    """A SEP stopped mid-task (SIGSTOP) is declared dead; its request runs elsewhere;
    when it wakes, its completion is refused and it exits."""
    region.set(max_seps=2, sep_dead_after_s=0.8)
    sync_app(region, "tests.apps.basic")
    first = start_sep(db_url, "test", "tests.apps.basic", *SEP_ARGS)
    wait_registered(db_url, "test", 1)
    e = region.enqueue("HOLD", {"seconds": 1.5})
    time.sleep(0.5)
    os.kill(first.pid, signal.SIGSTOP)
    second = start_sep(db_url, "test", "tests.apps.basic", *SEP_ARGS)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            row = region.request(e.request_id)
            if row["state"] == "done":
                break
            time.sleep(0.05)
        assert row["state"] == "done" and row["attempt"] == 2
        assert row["sep_id"] != 1
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=30) == 5  # EXIT_DECLARED_DEAD: a supervisor restarts it
        assert region.request(e.request_id)["sep_id"] == row["sep_id"]
    finally:
        for p in (first, second):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.terminate()
                p.wait(timeout=30)
