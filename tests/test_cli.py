"""The command line, with click's CliRunner and as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from dispatcher.cli import cli


@pytest.fixture
def run(db_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    env = {
        "DISPATCHER_DATABASE_URL": db_url,
        "DISPATCHER_REGION": "clitest",
        "DISPATCHER_HOME": str(tmp_path / "home"),
    }

    def invoke(*args: str) -> tuple[int, str, str]:
        runner = CliRunner()
        result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return invoke


def test_region_set_and_show_json(run) -> None:  # type: ignore[no-untyped-def]
    """region set creates the region; region show --json prints its settings."""
    code, out, _ = run("region", "set", "--max-seps", "3")
    assert code == 0 and "max SEPs 3" in out
    code, out, _ = run("region", "show", "--json")
    assert code == 0 and json.loads(out)["max_seps"] == 3


def test_bad_arguments_are_clear(run) -> None:  # type: ignore[no-untyped-def]
    """Out-of-range values are usage errors (exit 2) naming the option."""
    code, _, err = run("region", "set", "--max-seps", "-4")
    assert code == 2 and "--max-seps" in err
    code, _, err = run("tx", "define", "T", "--program", "m:f", "--priority", "999")
    assert code == 2 and "--priority" in err


def test_tx_define_list_and_class(run) -> None:  # type: ignore[no-untyped-def]
    """tx define / tx list --json / tx class set."""
    run("region", "set")
    code, out, _ = run(
        "tx",
        "define",
        "PAY",
        "--program",
        "app:pay",
        "--priority",
        "9",
        "--class",
        "payments",
        "--requires",
        "ledger",
    )
    assert code == 0, out
    code, out, _ = run("tx", "list", "--json")
    rows = json.loads(out)
    assert rows[0]["transid"] == "PAY" and rows[0]["requires"] == ["ledger"]
    code, out, _ = run("tx", "class", "set", "payments", "--max-active", "2")
    assert code == 0 and "max active 2" in out


def test_start_and_request_show(run) -> None:  # type: ignore[no-untyped-def]
    """start prints a request id; request show --json shows it queued."""
    run("region", "set")
    run("tx", "define", "ECHO", "--program", "app:echo")
    code, out, _ = run("start", "ECHO", "--data", '{"a": 1}')
    assert code == 0
    rid = int(out.strip())
    code, out, _ = run("request", "show", str(rid), "--json")
    row = json.loads(out)
    assert row["state"] == "queued" and row["payload"] == {"a": 1}


def test_bad_timer_options_are_usage_errors(run) -> None:  # type: ignore[no-untyped-def]
    """A timer's malformed REQID (to start or cancel), cron expression or time zone, and
    SEP ids given with --all, are usage errors (exit 2, the message names what is
    wrong), as every bad option value is; nothing is scheduled."""
    run("region", "set")
    run("tx", "define", "ECHO", "--program", "app:echo")
    cases = [
        (("start", "ECHO", "--after", "1h", "--reqid", "bad reqid"), "invalid REQID"),
        (("start", "ECHO", "--after", "1h", "--reqid", "r" * 65), "invalid REQID"),
        (("start", "ECHO", "--cron", "61 * * * *"), "a value is out of range (minute 0-59"),
        (("start", "ECHO", "--cron", "*/0 * * * *"), "invalid cron expression"),
        (("start", "ECHO", "--cron", "* * * * *", "--tz", ""), "--tz: empty"),
        (("start", "ECHO", "--cron", "* * * * *", "--tz", "Mars/Olympus"), "unknown time zone"),
        (("sep", "stop", "1", "--all"), "not both"),
        (("start", "ECHO", "--after", "36600d"), "at most 36,500 days"),
        (("cancel", "bad/reqid"), "invalid REQID"),
        (("cancel", ""), "invalid REQID"),
        (("cancel", "r" * 300), "invalid REQID"),
        (("tx", "define", "", "--program", "a:b"), "invalid transaction id"),
        (("tx", "define", "X", "--program", "nocolon"), "invalid program"),
        (("tx", "class", "set", "", "--max-active", "1"), "invalid class name"),
        (("token", "create", "a\nb"), "invalid token name"),
    ]
    for argv, message in cases:
        code, _, err = run(*argv)
        assert code == 2 and message in err, (argv, code, err)
    code, out, _ = run("timers")
    assert code == 0 and "ECHO" not in out


def test_request_show_by_start_reqid(run, db_url: str) -> None:  # type: ignore[no-untyped-def]
    """request show takes a START reqid as well as an id: the request started with that
    --reqid, or the one the timer of that reqid queued when it fired; a timer not fired
    yet, an unknown reqid and a malformed one are clear errors."""
    run("region", "set")
    run("tx", "define", "ECHO", "--program", "app:echo")
    code, out, _ = run("start", "ECHO", "--reqid", "order-7", "--data", "1")
    rid = int(out.strip())
    code, out, _ = run("request", "show", "order-7", "--json")
    assert code == 0 and json.loads(out)["id"] == rid
    code, out, _ = run("start", "ECHO", "--after", "3600", "--reqid", "later-1")
    assert code == 0
    code, _, err = run("request", "show", "later-1")
    assert code == 1 and "has not fired yet" in err
    with psycopg.connect(db_url, autocommit=True) as conn:  # as if it had fired
        conn.execute(
            "INSERT INTO dispatcher_xr.firing (firing_id, region, reqid, due_at, request_id) "
            "VALUES ('f1', 'clitest', 'later-1', now(), %s)",
            (rid,),
        )
    code, out, _ = run("request", "show", "later-1")
    assert code == 0 and f"{rid}" in out
    code, _, err = run("request", "show", "nobody")
    assert code == 1 and "no request with START reqid 'nobody'" in err
    for bad in ("0", "9" * 30, "", " ", "x" * 1001):
        code, _, err = run("request", "show", bad)
        assert code == 2 and "error" in err.lower(), (bad, err)
    # any text is a key (`start --reqid 'a b'`, the HTTP front's user/key); digits too
    from dispatcher.database import connect
    from dispatcher.region import Region

    with connect(db_url) as conn:  # a key as a client session's call stores it
        e = Region(conn, "clitest").enqueue("ECHO", 3, idempotency_key="bob/order-17")
    code, out2, err = run("request", "show", "bob/order-17", "--json")
    assert code == 0 and json.loads(out2)["id"] == e.request_id, err
    for key in ("a b", "12345"):
        code, out, _ = run("start", "ECHO", "--reqid", key, "--data", "2")
        code, out2, err = run("request", "show", key, "--json")
        assert code == 0 and json.loads(out2)["id"] == int(out.strip()), (key, err)
    # a START's reqid never has the shape of a client's key (NAME/KEY): they never meet
    for bad in ("", "bob/order-17", "x" * 201, "nul\x00"):
        code, _, err = run("start", "ECHO", "--reqid", bad, "--data", "4")
        assert code == 2 and "--reqid" in err, (bad, err)
    code, out, _ = run("start", "ECHO", "--reqid", "x" * 200, "--data", "5")
    assert code == 0 and out.strip().isdigit()


def test_start_from_data_file(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """--data-file starts one task per JSON line, in one batch."""
    run("region", "set")
    run("tx", "define", "ECHO", "--program", "app:echo")
    f = tmp_path / "tasks.jsonl"
    f.write_text('{"n": 1}\n{"n": 2}\n\n{"transid": "ECHO", "data": 3}\n')
    code, out, _ = run("start", "ECHO", "--data-file", str(f))
    assert code == 0 and len(out.split()) == 3


def test_status_json(run) -> None:  # type: ignore[no-untyped-def]
    """status --json reports the region, its SEPs and requests."""
    run("region", "set", "--max-seps", "2")
    code, out, _ = run("status", "--json")
    assert code == 0
    row = json.loads(out)
    assert row["max_seps"] == 2 and row["requests"] == {}


def _subprocess(db_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DISPATCHER_DATABASE_URL": db_url,
        "DISPATCHER_REGION": "sub",
        "DISPATCHER_HOME": str(tmp_path / "home"),
    }
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_as_subprocess(db_url: str, tmp_path: Path) -> None:
    """The real `dispatcher` program: exit codes and messages of success and errors."""
    out = _subprocess(db_url, tmp_path, "region", "set", "--max-seps", "2")
    assert out.returncode == 0, out.stderr
    out = _subprocess(db_url, tmp_path, "start", "NOPE", "--data", "1")
    assert out.returncode == 1
    assert "unknown transaction 'NOPE'" in out.stderr
    out = _subprocess(db_url, tmp_path, "start", "NOPE", "--data", "{bad")
    assert out.returncode == 2 and "not valid JSON" in out.stderr
    out = _subprocess(db_url, tmp_path, "request", "show", "999999")
    assert out.returncode == 1 and "unknown request 999999" in out.stderr
    out = _subprocess(db_url, tmp_path, "--log-format", "json", "db", "current")
    assert out.returncode == 0 and "head" in out.stdout


def test_database_down_is_a_clear_error(tmp_path: Path) -> None:
    """A database that cannot be reached gives one clear line and exit 1."""
    out = _subprocess("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2", tmp_path, "status")
    assert out.returncode == 1
    assert "database unavailable" in out.stderr
    assert "Traceback" not in out.stderr


def test_request_cancel_and_tx_delete(run, db_url: str) -> None:  # type: ignore[no-untyped-def]
    """tx delete is refused while a request of the transaction is queued (with the count);
    request cancel cancels a queued one, refuses one a SEP has and a finished one; then
    tx delete deletes; unknown names and ids are errors (exit 1)."""
    from dispatcher.database import connect
    from dispatcher.region import Region

    assert run("region", "set")[0] == 0
    assert run("tx", "define", "T", "--program", "app:t")[0] == 0
    with connect(db_url) as conn:
        region = Region(conn, "clitest")
        sep = int(region.register_sep("host", 1, ())["id"])
        taken = region.enqueue("T", 1)  # dispatched to the idle SEP
        assert taken.sep_id == sep
        queued = region.enqueue("T", 2).request_id  # the SEP is busy
        code, _, err = run("tx", "delete", "T")
        assert code == 1 and "2 requests of T are queued or running" in err, err
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err  # not click's
        code, _, err = run("request", "cancel", str(taken.request_id))
        assert code == 1 and "already with a SEP" in err, err
        code, out, _ = run("request", "cancel", str(queued))
        assert code == 0 and f"request {queued} cancelled" in out
        assert region.request(queued)["state"] == "cancelled"
        code, _, err = run("request", "cancel", str(queued))
        assert code == 1 and "has finished (cancelled)" in err, err
        code, _, err = run("request", "cancel", "999999")
        assert code == 1 and "unknown request" in err, err
        code, _, err = run("tx", "delete", "T")
        assert code == 1 and "1 request of T" in err, err  # the one the SEP has
        task = region.begin(sep, taken.request_id)
        region.complete(sep, task, ok=True, result=None, take_next=False)
    code, out, _ = run("tx", "delete", "T")
    assert code == 0 and "transaction T deleted" in out
    code, _, err = run("tx", "delete", "T")
    assert code == 1 and "unknown transaction 'T'" in err, err
    assert "T" not in run("tx", "list")[1].split()


def test_token_revoke(run) -> None:  # type: ignore[no-untyped-def]
    """token revoke deletes a token (gone from token list); an unknown name is an error."""
    assert run("region", "set")[0] == 0
    assert run("token", "create", "ops")[0] == 0
    code, out, _ = run("token", "revoke", "ops")
    assert code == 0 and "token 'ops' revoked" in out
    assert "ops" not in run("token", "list")[1]
    code, _, err = run("token", "revoke", "ops")
    assert code == 1 and "no token 'ops'" in err, err


def test_request_list_pages_and_since(run, db_url: str) -> None:  # type: ignore[no-untyped-def]
    """request list: a full page says how to get the next (--before), the pages hold
    every request once, newest first; --since filters by enqueue time; --json the same."""
    from dispatcher.database import connect
    from dispatcher.region import Region

    assert run("region", "set")[0] == 0
    assert run("tx", "define", "T", "--program", "app:t")[0] == 0
    with connect(db_url) as conn:
        ids = [Region(conn, "clitest").enqueue("T", i).request_id for i in range(5)]
    seen: list[int] = []
    before: list[str] = []
    while True:
        code, out, err = run("request", "list", "--limit", "2", "--json", *before)
        assert code == 0, err
        page = [r["id"] for r in json.loads(out)]
        seen += page
        if "more: --before" not in err:
            break
        assert err.strip() == f"more: --before {page[-1]}"
        before = ["--before", str(page[-1])]
    assert seen == sorted(ids, reverse=True)
    assert len(json.loads(run("request", "list", "--since", "1h", "--json")[1])) == 5
    assert json.loads(run("request", "list", "--since", "2999-01-01", "--json")[1]) == []
    code, _, err = run("request", "list", "--since", "soon")
    assert code == 2 and "neither a duration" in err
