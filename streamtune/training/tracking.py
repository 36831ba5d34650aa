"""Experiment tracking: a CSV log always, TensorBoard and W&B when asked (W&B offline is the real client)."""

from __future__ import annotations

import os
from pathlib import Path

WANDB_MODES = ("disabled", "offline", "online")


def make_loggers(cfg, run_dir: Path, resume_step: int | None = None) -> list:
    """CSV (``logs/metrics.csv``; a resumed run writes ``logs/resume-stepN/``), TensorBoard
    (``tensorboard/``, a resumed run in ``tensorboard/resume-stepN/``) and W&B when asked.

    The W&B run id is derived from the run dir, so a resumed run continues the same W&B run.
    """
    from lightning.pytorch.loggers import CSVLogger

    loggers = []
    if cfg.logger.csv:
        version = "" if resume_step is None else f"resume-step{resume_step:07d}"
        loggers.append(CSVLogger(save_dir=str(run_dir), name="logs", version=version))
    if cfg.logger.tensorboard:
        from lightning.pytorch.loggers import TensorBoardLogger

        version = "" if resume_step is None else f"resume-step{resume_step:07d}"
        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=version,
                                         default_hp_metric=False))
    mode = cfg.logger.wandb_mode
    check_tracking(cfg)
    if mode != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        from streamtune.config.loading import resolved

        # Never let W&B wait on a network that is not there, at the start or at the end of a run (data not
        # uploaded by then stays on disk for `wandb sync`).
        os.environ.setdefault("WANDB_INIT_TIMEOUT", "30")
        os.environ.setdefault("WANDB_FINISH_TIMEOUT", str(cfg.logger.wandb_finish_timeout_s))
        os.environ.setdefault("WANDB_SILENT", "true")
        run_id = f"{cfg.run.name}-{run_dir.name}"
        logger = WandbLogger(
            project=cfg.logger.wandb_project,
            name=run_id,
            id="".join(c if c.isalnum() or c in "-_" else "-" for c in run_id),
            resume="allow",
            save_dir=str(run_dir),
            mode=mode,
        )
        logger.log_hyperparams(dict(resolved(cfg, keep_secrets=True)))  # ${oc.env:...} stays a reference
        loggers.append(logger)
    return loggers or False


def _has_wandb_credentials() -> bool:
    """An API key in the environment or in ~/.netrc for the W&B host (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        from wandb.sdk.lib.wbauth.wbnetrc import read_netrc_auth

        return bool(read_netrc_auth(host=os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")))
    except Exception:  # noqa: BLE001 - an unreadable netrc is no credential
        return False


def check_tracking(cfg) -> None:
    """What a user can get wrong about tracking, as one line before any run dir exists."""
    from streamtune.errors import UserError

    mode = cfg.logger.wandb_mode
    if mode not in WANDB_MODES:
        raise UserError(f"logger.wandb_mode must be one of {', '.join(WANDB_MODES)}, not '{mode}'")
    if mode == "online" and not _has_wandb_credentials():
        raise UserError("logger.wandb_mode=online needs W&B credentials: run `wandb login` (or set WANDB_API_KEY), "
                        "or use logger.wandb_mode=offline and `wandb sync` the run dir's wandb/ folder later")


def finish_tracking() -> None:
    """Close the W&B run (if any) so its files are complete when train.py returns.

    ``finish()`` returns once W&B's service has *handled* the run's exit, but the service may still hold the
    tail of the run file in its write buffer (seen under heavy CPU load: the last validation row missing
    from an offline run file read right after). ``teardown()`` stops the service, which closes its files.
    """
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
        wandb.teardown()
