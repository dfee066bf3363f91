"""An operator's mistakes: each is one line on stderr and exit 1 (usage: click's
usage message and exit 2), never a traceback (real `dispatcher` subprocesses)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from .seps import run_all

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


def test_every_mistake_is_one_clear_line(
    cli_env: dict[str, str], tmp_path: Path, region: object
) -> None:
    """Each command of BAD: no traceback, a message, and exit 1 or 2 (never 0)."""
    not_utf8 = tmp_path / "tasks.jsonl"
    not_utf8.write_bytes(b"\xff\n")
    argvs = [
        [sys.executable, "-m", "dispatcher", *shlex.split(c.format(not_utf8=not_utf8))] for c in BAD
    ]
    for command, out in zip(BAD, run_all(argvs, cli_env), strict=True):
        assert out.returncode in (1, 2), (command, out.returncode, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr, (command, out.stderr)
        errors = [line for line in out.stderr.splitlines() if line.lower().startswith("error")]
        assert len(errors) == 1, (command, out.stderr)
