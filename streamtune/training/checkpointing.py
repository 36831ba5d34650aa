"""Checkpoints that survive a crash mid-write, and finding the one to resume from.

Every read goes through :func:`streamtune.model.checkpoints.load_checkpoint`, which refuses a pickle that would
run code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from streamtune.model.checkpoints import load_checkpoint

STEP = re.compile(r"^step(\d+)")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file in the same directory, fsync, then ``os.replace``.

    A process killed at any moment leaves either the previous file or the complete new one under the final
    name, never a truncated checkpoint (Lightning's own save goes through a temp file in /tmp and a copy).
    """

    def load_checkpoint(self, path, map_location=None) -> dict:
        return load_checkpoint(path, map_location=map_location or "cpu")

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        import torch

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)


def checkpoint_step(path: Path) -> int | None:
    match = STEP.match(path.name)
    return int(match.group(1)) if match else None


def readable_checkpoint(path: Path) -> dict | None:
    """The checkpoint's ``global_step`` if it loads (memory-mapped, so cheap even for big files), else None."""
    from streamtune.errors import UserError

    try:
        ckpt = load_checkpoint(path, mmap=True)
        return {"global_step": int(ckpt["global_step"])} if "state_dict" in ckpt else None
    except UserError:
        raise
    except Exception:
        return None


def find_resume_checkpoint(run_dirs: list[Path]) -> tuple[Path, Path, int] | None:
    """(run dir, checkpoint, step) of the newest readable checkpoint, newest run dir first."""
    for run_dir in run_dirs:
        candidates = {}
        for path in (run_dir / "checkpoints").glob("*.ckpt"):
            real = path.resolve()
            step = checkpoint_step(real)
            if real.is_file() and step is not None:
                candidates[real] = step
        for path, _ in sorted(candidates.items(), key=lambda kv: (kv[1], kv[0].stat().st_mtime), reverse=True):
            info = readable_checkpoint(path)
            if info is not None:
                return run_dir, path, info["global_step"]
            print(f"resume: skipping unreadable checkpoint {path}", flush=True)
    return None
