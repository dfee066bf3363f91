"""Wake-ups and round trips of real SEP processes (invariant 2)."""

from __future__ import annotations

import random
import signal
import threading
import time
from typing import Any

import psycopg

from dispatcher.gateway import ops
from dispatcher.region import Region
from sep.program import sync_app

from .seps import running_seps, start_sep, wait_final


def test_no_lost_wakeup_with_real_seps(region: Region, db_url: str) -> None:
    """200 requests, each enqueued just as the SEPs go idle, all run promptly, though
    the safety poll is 30 s: the wake-up, not the poll, ran them."""
    sync_app(region, "tests.apps.basic")
    rnd = random.Random(1)
    slow = []
    with running_seps(db_url, "test", 2, "--poll", "30"):
        for i in range(200):
            t0 = time.monotonic()
            e = region.enqueue("ECHO", i)
            wait_final(region, e.request_id, timeout=10)
            took = time.monotonic() - t0
            if took > 2.0:  # the safety poll is 30 s: only a wake-up is this fast
                slow.append((i, took))
            time.sleep(rnd.choice((0, 0, 0.0005, 0.001, 0.002)))
    assert not slow, slow


def test_requests_enqueued_while_seps_go_idle_never_wait_for_the_poll(
    region: Region, db_url: str
) -> None:
    """Two producers enqueue 300 requests at irregular short intervals while 2 SEPs
    (batching and not) run them and go idle between them: each finishes well within the
    30 s safety poll, so every race of a rest with an enqueue was settled at once
    (docs/dispatch.md, "No lost wake-up")."""
    sync_app(region, "tests.apps.basic")
    ids: list[int] = []
    lock = threading.Lock()

    def produce(seed: int) -> None:
        rnd = random.Random(seed)
        with psycopg.connect(db_url, autocommit=True) as c:
            mine = Region(c, "test")
            for i in range(150):
                e = mine.enqueue("ECHO", i)
                with lock:
                    ids.append(e.request_id)
                time.sleep(rnd.choice((0, 0.0002, 0.0005, 0.001, 0.003)))

    with (
        running_seps(db_url, "test", 1, "--poll", "30"),
        running_seps(db_url, "test", 1, "--poll", "30", "--batch", "4"),
    ):
        producers = [threading.Thread(target=produce, args=(s,)) for s in (1, 2)]
        for t in producers:
            t.start()
        for t in producers:
            t.join()
        slow = []
        for request_id in ids:
            row = wait_final(region, request_id, timeout=40)
            finished = row["finished_at"].timestamp() - row["enqueued_at"].timestamp()
            if finished > 3.0:  # the safety poll is 30 s: only a look is this fast
                slow.append((request_id, round(finished, 2)))
    assert len(ids) == 300
    assert not slow, slow


def test_one_commit_per_task(
    region: Region, db_url: str, conn: psycopg.Connection[dict[str, Any]]
) -> None:
    """Complete-and-pull-next: a SEP draining 300 tasks commits about once per task."""
    sync_app(region, "tests.apps.basic")
    n = 300
    region.enqueue_many([("ECHO", i) for i in range(n)])

    def commits() -> int:
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        return int(row["xact_commit"]) if row else 0

    conn.execute("SELECT pg_stat_clear_snapshot()")
    before = commits()
    proc = start_sep(db_url, "test", "tests.apps.basic", "--poll", "60", "--heartbeat", "60")
    # the test's own looks (each one a commit, however slow the machine) come from a
    # connection of their own, counted and taken off; it ends first, so its counts are in
    looks = 0
    with psycopg.connect(db_url, autocommit=True) as watcher:

        def look(sql: str) -> bool:
            nonlocal looks
            looks += 1
            return watcher.execute(sql).fetchone() is not None

        deadline = time.monotonic() + 60
        while not look("SELECT 1 FROM dispatcher.sep WHERE state <> 'dead'"):
            assert time.monotonic() < deadline, "the SEP did not register"
            time.sleep(0.05)
        while look("SELECT 1 FROM dispatcher.request LIMIT 1"):
            assert time.monotonic() < deadline, "the SEP did not drain the queue"
            time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    time.sleep(1.5)  # backends flush their statistics on exit
    conn.execute("SELECT pg_stat_clear_snapshot()")
    delta = commits() - before - looks
    assert n <= delta <= n + 60, delta


def test_late_hand_over_of_a_claimed_request_is_not_run_twice(
    region: Region, db_url: str, tmp_path: Any
) -> None:
    """A SEP that took a request dispatched to it from the database (its poll) ignores
    the listener's hand-over of the same request arriving afterwards."""
    from dispatcher.channel import connect_sync, encode_frame, task_to_dict
    from dispatcher.region import Task

    sync_app(region, "tests.apps.basic")
    path = tmp_path / "runs.txt"
    with running_seps(db_url, "test", 1, "--poll", "0.2"):
        # no NOTIFY: the SEP takes it from the database (dispatched to it, or, when the
        # enqueue met the SEP's row busy with its first claim, claimed by it)
        e = region.enqueue("TOUCH", {"path": str(path)}, notify=False)
        assert wait_final(region, e.request_id)["result"] == "touched"
        address = region.seps()[0]["address"]
        row = region.request(e.request_id)
        task = Task(
            e.request_id,
            1,
            "TOUCH",
            "tests.apps.basic:touch",
            {"path": str(path)},
            None,
            None,
            None,
            row["enqueued_at"],
        )
        secret = region.run(ops.region.channel_secret(region.name))
        with connect_sync(address, secret=secret) as sock:
            sock.sendall(
                encode_frame({"type": "dispatch", "task": task_to_dict(task), "reply_to": None})
            )
        time.sleep(1.0)
    assert path.read_text().splitlines() == [f"{e.request_id}:1"]
