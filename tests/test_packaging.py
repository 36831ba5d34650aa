"""A real, non-editable ``pip install .`` into a fresh virtual environment: the four commands land on PATH, the
recipes ship inside the package and are found by name from any directory, and only the ``streamtune``
namespace is installed (no top-level ``train`` / ``evaluate`` / ``export`` / ``data_prep`` modules)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.e2e  # the second tier: a fresh virtual environment and pip install

COMMANDS = ("streamtune-prep", "streamtune-train", "streamtune-eval", "streamtune-export")


def _source_tree(dest: Path) -> Path:
    """The files git would ship (tracked, plus new files not ignored), copied: the build sees no run outputs
    and leaves no build/ or egg-info in the checkout."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def test_pip_install_puts_commands_on_path_and_ships_recipes(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # The dependencies are this environment's (installed from constraints.txt); only streamtune is new there.
    (site / "_streamtune_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    src = _source_tree(tmp_path / "src")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                              "--no-build-isolation", "--no-index", "--quiet", str(src)],
                             capture_output=True, text=True, env=env, timeout=600)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]

    for command in COMMANDS:
        assert (venv / "bin" / command).is_file(), f"{command} not on PATH after pip install"
    installed = {p.name for p in site.iterdir()}
    assert "streamtune" in installed
    for data in ("evaluation/results.schema.json", "serve/page.html"):  # package data, beside the code that reads it
        assert (site / "streamtune" / data).is_file(), f"streamtune/{data} not installed"
    for name in ("train", "evaluate", "export", "data_prep", "recipes"):
        assert name not in installed and f"{name}.py" not in installed, f"top-level '{name}' installed"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    where = subprocess.run([str(py), "-c", "import streamtune; print(streamtune.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, env=env, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), f"imported {where}, not the installed copy"
    shown = subprocess.run(["streamtune-train", "--config", "nemotron/full_finetune", "--print-config"],
                           cwd=elsewhere, capture_output=True, text=True, env=env, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "name: nemotron_full" in shown.stdout and "init_from: ???" in shown.stdout
    # A recipe that starts from another (`base: full_finetune.yaml`) resolves inside the installed package.
    shown = subprocess.run(["streamtune-train", "--config", "nemotron/telephone", "--print-config"], cwd=elsewhere,
                           capture_output=True, text=True, env=env, timeout=300)
    assert shown.returncode == 0 and "name: nemotron_telephone" in shown.stdout and "lowpass_enabled: true" in \
        shown.stdout, shown.stderr[-2000:]
    missing = subprocess.run(["streamtune-train", "--config", "nemotron/full_finetuen", "--print-config"],
                             cwd=elsewhere, capture_output=True, text=True, env=env, timeout=300)
    assert missing.returncode == 2 and "nemotron/full_finetune" in missing.stderr, missing.stderr[-2000:]
    for command in COMMANDS:
        helped = subprocess.run([command, "--help"], cwd=elsewhere, capture_output=True, text=True, env=env,
                                timeout=300)
        assert helped.returncode == 0 and "usage:" in helped.stdout, (command, helped.stderr[-2000:])
