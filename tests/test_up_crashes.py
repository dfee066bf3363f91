"""`dispatcher up` when its parts crash: a SEP supervisor, the embedded PostgreSQL, and
`up` itself killed with -9 (real processes, a fresh home)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from .listeners import free_port
from .wire import Wire


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def _dispatcher(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _seps(up: psutil.Process) -> list[psutil.Process]:
    """The SEP processes (python -m sep) anywhere below UP."""
    return [
        p
        for p in up.children(recursive=True)
        if "sep" in p.cmdline()[1:3] and "-m" in p.cmdline()[1:2]
    ]


def _postmaster(home: Path) -> int:
    return int((home / "pgdata" / "postmaster.pid").read_text().split("\n", 1)[0])


@pytest.mark.slow
def test_up_outlives_crashes_of_its_parts_and_leaves_nothing_when_killed(tmp_path: Path) -> None:
    """kill -9 of the SEP supervisor: its SEPs end too and up's restart brings back exactly
    --seps; kill -9 of PostgreSQL: up starts it again and calls succeed; kill -9 of up:
    every process it started ends by itself."""
    port = free_port()
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env["DISPATCHER_HOME"] = str(home)
    log = (tmp_path / "up.log").open("w")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "dispatcher", "up", "--seps", "2", "--port", str(port)),
            *("--no-http", "--no-web"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    address = ["--address", f"127.0.0.1:{port}"]
    up = psutil.Process(proc.pid)
    try:
        assert _wait(lambda: "is up" in (tmp_path / "up.log").read_text(), 120)
        assert _wait(lambda: len(_seps(up)) == 2, 30)

        # 1. the supervisor dies: its SEPs do not stay behind as orphans
        (supervisor,) = [p for p in up.children() if "start" in p.cmdline()]
        old_seps = _seps(up)
        supervisor.kill()
        assert _wait(lambda: not any(p.is_running() for p in old_seps), 20), old_seps
        assert _wait(lambda: len(_seps(up)) == 2, 30)
        time.sleep(1.0)
        assert len(_seps(up)) == 2
        out = _dispatcher(env, "call", "ECHO", "--data", "1", *address)
        assert out.returncode == 0 and json.loads(out.stdout) == 1, out.stderr

        # 2. PostgreSQL dies: up starts it again (no command of ours touches it here:
        # any command would start it too), and the region serves again
        killed = _postmaster(home)
        os.kill(killed, signal.SIGKILL)

        def restarted() -> bool:
            try:
                pid = _postmaster(home)
            except (OSError, ValueError):
                return False
            return pid != killed and psutil.pid_exists(pid)

        assert _wait(restarted, 30), (tmp_path / "up.log").read_text()[-3000:]
        assert _wait(lambda: "database_restarted" in (tmp_path / "up.log").read_text(), 30)

        def serves() -> bool:
            out = _dispatcher(env, "call", "ECHO", "--data", "2", *address)
            return out.returncode == 0 and json.loads(out.stdout) == 2

        assert _wait(serves, 60), (tmp_path / "up.log").read_text()[-3000:]

        # 3. up dies: nothing it started stays behind, and up starts again on its port
        # (an idle session that the dying listener closes leaves a TIME-WAIT behind)
        token = _dispatcher(env, "token", "create", "idle").stdout.strip()
        idle = Wire(f"127.0.0.1:{port}")
        assert idle.hello(token)["type"] == "welcome"
        started = up.children(recursive=True)
        started = [p for p in started if p.name() != "postgres"]
        assert started
        up.kill()
        proc.wait(10)
        assert _wait(lambda: not any(p.is_running() for p in started), 30), [
            (p.pid, p.cmdline()) for p in started if p.is_running()
        ]
        idle.close()
        again = subprocess.Popen(
            [
                *(sys.executable, "-m", "dispatcher", "up", "--seps", "1", "--port", str(port)),
                *("--no-http", "--no-web", "--no-monitor"),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert _wait(lambda: _dispatcher(env, "call", "ECHO", *address).returncode == 0, 60)
        finally:
            again.terminate()
            _, err = again.communicate(timeout=60)
        assert "Address already in use" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        _dispatcher(env, "db", "stop")
        log.close()


def test_a_server_killed_while_it_started_is_started_again(tmp_path: Path) -> None:
    """A postmaster.pid cut short (the server killed while it wrote it, as a kill loop
    does) does not keep the embedded PostgreSQL down: the next command starts it (the
    package could not read such a file, and up retried for ever)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env["DISPATCHER_HOME"] = str(tmp_path / "home")
    assert _dispatcher(env, "db", "url").returncode == 0  # starts the server
    pid_file = tmp_path / "home" / "pgdata" / "postmaster.pid"
    whole = pid_file.read_text().splitlines()
    assert len(whole) == 8, whole
    assert _dispatcher(env, "db", "stop").returncode == 0
    for cut in (7, 6, 3):
        # a dead server's file, as far as it got: its pid names no process
        pid_file.write_text("\n".join(["999999999", *whole[1:cut]]) + "\n")
        out = _dispatcher(env, "db", "url")
        assert out.returncode == 0, out.stderr
        assert len(pid_file.read_text().splitlines()) == 8
        assert _dispatcher(env, "db", "stop").returncode == 0


