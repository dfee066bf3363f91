"""Group commit in the listener: many requests, few transactions; errors stay apart."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from dispatcher.errors import UnknownTransaction
from dispatcher.region import Region
from listener.server import GroupCommit


async def _open_pool(db_url: str, max_size: int) -> AsyncConnectionPool[Any]:
    """An open pool of autocommit connections (dict rows), as the listener's."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        db_url,
        min_size=1,
        max_size=max_size,
        open=False,
        kwargs={"autocommit": True, "row_factory": dict_row},
    )
    await pool.open()
    return pool


def _submit_together(
    db_url: str, items: list[tuple[str, Any, Any]], max_batch: int, parallel: int
) -> list[Any]:
    """Submit ITEMS (transid, data, session) to one GroupCommit at once: each one's
    Enqueued, or the exception it got."""

    async def main() -> list[Any]:
        pool = await _open_pool(db_url, 4)
        gc = GroupCommit(pool, "test", max_batch=max_batch, parallel=parallel)
        runner = asyncio.create_task(gc.run())
        try:
            return await asyncio.gather(
                *(gc.submit(t, d, sid, None) for t, d, sid in items), return_exceptions=True
            )
        finally:
            runner.cancel()
            await pool.close()

    return asyncio.run(main())


def test_requests_arriving_together_share_commits(region: Region, db_url: str, conn: Any) -> None:
    """200 requests submitted at once are committed in far fewer transactions; a bad
    TRANSID among them fails alone, and every other request is queued."""
    region.define_transaction("ECHO", "app:echo")
    sessions = [region.register_session(user="u") for _ in range(200)]

    items = [("NOPE" if i == 77 else "ECHO", i, sid) for i, sid in enumerate(sessions)]
    results = _submit_together(db_url, items, max_batch=100, parallel=2)
    bad = [r for r in results if isinstance(r, BaseException)]
    assert len(bad) == 1 and isinstance(bad[0], UnknownTransaction)
    assert isinstance(results[77], UnknownTransaction)
    rows = conn.execute(
        "SELECT count(*) AS n, count(DISTINCT xmin::text) AS txns FROM dispatcher.request"
    ).fetchone()
    assert rows["n"] == 199
    assert rows["txns"] < 100, rows


@pytest.mark.parametrize("n", [1])
def test_a_lone_request_is_not_delayed(region: Region, db_url: str, n: int) -> None:
    """With nothing else arriving, a request is enqueued at once, on its own."""
    region.define_transaction("ECHO", "app:echo")
    sid = region.register_session()

    async def main() -> Any:
        pool = await _open_pool(db_url, 2)
        gc = GroupCommit(pool, "test")
        runner = asyncio.create_task(gc.run())
        try:
            return await asyncio.wait_for(gc.submit("ECHO", n, sid, None), timeout=5)
        finally:
            runner.cancel()
            await pool.close()

    e = asyncio.run(main())
    assert e.reason == "no_idle_sep" and e.request_id > 0


@pytest.mark.parametrize(
    "bad",
    ["bad\x00", {"k\x00": 1}, ["\ud800"], float("nan"), 10**5000],
    ids=["nul", "nul-key", "surrogate", "nan", "huge-int"],
)
def test_a_refused_value_spoils_no_other_request_of_its_batch(
    region: Region, db_url: str, conn: Any, bad: Any
) -> None:
    """A value PostgreSQL cannot store fails alone with InvalidValue; the 39 other
    requests submitted together are all queued."""
    from dispatcher.errors import InvalidValue

    region.define_transaction("ECHO", "app:echo")
    sessions = [region.register_session(user="u") for _ in range(40)]

    items = [("ECHO", bad if i == 17 else {"n": i}, sid) for i, sid in enumerate(sessions)]
    results = _submit_together(db_url, items, max_batch=40, parallel=1)
    assert isinstance(results[17], InvalidValue), results[17]
    assert [i for i, r in enumerate(results) if isinstance(r, BaseException)] == [17]
    row = conn.execute("SELECT count(*) AS n FROM dispatcher.request").fetchone()
    assert row["n"] == 39


def test_a_value_refused_by_the_database_itself_is_invalid_value(region: Region) -> None:
    """Any data exception of PostgreSQL (class 22) reaches callers as InvalidValue."""
    import psycopg

    from dispatcher.errors import InvalidValue, translate

    for sql in ("SELECT '\"\\u0000\"'::jsonb", "SELECT 1/0", "SELECT repeat('9', 200000)::numeric"):
        with pytest.raises(psycopg.Error) as caught, region.conn.transaction():
            region.conn.execute(sql)
        assert isinstance(translate(caught.value), InvalidValue), sql


def test_calls_without_a_key_never_wait_for_a_key_in_flight(region: Region, db_url: str) -> None:
    """A new key whose enqueue is still in flight elsewhere (its lock held: a task that
    STARTs with it, say) holds up the calls of that key only: calls without a key that
    arrive with it are committed at once."""
    import threading
    import time

    from dispatcher.database import connect

    region.define_transaction("ECHO", "app:echo")
    holder = connect(db_url, autocommit=False)
    holder.execute("SELECT pg_advisory_xact_lock(dispatcher_v2.key_lock('test', 'busy'))")
    release = threading.Timer(4.0, holder.rollback)
    release.start()
    took: dict[str, float] = {}

    async def main() -> None:
        pool = await _open_pool(db_url, 8)
        gc = GroupCommit(pool, "test", max_batch=100, parallel=1)
        runner = asyncio.create_task(gc.run())
        t0 = time.monotonic()

        async def timed(name: str, key: str | None) -> None:
            await gc.submit("ECHO", name, None, None, key)
            took[name] = time.monotonic() - t0

        try:
            # a first call holds the one slot a moment, so that the rest queue up and
            # go together in one batch: the keyed call and twenty without a key
            first = asyncio.create_task(timed("first", None))
            await asyncio.sleep(0)
            await asyncio.gather(
                first,
                timed("keyed", "busy"),
                *(timed(f"plain-{i}", None) for i in range(20)),
            )
        finally:
            runner.cancel()
            await pool.close()

    try:
        asyncio.run(main())
    finally:
        release.cancel()
        holder.close()
    assert took["keyed"] >= 3.5, took  # it waited for the key's enqueue in flight
    slowest_plain = max(v for k, v in took.items() if k.startswith("plain"))
    assert slowest_plain < 2.0, took
