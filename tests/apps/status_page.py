"""A test app for the status page (tests/test_status_page.py): GATE runs until the
file named by its data exists (the test decides when it ends), FAIL abends with the
message it is given."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sep import program


@program("GATE")
def gate(ctx: Any) -> Any:
    path = Path(ctx.data["gate"])
    deadline = time.monotonic() + 60
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"opened": path.exists()}


@program("FAIL")
def fail(ctx: Any) -> Any:
    raise ValueError(ctx.data["message"])
