"""Import-layer contracts: the core never imports listener or sep; listener and sep
never import each other (only the CLI and the sample app know every part)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED_EVERYWHERE = {"dispatcher/cli", "dispatcher/sample"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant):
                found.add(str(node.args[0].value).split(".")[0])
    return found


def _files(package: str) -> list[Path]:
    return [
        p
        for p in (ROOT / package).rglob("*.py")
        if not any(str(p.relative_to(ROOT)).startswith(a) for a in ALLOWED_EVERYWHERE)
    ]


def test_core_imports_neither_listener_nor_sep() -> None:
    """dispatcher (core) modules import no listener and no sep."""
    bad = {
        str(p.relative_to(ROOT)): _imports(p) & {"listener", "sep"} for p in _files("dispatcher")
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_listener_and_sep_do_not_import_each_other() -> None:
    """listener never imports sep; sep never imports listener."""
    assert [p.name for p in _files("listener") if "sep" in _imports(p)] == []
    assert [p.name for p in _files("sep") if "listener" in _imports(p)] == []


def test_contract_can_fail(tmp_path: Path) -> None:
    """The import scanner sees the imports it is meant to forbid."""
    f = tmp_path / "m.py"
    f.write_text("import sep.worker\nfrom listener.client import connect\n")
    assert _imports(f) >= {"sep", "listener"}
