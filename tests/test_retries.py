"""Retries (issue 16, item 10): a capped, jittered backoff that no operator value can
overflow, and tx define's limits (sql/schema/060_retries.sql)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dispatcher.cli import cli
from dispatcher.errors import InvalidValue
from dispatcher.region import Outcome, Region

MAX_BACKOFF = 604800.0


def _abend_at(region: Region, transid: str, attempt: int, *, batch: bool = False) -> float:
    """Run attempt ATTEMPT of a new request of TRANSID and abend it; the seconds the
    request then waits before its next attempt."""
    rid = region.enqueue(transid, None).request_id  # no SEP yet: it stays queued
    region.conn.execute(
        "UPDATE dispatcher.request SET attempt = %s WHERE id = %s", [attempt - 1, rid]
    )
    sep_id = int(region.register_sep("host", 1)["id"])
    if batch:
        (task,) = region.claim_batch(sep_id, 1)
        assert task.attempt == attempt
        region.complete_many(sep_id, [Outcome(task, ok=False, error={"type": "E"})])
    else:
        claimed = region.claim_next(sep_id)
        assert claimed is not None and claimed.attempt == attempt
        region.complete(sep_id, claimed, ok=False, error={"type": "E"}, take_next=False)
    row = region.conn.execute(
        "SELECT state, extract(epoch FROM not_before - clock_timestamp())::float8 AS wait_s "
        "FROM dispatcher.request WHERE id = %s",
        [rid],
    ).fetchone()
    assert row is not None and row["state"] == "queued"
    region.conn.execute("DELETE FROM dispatcher.request WHERE id = %s", [rid])
    region.leave(sep_id)
    return float(row["wait_s"])


def test_no_attempt_count_overflows_the_backoff(region: Region) -> None:
    """No attempt count overflows the backoff: an abend always re-queues the request."""
    region.define_transaction("ZERO", "app:fn", max_attempts=100_000, retry_backoff_s=0)
    assert _abend_at(region, "ZERO", 1025) < 0.1
    assert _abend_at(region, "ZERO", 1025, batch=True) < 0.1
    region.define_transaction("DFLT", "app:fn", max_attempts=100_000)
    for attempt in (44, 1025, 99_999):
        wait = _abend_at(region, "DFLT", attempt)
        assert 0.9 * 3600 - 1 <= wait <= 1.1 * 3600, (attempt, wait)
    assert 0.9 * 3600 - 1 <= _abend_at(region, "DFLT", 5000, batch=True) <= 1.1 * 3600


def test_backoff_doubles_up_to_the_transactions_cap(region: Region) -> None:
    """The wait is backoff * 2^(attempt-1), at most the transaction's max backoff, +-10%."""
    region.define_transaction("CAP", "app:fn", max_attempts=100, retry_backoff_s=1, max_backoff_s=5)
    for attempt, expected in ((1, 1), (2, 2), (3, 4), (4, 5), (30, 5)):
        wait = _abend_at(region, "CAP", attempt)
        assert 0.9 * expected - 0.05 <= wait <= 1.1 * expected, (attempt, wait)
    assert region.transactions()[0]["max_backoff_s"] == 5


def test_backoff_has_jitter(region: Region) -> None:
    """Requests abending at the same attempt do not all wait the same time (+-10%)."""
    region.define_transaction("J", "app:fn", max_attempts=5, retry_backoff_s=10)
    waits = [_abend_at(region, "J", 1) for _ in range(12)]
    assert all(8.9 <= w <= 11.0 for w in waits), waits
    assert max(waits) - min(waits) > 0.2, waits


def test_stored_values_beyond_the_limits_cannot_overflow(region: Region) -> None:
    """A stored backoff at the top of its range, huge, infinite or NaN waits at most the cap."""
    region.define_transaction(
        "BIG", "app:fn", max_attempts=100_000, retry_backoff_s=86400, max_backoff_s=MAX_BACKOFF
    )
    assert 0.9 * MAX_BACKOFF - 1 <= _abend_at(region, "BIG", 99_999) <= 1.1 * MAX_BACKOFF
    for value in ("Infinity", "NaN", "1e308"):
        region.conn.execute(
            "UPDATE dispatcher.transaction SET retry_backoff_s = %s::float8, max_backoff_s = 60"
            " WHERE transid = 'BIG'",
            [value],
        )
        assert 54 - 1 <= _abend_at(region, "BIG", 3000) <= 66, value


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("retry_backoff_s", -1.0, "retry backoff"),
        ("retry_backoff_s", float("nan"), "retry backoff"),
        ("retry_backoff_s", float("inf"), "retry backoff"),
        ("retry_backoff_s", 86401.0, "retry backoff"),
        ("max_backoff_s", -0.5, "max backoff"),
        ("max_backoff_s", float("nan"), "max backoff"),
        ("max_backoff_s", 604801.0, "max backoff"),
        ("timeout_s", float("inf"), "timeout"),
        ("timeout_s", float("nan"), "timeout"),
        ("timeout_s", 0.0, "timeout"),
        ("timeout_s", 2592001.0, "timeout"),
        ("max_attempts", 0, "max attempts"),
        ("max_attempts", 100_001, "max attempts"),
        ("max_attempts", 2**31 - 1, "max attempts"),
        ("priority", 256, "priority"),
        ("priority", -1, "priority"),
    ],
)
def test_define_refuses_values_beyond_the_limits(
    region: Region, field: str, value: Any, message: str
) -> None:
    """Every operator-set number is range-checked (NaN and Infinity too): InvalidValue."""
    with pytest.raises(InvalidValue, match=message):
        region.define_transaction("T", "app:fn", **{field: value})
    assert region.transactions() == []


