"""Run directories: ``<output_dir>/<name>/<timestamp>/`` with ``config.yaml`` and ``env.json``.

One process at a time: the first process of a launch holds an exclusive lock on its run dir (and, with
``run.resume=auto``, on the run name, so that two auto-resumers cannot pick the same run) for as long as it
lives; the kernel releases it when the process ends, however it ends. ``<name>/latest`` moves only when a run
completes; ``run.resume=auto`` finds the newest run by its checkpoints, not by that link.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

PACKAGES = ["torch", "nemo_toolkit", "lightning", "lhotse", "omegaconf", "wandb", "onnx", "onnxruntime", "sherpa-onnx",
            "numpy"]
REPO_ROOT = Path(__file__).resolve().parents[2]


def git_state(root: Path = REPO_ROOT) -> dict:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True)
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def environment() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
        "git": git_state(),
        "argv": sys.argv,
    }
    try:
        import torch

        env["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        env["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    return env


def make_run_dir(output_dir: str | Path, name: str) -> Path:
    """Create a fresh timestamped run dir (``latest`` moves to it only when the run completes)."""
    base = Path(output_dir) / name
    base.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = base / stamp
    suffix = 1
    while run_dir.exists():
        run_dir = base / f"{stamp}-{suffix}"
        suffix += 1
    run_dir.mkdir()
    return run_dir


def write_env(path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(environment(), indent=2) + "\n")
    return path


RUN_ENV = ("STREAMTUNE_RUN_DIR", "STREAMTUNE_RESUME_CKPT", "STREAMTUNE_RESUME_STEP")


def is_global_zero() -> bool:
    """Whether this is the first process of the launch (torchrun, SLURM or Lightning's launcher), or alone."""
    env = os.environ
    for var in ("RANK", "SLURM_PROCID"):
        if var in env:
            return env[var] == "0"
    return env.get("LOCAL_RANK", "0") == "0" and env.get("NODE_RANK", "0") == "0"


def forget_run_dir() -> None:
    """Drop the run dir this process published (a later train.main() in the same process starts afresh)."""
    for var in RUN_ENV:
        os.environ.pop(var, None)


def mark_latest(run_dir: Path) -> None:
    """Atomically re-point ``<name>/latest`` at a run that completed (it is never missing or half-written)."""
    latest = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, latest)


def resolve_run_dir(cfg) -> tuple[Path, Path | None, int]:
    """(run dir, checkpoint to resume from or None, its step) for this process.

    Every process of one launch must agree: the first process publishes its choice in the environment, which
    Lightning's launcher copies to the processes it starts; torchrun and SLURM processes each derive the same
    ``job-<id>`` dir from the launch's id.
    """
    from streamtune.errors import UserError
    from streamtune.training.checkpointing import find_resume_checkpoint, readable_checkpoint

    if os.environ.get("STREAMTUNE_RUN_DIR"):
        ckpt = os.environ.get("STREAMTUNE_RESUME_CKPT") or None
        return Path(os.environ["STREAMTUNE_RUN_DIR"]), Path(ckpt) if ckpt else None, int(
            os.environ.get("STREAMTUNE_RESUME_STEP", "0"))
    base = Path(cfg.run.output_dir) / cfg.run.name
    run_dir, ckpt, step = None, None, 0
    resume = cfg.run.resume
    if resume == "auto":
        runs = sorted((p for p in base.glob("*") if p.is_dir() and not p.is_symlink()),
                      key=lambda p: p.stat().st_mtime, reverse=True) if base.is_dir() else []
        found = find_resume_checkpoint(runs)
        if found:
            run_dir, ckpt, step = found
        else:
            print(f"run.resume=auto: no readable checkpoint under {base}; starting a new run", flush=True)
    elif resume:
        ckpt = Path(resume)
        info = readable_checkpoint(ckpt) if ckpt.is_file() else None
        if info is None:
            raise UserError(f"run.resume '{resume}' is not a readable checkpoint; pass a .ckpt from a run's "
                            "checkpoints/ dir, or run.resume=auto")
        step = info["global_step"]
        run_dir = ckpt.parent.parent if (ckpt.parent.parent / "config.yaml").exists() else None
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")) or 1)
    launch_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID")
    if run_dir is None and world > 1 and launch_id and launch_id != "none":
        run_dir = base / f"job-{launch_id}"
        run_dir.mkdir(parents=True, exist_ok=True)
    elif run_dir is None:
        run_dir = make_run_dir(cfg.run.output_dir, cfg.run.name) if is_global_zero() else None
        if run_dir is None:
            raise UserError("a multi-process launch needs a shared launch id (SLURM_JOB_ID or torchrun's "
                            "--rdzv-id); see docs/training.md, 'Many GPUs and nodes'")
    os.environ["STREAMTUNE_RUN_DIR"] = str(run_dir)  # children started by Lightning's launcher inherit it
    os.environ["STREAMTUNE_RESUME_CKPT"] = str(ckpt) if ckpt else ""
    os.environ["STREAMTUNE_RESUME_STEP"] = str(step)
    return run_dir, ckpt, step


_HELD: list = []  # lock files of this process, kept open (and so locked) until it exits


def hold_lock(path: Path, what: str) -> None:
    """Take an exclusive lock on ``path`` for the rest of this process, or a :class:`UserError` naming the holder."""
    import fcntl

    from streamtune.errors import UserError

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"{what} is in use by {holder}; wait for it to finish (or stop it) first") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"train.py pid {os.getpid()} on {platform.node()}")
    handle.flush()
    _HELD.append(handle)


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Temporary files of saves a killed process never finished (checkpoints, final.nemo); this process holds
    the run dir's lock, so no save of another process is in flight."""
    stale = [*run_dir.glob("checkpoints/.*.tmp-*"), *run_dir.glob(".*.tmp-*")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
