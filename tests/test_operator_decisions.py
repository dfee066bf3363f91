"""Operator decisions stick (issue 16, item 15): what an operator sets with `tx define`
is not overwritten by `tx sync` (run by `sep start` and `up`) until an operator changes
it; the choice is recorded in the database (transaction.operator_set)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dispatcher.cli import cli
from dispatcher.errors import InvalidValue
from dispatcher.region import Region
from sep.program import sync_app

APP = "tests.apps.basic"


@pytest.fixture
def run(db_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    env = {
        "DISPATCHER_DATABASE_URL": db_url,
        "DISPATCHER_REGION": "test",
        "DISPATCHER_HOME": str(tmp_path / "home"),
    }

    def invoke(*args: str) -> str:
        result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        return result.stdout

    invoke("region", "set")  # only `region set` (and up) create a region
    return invoke


def _tx(run, transid: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return next(t for t in json.loads(run("tx", "list", "--json")) if t["transid"] == transid)


# option of tx define, its value, the column it sets and the value stored
DECISIONS = [
    ("--class", "slow", "class", "slow"),
    ("--priority", "200", "priority", 200),
    ("--timeout", "7.5", "timeout_s", 7.5),
    ("--max-attempts", "9", "max_attempts", 9),
    ("--retry-backoff", "0.5", "retry_backoff_s", 0.5),
    ("--max-backoff", "30", "max_backoff_s", 30),
    ("--requires", "gpu", "requires", ["app:tests.apps.basic", "gpu"]),
    ("--description", "mine", "description", "mine"),
    ("--program", "tests.apps.basic:echo", "program", "tests.apps.basic:echo"),
]


@pytest.mark.parametrize(("option", "value", "column", "stored"), DECISIONS)
def test_a_field_an_operator_set_survives_tx_sync(
    run, region: Region, option: str, value: str, column: str, stored: Any
) -> None:  # type: ignore[no-untyped-def]
    """tx define FLAKY OPTION VALUE, then tx sync: the value stays, the rest follows the app."""
    run("tx", "sync", "--app", APP)
    before = _tx(run, "FLAKY")
    run("tx", "define", "FLAKY", option, value)
    # the app's values of the other fields drift (as after an edit of the app) ...
    region.conn.execute(
        "UPDATE dispatcher.transaction SET description = 'drift', max_attempts = 77"
        " WHERE transid = 'FLAKY' AND NOT operator_set && '{description,max_attempts}'"
    )
    run("tx", "sync", "--app", APP)
    run("sep", "list")  # any command: nothing else rewrites the definition
    after = _tx(run, "FLAKY")
    assert after[column] == stored
    field = option[2:].replace("-", "_")
    assert after["operator_set"] == [field]
    # ... and the sync puts back the app's own values of the fields the operator left
    for other in ("description", "max_attempts"):
        if other != column:
            assert after[other] == before[other], other
    if column != "description":  # tx list marks what an operator set with *
        assert "*" in run("tx", "list").split("FLAKY", 1)[1].splitlines()[0]


def test_sep_start_sync_keeps_the_class_and_release_hands_it_back(run, region: Region) -> None:  # type: ignore[no-untyped-def]
    """A class set with tx define survives sep start's sync until --release hands it back."""
    sync_app(region, APP)
    run("tx", "define", "ECHO", "--class", "slow")
    sync_app(region, APP)  # what sep start and up run
    assert _tx(run, "ECHO")["class"] == "slow"
    run("tx", "define", "ECHO", "--release", "class")
    assert _tx(run, "ECHO")["class"] == "slow"  # until the app sets it again
    sync_app(region, APP)
    row = _tx(run, "ECHO")
    assert row["class"] is None and row["operator_set"] == []


def test_tx_define_changes_only_the_options_given(run) -> None:  # type: ignore[no-untyped-def]
    """Redefining with one option leaves the others; a new TRANSID needs --program."""
    run("tx", "define", "PAY", "--program", "m:f", "--priority", "7", "--timeout", "3")
    run("tx", "define", "PAY", "--class", "money")
    row = _tx(run, "PAY")
    assert (row["program"], row["priority"], row["timeout_s"], row["class"]) == (
        "m:f",
        7,
        3,
        "money",
    )
    assert row["operator_set"] == ["class", "priority", "program", "timeout"]
    run("tx", "define", "PAY", "--class", "", "--timeout", "0")
    row = _tx(run, "PAY")
    assert (row["class"], row["timeout_s"]) == (None, None)


def test_tx_define_of_a_new_transid_without_program_is_one_clear_line(
    db_url: str, region: Region
) -> None:
    """tx define NEW --class C: a usage error (exit 2), its one Error line naming what
    is missing."""
    result = CliRunner().invoke(
        cli,
        ["tx", "define", "NEW", "--class", "c"],
        env={"DISPATCHER_DATABASE_URL": db_url, "DISPATCHER_REGION": "test"},
    )
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "give its program" in errors[0], result.stderr


def test_the_procedure_keeps_what_the_operator_set(region: Region) -> None:
    """define_transaction_v2 by an app changes only the fields no operator set."""
    region.define_transaction("T", "m:f", given=["program", "class"], cls="ops")
    row = region.define_transaction(
        "T", "m:g", priority=9, cls=None, max_attempts=4, by="app", app="m"
    )
    assert (row["program"], row["class"], row["priority"], row["max_attempts"]) == (
        "m:f",
        "ops",
        9,
        4,
    )
    assert row["requires"] == ["app:m"]
    with pytest.raises(InvalidValue, match="unknown transaction field"):
        region.define_transaction("T", "m:f", given=["colour"])
    with pytest.raises(InvalidValue, match="only an operator"):
        region.define_transaction("T", "m:f", by="app", release=["class"])


def test_tx_define_sync_and_sep_start_refuse_an_unknown_region(db_url: str, tmp_path: Path) -> None:
    """A mistyped region is an error naming the command that creates one, not a new
    region created behind the operator's back."""
    env = {
        "DISPATCHER_DATABASE_URL": db_url,
        "DISPATCHER_REGION": "typo",
        "DISPATCHER_HOME": str(tmp_path / "home"),
    }
    for args in (
        ["tx", "define", "T", "--program", "m:f"],
        ["tx", "sync", "--app", APP],
        ["tx", "class", "set", "c", "--max-active", "1"],
        ["sep", "start", "--app", APP, "--count", "1"],
    ):
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 1, (args, result.output)
        assert "unknown region 'typo'" in result.stderr and "region set" in result.stderr
    listed = CliRunner().invoke(cli, ["--region", "test", "region", "show", "--json"], env=env)
    assert "typo" not in listed.output
