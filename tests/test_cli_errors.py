"""An operator's mistakes: each is one line on stderr and exit 1 (usage: click's
usage message and exit 2), never a traceback (real `dispatcher` subprocesses)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .seps import ROOT

BAD = [
    "--region nosuch status",
    "--region nosuch sep list",
    "--region 'ünï' status",
    "--region '' status",
    "tx sync --app nosuchmodule",
    "tx sync --app os",
    "tx sync --app ''",
    "call ECHO --data 1 --timeout -1 --address 127.0.0.1:1",
    "call ECHO --data 1 --timeout nan --address 127.0.0.1:1",
    "status --watch nan",
    "db upgrade nosuchrev",
    "db downgrade nosuchrev",
    "tx class set big --max-active 99999999999999999999",
    "sep stop 99999999999999999999999",
    "sep pause 99999999999999999999999",
    "sep start --app dispatcher_examples.sample --poll inf",
    "sep start --app dispatcher_examples.sample --heartbeat nan",
    "sep start --app dispatcher_examples.sample --batch-window nan",
    "request show 0",
    "start ECHO --data-file {not_utf8}",
]


@pytest.mark.parametrize("command", BAD)
def test_a_mistake_is_one_clear_line(
    cli_env: dict[str, str], tmp_path: Path, region: object, command: str
) -> None:
    """No traceback, a message, and exit 1 or 2 (never 0)."""
    not_utf8 = tmp_path / "tasks.jsonl"
    not_utf8.write_bytes(b"\xff\n")
    argv = shlex.split(command.format(not_utf8=not_utf8))
    out = subprocess.run(
        [sys.executable, "-m", "dispatcher", *argv],
        env=cli_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode in (1, 2), (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1, out.stderr