@pytest.fixture
def run(db_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    env = {
        "DISPATCHER_DATABASE_URL": db_url,
        "DISPATCHER_REGION": "clitest",
        "DISPATCHER_HOME": str(tmp_path / "home"),
    }

    def invoke(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    assert invoke("region", "set")[0] == 0  # only `region set` (and up) create a region
    return invoke


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--retry-backoff", "nan"),
        ("--retry-backoff", "-1"),
        ("--retry-backoff", "1e9"),
        ("--max-backoff", "inf"),
        ("--max-backoff", "604801"),
        ("--timeout", "nan"),
        ("--timeout", "inf"),
        ("--timeout", "-3"),
        ("--max-attempts", "0"),
        ("--max-attempts", "100001"),
        ("--priority", "256"),
    ],
)
def test_tx_define_refuses_out_of_range_options_in_one_line(run, option: str, value: str) -> None:  # type: ignore[no-untyped-def]
    """An out-of-range tx define option is a usage error (exit 2) naming the option."""
    code, _, err = run("tx", "define", "T", "--program", "m:f", option, value)
    assert code == 2, err
    assert option in err
    assert "Traceback" not in err


def test_tx_define_sets_the_backoff_and_tx_list_shows_it(run) -> None:  # type: ignore[no-untyped-def]
    """tx define --retry-backoff/--max-backoff are stored; tx list and --json show them."""
    code, _, err = run(
        "tx", "define", "PAY", "--program", "m:f", "--retry-backoff", "5", "--max-backoff", "90"
    )
    assert code == 0, err
    code, out, _ = run("tx", "list", "--json")
    (row,) = json.loads(out)
    assert (row["retry_backoff_s"], row["max_backoff_s"]) == (5, 90)
    code, out, _ = run("tx", "list")
    assert code == 0
    header, line = out.splitlines()
    assert "BACKOFF" in header and "MAXBACKOFF" in header
    assert "5*" in line.split() and "90*" in line.split()


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("aging_ms", 3_600_001, "aging interval"),
        ("aging_ms", 2_000_000_000, "aging interval"),
        ("sep_dead_after_s", float("nan"), "SEP dead after"),
        ("sep_dead_after_s", 1e300, "SEP dead after"),
        ("history_retention_s", float("inf"), "history retention"),
        ("history_retention_s", 1e300, "history retention"),
    ],
)
def test_region_settings_are_bounded(
    region: Region, setting: str, value: Any, message: str
) -> None:
    """region set refuses aging and durations that could overflow a procedure: InvalidValue."""
    with pytest.raises(InvalidValue, match=message):
        region.set(**{setting: value})


def test_the_longest_aging_interval_still_enqueues_at_top_priority(region: Region) -> None:
    """With the largest aging interval allowed, a priority-255 request is queued."""
    region.define_transaction("T", "m:f", priority=255)
    region.set(aging_ms=3_600_000)
    assert region.enqueue("T", 1).reason == "no_idle_sep"


@pytest.mark.parametrize("batch", [False, True], ids=["one-by-one", "batch"])
def test_a_conversation_whose_session_ended_is_never_retried(region: Region, batch: bool) -> None:
    """An abend of type SessionEnded fails its request at once, attempts left or not."""
    region.define_transaction("CHAT", "app:fn", max_attempts=5)
    rid = region.enqueue("CHAT", None).request_id
    sep_id = int(region.register_sep("host", 1)["id"])
    error = {"type": "SessionEnded", "message": "the session ended"}
    if batch:
        (task,) = region.claim_batch(sep_id, 1)
        region.complete_many(sep_id, [Outcome(task, ok=False, error=error)])
    else:
        task = region.claim_next(sep_id)
        assert task is not None
        region.complete(sep_id, task, ok=False, error=error, take_next=False)
    assert region.request(rid)["state"] == "failed"


def test_no_sep_is_reaped_for_silence_while_the_server_itself_was_down(region: Region) -> None:
    """A SEP silent for longer than sep_dead_after is reaped, unless the server started
    less than sep_dead_after ago (an outage is no SEP's silence)."""
    sep_id = int(region.register_sep("host", 1)["id"])
    region.conn.execute(
        "UPDATE dispatcher.sep SET heartbeat_at = clock_timestamp() - interval '2 days'"
        " WHERE id = %s",
        [sep_id],
    )
    region.set(sep_dead_after_s=86400)  # the test server started less than a day ago
    region.reap()
    assert _sep_state(region, sep_id) != "dead"
    up_for = region.conn.execute(
        "SELECT extract(epoch FROM clock_timestamp() - pg_postmaster_start_time()) AS s"
    ).fetchone()
    assert up_for is not None
    region.set(sep_dead_after_s=max(0.1, float(up_for["s"]) / 2))
    region.reap()
    assert _sep_state(region, sep_id) in ("dead", "gone")


def _sep_state(region: Region, sep_id: int) -> str:
    row = region.conn.execute("SELECT state FROM dispatcher.sep WHERE id = %s", [sep_id])
    found = row.fetchone()
    return "gone" if found is None else str(found["state"])
