"""The rule of cache-aware streaming, written once: which mel frames a stream's next step reads, how many
pre-encoded frames it drops, the encoder step and the decoder step that continues the hypothesis, and which
tokens a hypothesis holds and when they were emitted. The runner (:mod:`streamtune.streaming.runner`, behind
evaluate.py and export's parity gate) and the live streams (:mod:`streamtune.streaming.live`, behind the server)
both call these functions, so their tokens cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChunkGeometry:
    """A chunk mode's geometry in mel frames: the first chunk, every later chunk, the look-back the subsampling
    needs before a chunk (``pre_cache``), and the subsampling factor."""

    first_chunk: int
    chunk: int
    pre_cache: int
    subsampling: int

    @classmethod
    def of(cls, model, enc) -> ChunkGeometry:
        """The geometry of the mode ``enc`` is set to (inside :func:`streamtune.model.chunks.att_context`)."""
        if enc.streaming_cfg is None:
            enc.setup_streaming_params()
        cfg = enc.streaming_cfg
        return cls(int(cfg.chunk_size[0]), int(cfg.chunk_size[1]), int(cfg.pre_encode_cache_size[1]),
                   int(model.encoder.subsampling_factor))

    def window(self, start: int, step: int) -> tuple[int, int]:
        """(first frame read, frame after the chunk) of the ``step``-th chunk, which starts at frame ``start``:
        up to ``pre_cache`` frames of look-back, never before the utterance's start."""
        return max(0, start - self.pre_cache), start + (self.first_chunk if step == 0 else self.chunk)

    def drop(self, start: int, window_start: int) -> int:
        """Pre-encoded frames that cover only look-back (already emitted audio): one per ``subsampling`` frames."""
        return math.ceil((start - window_start) / self.subsampling)


def sample_rate(model) -> int:
    return int(model.cfg.preprocessor.sample_rate)


def encoder_step(enc, window: torch.Tensor, window_len: torch.Tensor, cache: tuple, drop: int | None):
    """One cache-aware encoder step over a batch of windows: (encoded, lengths, the next cache as a 3-tuple)."""
    encoded, enc_len, channel, time_, channel_len = enc.cache_aware_stream_step(
        processed_signal=window, processed_signal_length=window_len, cache_last_channel=cache[0],
        cache_last_time=cache[1], cache_last_channel_len=cache[2], keep_all_outputs=True,
        drop_extra_pre_encoded=drop)
    return encoded, enc_len, (channel, time_, channel_len)


def decoder_step(model, encoded: torch.Tensor, enc_len: torch.Tensor, partial: list | None) -> list:
    """The RNN-T search over one step's encoder frames, continuing ``partial`` (None at a stream's first step)."""
    return model.decoding.rnnt_decoder_predictions_tensor(
        encoder_output=encoded, encoded_lengths=enc_len, return_hypotheses=True, partial_hypotheses=partial)


def hypothesis_tokens(hyp) -> list[int]:
    """A hypothesis' token ids (none before its first step)."""
    if hyp is None:
        return []
    seq = hyp.y_sequence
    return [int(t) for t in (seq.tolist() if torch.is_tensor(seq) else seq)]


def record_emissions(emit_s: list[float], hyp, at_s: float) -> None:
    """Tokens new in this step were available once the chunk's audio had arrived: ``at_s`` seconds in."""
    emit_s.extend([at_s] * (len(hyp.y_sequence) - len(emit_s)))



def hypothesis_stamps(hyp) -> list[int]:
    """A hypothesis' token timestamps: encoder frames counted from the first frame the hypothesis decoded (NeMo's
    label-looping search offsets a continued hypothesis' timestamps by the frames it decoded before)."""
    stamps = [] if hyp is None else hyp.timestamp
    if isinstance(stamps, dict):
        stamps = stamps.get("timestep", [])
    return [int(t) for t in (stamps.tolist() if torch.is_tensor(stamps) else stamps or [])]
