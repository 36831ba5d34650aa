"""Train a cache-aware streaming FastConformer-RNNT from a recipe.

    python train.py --config recipes/demo/tiny_cpu.yaml [key=value ...]

config -> seed -> run dir -> model -> data -> Trainer.fit -> final.nemo
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from streamtune.config import add_config_args, load_config, resolved, save_config
from streamtune.errors import UserError, cli_entry


def build_trainer(cfg, run_dir: Path):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

    from streamtune.callbacks import ChunkWER, Throughput
    from streamtune.tracking import make_loggers

    tcfg = cfg.trainer
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="step{step:07d}-" + tcfg.monitor + "{" + tcfg.monitor + ":.4f}",
        auto_insert_metric_name=False,
        monitor=tcfg.monitor,
        mode="min",
        save_top_k=2,
        save_last=True,
        save_on_train_epoch_end=False,  # save after each validation, when val_wer exists
    )
    callbacks = [checkpoints, Throughput(cfg.model.sample_rate)]
    if cfg.data.dev:
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
        precision=tcfg.precision,
        val_check_interval=tcfg.val_check_interval,
        check_val_every_n_epoch=None,
        log_every_n_steps=tcfg.log_every_n_steps,
        gradient_clip_val=tcfg.gradient_clip_val,
        accumulate_grad_batches=tcfg.accumulate_grad_batches,
        enable_progress_bar=tcfg.enable_progress_bar,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # Lhotse samplers shard the data across ranks themselves
        logger=make_loggers(cfg, run_dir),
        callbacks=callbacks,
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
        print(OmegaConf.to_yaml(resolved(cfg)))
        return 0
    from streamtune.models import build_model, nemo_model_config
    from streamtune.rundir import make_run_dir, write_env
    from streamtune.runtime import setup_runtime
    from streamtune.tracking import finish_tracking

    # Validate everything a user can get wrong before a run dir (and the `latest` link) is touched.
    if cfg.trainer.max_steps <= 0:
        raise UserError(f"trainer.max_steps must be > 0 (got {cfg.trainer.max_steps}): Lhotse data is step-driven")
    nemo_model_config(cfg)
    setup_runtime(cfg)
    if args.dry_run:
        from streamtune.dryrun import dry_run

        print(dry_run(cfg))
        return 0
    run_dir = make_run_dir(cfg.run.output_dir, cfg.run.name)
    save_config(cfg, run_dir / "config.yaml")
    write_env(run_dir / "env.json")
    print(f"run dir: {run_dir}", flush=True)

    trainer = build_trainer(cfg, run_dir)
    model = build_model(cfg, trainer=trainer)
    started = time.time()
    trainer.fit(model)
    final = run_dir / "final.nemo"
    if trainer.global_rank == 0:
        model.save_to(str(final))
        print(f"trained {trainer.global_step} steps in {time.time() - started:.0f} s; wrote {final}", flush=True)
    finish_tracking()
    return 0


if __name__ == "__main__":
    sys.exit(main())
