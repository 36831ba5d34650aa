"""Checkpoints that survive a crash mid-write, load without running code, and finding the one to resume from.

A Lightning ``.ckpt`` is a pickle: loading one with ``torch.load(weights_only=False)`` runs whatever it names.
Every ``.ckpt`` streamtune reads (resume, ``model.init_from``, Lightning's own restore through
:class:`AtomicCheckpointIO`) is loaded with ``weights_only=True`` and an allow-list of the plain data types a
checkpoint holds: tensors, numbers, strings, containers, OmegaConf configs (NeMo's model config) and numpy
arrays (RNG states of earlier releases). A checkpoint that names anything else is refused, naming it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

STEP = re.compile(r"^step(\d+)")


def _safe_globals() -> list:
    import collections
    import typing

    import numpy as np
    from omegaconf import DictConfig, ListConfig, nodes
    from omegaconf.base import ContainerMetadata, Metadata

    omegaconf = [DictConfig, ListConfig, ContainerMetadata, Metadata, nodes.AnyNode, nodes.BooleanNode,
                 nodes.BytesNode, nodes.FloatNode, nodes.IntegerNode, nodes.PathNode, nodes.StringNode]
    core = getattr(np, "_core", None) or np.core
    arrays = [np.ndarray, np.dtype, core.multiarray._reconstruct, *{type(np.dtype(t)) for t in "?bBhHiIlLqQefdgFDG"}]
    return [*omegaconf, *arrays, collections.defaultdict, collections.OrderedDict, typing.Any,
            int, float, str, bool, bytes, list, dict, tuple, set]


def load_checkpoint(path, map_location="cpu", mmap: bool = False) -> dict:
    """``torch.load`` of a ``.ckpt`` that cannot run code; a :class:`UserError` naming what a refused one needs."""
    import pickle
    import re

    import torch

    from streamtune.errors import UserError

    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        match = re.search(r"GLOBAL ([\w.]+)", str(err))
        needs = f"'{match.group(1)}'" if match else "an object of a type outside the allowed ones"
        raise UserError(f"checkpoint '{path}' is refused: loading it would have to create {needs}, which can run "
                        "code (a streamtune checkpoint holds only tensors, numbers and configs)") from None


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
