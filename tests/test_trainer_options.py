"""Trainer options through the real train.py: any Lightning Trainer argument (checked against its signature),
early stopping, max_time, the throughput log (EMA weights and TensorBoard: the session's run, test_train.py)."""

from __future__ import annotations

import csv

import pytest
import torch

from tests.helpers import DEMO_RECIPE


def test_any_trainer_argument_is_checked_against_lightnings_signature(tiny_overrides, tmp_path):
    from streamtune.config.loading import load_config
    from streamtune.errors import UserError
    from streamtune.training.trainer import build_trainer

    cfg = load_config(DEMO_RECIPE, [*tiny_overrides, "trainer.limit_val_batches=2", "trainer.num_sanity_val_steps=1"])
    trainer = build_trainer(cfg, tmp_path)
    assert trainer.limit_val_batches == 2 and trainer.num_sanity_val_steps == 1
    with pytest.raises(UserError, match="unknown config key 'trainer.limit_val_batchs'.*trainer.limit_val_batches"):
        load_config(DEMO_RECIPE, ["trainer.limit_val_batchs=2"])
    with pytest.raises(UserError, match="trainer.max_epochs in the command line is set by streamtune from "
                                        "trainer.max_steps"):
        load_config(DEMO_RECIPE, ["trainer.max_epochs=3"])
    # In a recipe too.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"base: {DEMO_RECIPE}\ntrainer:\n  detect_anomaly: false\n  benchmark: false\n")
    assert load_config(recipe).trainer.benchmark is False
    recipe.write_text(f"base: {DEMO_RECIPE}\ntrainer:\n  detect_anomaly: false\n  benchmarc: false\n")
    with pytest.raises(UserError, match="trainer.benchmarc"):
        load_config(recipe)


def test_early_stopping_stops_a_run_whose_wer_stalls(train_tiny, tmp_path, capsys):
    """With a learning rate of 0 the dev WER cannot move: patience 2 stops at the third validation."""
    run = train_tiny(tmp_path, "trainer.max_steps=40", "trainer.val_check_interval=2",
                     "trainer.early_stopping.patience=2", "model.optim.lr=0.0", "model.optim.sched.min_lr=0.0")
    assert "stopped at step 6 of 40: early stopping: val_wer_mean did not improve for 2 validations" in \
        capsys.readouterr().out
    steps = [int(r["step"]) for r in csv.DictReader(open(run / "logs" / "metrics.csv")) if r.get("val_wer_mean")]
    assert len(set(steps)) == 3, steps
    assert (run / "final.nemo").exists()


def test_max_time_ends_the_run_with_a_final_model(train_tiny, tmp_path, capsys):
    run = train_tiny(tmp_path, "trainer.max_steps=100000", "trainer.val_check_interval=100000",
                     "trainer.max_time=00:00:00:02", "data.dev=null")
    assert "stopped at step" in capsys.readouterr().out
    assert (run / "final.nemo").exists()


@pytest.mark.parametrize("accumulate", [1, 2])
def test_throughput_logged_at_a_logging_step_covers_every_batch_since_the_last(tmp_path, accumulate):
    """Lightning writes only every log_every_n_steps-th step: the logged rates are those of all batches between."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger
    from omegaconf import OmegaConf

    from streamtune.training.callbacks import Throughput

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.cfg = OmegaConf.create({"sample_rate": 10})
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            return (self.w * batch[0].sum() + 1).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    lengths = [[10, 20], [30, 30], [40, 10], [50, 50], [10, 10], [20, 60]]  # samples at 10 Hz, per batch
    batches = [(torch.zeros(2, max(n)), torch.tensor(n)) for n in lengths]
    every = 3 if accumulate == 1 else 1  # a row every 3 batches, or every optimizer step of 2 batches
    group = every * accumulate
    trainer = pl.Trainer(max_steps=6 // accumulate, log_every_n_steps=every, accumulate_grad_batches=accumulate,
                         logger=CSVLogger(tmp_path, name="t"), callbacks=[Throughput()], accelerator="cpu",
                         enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(Tiny(), train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    rows = [r for r in csv.DictReader(open(next(tmp_path.glob("t/*/metrics.csv")))) if r.get("train_audio_s")]
    assert len(rows) == len(lengths) // group
    for i, row in enumerate(rows):
        batch_lengths = lengths[i * group: (i + 1) * group]
        real = sum(sum(n) for n in batch_lengths)
        padded = sum(len(n) * max(n) - sum(n) for n in batch_lengths)
        assert float(row["train_audio_s"]) == pytest.approx(real / 10 / group), "mean audio seconds per batch"
        assert float(row["train_pad_ratio"]) == pytest.approx(padded / real)
        assert float(row["train_audio_s_per_s"]) == pytest.approx(
            real / 10 / (group * float(row["train_step_s"])), rel=1e-4)


def test_nemos_preemption_callback_would_not_save_a_cpu_run():
    """Why training.resume.Preemption exists: NeMo's own callback turns itself off in a single process (no
    torch.distributed) and reads its flag on a CUDA device, so a SIGTERM on a CPU run would save nothing."""
    from nemo.utils.callbacks.preemption import PreemptionCallback

    assert not torch.distributed.is_initialized()
    nemos = PreemptionCallback(checkpoint_callback=None)
    nemos.on_train_start(trainer=None, pl_module=None)
    assert nemos.preemption_enabled is False
    nemos._interrupted = True  # what its SIGTERM handler would set, were it installed
    with pytest.raises((RuntimeError, AssertionError)):
        nemos.interrupted  # noqa: B018 - the property broadcasts on torch.cuda.current_device()
