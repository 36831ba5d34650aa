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

from streamtune.config.loading import add_config_args, load_config, printed_config, save_config
from streamtune.errors import cli_entry


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="build the model, run one training batch, report sizes and memory, write nothing")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(printed_config(cfg))
        return 0
    from streamtune.model.build import check_model_config
    from streamtune.model.runtime import setup_runtime
    from streamtune.training.rundir import forget_run_dir, resolve_run_dir
    from streamtune.training.tracking import check_tracking
    from streamtune.training.trainer import check_trainer_config

    # Validate everything a user can get wrong before a run dir (and the `latest` link) is touched.
    check_trainer_config(cfg)
    check_model_config(cfg)
    check_tracking(cfg)
    setup_runtime(cfg)
    if args.dry_run:
        from streamtune.training.dryrun import dry_run

        print(dry_run(cfg))
        return 0
    from streamtune.training.rundir import hold_lock, is_global_zero, remove_stale_temporaries

    if is_global_zero() and cfg.run.resume == "auto":  # two auto-resumers must not pick the same run
        hold_lock(Path(cfg.run.output_dir) / cfg.run.name / ".resume.lock", f"run '{cfg.run.name}' (run.resume=auto)")
    run_dir, ckpt, step = resolve_run_dir(cfg)
    if is_global_zero():
        hold_lock(run_dir / ".lock", f"run dir {run_dir}")
        for path in remove_stale_temporaries(run_dir):
            print(f"removed {path.name}, left by a save that never finished", flush=True)
    try:
        return _train(cfg, run_dir, ckpt, step)
    finally:
        forget_run_dir()


def _train(cfg, run_dir: Path, ckpt: Path | None, step: int) -> int:
    from streamtune.model.build import build_model, save_model
    from streamtune.training.callbacks import EMA
    from streamtune.training.resume import Preempted
    from streamtune.training.rundir import is_global_zero, mark_latest, write_env
    from streamtune.training.tracking import finish_tracking
    from streamtune.training.trainer import build_trainer, stop_reason

    if is_global_zero():
        save_config(cfg, run_dir / ("config.yaml" if ckpt is None else f"config.resume-step{step:07d}.yaml"))
        write_env(run_dir / "env.json")
    print(f"run dir: {run_dir}" + (f" (resuming from {ckpt.name}, step {step})" if ckpt else ""), flush=True)

    trainer = build_trainer(cfg, run_dir, resume_step=step if ckpt else None)
    notes = []
    if cfg.data.train:
        from streamtune.data.survey import survey_training_data

        survey = survey_training_data(cfg.data)  # what the loader will read and skip (cached: done at the check)
        notes.append(survey.summary("data.train", cfg.data.min_duration_s, cfg.data.max_duration_s))
        print(notes[-1], flush=True)
        if is_global_zero() and survey.skipped_count:
            survey.write_skipped(run_dir / "skipped.jsonl")
    model = build_model(cfg, trainer=trainer, log=lambda text: (print(text, flush=True), notes.append(text)))
    if is_global_zero() and ckpt is None:
        (run_dir / "model_setup.txt").write_text("\n".join(notes) + "\n")
    started = time.time()
    try:
        trainer.fit(model, ckpt_path=str(ckpt) if ckpt else None)
    except Preempted as stop:
        finish_tracking()
        return stop.code  # checkpoint written, no final.nemo, `latest` unchanged
    if trainer.global_step < cfg.trainer.max_steps:
        print(f"stopped at step {trainer.global_step} of {cfg.trainer.max_steps}: {stop_reason(trainer)}", flush=True)
    ema = next((c for c in trainer.callbacks if isinstance(c, EMA)), None)
    if ema is not None:
        ema.copy_to(model)  # final.nemo holds the averaged weights
    final = run_dir / "final.nemo"
    if trainer.global_rank == 0:
        save_model(model, final)
        mark_latest(run_dir)  # only a completed run becomes `latest`
        print(f"trained {trainer.global_step} steps in {time.time() - started:.0f} s; wrote {final}", flush=True)
    finish_tracking()
    return 0


if __name__ == "__main__":
    sys.exit(main())
