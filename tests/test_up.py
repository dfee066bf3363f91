"""`dispatcher up` as a real subprocess: starts, serves a call, and Ctrl-C stops it all."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from .listeners import free_port


def _read_until(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
    assert proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sel.select(timeout=0.5):
            if proc.poll() is not None:
                break
            continue
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"{needle!r} not seen; output:\n{''.join(seen)}")


@pytest.mark.slow
def test_up_serves_a_call_and_stops_everything(tmp_path: Path) -> None:
    """A fresh home: up starts PostgreSQL, SEPs, listener, monitor; Ctrl-C leaves nothing."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env["DISPATCHER_HOME"] = str(tmp_path / "home")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "up", "--seps", "2", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        _read_until(proc, "is up", timeout=120)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "dispatcher",
                "call",
                "ECHO",
                "--data",
                '{"x": 1}',
                "--address",
                f"127.0.0.1:{port}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"x": 1}
        postgres = [
            p
            for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] == "postgres" and str(tmp_path) in " ".join(p.info["cmdline"] or [])
        ]
        assert postgres, "the embedded PostgreSQL of this home should be running"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
        time.sleep(0.5)
        left = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert not left, left
        still = [p for p in postgres if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not still, "up must stop the PostgreSQL it started"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_up_refuses_a_busy_port(tmp_path: Path) -> None:
    """A second `up` on a port already in use says so at once (exit 2), starting nothing."""
    import socket

    from click.testing import CliRunner

    from dispatcher.cli import cli

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(
            cli, ["up", "--port", str(port)], env={"DISPATCHER_HOME": str(tmp_path / "h")}
        )
    assert result.exit_code == 2 and "is a region already up?" in result.stderr
    assert not (tmp_path / "h" / "pgdata").exists()
