"""Train or fine-tune a cache-aware streaming FastConformer-RNNT from a recipe.

    python train.py --config recipes/demo/tiny_cpu.yaml [key=value ...]
    python train.py --config recipes/nemotron/full_finetune.yaml model.init_from=base.nemo data.train=...
    python train.py ... run.resume=auto          # continue the newest run of this name exactly

config -> seed -> run dir -> model (init_from, vocabulary, fine-tuning mode) -> data -> Trainer.fit -> final.nemo
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from streamtune.config import add_config_args, load_config, resolved, save_config
from streamtune.errors import UserError, cli_entry


def build_trainer(cfg, run_dir: Path, resume_step: int | None = None):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

    from streamtune.callbacks import ChunkWER, ExactResume, FrozenStaysFrozen, SkipNonFinite, Throughput
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
    callbacks = [ExactResume(), FrozenStaysFrozen(), Throughput(), periodic]
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


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="build the model, run one training batch, report sizes and memory, write nothing")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(OmegaConf.to_yaml(resolved(cfg, allow_missing=True)))
        return 0
    from streamtune.models import check_model_config
    from streamtune.rundir import forget_run_dir, resolve_run_dir
    from streamtune.runtime import setup_runtime

    # Validate everything a user can get wrong before a run dir (and the `latest` link) is touched.
    if cfg.trainer.max_steps <= 0:
        raise UserError(f"trainer.max_steps must be > 0 (got {cfg.trainer.max_steps}): Lhotse data is step-driven")
    check_model_config(cfg)
    setup_runtime(cfg)
    if args.dry_run:
        from streamtune.dryrun import dry_run

        print(dry_run(cfg))
        return 0
    run_dir, ckpt, step = resolve_run_dir(cfg)
    try:
        return _train(cfg, run_dir, ckpt, step)
    finally:
        forget_run_dir()


def _train(cfg, run_dir: Path, ckpt: Path | None, step: int) -> int:
    from streamtune.models import build_model, save_model
    from streamtune.rundir import is_global_zero, write_env
    from streamtune.tracking import finish_tracking

    if is_global_zero():
        save_config(cfg, run_dir / ("config.yaml" if ckpt is None else f"config.resume-step{step:07d}.yaml"))
        write_env(run_dir / "env.json")
    print(f"run dir: {run_dir}" + (f" (resuming from {ckpt.name}, step {step})" if ckpt else ""), flush=True)

    trainer = build_trainer(cfg, run_dir, resume_step=step if ckpt else None)
    notes = []
    if cfg.data.train:
        from streamtune.survey import survey_training_data

        survey = survey_training_data(cfg.data)  # what the loader will read and skip (cached: done at the check)
        notes.append(survey.summary("data.train", cfg.data.min_duration_s, cfg.data.max_duration_s))
        print(notes[-1], flush=True)
        if is_global_zero() and survey.skipped_count:
            survey.write_skipped(run_dir / "skipped.jsonl")
    model = build_model(cfg, trainer=trainer, log=lambda text: (print(text, flush=True), notes.append(text)))
    if is_global_zero() and ckpt is None:
        (run_dir / "model_setup.txt").write_text("\n".join(notes) + "\n")
    started = time.time()
    trainer.fit(model, ckpt_path=str(ckpt) if ckpt else None)
    final = run_dir / "final.nemo"
    if trainer.global_rank == 0:
        save_model(model, final)
        print(f"trained {trainer.global_step} steps in {time.time() - started:.0f} s; wrote {final}", flush=True)
    finish_tracking()
    return 0


if __name__ == "__main__":
    sys.exit(main())
