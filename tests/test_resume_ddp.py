"""Exact resume after a SIGKILL mid-checkpoint, and 2-process DDP (gloo) on CPU, through the real train.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import DEMO_RECIPE, REPO, without

pytestmark = pytest.mark.e2e  # the second tier: kills, resumes and 2-process runs: each a fresh Python with NeMo

PROBE = REPO / "tests" / "train_probe.py"


# The demo recipe trains without dropout; the resume tests switch it on, so that the dropout masks' random streams
# must be restored exactly too.
DROPOUT = ["model.encoder.dropout=0.1", "model.decoder.prednet.dropout=0.1", "model.joint.jointnet.dropout=0.1"]


def run_probe(args: list[str], probe_dir: Path, **env) -> subprocess.CompletedProcess:
    probe_dir.mkdir(parents=True, exist_ok=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMTUNE_", "PROBE_"))}
    return subprocess.run([sys.executable, str(PROBE), "--config", str(DEMO_RECIPE), *args],
                          env={**clean, "PROBE_DIR": str(probe_dir), **env}, cwd=REPO,
                          capture_output=True, text=True, timeout=900)


def seen(probe_dir: Path, rank: int = 0) -> list[tuple[int, str]]:
    lines = (probe_dir / f"seen-rank{rank}.jsonl").read_text().splitlines()
    return [(row["step"], row["batch"]) for row in map(json.loads, lines)]


def test_sigkill_mid_checkpoint_then_resume_auto_is_exact(tiny_overrides, tmp_path):
    """8 steps straight vs. killed while writing step 6's checkpoint, then run.resume=auto to 8."""
    base = without(tiny_overrides, "run.output_dir", "trainer.max_steps", "trainer.val_check_interval")
    # Validation (and a best-k checkpoint) at step 4, a periodic checkpoint every 2 steps; dither and dropout on,
    # so the RNG streams matter; the 48-utterance set is ~3 batches, so the data crosses epoch boundaries.
    common = [*base, *DROPOUT, "trainer.max_steps=8", "trainer.val_check_interval=4",
              "trainer.checkpoint_every_n_steps=2"]
    straight = run_probe([*common, f"run.output_dir={tmp_path / 'straight'}"], tmp_path / "p-straight")
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = run_probe([*common, f"run.output_dir={tmp_path / 'killed'}"], tmp_path / "p-killed",
                       PROBE_KILL_IN_SAVE="6")
    assert killed.returncode == -9, "SIGKILLed while writing step 6"
    assert not (tmp_path / "killed" / "tiny_cpu" / "latest").exists(), "`latest` names completed runs only"
    (run_dir,) = [p for p in (tmp_path / "killed" / "tiny_cpu").iterdir() if p.is_dir()]
    ckpts = run_dir / "checkpoints"
    assert list(ckpts.glob(".step0000006.ckpt.tmp-*")), "the half-written file is there, under a temporary name"
    assert (ckpts / "last.ckpt").resolve().name == "step0000004.ckpt", "last still points at a whole checkpoint"

    resumed = run_probe([*common, f"run.output_dir={tmp_path / 'killed'}", "run.resume=auto"], tmp_path / "p-resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(resuming from step0000004" in resumed.stdout and ", step 4)" in resumed.stdout
    assert not list(ckpts.glob(".*.tmp-*")), "the killed save's temporary file is removed on resume"

    # The same data, batch for batch: killed run = straight steps 0-5, resumed run = straight steps 4-7.
    reference = seen(tmp_path / "p-straight")
    assert [s for s, _ in reference] == list(range(8))
    assert seen(tmp_path / "p-killed") == reference[:6]
    assert seen(tmp_path / "p-resumed") == reference[4:]
    a = torch.load(tmp_path / "p-straight" / "weights-rank0.pt")
    b = torch.load(tmp_path / "p-resumed" / "weights-rank0.pt")
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"final weights not bitwise equal: {differ[:5]} (max abs diff " \
        f"{max(float((a[k].float() - b[k].float()).abs().max()) for k in differ):.2e})"
    run_dir = (tmp_path / "killed" / "tiny_cpu" / "latest").resolve()
    assert (run_dir / "final.nemo").exists() and (run_dir / "logs" / "resume-step0000004" / "metrics.csv").exists()


def _ddp_overrides(tiny_overrides, tmp_path) -> list[str]:
    base = without(tiny_overrides, "run.output_dir", "trainer.max_steps")
    # Batches of at most 6 s: the eight batches (4 steps x 2 ranks) take at most 48 s of the corpus' ~80 s, so no
    # rank reaches the end of an epoch, where Lhotse gives every rank a copy of a cut left over when fewer remain
    # than ranks (with 20 s batches both ranks trained on one such copy at step 3: STREAMTUNE_TEST_SEED=1).
    return [*base, "trainer.max_steps=4", "trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu",
            "trainer.num_threads=1", "data.batch_duration_s=6", f"run.output_dir={tmp_path}"]


def _check_ddp(result, tmp_path) -> Path:
    """Both ranks trained steps 0-3 on disjoint batches, ended with identical weights, in one run dir."""
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = seen(tmp_path / "probe", 0), seen(tmp_path / "probe", 1)
    assert [s for s, _ in rank0] == [s for s, _ in rank1] == list(range(4))
    assert not {b for _, b in rank0} & {b for _, b in rank1}, "each rank trained on its own batches"
    w0 = torch.load(tmp_path / "probe" / "weights-rank0.pt")
    w1 = torch.load(tmp_path / "probe" / "weights-rank1.pt")
    assert all(torch.equal(w0[k], w1[k]) for k in w0), "DDP kept the replicas identical"
    runs = [p for p in (tmp_path / "tiny_cpu").iterdir() if p.is_dir() and not p.is_symlink()]
    assert len(runs) == 1 and (runs[0] / "final.nemo").exists(), "one run dir shared by both ranks"
    return runs[0]


def test_ddp_two_processes_gloo(tiny_overrides, tmp_path):
    """Lightning DDP on CPU, Lightning's own launcher: 2 processes, disjoint batches, identical weights."""
    _check_ddp(run_probe(_ddp_overrides(tiny_overrides, tmp_path), tmp_path / "probe"), tmp_path)


def test_torchrun_two_processes_gloo(tiny_overrides, tmp_path):
    """The multi-node path: torchrun starts both processes (as on each node of a cluster), Lightning joins them
    through TorchElastic's environment; both derive the same run dir from the launch id."""
    (tmp_path / "probe").mkdir()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMTUNE_", "PROBE_"))}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(PROBE),
         "--config", str(DEMO_RECIPE), *_ddp_overrides(tiny_overrides, tmp_path)],
        env={**clean, "PROBE_DIR": str(tmp_path / "probe"), "OMP_NUM_THREADS": "1"}, cwd=REPO,
        capture_output=True, text=True, timeout=900)
    run_dir = _check_ddp(result, tmp_path)
    assert run_dir.name.startswith("job-"), run_dir


