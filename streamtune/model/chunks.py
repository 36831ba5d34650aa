"""Chunk modes: the ``att_context_size`` pairs a cache-aware encoder streams with, and what they mean in time.

A chunked_limited encoder with ``att_context_size`` ``[left, right]`` streams in chunks of ``right + 1``
encoder frames (one frame = subsampling factor x hop, 80 ms for the target model): ``[70, 13]`` is the 1120 ms
mode, ``[70, 0]`` the 80 ms one. "Chunk mode" is the one word for this everywhere in streamtune.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from streamtune.errors import UserError


@dataclass(frozen=True)
class ChunkMode:
    """One streaming mode: an ``att_context_size`` pair and what it means in time."""

    left: int
    right: int
    frame_ms: int  # one encoder frame (subsampling factor x hop)

    @property
    def att_context(self) -> list[int]:
        return [self.left, self.right]

    @property
    def chunk_frames(self) -> int:
        return self.right + 1  # chunked_limited: a chunk is right + 1 frames

    @property
    def chunk_ms(self) -> int:
        return self.chunk_frames * self.frame_ms

    def __str__(self) -> str:
        return f"{self.chunk_ms}ms[{self.left},{self.right}]"


def chunk_modes(model) -> list[ChunkMode]:
    """Every chunk mode the encoder was configured with, default (first) first."""
    enc = model.encoder
    if getattr(enc, "att_context_style", None) != "chunked_limited":
        raise UserError(
            f"the model's encoder uses att_context_style={getattr(enc, 'att_context_style', None)!r}; "
            "streamtune's streaming runner needs a cache-aware chunked_limited model"
        )
    hop_s = float(model.cfg.preprocessor.window_stride)
    frame_ms = int(round(enc.subsampling_factor * hop_s * 1000))
    return [ChunkMode(int(left), int(right), frame_ms) for left, right in enc.att_context_size_all]


def select_modes(model, chunk_ms: list[int] | None) -> list[ChunkMode]:
    """The model's chunk modes of these durations (all of them for an empty list); an error names any it lacks."""
    modes = chunk_modes(model)
    if not chunk_ms:
        return modes
    by_ms = {m.chunk_ms: m for m in modes}
    missing = [ms for ms in chunk_ms if ms not in by_ms]
    if missing:
        raise UserError(f"chunk sizes {missing} ms are not modes of this model; it has {sorted(by_ms)} ms")
    return [by_ms[ms] for ms in chunk_ms]


def mode_by_ms(model, ms: int) -> ChunkMode:
    """The model's chunk mode of ``ms`` milliseconds."""
    return select_modes(model, [ms])[0]


@contextmanager
def att_context(model, mode: ChunkMode):
    """Run the encoder in ``mode`` and restore its default afterwards."""
    enc = model.encoder
    previous = list(enc.att_context_size)
    enc.set_default_att_context_size(mode.att_context)
    enc.setup_streaming_params()
    try:
        yield enc
    finally:
        enc.set_default_att_context_size(previous)
        enc.setup_streaming_params()
