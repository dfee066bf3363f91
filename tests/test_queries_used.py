"""Every named query of sql/queries is reached from exactly one operation of
dispatcher.gateway.ops, and nothing else in the core names a query."""

from __future__ import annotations

import ast
import inspect
import re
from collections import Counter
from pathlib import Path

from dispatcher.gateway import Op, ops
from dispatcher.queries import QUERIES

ROOT = Path(__file__).resolve().parent.parent
OPS_DIR = ROOT / "dispatcher" / "gateway" / "ops"


def _op_queries(path: Path) -> list[tuple[str, str]]:
    """(function, query) for each ``Op("query", ...)`` in the module at PATH."""
    found: list[tuple[str, str]] = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for fn in tree.body:
        if not isinstance(fn, ast.FunctionDef):
            continue
        for node in ast.walk(fn):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "Op"
            ):
                first = node.args[0] if node.args else None
                assert isinstance(first, ast.Constant) and isinstance(first.value, str), (
                    f"{path.name}:{node.lineno}: an operation names its query as a literal"
                )
                found.append((fn.name, first.value))
    return found


def _all_op_queries() -> list[tuple[str, str, str]]:
    return [
        (path.stem, fn, query)
        for path in sorted(OPS_DIR.glob("*.py"))
        for fn, query in _op_queries(path)
    ]


def test_every_named_query_has_exactly_one_operation() -> None:
    """Each `-- name:` query is the query of one operation (no dead SQL, no two
    definitions of one operation), and every operation's query exists."""
    counts = Counter(query for _, _, query in _all_op_queries())
    missing = sorted(set(QUERIES) - set(counts))
    twice = sorted(q for q, n in counts.items() if n > 1)
    unknown = sorted(set(counts) - set(QUERIES))
    assert (missing, twice, unknown) == ([], [], [])


def test_each_operation_is_named_after_its_query_and_public() -> None:
    """ops.MODULE.QUERY builds the Op of QUERY: found by name, callable from outside."""
    for module, fn, query in _all_op_queries():
        assert fn == query, f"ops.{module}.{fn} runs {query!r}"
        assert callable(getattr(getattr(ops, module), fn))


def test_operations_build_ops_without_a_connection() -> None:
    """An operation is a plain value: building one touches no database."""
    op = ops.request.enqueue("r", "ECHO", {"x": 1}, user_priority=3)
    assert isinstance(op, Op) and op.query == "enqueue"
    assert op.params["region"] == "r" and op.params["user_priority"] == 3
    sig = inspect.signature(ops.sep.claim_next)
    assert list(sig.parameters) == ["sep"]


def test_no_core_module_names_a_query_but_the_gateway() -> None:
    """In dispatcher/, only the gateway's runner reads QUERIES, and no module calls a
    raw rows("name")/row("name") or cur.execute(QUERIES[...])."""
    raw = re.compile(r"""QUERIES\[|\.rows?\(\s*["']""")
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "dispatcher").rglob("*.py"))
        if path.name != "queries.py"
        and path != ROOT / "dispatcher" / "gateway" / "runner.py"
        and raw.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_the_scanner_can_fail(tmp_path: Path) -> None:
    """The scanner sees an operation's query, and refuses a query name in a variable."""
    f = tmp_path / "m.py"
    f.write_text('def enqueue():\n    return Op("enqueue", {}, d)\n')
    assert _op_queries(f) == [("enqueue", "enqueue")]
    f.write_text("def enqueue(name):\n    return Op(name, {}, d)\n")
    try:
        _op_queries(f)
    except AssertionError:
        pass
    else:
        raise AssertionError("a query name in a variable went unnoticed")
