"""The data a command sends: --data JSON, @FILE or - (stdin), checked against the same
limits as the listener's, each refusal one line (real `dispatcher` subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.region import Region
from dispatcher.values import MAX_DATA

from .listeners import running_listener
from .seps import ROOT, run_all, running_seps

APP = "tests.apps.basic"


def dispatcher(
    cli_env: dict[str, str], *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", *args],
        env=cli_env,
        cwd=ROOT,
        input=None if stdin is None else stdin.decode("utf-8", "surrogateescape"),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def address(region: Region, db_url: str) -> Iterator[str]:
    from sep.program import sync_app

    sync_app(region, APP)
    with running_seps(db_url, "test", 1, app=APP), running_listener(db_url, "test") as a:
        yield a


def test_call_reads_data_from_a_file_and_from_stdin(
    cli_env: dict[str, str], address: str, tmp_path: Path
) -> None:
    """`call --data @FILE` and `call --data -` send the file's or stdin's JSON."""
    f = tmp_path / "data.json"
    f.write_text(json.dumps({"from": "file"}))
    out = dispatcher(cli_env, "call", "ECHO", "--data", f"@{f}", "--address", address)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"from": "file"}
    out = dispatcher(cli_env, "call", "ECHO", "--data", "-", "--address", address, stdin=b"[1, 2]")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [1, 2]


BAD = {
    "nul": '{"s": "bad\\u0000"}',
    "nul key": '{"k\\u0000": 1}',
    "surrogate": '["\\ud800"]',
    "deep": "[" * 3000 + "]" * 3000,
    "too deep": "[" * 101 + "]" * 101,
    "NaN": "[NaN]",
    "long int": "9" * 5000,
    "not json": "{",
}


def test_a_bad_value_is_one_line_and_nothing_is_stored(
    cli_env: dict[str, str], region: Region
) -> None:
    """`call`/`start --data` with each value of BAD, which the region refuses: one line
    on stderr, exit 2, no traceback, no hint to upgrade the database, nothing queued."""
    region.define_transaction("ECHO", "tests.apps.basic:echo")
    cases = [(command, name) for command in ("call", "start") for name in BAD]
    argvs = [
        [sys.executable, "-m", "dispatcher", command, "ECHO", "--data", BAD[name]]
        + (["--address", "127.0.0.1:1"] if command == "call" else [])
        for command, name in cases
    ]
    for case, out in zip(cases, run_all(argvs, cli_env), strict=True):
        assert out.returncode == 2, (case, out)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert "Traceback" not in out.stderr and "upgrade" not in out.stderr, (case, out.stderr)
        assert lines and "--data" in out.stderr, (case, out.stderr)
    n = region.conn.execute("SELECT count(*) AS n FROM dispatcher.request").fetchone()
    assert n is not None and n["n"] == 0


def test_start_data_file_refuses_what_the_listener_refuses(
    cli_env: dict[str, str], region: Region, tmp_path: Path
) -> None:
    """`start --data-file`: a line the listener would refuse (NUL, over the 1 MiB frame
    limit) stops the whole file with one line naming it; nothing is queued."""
    region.define_transaction("ECHO", "tests.apps.basic:echo")
    for bad in ('{"s": "\\u0000"}', json.dumps("x" * MAX_DATA)):
        f = tmp_path / "tasks.jsonl"
        f.write_text(f"1\n{bad}\n3\n")
        out = dispatcher(cli_env, "start", "ECHO", "--data-file", str(f))
        assert out.returncode == 2, out
        assert "line 2" in out.stderr and "Traceback" not in out.stderr, out.stderr
    n = region.conn.execute("SELECT count(*) AS n FROM dispatcher.request").fetchone()
    assert n is not None and n["n"] == 0


def test_call_past_its_timeout_names_the_request_not_the_listener(
    cli_env: dict[str, str], address: str
) -> None:
    """`call --timeout` that expires says which request may still run, not that the
    listener cannot be reached."""
    out = dispatcher(
        cli_env, "call", "HOLD", "--data", '{"seconds": 3}', "--timeout", "1", "--address", address
    )
    assert out.returncode == 1
    assert "did not finish in 1 s" in out.stderr and "request show" in out.stderr, out.stderr
    assert "cannot reach" not in out.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--after", "99999999999d"],
        ["--after", "40000d"],
        ["--after", "-5s"],
        ["--cron", "0 0 31 2 *"],
        ["--cron", "* * * * *", "--tz", "Mars/Base"],
        ["--at", "tomorrow"],
        ["--at", "9999-12-31T23:59:59-01:00"],
        ["--at", "2300-01-01T00:00:00Z"],
        ["--after", "1s", "--data", '"\\u0000"'],
    ],
    ids=[
        *("huge delay", "over 100 years", "negative", "no such date", "no such zone", "at"),
        *("at past year 9999 in UTC", "at over 100 years", "nul"),
    ],
)
def test_a_bad_timer_is_one_line_and_sets_nothing(
    cli_env: dict[str, str], region: Region, args: list[str]
) -> None:
    """`start` with a timer the region cannot keep: one line, no traceback, no timer."""
    region.define_transaction("ECHO", "tests.apps.basic:echo")
    out = dispatcher(cli_env, "start", "ECHO", *args)
    assert out.returncode in (1, 2), out
    assert "Traceback" not in out.stderr and out.stderr.strip(), out.stderr
    n = region.conn.execute("SELECT count(*) AS n FROM dispatcher_xr.timer").fetchone()
    assert n is not None and n["n"] == 0
