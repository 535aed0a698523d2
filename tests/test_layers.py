"""The layering of docs/architecture.md is an import-linter contract (pyproject.toml, run by
`make check`): the tree keeps it, and an upward import breaks it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "governance", "dashboard")


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "pyproject.toml"],
        cwd=tree,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_tree(tmp_path: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_the_layers():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Layers point down KEPT" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    tree = copy_tree(tmp_path)
    # The audit writer reaching up into the run verbs: the cycle issue 11 removed.
    audit = tree / "governance" / "audit.py"
    audit.write_text(audit.read_text() + "\n\nfrom orchestrator import actions  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "Layers point down BROKEN" in result.stdout
    assert "governance.audit -> orchestrator.actions" in result.stdout


def test_a_function_local_upward_import_breaks_it_too(tmp_path):
    tree = copy_tree(tmp_path)
    gates = tree / "governance" / "gates.py"
    gates.write_text(
        gates.read_text() + "\n\ndef _dodge():\n    from orchestrator import actions  # noqa\n"
    )
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "governance.gates -> orchestrator.actions" in result.stdout


def test_the_engine_may_not_import_governance(tmp_path):
    tree = copy_tree(tmp_path)
    engine = tree / "orchestrator" / "engine.py"
    engine.write_text(engine.read_text() + "\n\nfrom governance import gates  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "The engine imports nothing from governance" in result.stdout
    assert "BROKEN" in result.stdout
