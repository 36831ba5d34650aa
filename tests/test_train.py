"""train.py end to end on a tiny model: the run dir has what it promises, and .nemo round-trips."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from omegaconf import OmegaConf


def test_run_dir_contents(trained_run):
    assert (trained_run / "config.yaml").exists()
    cfg = OmegaConf.load(trained_run / "config.yaml")
    assert cfg.trainer.max_steps == 6 and cfg.run.seed == 1234
    env = json.loads((trained_run / "env.json").read_text())
    assert env["packages"]["nemo_toolkit"] and env["packages"]["torch"] and "sha" in env["git"]
    assert (trained_run / "checkpoints" / "last.ckpt").exists()
    assert (trained_run / "final.nemo").stat().st_size > 0
    rows = list(csv.DictReader(open(trained_run / "logs" / "metrics.csv")))
    losses = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
    assert losses and all(math.isfinite(x) for x in losses)  # logged, not NaN or inf
    assert any(r.get("val_wer") for r in rows), "validation ran"
    for key in ("val_wer_1120ms", "val_wer_560ms", "val_wer_160ms", "val_wer_80ms", "val_wer_mean"):
        assert any(r.get(key) for r in rows), f"{key} logged at validation"
    assert list((trained_run / "checkpoints").glob("step*-val_wer_mean*.ckpt")), "best-by-mean-WER checkpoints"
    # Cross-check: our offline decode at the default mode reproduces NeMo's own validation WER.
    for row in rows:
        if row.get("val_wer") and row.get("val_wer_1120ms"):
            assert abs(float(row["val_wer"]) - float(row["val_wer_1120ms"])) < 1e-6
    assert any(r.get("train_audio_s_per_s") for r in rows), "throughput logged"
    assert trained_run.parent.joinpath("latest").resolve() == trained_run


def test_nemo_round_trip_keeps_weights_config_and_modes(trained_run, trained_model, tmp_path):
    from streamtune.chunks import chunk_modes
    from streamtune.models import load_model

    assert type(trained_model).__name__ == "EncDecRNNTBPEModel"
    assert [m.chunk_ms for m in chunk_modes(trained_model)] == [1120, 560, 160, 80]
    assert trained_model.cfg.preprocessor.normalize == "NA"
    again = tmp_path / "again.nemo"
    trained_model.save_to(str(again))
    reloaded = load_model(again)
    a, b = trained_model.state_dict(), reloaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert OmegaConf.to_container(reloaded.cfg.encoder) == OmegaConf.to_container(trained_model.cfg.encoder)
    assert reloaded.tokenizer.vocab_size == trained_model.tokenizer.vocab_size
    # Same weights, same outputs.
    signal = torch.randn(2, 16000)
    lengths = torch.tensor([16000, 12000])
    with torch.no_grad():
        out_a = trained_model(input_signal=signal, input_signal_length=lengths)[0]
        out_b = reloaded(input_signal=signal, input_signal_length=lengths)[0]
    assert torch.equal(out_a, out_b)


def test_training_is_reproducible_from_the_seed(trained_run, tiny_overrides, tmp_path):
    """A second run with the same seed logs the same losses (run.seed honoured everywhere)."""
    from streamtune.stages import train
    from tests.conftest import DEMO_RECIPE

    overrides = [o for o in tiny_overrides if not o.startswith(("run.output_dir=", "trainer.max_steps="))]
    assert train.main(["--config", str(DEMO_RECIPE), *overrides, f"run.output_dir={tmp_path}",
                       "trainer.max_steps=3"]) == 0
    first = [r["train_loss"] for r in csv.DictReader(open(trained_run / "logs" / "metrics.csv")) if r.get("train_loss")]
    second = [r["train_loss"] for r in csv.DictReader(open(tmp_path / "tiny_cpu" / "latest" / "logs" / "metrics.csv"))
              if r.get("train_loss")]
    assert second and second == first[: len(second)]


def test_wandb_offline_run_is_written(tiny_overrides, tmp_path):
    """W&B's real client in offline mode: no network needed, run files land in the run dir."""
    from streamtune.stages import train
    from tests.conftest import DEMO_RECIPE

    overrides = [o for o in tiny_overrides if not o.startswith(("run.output_dir=", "trainer.max_steps="))]
    assert train.main(["--config", str(DEMO_RECIPE), *overrides, f"run.output_dir={tmp_path}", "trainer.max_steps=3",
                       "logger.wandb_mode=offline"]) == 0
    run_dir = (tmp_path / "tiny_cpu" / "latest").resolve()
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), "an offline W&B run with its data file"
    from tests.wandb_offline import read_offline_history

    history = read_offline_history(next(runs[0].glob("*.wandb")))
    logged = {key for row in history for key in row}
    for key in ("train_loss", "val_wer_1120ms", "val_wer_560ms", "val_wer_160ms", "val_wer_80ms", "val_wer_mean"):
        assert key in logged, f"{key} is in the W&B run"
    # The same values as the run's own CSV log.
    csv_rows = list(csv.DictReader(open(run_dir / "logs" / "metrics.csv")))
    from_csv = [float(r["val_wer_80ms"]) for r in csv_rows if r.get("val_wer_80ms")]
    from_wandb = [row["val_wer_80ms"] for row in history if "val_wer_80ms" in row]
    assert from_wandb and from_wandb == pytest.approx(from_csv)


