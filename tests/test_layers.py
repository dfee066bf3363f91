"""Import contracts (pyproject.toml [tool.import-contracts], checked by
scripts/check_imports.py): the CLI on top; the listener and SEPs beneath it, never
importing each other; the core beneath both."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the CLI layer: dispatcher.cli and `python -m dispatcher`
CLI = {"dispatcher.cli", "dispatcher.__main__"}
CHECK = str(ROOT / "scripts" / "check_imports.py")


def _contracts() -> list[dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return list(config["tool"]["import-contracts"]["contracts"])


def _core_modules() -> set[str]:
    found = set()
    for path in (ROOT / "dispatcher").iterdir():
        name = path.stem if path.suffix == ".py" else path.name
        if path.name.startswith((".", "_")) and path.name != "__main__.py":
            continue
        if path.suffix == ".py" or (path / "__init__.py").exists():
            found.add(f"dispatcher.{name}")
    return found - CLI


def test_every_core_module_is_under_the_core_contract() -> None:
    """The core contract lists every module of dispatcher/ but the CLI (a new module
    cannot escape it, and no folder is exempt)."""
    core = next(c for c in _contracts() if str(c["name"]).startswith("The core"))
    assert set(core["source_modules"]) == _core_modules()  # type: ignore[arg-type]
    assert set(core["forbidden_modules"]) >= {"dispatcher.cli", "listener", "sep"}  # type: ignore[arg-type]


def test_the_contracts_hold() -> None:
    """Every contract of pyproject.toml holds."""
    out = subprocess.run(
        [sys.executable, CHECK, str(ROOT)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert " 0 broken" in out.stdout


def test_a_contract_can_fail(tmp_path: Path) -> None:
    """A listener module that imports a SEP module, even through another module, breaks
    the layers; a core module that imports the CLI through a chain breaks its contract."""
    files = {
        "listener/__init__.py": "from listener import helper\n",
        "listener/helper.py": "def f():\n    import sep.worker\n",
        "sep/__init__.py": "",
        "sep/worker.py": "",
        "dispatcher/__init__.py": "",
        "dispatcher/core.py": "from .util import x\n",
        "dispatcher/util.py": "from .cli.run import y\n",
        "dispatcher/cli/__init__.py": "",
        "dispatcher/cli/run.py": "",
    }
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    (tmp_path / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [tool.import-contracts]
            root_packages = ["dispatcher", "listener", "sep"]

            [[tool.import-contracts.contracts]]
            name = "layers"
            type = "layers"
            layers = ["dispatcher.cli", "listener | sep"]

            [[tool.import-contracts.contracts]]
            name = "core"
            type = "forbidden"
            source_modules = ["dispatcher.core"]
            forbidden_modules = ["dispatcher.cli"]
            """
        )
    )
    out = subprocess.run(
        [sys.executable, CHECK, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "listener.helper -> sep.worker" in out.stdout
    assert "dispatcher.core -> dispatcher.util -> dispatcher.cli.run" in out.stdout
    assert "0 kept, 2 broken" in out.stdout
