"""Every named query of sql/queries is reached from exactly one operation of
dispatcher.gateway.ops, and no program module (the core, the CLI, the listener, the
SEPs) names a query or uses the legacy Region face: they run operations."""

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


# The program's packages; what each of their modules may not do (_offences).
PROGRAM = ("dispatcher", "listener", "sep")
# the one reader of QUERIES, where they are loaded, and the legacy face itself
GATEWAY_ONLY = {
    Path("dispatcher/queries.py"),
    Path("dispatcher/gateway/runner.py"),
    Path("dispatcher/region.py"),
}
RAW = re.compile(r"""QUERIES\[|\.rows?\(\s*["']""")


def _module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(rel: Path, tree: ast.Module) -> set[str]:
    """The names REL imports, as ``module`` and ``module.name`` (relative imports
    resolved; ``importlib.import_module("literal")`` counted)."""
    package = _module_name(rel).split(".")
    if rel.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.add(str(node.args[0].value))
    return found


def _offences(rel: Path, text: str) -> list[str]:
    """What module REL (its source TEXT) does that only the gateway may do."""
    found: list[str] = []
    if rel in GATEWAY_ONLY:
        return found
    if RAW.search(text):
        found.append('a query by name (QUERIES[...], .rows("..."), .row("..."))')
    names = _imported(rel, ast.parse(text))
    if "dispatcher.queries.QUERIES" in names:
        found.append("imports QUERIES")
    legacy = [n for n in names if n == "dispatcher.region" or n.startswith("dispatcher.region.")]
    if legacy:
        found.append(f"uses the legacy Region face ({', '.join(sorted(legacy))})")
    return found


def test_no_program_module_names_a_query_but_the_gateway() -> None:
    """In dispatcher/ (the CLI too), listener/ and sep/, only the gateway's runner
    reads QUERIES; no module calls a raw rows("name")/row("name"), executes
    QUERIES[...], or imports the legacy dispatcher.region (Region, AsyncRegion)."""
    offenders = {
        str(rel): found
        for package in PROGRAM
        for path in sorted((ROOT / package).rglob("*.py"))
        if (found := _offences(rel := path.relative_to(ROOT), path.read_text(encoding="utf-8")))
    }
    assert offenders == {}


def test_the_program_scan_can_fail() -> None:
    """The scan sees each way of going around the gateway, in each package."""
    cases = {
        "sep/worker.py": "from dispatcher.region import Region\n",
        "listener/server.py": "from dispatcher.region import AsyncRegion\n",
        "dispatcher/cli/sep.py": "from ..region import Region\n",
        "dispatcher/cli/up.py": "import dispatcher.region\n",
        "dispatcher/stats.py": "from .queries import QUERIES\n",
        "sep/batch.py": 'def f(r):\n    return r.rows("claim_batch", sep=1)\n',
        "sep/completion.py": "def f(r):\n    return r.row( 'sep_state', sep=1)\n",
        "listener/routing.py": 'def f(cur):\n    cur.execute(QUERIES["enqueue"])\n',
        "sep/context.py": 'import importlib\nimportlib.import_module("dispatcher.region")\n',
    }
    for rel, text in cases.items():
        assert _offences(Path(rel), text), f"{rel}: {text!r} went unnoticed"
    clean = "from dispatcher.gateway import Gateway, ops\nfrom ..queries import schema_files\n"
    assert _offences(Path("dispatcher/cli/db.py"), clean) == []
    assert _offences(Path("dispatcher/gateway/runner.py"), "from ..queries import QUERIES\n") == []


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
