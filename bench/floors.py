"""Raw-SQL floors: what PostgreSQL itself allows on this machine, same run."""

from __future__ import annotations

import threading
import time

import psycopg

SETUP = """
CREATE TABLE job (id bigserial PRIMARY KEY, payload jsonb, state text NOT NULL DEFAULT 'q');
CREATE INDEX job_q ON job (id) WHERE state = 'q';
CREATE FUNCTION finish_and_claim(p_done bigint) RETURNS bigint LANGUAGE sql AS $$
    WITH d AS (DELETE FROM job WHERE id = p_done)
    UPDATE job SET state = 'r' WHERE id = (
        SELECT id FROM job WHERE state = 'q' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING id
$$;
"""


def setup(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SETUP)


def enqueue_one_by_one(url: str, n: int) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE job")
        t0 = time.perf_counter()
        for i in range(n):
            conn.execute("INSERT INTO job (payload) VALUES (%s)", [psycopg.types.json.Jsonb(i)])
        return n / (time.perf_counter() - t0)


def enqueue_bulk(url: str, n: int) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE job")
        t0 = time.perf_counter()
        for start in range(0, n, 5000):
            conn.execute(
                "INSERT INTO job (payload) SELECT to_jsonb(g) FROM unnest(%s::int[]) g",
                [list(range(start, min(n, start + 5000)))],
            )
        return n / (time.perf_counter() - t0)


def _fill(url: str, n: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE job")
        conn.execute(
            "INSERT INTO job (payload) SELECT to_jsonb(g) FROM generate_series(1, %s) g", [n]
        )
        conn.execute("VACUUM ANALYZE job")


def _drain(url: str, workers: int, body: str) -> float:
    done = [0] * workers

    def work(k: int) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            if body == "claim1":
                while True:
                    with conn.transaction():
                        row = conn.execute(
                            "DELETE FROM job WHERE id = (SELECT id FROM job WHERE state = 'q' "
                            "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id"
                        ).fetchone()
                    if row is None:
                        return
                    done[k] += 1
            else:
                prev = 0
                while True:
                    try:
                        row = conn.execute("SELECT finish_and_claim(%s)", [prev]).fetchone()
                    except psycopg.errors.DeadlockDetected:
                        # a rare race of this one-statement floor (two modifying parts
                        # in one statement): the statement rolled back, try it again
                        continue
                    if row is None or row[0] is None:
                        return
                    prev = row[0]
                    done[k] += 1

    threads = [threading.Thread(target=work, args=(k,)) for k in range(workers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


def drain_claim_one(url: str, n: int, workers: int) -> float:
    _fill(url, n)
    return _drain(url, workers, "claim1")


def drain_one_round_trip(url: str, n: int, workers: int) -> float:
    _fill(url, n)
    return _drain(url, workers, "roundtrip")


def ping_latency_ms(url: str, n: int = 500) -> list[float]:
    out = []
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(n):
            t0 = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            out.append((time.perf_counter() - t0) * 1000)
    return out
