#!/usr/bin/env python3
"""The import contracts of pyproject.toml ([tool.import-contracts]): which packages may
import which, directly or through any chain of imports.

    python scripts/check_imports.py [PROJECT_DIR]

Reads every module of the root packages (their folders from [tool.setuptools]
package-dir), every ``import`` and ``from ... import`` in them (at any place: inside
functions and under TYPE_CHECKING too), and checks two kinds of contract:

- ``layers``: ``layers = ["a", "b | c"]``: a lower layer never imports a higher one;
  modules of one layer joined by ``|`` never import each other;
- ``forbidden``: ``source_modules`` never import ``forbidden_modules``.

A module stands for itself and its submodules. Exit code 0 when every contract holds;
1, with each broken contract and one chain of imports that breaks it, otherwise.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections import deque
from pathlib import Path
from typing import Any

Graph = dict[str, set[str]]


def _modules(root: Path, config: dict[str, Any]) -> dict[str, Path]:
    """Module name -> file, for every module of the root packages."""
    dirs = dict(config.get("tool", {}).get("setuptools", {}).get("package-dir", {}))
    found: dict[str, Path] = {}
    for package in config["tool"]["import-contracts"]["root_packages"]:
        folder = root / dirs.get(package, package.replace(".", "/"))
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """NAME, or the longest module of ours it starts with (None: not ours)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def graph(root: Path, config: dict[str, Any]) -> Graph:
    """Who imports whom, among the modules of the root packages."""
    modules = _modules(root, config)
    edges: Graph = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for target in targets:
                known = _known(target, modules)
                if known is not None and known != module:
                    edges[module].add(known)
    return edges


def _inside(module: str, names: list[str]) -> bool:
    return any(module == n or module.startswith(n + ".") for n in names)


def _chain(edges: Graph, sources: list[str], targets: list[str]) -> list[str] | None:
    """A chain of imports from a module in SOURCES to one in TARGETS, if there is one."""
    start = [m for m in edges if _inside(m, sources)]
    came: dict[str, str | None] = {m: None for m in start}
    todo = deque(start)
    while todo:
        m = todo.popleft()
        for n in sorted(edges[m]):
            if n in came:
                continue
            came[n] = m
            if _inside(n, targets):
                path = [n]
                back: str | None = m
                while back is not None:
                    path.append(back)
                    back = came[back]
                return path[::-1]
            todo.append(n)
    return None


def broken(edges: Graph, contract: dict[str, Any]) -> list[str]:
    """The chains of imports that break CONTRACT (none: it holds)."""
    pairs: list[tuple[list[str], list[str]]] = []
    if contract["type"] == "layers":
        layers = [[p.strip() for p in str(layer).split("|")] for layer in contract["layers"]]
        for i, layer in enumerate(layers):
            higher = [m for upper in layers[:i] for m in upper]
            for part in layer:
                if higher:
                    pairs.append(([part], higher))
                pairs += [([part], [other]) for other in layer if other != part]
    elif contract["type"] == "forbidden":
        pairs.append((list(contract["source_modules"]), list(contract["forbidden_modules"])))
    else:
        raise ValueError(f"unknown contract type {contract['type']!r}")
    out = []
    for sources, targets in pairs:
        found = _chain(edges, sources, targets)
        if found is not None:
            out.append(" -> ".join(found))
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    edges = graph(root, config)
    contracts = config["tool"]["import-contracts"]["contracts"]
    failed = 0
    for contract in contracts:
        chains = broken(edges, contract)
        print(f"{contract['name']}: {'BROKEN' if chains else 'kept'}")
        for c in chains:
            print(f"    {c}")
        failed += bool(chains)
    print(f"{len(contracts) - failed} kept, {failed} broken ({len(edges)} modules)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
