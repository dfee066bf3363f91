"""Apps side by side (issue 16, item 14): a request goes only to SEPs of the app that
declares its transaction (the capability app:MODULE), with real SEP processes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dispatcher.processes import stop_processes
from dispatcher.region import Region

from .seps import ROOT, sep_env, start_sep, wait_final, wait_registered


def _sep_start(db_url: str, app: str, cwd: Path) -> subprocess.Popen[bytes]:
    """`dispatcher sep start --app APP --count 2` run from CWD, as an operator runs it."""
    return subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "sep", "start", "--app", app, "--count", "2"],
        env=sep_env(db_url, "test"),
        cwd=cwd,
    )


@pytest.mark.slow
def test_each_apps_requests_run_only_on_its_own_seps(
    db_url: str, region: Region, tmp_path: Path
) -> None:
    """With SEPs of two apps in a region, each request runs on its own app's SEPs only."""
    shutil.copy(ROOT / "tests" / "apps" / "myapp.py", tmp_path / "myapp.py")
    supervisors = [
        _sep_start(db_url, "tests.apps.basic", ROOT),
        _sep_start(db_url, "myapp", tmp_path),  # importable only from tmp_path
    ]
    try:
        wait_registered(db_url, "test", 4)
        deadline = time.monotonic() + 30
        while {"ECHO", "MYECHO"} - {t["transid"] for t in region.transactions()}:
            assert time.monotonic() < deadline, "the apps were not synced"
            time.sleep(0.05)
        app_of = {
            s["id"]: next(c for c in s["capabilities"] if c.startswith("app:"))
            for s in region.seps()
        }
        assert sorted(app_of.values()) == ["app:myapp"] * 2 + ["app:tests.apps.basic"] * 2
        ids = []
        for i in range(24):
            ids.append(("app:tests.apps.basic", region.enqueue("ECHO", i).request_id))
            ids.append(("app:myapp", region.enqueue("MYECHO", i).request_id))
        ids += [("app:myapp", region.enqueue("MYFAIL", i).request_id) for i in range(4)]
        for app, rid in ids:
            row = wait_final(region, rid)
            assert row["state"] == "done", row["error"]
            assert app_of[row["sep_id"]] == app, (row["transid"], row["sep_id"])
        assert {t["transid"]: t["requires"] for t in region.transactions()}["MYECHO"] == [
            "app:myapp"
        ]
    finally:
        stop_processes(supervisors, 60)


def test_register_sep_with_an_app_adds_its_capability(region: Region) -> None:
    """Region.register_sep(app=M) registers the capability app:M beside the others, once."""
    row = region.register_sep("h", 1, ["gpu", "app:m"], app="m")
    assert row["capabilities"] == ["gpu", "app:m"]
    row = region.register_sep("h", 2, ["gpu"], app="pkg.mod")
    assert row["capabilities"] == ["gpu", "app:pkg.mod"]


@pytest.mark.slow
def test_a_sep_registers_the_capability_of_its_app(db_url: str, region: Region) -> None:
    """A SEP started with --app M has the capability app:M beside its own; sep list shows it."""
    proc = start_sep(db_url, "test", "tests.apps.basic", "--capability", "gpu")
    try:
        wait_registered(db_url, "test", 1)
        (row,) = region.seps()
        assert sorted(row["capabilities"]) == ["app:tests.apps.basic", "gpu"]
        out = subprocess.run(
            [sys.executable, "-m", "dispatcher", "sep", "list", "--json"],
            env=sep_env(db_url, "test"),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "app:tests.apps.basic" in out.stdout
    finally:
        stop_processes([proc], 30)
