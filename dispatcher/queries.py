"""Named SQL, loaded from the ``sql/queries`` directory (shipped as ``dispatcher.sql``).

Each ``.sql`` file holds queries introduced by a ``-- name: NAME`` line; every value
is a bound parameter (``%(name)s``). ``QUERIES["enqueue"]`` is the text of a query.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path

from .resources import SQL_DIR

__all__ = ["QUERIES", "SQL_DIR", "load_queries", "schema_files"]


_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def _parse(text: str, source: str) -> dict[str, str]:
    parts = _NAME.split(text)
    out: dict[str, str] = {}
    # parts = [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in out:
            raise ValueError(f"query {name!r} defined twice in {source}")
        out[name] = body.strip()
    return out


@cache
def load_queries(directory: Path = SQL_DIR / "queries") -> Mapping[str, str]:
    queries: dict[str, str] = {}
    for path in sorted(directory.glob("*.sql")):
        for name, body in _parse(path.read_text(encoding="utf-8"), path.name).items():
            if name in queries:
                raise ValueError(f"query {name!r} defined in two files (second: {path.name})")
            queries[name] = body
    return queries


class _Queries(Mapping[str, str]):
    def __getitem__(self, name: str) -> str:
        try:
            return load_queries()[name]
        except KeyError:
            raise KeyError(f"no query named {name!r} in {SQL_DIR / 'queries'}") from None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(load_queries())

    def __len__(self) -> int:
        return len(load_queries())


QUERIES: Mapping[str, str] = _Queries()


def schema_files(subdir: str = "schema") -> list[Path]:
    """The schema scripts of ``sql/<subdir>``, in the order they apply."""
    return sorted((SQL_DIR / subdir).glob("*.sql"))