def test_sigterm_mid_epoch_checkpoints_and_resume_is_exact(tiny_overrides, tmp_path):
    """A real SIGTERM from outside while training: the step in progress finishes, a checkpoint is written there,
    the process exits 143 without final.nemo or `latest`; run.resume=auto then gives the straight run's batches
    and bitwise-equal final weights."""
    import signal
    import time

    base = without(tiny_overrides, "run.output_dir", "trainer.max_steps", "trainer.val_check_interval")
    common = [*base, *DROPOUT, "trainer.max_steps=10", "trainer.val_check_interval=10",
              "trainer.checkpoint_every_n_steps=100"]
    straight = run_probe([*common, f"run.output_dir={tmp_path / 'straight'}"], tmp_path / "p-straight")
    assert straight.returncode == 0, straight.stderr[-3000:]

    probe_dir = tmp_path / "p-term"
    probe_dir.mkdir()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMTUNE_", "PROBE_"))}
    proc = subprocess.Popen([sys.executable, str(PROBE), "--config", str(DEMO_RECIPE), *common,
                             f"run.output_dir={tmp_path / 'term'}"], env={**clean, "PROBE_DIR": str(probe_dir)},
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        seen_file = probe_dir / "seen-rank0.jsonl"
        if seen_file.exists() and len(seen_file.read_text().splitlines()) >= 4:  # mid-epoch: step 4 started
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    (run_dir,) = [p for p in (tmp_path / "term" / "tiny_cpu").iterdir() if p.is_dir()]
    assert "SIGTERM: stopped after step" in out and not (run_dir / "final.nemo").exists()
    assert not (tmp_path / "term" / "tiny_cpu" / "latest").exists()
    stopped = len(seen(probe_dir))
    assert 4 <= stopped < 10 and (run_dir / "checkpoints" / f"step{stopped:07d}.ckpt").exists()

    resumed = run_probe([*common, f"run.output_dir={tmp_path / 'term'}", "run.resume=auto"], tmp_path / "p-resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = seen(tmp_path / "p-straight")
    assert seen(probe_dir) == reference[:stopped] and seen(tmp_path / "p-resumed") == reference[stopped:]
    a = torch.load(tmp_path / "p-straight" / "weights-rank0.pt")
    b = torch.load(tmp_path / "p-resumed" / "weights-rank0.pt")
    assert all(torch.equal(a[k], b[k]) for k in a), "final weights bitwise equal to the straight run's"
    assert (tmp_path / "term" / "tiny_cpu" / "latest").resolve() == run_dir
