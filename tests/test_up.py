"""`dispatcher up` as a real subprocess: starts, serves a call, and Ctrl-C stops it all."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
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
    """A fresh home: up starts PostgreSQL, SEPs, two listeners on one port, the HTTP
    front and the monitor; a call through the socket and one over HTTP are served;
    Ctrl-C leaves nothing."""
    port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env["DISPATCHER_HOME"] = str(tmp_path / "home")
    proc = subprocess.Popen(
        [
            sys.executable,
            *("-m", "dispatcher", "up", "--seps", "2", "--port", str(port)),
            *("--http-port", str(http_port), "--listeners", "2"),
            *("--web-port", str(free_port())),
        ],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        started = _read_until(proc, "is up", timeout=120)
        # each process works with its kind's database role (least privilege)
        for kind, role in [
            ("listener", "dispatcher_listener"),
            ("http", "dispatcher_listener"),
            ("monitor", "dispatcher_monitor"),
            ("web", "dispatcher_viewer"),
        ]:
            needle = f"event=database_role kind={kind} role={role}"
            if needle not in started:
                started += _read_until(proc, needle, timeout=30)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3
        listeners = [c for c in children if "--reuse-port" in c.cmdline()]
        assert len(listeners) == 2, [c.cmdline() for c in children]
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
        made = subprocess.run(
            [sys.executable, "-m", "dispatcher", "token", "create", "web"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip().split()[-1]
        answer = _http_wait(http_port, token, {"y": 2})
        assert answer["state"] == "done" and answer["result"] == {"y": 2}, answer
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


def _live_seps(db_url: str, region: str) -> list[dict[str, object]]:
    from dispatcher.database import connect
    from dispatcher.region import Region

    with connect(db_url) as conn:
        return [s for s in Region(conn, region).seps() if s["state"] != "dead"]


def _wait_seps(db_url: str, region: str, ok, timeout: float = 60) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seps = _live_seps(db_url, region)
        if ok(seps):
            return seps
        time.sleep(0.1)
    raise AssertionError(f"SEPs not as expected in {timeout} s: {_live_seps(db_url, region)}")


@pytest.mark.slow
def test_up_restarts_a_crashed_sep_but_not_the_ones_an_operator_stopped(
    db_url: str, tmp_path: Path
) -> None:
    """Under up, a crashed SEP is replaced but SEPs an operator stopped stay stopped."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env.update(
        DISPATCHER_HOME=str(tmp_path / "home"),
        DISPATCHER_DATABASE_URL=db_url,
        DISPATCHER_REGION="uptest",
    )
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "dispatcher", "up"),
            *("--seps", "2", "--port", str(port), "--no-monitor", "--no-http", "--no-web"),
        ],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")))
    reader.start()

    def seen(needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(needle in line for line in lines):
            assert time.monotonic() < deadline, f"{needle!r} not seen:\n{''.join(lines)}"
            time.sleep(0.1)

    try:
        seen("is up", timeout=120)
        first = _wait_seps(db_url, "uptest", lambda s: len(s) == 2)
        # a crash: the SEP is replaced
        os.kill(int(str(first[0]["pid"])), signal.SIGKILL)
        _wait_seps(
            db_url,
            "uptest",
            lambda s: len(s) == 2 and first[0]["id"] not in [x["id"] for x in s],
        )
        # the operator stops one SEP, then the last: neither comes back
        ids = [str(s["id"]) for s in _live_seps(db_url, "uptest")]
        for sep_id in ids:
            subprocess.run(
                [sys.executable, "-m", "dispatcher", "sep", "stop", sep_id],
                env=env,
                check=True,
                capture_output=True,
                timeout=60,
            )
        _wait_seps(db_url, "uptest", lambda s: s == [])
        time.sleep(3)  # up used to restart the SEPs ~1 s after they stopped
        assert _live_seps(db_url, "uptest") == []
        seen("seps_stopped_by_operator", timeout=10)
        assert proc.poll() is None, "up keeps running (listener) without SEPs"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)


def _http_wait(port: int, token: str, data: object) -> dict[str, object]:
    """POST ECHO to the HTTP front with Prefer: wait=30 (retrying while it starts)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 60
    while True:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/requests/ECHO",
            data=json.dumps(data).encode(),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Prefer": "wait=30",
            },
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=40) as reply:
                body: dict[str, object] = json.loads(reply.read())
                return body
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