def test_train_reads_shar_and_weighted_mixes(tiny_overrides, corpus, tmp_path):
    """data.train may be a Shar dir from `python -m data_prep ... --shar` or a weighted list of sources."""
    from streamtune.stages import train
    from streamtune.stages.data_prep.__main__ import main as data_prep
    from tests.conftest import DEMO_RECIPE

    assert data_prep(["lhotse", "--cuts", str(corpus / "cuts_train.jsonl.gz"), "--out", str(tmp_path / "prep"),
                      "--shar", "--shar-shard-size", "16"]) == 0
    shar = tmp_path / "prep" / "shar" / "train"
    overrides = [o for o in tiny_overrides if not o.startswith(("run.output_dir=", "trainer.max_steps=",
                                                                "data.train="))]
    for name, train_spec in (("shar", str(shar)),
                             ("mix", f"[[{shar},0.7],[{corpus / 'cuts_train.jsonl.gz'},0.3]]")):
        out = tmp_path / name
        assert train.main(["--config", str(DEMO_RECIPE), *overrides, f"data.train={train_spec}",
                           f"run.output_dir={out}", "trainer.max_steps=3"]) == 0
        assert (out / "tiny_cpu" / "latest" / "final.nemo").exists()


def test_bad_config_fails_before_any_run_dir_is_made(tiny_overrides, tmp_path, capsys):
    from streamtune.stages import train
    from tests.conftest import DEMO_RECIPE

    overrides = [o for o in tiny_overrides if not o.startswith("run.output_dir=")]
    for bad in ("trainer.max_steps=0", "data.train=/nowhere/cuts.jsonl.gz"):
        assert train.main(["--config", str(DEMO_RECIPE), *overrides, f"run.output_dir={tmp_path}", bad]) == 2
    err = capsys.readouterr().err
    assert "trainer.max_steps must be > 0" in err and "/nowhere/cuts.jsonl.gz' does not exist" in err
    assert not any(tmp_path.iterdir()), "nothing written, `latest` untouched"


def test_dry_run_reports_and_writes_nothing(tiny_overrides, tmp_path, capsys):
    from streamtune.stages import train
    from tests.conftest import DEMO_RECIPE

    overrides = [o for o in tiny_overrides if not o.startswith("run.output_dir=")]
    assert train.main(["--config", str(DEMO_RECIPE), *overrides, f"run.output_dir={tmp_path}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "| encoder |" in out and "trainable" in out and "joint tensor" in out and "peak RSS" in out
    assert not any(tmp_path.iterdir())
