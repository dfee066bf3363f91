"""Helpers to run real listener processes in tests."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .seps import ROOT, sep_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"listener exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"listener not listening on {port}")


@contextmanager
def running_listener(db_url: str, region: str, *extra: str) -> Iterator[str]:
    """A listener process: its address."""
    with listener_process(db_url, region, *extra) as (address, _):
        yield address


@contextmanager
def listener_process(
    db_url: str, region: str, *extra: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A listener process: (its address, the process)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "listener", "--port", str(port), *extra],
        env=sep_env(db_url, region),
        cwd=ROOT,
    )
    try:
        wait_port(port, proc)
        yield f"127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
