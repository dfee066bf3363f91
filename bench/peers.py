"""The peers, pgqueuer and procrastinate, when installed (pip install -e '.[bench]')."""

from __future__ import annotations

import importlib.util
from typing import Any

from .report import Report
from .server import Server


def run(server: Server, report: Report, size: dict[str, Any], workers: int) -> None:
    for name in ("pgqueuer", "procrastinate"):
        if importlib.util.find_spec(name) is None:
            report.notes.append(f"{name}: skipped (not installed: pip install -e '.[bench]')")
            print(f"  {name}: skipped, not installed", flush=True)
        else:
            report.notes.append(f"{name}: installed, but its phases are not written yet")
