"""Import contracts (import-linter, configured in pyproject.toml): the CLI on top; the
listener and SEPs beneath it, never importing each other; the core beneath both."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the CLI layer: dispatcher.cli and `python -m dispatcher`
CLI = {"dispatcher.cli", "dispatcher.__main__"}
LINT = (
    "import sys; from importlinter.cli import lint_imports_command; "
    "sys.exit(lint_imports_command())"
)


def _contracts() -> list[dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return list(config["tool"]["importlinter"]["contracts"])


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
    """lint-imports keeps every contract of pyproject.toml."""
    out = subprocess.run(
        [sys.executable, "-c", LINT], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "broken" in out.stdout and " 0 broken" in out.stdout


def test_a_contract_can_fail(tmp_path: Path) -> None:
    """lint-imports reports a listener that imports a SEP module, even indirectly."""
    for pkg, body in {
        "listener": "from listener import helper\n",
        "sep": "",
        "dispatcher": "",
    }.items():
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(body)
    (tmp_path / "listener" / "helper.py").write_text("import sep.worker\n")
    (tmp_path / "sep" / "worker.py").write_text("")
    (tmp_path / "dispatcher" / "cli.py").write_text("")
    (tmp_path / ".importlinter").write_text(
        textwrap.dedent(
            """
            [importlinter]
            root_packages =
                dispatcher
                listener
                sep
            [importlinter:contract:layers]
            name = layers
            type = layers
            layers =
                dispatcher.cli
                listener | sep
            """
        )
    )
    out = subprocess.run(
        [sys.executable, "-c", LINT],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode != 0
    assert "listener.helper -> sep.worker" in out.stdout
