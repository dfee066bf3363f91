"""Statistics agree with what the test ran: counts, abends, retries, a known delay."""

from __future__ import annotations

import datetime as dt
import json
import time

from click.testing import CliRunner

from dispatcher.cli import cli
from dispatcher.region import Region
from dispatcher.stats import region_stats, transaction_stats


def test_stats_count_abends_retries_and_delay(region: Region, db_url: str) -> None:
    """3 ECHO done, 1 BOOM failed after a retry, each task held ~100 ms; 2 SEPs overlap."""
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    region.set(max_seps=2)
    region.define_transaction("ECHO", "app:echo")
    region.define_transaction("BOOM", "app:boom", max_attempts=2)
    region.conn.execute("UPDATE dispatcher.transaction SET retry_backoff_s = 0")
    s1 = int(region.register_sep("h", 1)["id"])
    s2 = int(region.register_sep("h", 2)["id"])
    for i in range(3):
        region.enqueue("ECHO", i)
    region.enqueue("BOOM", None)
    # both SEPs hold a task at once for a while: the region sits at max SEPs
    t1, t2 = region.claim_next(s1), region.claim_next(s2)
    assert t1 is not None and t2 is not None
    time.sleep(0.1)
    tasks = {s1: t1, s2: t2}
    while tasks:
        for sep_id, task in list(tasks.items()):
            ok = task.transid != "BOOM"
            nxt = region.complete(sep_id, task, ok=ok, error=None if ok else {"type": "E"})
            if nxt is None:
                del tasks[sep_id]
            else:
                time.sleep(0.1)
                tasks[sep_id] = nxt
    per_tx = {t["transid"]: t for t in transaction_stats(region, since)}
    assert per_tx["ECHO"]["count"] == 3 and per_tx["ECHO"]["abends"] == 0
    assert per_tx["BOOM"]["count"] == 1 and per_tx["BOOM"]["abends"] == 1
    assert per_tx["BOOM"]["retries"] == 1
    assert per_tx["ECHO"]["response_ms"]["p50"] >= 100
    r = region_stats(region, since)
    assert r["peak_running"] == 2 and r["tasks"] == 4  # requests (a retry is one request)
    assert r["times_at_max_seps"] >= 1 and r["seconds_at_max_seps"] >= 0.1
    out = CliRunner().invoke(
        cli,
        ["stats", "--json", "--since", "5m"],
        env={"DISPATCHER_DATABASE_URL": db_url, "DISPATCHER_REGION": "test"},
    )
    assert out.exit_code == 0, out.output
    assert {t["transid"] for t in json.loads(out.stdout)["transactions"]} == {"ECHO", "BOOM"}
    bad = CliRunner().invoke(
        cli,
        ["stats", "--since", "yesterday"],
        env={"DISPATCHER_DATABASE_URL": db_url, "DISPATCHER_REGION": "test"},
    )
    assert bad.exit_code == 2 and "neither a duration" in bad.stderr
