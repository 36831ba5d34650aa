"""The import contract is declared in pyproject.toml ([tool.importlinter]) and checked by ``lint-imports``
(``make lint``): streamtune's packages are layers in pipeline order, the library imports no benchmark and no
checkout wrapper, and nothing imports in a loop. These tests run that check, show that it catches an import inside
a function, and check what it cannot express: the checkout wrappers, the package ``__init__`` files and the
packages pyproject.toml installs.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

WRAPPERS = ["train.py", "evaluate.py", "data_prep/__init__.py", "data_prep/__main__.py", "export/__init__.py",
            "export/__main__.py"]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def imported_modules(path: Path) -> list[str]:
    """Every module an import statement in ``path`` names, wherever the statement is."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
    return names


def test_the_checkout_wrappers_only_call_a_stage():
    """``python train.py``, ``python -m export`` ...: a wrapper holds no code of its own."""
    for wrapper in WRAPPERS:
        for module in imported_modules(REPO / wrapper):
            assert module.startswith("streamtune.stages."), f"{wrapper} imports {module}"


def test_every_package_init_is_a_docstring_only():
    """A package is its modules: no re-exports (an importer names the module), nothing run on import."""
    inits = sorted((REPO / "streamtune").rglob("__init__.py"))
    assert len(inits) >= 12, "the scan sees the tree"
    for init in inits:
        body = ast.parse(init.read_text(encoding="utf-8")).body
        if init.parent.name == "streamtune":  # the root also says its version
            body = [n for n in body if not (isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "__version__")]
        assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str), f"{init.relative_to(REPO)}: a docstring and nothing else"


def test_every_package_is_installed():
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "streamtune").rglob("__init__.py")}
    assert found - listed == set(), "packages pyproject.toml does not install"


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="lint-imports is installed with the dev extra on Python 3.11+")
def test_the_import_contract_is_kept_and_catches_an_import_inside_a_function(tmp_path):
    def lint(cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120)

    kept = lint(REPO)
    assert kept.returncode == 0, kept.stdout[-3000:] + kept.stderr[-3000:]
    for top in ("streamtune", "bench", "data_prep", "export"):
        shutil.copytree(REPO / top, tmp_path / top, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    text = tmp_path / "streamtune" / "data" / "text.py"
    text.write_text(text.read_text() + "\n\ndef scores():\n    from streamtune.evaluation.metrics import word_errors\n")
    broken = lint(tmp_path)
    assert broken.returncode == 1, broken.stdout[-3000:] + broken.stderr[-3000:]
    assert "streamtune.data.text -> streamtune.evaluation.metrics" in broken.stdout, broken.stdout[-3000:]
