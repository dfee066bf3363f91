"""The dispatch queries use their indexes with 100k queued (pick, and every statement
of a batch claim and report)."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from dispatcher.region import Region

PICK = """
SELECT r.id FROM dispatcher.request r
WHERE r.region = %(region)s AND r.state = 'queued'
  AND r.requires <@ %(caps)s::text[]
  AND (r.not_before IS NULL OR r.not_before <= clock_timestamp())
  AND (r.deadline IS NULL OR r.deadline > clock_timestamp())
  AND (r.class IS NULL OR r.class <> ALL (%(full)s::text[]))
  AND (r.routing_key IS NULL
       OR dispatcher_v2.key_owner(r.region, r.routing_key, r.requires) = %(sep)s)
ORDER BY r.dispatch_key, r.id
LIMIT 1
FOR UPDATE OF r SKIP LOCKED
"""


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(_plan_nodes(child))
    return nodes


def test_pick_query_matches_the_procedure() -> None:
    """The query checked here is the one in dispatcher_v2.queue_candidates (kept in step)."""
    from dispatcher.queries import SQL_DIR

    text = (SQL_DIR / "schema" / "070_dispatch_v2.sql").read_text()
    for line in (
        "ORDER BY r.dispatch_key, r.id",
        "FOR UPDATE OF r SKIP LOCKED",
        "AND r.requires <@ p_caps",
        "AND (r.class IS NULL OR r.class <> ALL (p_skip))",
        "OR dispatcher_v2.key_owner(r.region, r.routing_key, r.requires) = p_sep)",
    ):
        assert line in text


def test_pick_next_uses_queue_index_with_100k_queued(
    region: Region, conn: psycopg.Connection[dict[str, Any]]
) -> None:
    """With 100k queued requests, picking the next one is an index scan, not a sort."""
    region.define_transaction("T", "app:fn")
    conn.execute(
        """
        INSERT INTO dispatcher.request (region, transid, priority, dispatch_key)
        SELECT 'test', 'T', (g % 10), clock_timestamp() - make_interval(secs => g % 10)
        FROM generate_series(1, 100000) g
        """
    )
    # finished work elsewhere must not matter either
    conn.execute("ANALYZE dispatcher.request")
    with conn.transaction():
        row = conn.execute(
            "EXPLAIN (FORMAT JSON) " + PICK, {"region": "test", "caps": [], "full": [], "sep": 1}
        ).fetchone()
    assert row is not None
    plan = row["QUERY PLAN"]
    if isinstance(plan, str):
        plan = json.loads(plan)
    nodes = _plan_nodes(plan[0]["Plan"])
    kinds = {n["Node Type"] for n in nodes}
    assert "Sort" not in kinds, kinds
    assert any(n.get("Index Name") == "request_queue_idx" for n in nodes), nodes
    # and it is fast in practice: one row read from the index head
    with conn.transaction():
        row = conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + PICK,
            {"region": "test", "caps": [], "full": [], "sep": 1},
        ).fetchone()
    assert row is not None
    analyzed = row["QUERY PLAN"]
    if isinstance(analyzed, str):
        analyzed = json.loads(analyzed)
    scan = [n for n in _plan_nodes(analyzed[0]["Plan"]) if n.get("Index Name")]
    assert scan and scan[0]["Actual Rows"] <= 2


def _traced(conn: psycopg.Connection[dict[str, Any]], work: Any) -> str:
    """The plans of every statement WORK runs on CONN (auto_explain, nested statements
    included, sent as notices)."""
    plans: list[str] = []
    conn.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
    for setting in (
        "LOAD 'auto_explain'",
        "SET auto_explain.log_min_duration = 0",
        "SET auto_explain.log_nested_statements = on",
        "SET auto_explain.log_level = notice",
    ):
        conn.execute(setting)
    try:
        work()
    finally:
        conn.execute("RESET auto_explain.log_level")
    return "\n".join(plans)


def test_every_statement_of_a_batch_uses_an_index_with_100k_queued(
    region: Region, conn: psycopg.Connection[dict[str, Any]]
) -> None:
    """dispatcher_v2.claim and complete_many, traced statement by statement (auto_explain
    of nested statements, sent as notices): no sequential scan of the hot table."""
    from dispatcher.region import Outcome

    region.define_transaction("T", "app:fn")
    region.set(state="stopping")
    region.enqueue_many([("T", i) for i in range(20)])
    conn.execute(
        """
        INSERT INTO dispatcher.request (region, transid, priority, dispatch_key)
        SELECT 'test', 'T', 0, clock_timestamp() + interval '1 day'
        FROM generate_series(1, 100000) g
        """
    )
    conn.execute("ANALYZE dispatcher.request")
    region.set(state="running")
    sep = int(region.register_sep("host", 1, ())["id"])
    batch: list[Any] = []

    def work() -> None:
        batch.extend(region.claim_batch(sep, 10))
        region.complete_many(sep, [Outcome(t, True, 1) for t in batch], take=10)

    traced = _traced(conn, work)
    assert len(batch) == 10
    assert "complete_many" in traced and "request_queue_idx" in traced
    assert "Seq Scan on request " not in traced, traced


def test_the_hot_path_reads_no_table_whole_when_it_looks_small(
    region: Region, conn: psycopg.Connection[dict[str, Any]]
) -> None:
    """With a few live rows (a busy region's request table between vacuums looks small
    to the planner) enqueue_many, claim and complete_many still go by index: no
    sequential scan of request or session, whose dead rows such a scan would read."""
    from dispatcher.region import Outcome

    region.define_transaction("T", "app:fn")
    session = region.register_session(user="u")
    sep = int(region.register_sep("host", 1, ())["id"])
    region.set(state="stopping")
    region.enqueue_many([("T", i) for i in range(12)], sessions=[session] * 12)
    conn.execute("ANALYZE dispatcher.request")
    conn.execute("ANALYZE dispatcher.session")
    region.set(state="running")

    def work() -> None:
        batch = region.claim_batch(sep, 10)
        assert len(batch) == 10
        region.complete_many(sep, [Outcome(t, True, 1) for t in batch], take=10)
        region.enqueue_many([("T", i) for i in range(5)], sessions=[session] * 5)

    traced = _traced(conn, work)
    assert "complete_many" in traced and "enqueue_many" in traced
    for table in ("request", "session"):
        assert f"Seq Scan on {table} " not in traced, traced


def test_history_row_and_tasks_of_are_inlined(
    region: Region, conn: psycopg.Connection[dict[str, Any]]
) -> None:
    """history_row and tasks_of are expanded into the query that calls them (no function
    call per finished or handed-over request)."""
    region.define_transaction("T", "app:fn")
    ids = [e.request_id for e in region.enqueue_many([("T", i) for i in range(3)])]
    for query, name in (
        (
            "EXPLAIN (VERBOSE, FORMAT TEXT) SELECT h.* FROM dispatcher.request r, LATERAL "
            "dispatcher_v2.history_row(r, 'done', NULL, NULL, now(), now()) h",
            "history_row",
        ),
        ("EXPLAIN (VERBOSE, FORMAT TEXT) SELECT * FROM dispatcher_v2.tasks_of(%s)", "tasks_of"),
    ):
        args = [ids] if "%s" in query else None
        plan = "\n".join(r["QUERY PLAN"] for r in conn.execute(query, args))
        assert f"Function Scan on dispatcher_v2.{name}" not in plan, plan
    tasks = conn.execute(
        "SELECT * FROM dispatcher_v2.tasks_of(%s::bigint[])", [[ids[2], 0, ids[0]]]
    ).fetchall()
    assert [t["request_id"] for t in tasks] == [ids[2], ids[0]]


def test_a_batch_of_requests_without_classes_is_taken_in_one_scan(
    region: Region, conn: psycopg.Connection[dict[str, Any]]
) -> None:
    """complete_many's next batch (no request of a class): one scan of the queue index
    for the whole batch, not a pick for the first and a scan for the rest."""
    from dispatcher.region import Outcome

    region.define_transaction("T", "app:fn")
    sep = int(region.register_sep("host", 1, ())["id"])
    region.set(state="stopping")
    region.enqueue_many([("T", i) for i in range(20)])
    region.set(state="running")
    batch = region.claim_batch(sep, 10)
    assert len(batch) == 10
    got: list[Any] = []

    def work() -> None:
        got.extend(region.complete_many(sep, [Outcome(t, True, 1) for t in batch], take=10))

    traced = _traced(conn, work)
    assert [t.request_id for t in got] == [t.request_id + 10 for t in batch]
    assert (
        traced.count("Index Name: request_queue_idx") + traced.count("using request_queue_idx") == 1
    ), traced
    assert "pick_request" not in traced
