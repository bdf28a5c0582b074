"""Code quality gates run with the tests: lint, strict types, and the layer contracts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.localcloud import ROOT


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff() -> None:
    done = _run("ruff", "check", "operator", "tests", "bench", "scripts/localcloud", "scripts/lib")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict() -> None:
    done = _run("mypy")
    assert done.returncode == 0, done.stdout + done.stderr


def test_layers_import_downwards_only() -> None:
    """api <- artifacts <- storage|sandbox <- reconcile <- controller|client <- cli; only the controller
    imports kopf; the reconcile core imports neither the Kubernetes client nor the controller."""
    # The venv's own executable (beside sys.executable), so that this runs outside `make` too,
    # where the venv's bin/ is not on PATH.
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.is_file(), f"{lint_imports} is missing: pip install import-linter (the test extra)"
    done = subprocess.run([str(lint_imports)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_top_level_operator_package() -> None:
    # A package named `operator` would shadow the standard library.
    assert not (ROOT / "operator" / "__init__.py").exists()
