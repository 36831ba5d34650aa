"""The Lightning Trainer a run trains with: streamtune's callbacks, checkpoints, loggers and precision."""

from __future__ import annotations

import sys
from pathlib import Path


def build_trainer(cfg, run_dir: Path, resume_step: int | None = None):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

    from streamtune.callbacks import ChunkWER, ExactResume, FrozenStaysFrozen, Preemption, SkipNonFinite, Throughput
    from streamtune.checkpointing import AtomicCheckpointIO
    from streamtune.runtime import trainer_precision
    from streamtune.tracking import make_loggers

    tcfg = cfg.trainer
    best = ModelCheckpoint(  # best-k by the monitored WER, after each validation
        dirpath=run_dir / "checkpoints",
        filename="step{step:07d}-" + tcfg.monitor + "{" + tcfg.monitor + ":.4f}",
        auto_insert_metric_name=False,
        monitor=tcfg.monitor,
        mode="min",
        save_top_k=tcfg.save_top_k,
        save_on_train_epoch_end=False,
        enable_version_counter=False,  # a resumed run re-validating a step rewrites its file, not a -v1 copy
    )
    periodic = ModelCheckpoint(  # the newest state every N steps; last.ckpt links to it
        dirpath=run_dir / "checkpoints",
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=tcfg.checkpoint_every_n_steps or tcfg.val_check_interval,
        save_top_k=1,
        save_last="link",
    )
    loggers = make_loggers(cfg, run_dir, resume_step)
    # Preemption after ExactResume: its checkpoint must hold the data position counted at this step's end.
    callbacks = [ExactResume(), Preemption(run_dir / "checkpoints"), FrozenStaysFrozen(), Throughput(), periodic]
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if tcfg.skip_nonfinite_steps:
        callbacks.insert(0, SkipNonFinite())
    if cfg.data.dev:
        callbacks.append(best)
        callbacks.insert(0, ChunkWER(cfg.data.dev, batch_size=cfg.eval.batch_size))
    if tcfg.enable_progress_bar:
        # In a log file (no terminal) every redraw is a new line: redraw less often there.
        callbacks.append(TQDMProgressBar(refresh_rate=1 if sys.stdout.isatty() else 50))
    return pl.Trainer(
        default_root_dir=run_dir,
        max_steps=tcfg.max_steps,
        max_epochs=-1,  # Lhotse sampling is step-driven: max_steps ends training
        # An int bound per "epoch": Shar and weighted mixes never end, and NeMo only sizes
        # iterable datasets itself when this is a float (it then calls len() on them).
        limit_train_batches=tcfg.max_steps * tcfg.accumulate_grad_batches,
        accelerator=tcfg.accelerator,
        devices=tcfg.devices,
        num_nodes=tcfg.num_nodes,
        strategy=tcfg.strategy,
        precision=trainer_precision(tcfg),
        val_check_interval=tcfg.val_check_interval,
        check_val_every_n_epoch=None,
        log_every_n_steps=tcfg.log_every_n_steps,
        gradient_clip_val=tcfg.gradient_clip_val,
        accumulate_grad_batches=tcfg.accumulate_grad_batches,
        enable_progress_bar=tcfg.enable_progress_bar,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # Lhotse samplers shard the data across ranks themselves
        logger=loggers,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_model_summary=True,
    )