@pytest.mark.parametrize("after", [0.0, 2.0], ids=["from-the-start", "as-children-start"])
def test_up_outlives_its_database_killed_while_it_starts(tmp_path: Path, after: float) -> None:
    """The embedded PostgreSQL killed again and again while up starts (its schema, its
    region, the app's transactions, then its children): up starts it and them again,
    comes up, and the region serves (it used to exit, with a traceback of pg_ctl)."""
    port = free_port()
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env["DISPATCHER_HOME"] = str(home)
    assert _dispatcher(env, "db", "url").returncode == 0  # initdb done: kills hit the start
    assert _dispatcher(env, "db", "stop").returncode == 0
    log_path = tmp_path / "up.log"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "dispatcher", "up", "--seps", "1", "--port", str(port)),
            *("--no-http", "--no-web", "--no-monitor"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("w"),
    )
    try:
        killed = 0
        time.sleep(after)
        until = time.monotonic() + 4.0  # (through the start of its children too)
        while time.monotonic() < until and proc.poll() is None:
            try:
                os.kill(_postmaster(home), signal.SIGKILL)
                killed += 1
            except (OSError, ValueError):
                pass
            time.sleep(0.15)
        assert killed >= 2, "the test never caught the server up"
        assert _wait(lambda: "is up" in log_path.read_text() or proc.poll() is not None, 120)
        assert proc.poll() is None, log_path.read_text()[-3000:]
        address = ["--address", f"127.0.0.1:{port}"]
        assert _wait(
            lambda: _dispatcher(env, "call", "ECHO", "--data", "1", *address).returncode == 0, 60
        ), log_path.read_text()[-3000:]
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        _dispatcher(env, "db", "stop")


def test_a_data_folder_whose_creation_was_cut_short_is_a_clear_error(tmp_path: Path) -> None:
    """initdb killed as it ran leaves a data folder that can never start: a command says
    so in one line, with what to do (remove it), at once; once removed, a fresh one is
    made."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env["DISPATCHER_HOME"] = str(tmp_path / "home")
    (tmp_path / "home" / "pgdata" / "base" / "1").mkdir(parents=True)  # as initdb left it
    out = _dispatcher(env, "status")
    assert out.returncode == 1, out
    assert "is incomplete" in out.stderr and "rm -r" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    shutil.rmtree(tmp_path / "home" / "pgdata")
    assert _dispatcher(env, "db", "url").returncode == 0
    assert _dispatcher(env, "db", "stop").returncode == 0
