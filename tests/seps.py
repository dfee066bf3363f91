"""Helpers to run real SEP processes in tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dispatcher.database import connect
from dispatcher.processes import stop_processes
from dispatcher.region import Region

ROOT = Path(__file__).resolve().parent.parent
FINAL = ("done", "failed", "cancelled")


def sep_env(db_url: str, region: str) -> dict[str, str]:
    return {
        **os.environ,
        "DISPATCHER_DATABASE_URL": db_url,
        "DISPATCHER_REGION": region,
        "PYTHONPATH": str(ROOT),
        "DISPATCHER_LOG_LEVEL": os.environ.get("DISPATCHER_LOG_LEVEL", "warning"),
    }


def start_sep(
    db_url: str, region: str, app: str = "tests.apps.basic", *extra: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "sep", "--app", app, *extra],
        env=sep_env(db_url, region),
        cwd=ROOT,
    )


def wait_registered(db_url: str, region: str, n: int, timeout: float = 30) -> None:
    with connect(db_url) as conn:
        r = Region(conn, region)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len([s for s in r.seps() if s["state"] != "dead"]) >= n:
                return
            time.sleep(0.05)
    raise AssertionError(f"{n} SEPs did not register in {timeout} s")


@contextmanager
def running_seps(
    db_url: str, region: str, count: int, *extra: str, app: str = "tests.apps.basic"
) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [start_sep(db_url, region, app, *extra) for _ in range(count)]
    try:
        wait_registered(db_url, region, count)
        yield procs
    finally:
        stop_processes(procs, 30)


def wait_final(region: Region, request_id: int, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = region.request(request_id)
        if row["state"] in FINAL:
            return row
        time.sleep(0.01)
    raise AssertionError(f"request {request_id} not finished in {timeout} s: {row}")


def sep_start(
    db_url: str, count: int, app: str = "tests.apps.basic", *extra: str
) -> subprocess.Popen[bytes]:
    """`dispatcher sep start --app APP --count COUNT` (a supervisor) as a real process."""
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "dispatcher", "sep", "start"),
            *("--app", app, "--count", str(count), *extra),
        ],
        env=sep_env(db_url, "test"),
        cwd=ROOT,
    )


@contextmanager
def supervised(
    db_url: str, count: int = 1, app: str = "tests.apps.basic"
) -> Iterator[subprocess.Popen[bytes]]:
    """A supervisor of COUNT SEPs, registered; SIGTERM (then SIGKILL after 30 s) at the end."""
    proc = sep_start(db_url, count, app)
    try:
        wait_registered(db_url, "test", count)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_all(
    argvs: list[list[str]], env: dict[str, str], timeout: float = 120
) -> list[subprocess.CompletedProcess[str]]:
    """Run each ARGV (a whole command line) as a process, two or more at once (a
    battery of one-shot commands: their start-up is most of their time), in order."""
    from concurrent.futures import ThreadPoolExecutor

    def one(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )

    with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
        return list(pool.map(one, argvs))
