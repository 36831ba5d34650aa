"""The target's full geometry (``bench.geometry.FULL``) with random weights, for cost measurements."""

from __future__ import annotations

import os
import random
import string
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path

RECIPE = Path(__file__).resolve().parent.parent / "recipes/demo/tiny_cpu.yaml"


def random_tokenizer(out_dir: Path, vocab_size: int = 1024) -> Path:
    """A SentencePiece BPE tokenizer of ``vocab_size`` pieces from seeded random letter strings."""
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    rng = random.Random(0)
    words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    text = out_dir / "text.txt"
    text.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(20000)) + "\n")
    sys.stdout.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # SentencePiece's trainer logs every merge to stderr
    try:
        create_spt_model(str(text), vocab_size, sample_size=-1, do_lower_case=False, tokenizer_type="bpe",
                         output_dir=str(out_dir / "tokenizer"))
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return out_dir / "tokenizer"


def build_full(tokenizer_dir: Path, layers: int = 24):
    """The full geometry (``layers`` encoder layers), random weights (seed 0), the given tokenizer; eval mode."""
    import torch

    from bench.geometry import FULL, with_layers
    from streamtune.config.loading import load_config
    from streamtune.model.build import build_model

    torch.manual_seed(0)
    cfg = load_config(str(RECIPE), [*with_layers(FULL, layers), "data.train=null", "data.dev=null",
                                    f"model.tokenizer_dir={tokenizer_dir}"])
    return build_model(cfg, log=lambda *_: None).eval()


def silence_joint(model, offset: float = 10.0) -> None:
    """Raise the blank logit of a random-weight joint so that greedy decoding emits (almost) no tokens.

    A random encoder's outputs hardly change from frame to frame, so no bias gives a realistic token rate (it
    flips from max_symbols tokens on every frame to none within ~0.2 of the logit); unadjusted, greedy RNN-T
    would emit max_symbols tokens on every frame, a decoding cost no trained model has. With none, the decoding
    time is a lower bound: a trained model's tokens (~3-4 per second of English) would each add one
    prediction-network step and one joint call.
    """
    import torch

    with torch.no_grad():
        model.joint.joint_net[-1].bias[model.decoding.blank_id] += offset


def tensor_bytes(obj) -> int:
    """Bytes of every tensor reachable from ``obj`` (tensors, tuples, lists, dicts, dataclasses)."""
    import torch

    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(x) for x in obj)
    if isinstance(obj, dict):
        return sum(tensor_bytes(x) for x in obj.values())
    if is_dataclass(obj):
        return sum(tensor_bytes(getattr(obj, f.name)) for f in fields(obj))
    return 0
