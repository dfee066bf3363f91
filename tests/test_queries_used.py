"""Every named query of sql/queries is used by the program."""

from __future__ import annotations

import re
from pathlib import Path

from dispatcher.queries import QUERIES

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dispatcher", "sep", "listener")


def test_every_named_query_is_used_in_the_program() -> None:
    """Each `-- name:` query is named (as a string literal) in dispatcher/, sep/ or
    listener/: no dead SQL."""
    code = "\n".join(
        path.read_text(encoding="utf-8")
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    )
    unused = [name for name in QUERIES if not re.search(rf"""["']{re.escape(name)}["']""", code)]
    assert unused == [], f"named queries used nowhere in {', '.join(PACKAGES)}: {unused}"
