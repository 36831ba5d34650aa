"""The Lightning Trainer a run trains with: streamtune's callbacks, checkpoints, loggers and precision."""

from __future__ import annotations

import sys
from pathlib import Path


def check_trainer_config(cfg) -> None:
    """What a user can get wrong in the ``trainer`` section, before a run dir exists."""
    from streamtune.errors import UserError

    tcfg = cfg.trainer
    if tcfg.max_steps <= 0:
        raise UserError(f"trainer.max_steps must be > 0 (got {tcfg.max_steps}): Lhotse data is step-driven")
    if tcfg.ema_decay is not None and not 0.0 < float(tcfg.ema_decay) < 1.0:
        raise UserError(f"trainer.ema_decay must be in (0, 1), e.g. 0.999 (got {tcfg.ema_decay})")
    stop = tcfg.early_stopping
    if stop.patience is not None:
        if int(stop.patience) < 1:
            raise UserError(f"trainer.early_stopping.patience must be >= 1 validations (got {stop.patience})")
        if not cfg.data.dev:
            raise UserError("trainer.early_stopping watches the dev WER: set data.dev")
    if tcfg.max_time is not None:
        from lightning.pytorch.callbacks import Timer

        try:
            Timer(duration=tcfg.max_time)
        except Exception:  # noqa: BLE001 - Lightning raises plain errors for a bad duration string
            raise UserError(f"trainer.max_time '{tcfg.max_time}' is not a duration \"DD:HH:MM:SS\"") from None


def trainer_precision(tcfg) -> str:
    """``auto``: bf16 mixed precision on a GPU that has it, fp32 elsewhere."""
    if tcfg.precision != "auto":
        return tcfg.precision
    import torch

    gpu = tcfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


def build_trainer(cfg, run_dir: Path, resume_step: int | None = None):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

    from streamtune.config.schema import TrainerConfig
    from streamtune.training.callbacks import EMA, ChunkWER, FrozenStaysFrozen, SkipNonFinite, Throughput
    from streamtune.training.checkpointing import AtomicCheckpointIO
    from streamtune.training.resume import ExactResume, Preemption
    from streamtune.training.tracking import make_loggers

    tcfg = cfg.trainer
    ema = EMA(float(tcfg.ema_decay)) if tcfg.ema_decay is not None else None
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
    if ema is not None:
        callbacks.append(ema)  # after SkipNonFinite: it averages the weights the step left
    if cfg.data.dev:
        callbacks.append(best)
        callbacks.insert(0, ChunkWER(cfg.data.dev, batch_size=cfg.eval.batch_size, ema=ema))
    stop = tcfg.early_stopping
    if stop.patience is not None:
        callbacks.append(EarlyStopping(monitor=stop.monitor or tcfg.monitor, patience=int(stop.patience),
                                       min_delta=float(stop.min_delta), mode="min", check_on_train_epoch_end=False,
                                       verbose=False))
    if tcfg.enable_progress_bar:
        # In a log file (no terminal) every redraw is a new line: redraw less often there.
        callbacks.append(TQDMProgressBar(refresh_rate=1 if sys.stdout.isatty() else 50))
    # Any other Lightning Trainer argument the recipe sets (checked against the signature by load_config).
    from omegaconf import OmegaConf

    extra = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items()
             if k not in TrainerConfig.__dataclass_fields__}
    return pl.Trainer(**{**dict(
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
        max_time=tcfg.max_time,
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
    ), **extra})


def stop_reason(trainer) -> str:
    """Why a run ended before trainer.max_steps: early stopping or trainer.max_time."""
    from lightning.pytorch.callbacks import EarlyStopping, Timer

    for callback in trainer.callbacks:
        if isinstance(callback, EarlyStopping) and callback.wait_count >= callback.patience:
            return (f"early stopping: {callback.monitor} did not improve for {callback.patience} validations "
                    f"(best {float(callback.best_score):.4f})")
        if isinstance(callback, Timer) and callback.time_remaining() is not None and callback.time_remaining() <= 0:
            return "trainer.max_time reached"
    return "the trainer stopped"
