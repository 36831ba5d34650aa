"""Loading a ``.ckpt`` without running code.

A Lightning ``.ckpt`` is a pickle: loading one with ``torch.load(weights_only=False)`` runs whatever it names.
Every ``.ckpt`` streamtune reads (resume, ``model.init_from``, Lightning's own restore through
``training.checkpointing.AtomicCheckpointIO``) is loaded with ``weights_only=True`` and an allow-list of the plain
data types a checkpoint holds: tensors, numbers, strings, containers, OmegaConf configs (NeMo's model config) and
numpy arrays (RNG states of earlier releases). A checkpoint that names anything else is refused, naming it.
"""

from __future__ import annotations

import pickle
import re


def _safe_globals() -> list:
    import collections
    import typing

    import numpy as np
    from omegaconf import DictConfig, ListConfig, nodes
    from omegaconf.base import ContainerMetadata, Metadata

    omegaconf = [DictConfig, ListConfig, ContainerMetadata, Metadata, nodes.AnyNode, nodes.BooleanNode,
                 nodes.BytesNode, nodes.FloatNode, nodes.IntegerNode, nodes.PathNode, nodes.StringNode]
    # numpy 2.4.6 pickles arrays through the private numpy._core.multiarray._reconstruct (numpy.core before 2.0);
    # torch.load's allow-list must name that very function, there is no public alias.
    core = getattr(np, "_core", None) or np.core
    arrays = [np.ndarray, np.dtype, core.multiarray._reconstruct, *{type(np.dtype(t)) for t in "?bBhHiIlLqQefdgFDG"}]
    return [*omegaconf, *arrays, collections.defaultdict, collections.OrderedDict, typing.Any,
            int, float, str, bool, bytes, list, dict, tuple, set]


def load_checkpoint(path, map_location="cpu", mmap: bool = False) -> dict:
    """``torch.load`` of a ``.ckpt`` that cannot run code; a :class:`UserError` naming what a refused one needs."""
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


def checkpoint_config(ckpt: dict, path):
    """The NeMo model config a ``.ckpt`` holds, after ``streamtune.model.archive.check_targets`` accepted it."""
    from omegaconf import OmegaConf

    from streamtune.errors import UserError
    from streamtune.model.archive import check_targets

    try:
        config = OmegaConf.create(ckpt["hyper_parameters"]["cfg"])
    except Exception as err:  # noqa: BLE001 - any shape but NeMo's
        raise UserError(f"model.init_from '{path}' is not a NeMo Lightning checkpoint: {err}") from None
    check_targets(config, f"model.init_from '{path}'")
    return config
