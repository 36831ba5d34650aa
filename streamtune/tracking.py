"""Experiment tracking: a CSV log always, W&B when asked (offline by default is the real client)."""

from __future__ import annotations

import os
from pathlib import Path

WANDB_MODES = ("disabled", "offline", "online")


def make_loggers(cfg, run_dir: Path) -> list:
    from lightning.pytorch.loggers import CSVLogger

    loggers = []
    if cfg.logger.csv:
        loggers.append(CSVLogger(save_dir=str(run_dir), name="logs", version=""))
    mode = cfg.logger.wandb_mode
    if mode not in WANDB_MODES:
        from streamtune.errors import UserError

        raise UserError(f"logger.wandb_mode must be one of {', '.join(WANDB_MODES)}, not '{mode}'")
    if mode != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        from streamtune.config import resolved

        # Never let W&B wait on a network that is not there.
        os.environ.setdefault("WANDB_INIT_TIMEOUT", "30")
        os.environ.setdefault("WANDB_SILENT", "true")
        logger = WandbLogger(
            project=cfg.logger.wandb_project,
            name=f"{cfg.run.name}-{run_dir.name}",
            save_dir=str(run_dir),
            mode=mode,
        )
        logger.log_hyperparams(dict(resolved(cfg)))
        loggers.append(logger)
    return loggers or False
