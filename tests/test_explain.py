"""The query that picks the next request uses the queue index, with 100k queued."""

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
    """The query checked here is the one in dispatcher.pick_request (kept in step)."""
    from dispatcher.queries import SQL_DIR

    text = (SQL_DIR / "schema" / "020_procedures.sql").read_text()
    for line in (
        "ORDER BY r.dispatch_key, r.id",
        "FOR UPDATE OF r SKIP LOCKED",
        "AND r.requires <@ p_caps",
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
            "EXPLAIN (FORMAT JSON) " + PICK, {"region": "test", "caps": [], "full": []}
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
            "EXPLAIN (ANALYZE, FORMAT JSON) " + PICK, {"region": "test", "caps": [], "full": []}
        ).fetchone()
    assert row is not None
    analyzed = row["QUERY PLAN"]
    if isinstance(analyzed, str):
        analyzed = json.loads(analyzed)
    scan = [n for n in _plan_nodes(analyzed[0]["Plan"]) if n.get("Index Name")]
    assert scan and scan[0]["Actual Rows"] <= 2
