"""bench/gpu/run.sh --smoke: the GPU proof's script runs end to end on CPU at toy sizes (so that GPU time is
not spent on typos), writing every section it will write on the GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.e2e  # the second tier: the whole GPU script at toy sizes


def test_gpu_script_smoke_runs_every_section_on_cpu(trained_run, corpus, tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "bench/gpu/run.sh"), "--smoke", "--demo-model",
                           str(trained_run / "final.nemo"), "--demo-cuts", str(corpus / "cuts_test.jsonl.gz")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    results = json.loads((tmp_path / "gpu.json").read_text())
    errors = {k: v["error"][-800:] for k, v in results.items() if isinstance(v, dict) and "error" in v}
    assert done.returncode == 0 and not errors, (errors, done.stdout[-2000:])
    assert results["smoke"] is True and results["env"]["device"] == "cpu"
    train = results["train"]
    assert set(train["runs"]) == {"ours", "plain", "ours-nosync"} and train["same_batches"]
    assert train["ours_over_plain"] > 0 and "host_sync_cost" in train
    assert results["max_batch"]["largest_batch_duration_s"] >= 4
    demo = results["streaming"]["models"]["demo"]
    assert demo["fp32"]["realtime"][0]["max_n"] >= 1 and "not_run" in demo["bf16"]  # no bf16 LSTM on CPU
    md = (tmp_path / "gpu.md").read_text()
    assert "SMOKE RUN ON CPU" in md and (tmp_path / "run.log").exists()
