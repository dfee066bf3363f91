"""`dispatcher token`, `call` and `connect` under click's CliRunner, against an
in-process listener and a fake SEP."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from dispatcher.cli import cli
from dispatcher.region import Region

from .fake_sep import define_transactions, fake_seps, inprocess_listener
from .listeners import free_port


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "DISPATCHER_DATABASE_URL": db_url,
        "DISPATCHER_REGION": "test",
        "DISPATCHER_HOME": str(tmp_path),
        "DISPATCHER_TOKEN": "",
        "DISPATCHER_LOG_LEVEL": "warning",
    }


@pytest.fixture
def address(region: Region, db_url: str) -> Iterator[str]:
    define_transactions(region)
    with fake_seps(db_url, "test", 1), inprocess_listener(db_url, "test") as lst:
        yield f"127.0.0.1:{lst.port}"


def run(env: dict[str, str], *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, input=input, catch_exceptions=False)


def test_token_create_stores_only_a_hash(env: dict[str, str], region: Region) -> None:
    out = run(env, "token", "create", "alice", "--allow", "ECHO", "--allow", "CHAT", "-h")
    assert out.exit_code == 0 and "--allow" in out.output
    out = run(env, "token", "create", "alice", "--allow", "ECHO", "--priority", "7")
    assert out.exit_code == 0, out.output
    token = out.stdout.strip()
    assert token.startswith("dsp_") and len(token) > 40
    row = region.conn.execute(
        "SELECT hash, allow, priority, t::text AS whole FROM dispatcher.token t "
        "WHERE name = 'alice'"
    ).fetchone()
    assert bytes(row["hash"]) == hashlib.sha256(token.encode()).digest()
    assert token not in row["whole"] and row["allow"] == ["ECHO"] and row["priority"] == 7
    listing = run(env, "token", "list")
    assert "alice" in listing.output and "ECHO" in listing.output and token not in listing.output
    bad = run(env, "token", "create", "no spaces allowed")
    assert bad.exit_code == 2 and "invalid token name" in bad.output  # a usage error


def test_call_with_the_local_token(env: dict[str, str], address: str, tmp_path: Path) -> None:
    """No token set up: the CLI makes its own, keeps it under DISPATCHER_HOME, reuses it."""
    for n in range(2):
        out = run(env, "call", "ECHO", "--data", json.dumps({"n": n}), "--address", address)
        assert out.exit_code == 0, out.output
        assert json.loads(out.stdout) == {"n": n}
    token_file = tmp_path / "tokens" / "test"
    assert token_file.read_text().startswith("dsp_")
    assert token_file.stat().st_mode & 0o777 == 0o600


def test_call_errors(env: dict[str, str], address: str, region: Region) -> None:
    out = run(env, "call", "ABEND", "--address", address)
    assert out.exit_code == 1
    err = json.loads(out.stderr)
    assert err["error"] == "abend" and err["retryable"] is False and err["request_id"]
    out = run(env, "call", "NOPE", "--address", address)
    assert out.exit_code == 1 and json.loads(out.stderr)["error"] == "unknown_transaction"
    limited = run(env, "token", "create", "echo-only", "--allow", "ECHO").stdout.strip()
    out = run({**env, "DISPATCHER_TOKEN": limited}, "call", "CHAT", "--address", address)
    assert out.exit_code == 1 and json.loads(out.stderr)["error"] == "forbidden"
    out = run({**env, "DISPATCHER_TOKEN": "dsp_wrong"}, "call", "ECHO", "--address", address)
    assert out.exit_code == 1 and json.loads(out.stderr)["error"] == "unauthorized"
    out = run(env, "call", "ECHO", "--address", f"127.0.0.1:{free_port()}")
    assert out.exit_code == 1 and "cannot reach the listener" in out.stderr


def test_call_conversational_and_with_a_key(env: dict[str, str], address: str) -> None:
    """Output goes to stderr, prompts read stdin; --key makes a repeat run once."""
    out = run(env, "call", "CHAT", "--address", address, input='Zed\n"more"\n')
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) == {"greeting": "Hello, Zed!", "second": "more"}
    assert '{"prompt": "name?"}' in out.stderr
    first = run(env, "call", "ECHO", "--data", "1", "--key", "once", "--address", address)
    again = run(env, "call", "ECHO", "--data", "2", "--key", "once", "--address", address)
    assert json.loads(first.stdout) == json.loads(again.stdout) == 1


def test_connect_interactive(env: dict[str, str], address: str) -> None:
    script = "\n".join(
        [
            'ECHO {"a": 1}',
            "",
            'ORDER "pen"',
            "3",
            "CHAT",
            "Ann",
            "two",
            "NOPE 1",
            "quit",
        ]
    )
    out = run(env, "connect", "--address", address, input=script + "\n")
    assert out.exit_code == 0, out.output
    lines: list[Any] = out.stdout.splitlines()
    assert lines[0].startswith("session ")
    text = out.stdout
    assert '{"a": 1}' in text
    assert '{"prompt": "how many?"}' in text and "(ORDER2)>" in text
    assert '{"item": "pen", "quantity": 3}' in text
    assert '< {"prompt": "name?"}' in text
    assert '{"greeting": "Hello, Ann!", "second": "two"}' in text
    assert "error unknown_transaction" in text
