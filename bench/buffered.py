"""NeMo's buffered RNN-T streaming, re-implemented on precomputed features: the baseline cache-aware streaming is
compared with at equal latency (``bench/streaming.py``).

NeMo's ``BatchedFrameASRRNNT`` + ``speech_to_text_buffered_infer_rnnt.py``: every step encodes a whole window of
~4 s (left context + chunk + look-ahead; silence-level padding before the start and look-ahead padding after the
end, as NeMo pads), decodes all of it with stateless greedy_batch and ``preserve_alignments`` (NeMo's settings) and
keeps the tokens of the chunk's frames. Not NeMo's class itself: it reads audio files, normalises every buffer per
feature (wrong for a ``normalize: NA`` model), and its NumPy buffer copies would be charged to buffered.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

BUFFER_S = 4.0  # NeMo's default total_buffer_in_secs


@dataclass(frozen=True)
class Window:
    """A buffered-inference window in encoder frames: left context + chunk + look-ahead."""

    left: int
    chunk: int
    lookahead: int

    @property
    def frames(self) -> int:
        return self.left + self.chunk + self.lookahead

    def describe(self, frame_ms: int) -> str:
        return (f"{self.frames * frame_ms / 1000:.2f} s = {self.left * frame_ms} + {self.chunk * frame_ms} + "
                f"{self.lookahead * frame_ms} ms")


def buffered_window(chunk_frames: int, lookahead: int = 0, frame_ms: int = 80) -> Window:
    """~4 s window whose chunk + look-ahead equals ``chunk_frames``; the left context is a whole number of
    chunks (nearest to a 4 s total) so that the kept chunk sits on the model's attention-chunk grid."""
    chunk = chunk_frames - lookahead
    target = round(BUFFER_S * 1000 / frame_ms) - chunk - lookahead
    left = max(chunk_frames, round(target / chunk_frames) * chunk_frames)
    return Window(left, chunk, lookahead)


def buffer_decoding(model):
    """Greedy RNN-T as NeMo's buffered script sets it: greedy_batch, alignments kept (for the chunk's tokens)."""
    from nemo.collections.asr.parts.submodules.rnnt_decoding import RNNTBPEDecoding
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(OmegaConf.to_container(model.cfg.decoding))
    cfg.strategy, cfg.preserve_alignments, cfg.fused_batch_size = "greedy_batch", True, -1
    return RNNTBPEDecoding(decoding_cfg=cfg, decoder=model.decoder, joint=model.joint, tokenizer=model.tokenizer)


def silence_level(model) -> float:
    """NeMo's ZERO_LEVEL_SPEC_DB_VAL: the log-mel value of silence that fills the buffer before the start."""
    featurizer = model.preprocessor.featurizer
    return math.log(featurizer.log_zero_guard_value_fn(None)) if featurizer.log else 0.0


def buffered(model, enc, decoding, feats, window: Window, step_times: list, fill: float, max_steps: int = 0):
    """NeMo-style buffered RNN-T over ``feats [N, F, T]``; returns the kept tokens per stream and the step count."""
    import torch

    sub = int(enc.subsampling_factor)
    n, n_feat, total = feats.shape
    steps = math.ceil(total / (window.chunk * sub))
    # Silence before the start (NeMo's buffer starts full of it); after the end, look-ahead padding (NeMo pads
    # the audio by the delay) and the last chunk's remainder.
    pad_after = steps * window.chunk * sub - total + window.lookahead * sub
    padded = torch.cat([feats.new_full((n, n_feat, window.left * sub), fill), feats,
                        feats.new_full((n, n_feat, pad_after), fill)], dim=2)
    width = window.frames * sub
    lengths = torch.full((n,), width, dtype=torch.long, device=feats.device)
    sync = torch.cuda.synchronize if feats.is_cuda else (lambda: None)  # GPU work is asynchronous: time it whole
    blank = decoding.blank_id
    tokens: list[list[int]] = [[] for _ in range(n)]
    for step in range(min(steps, max_steps) if max_steps else steps):
        start = step * window.chunk * sub
        buffer = padded[:, :, start:start + width].contiguous()
        sync()
        t0 = time.perf_counter()
        encoded, enc_len = enc(audio_signal=buffer, length=lengths)
        sync()
        t1 = time.perf_counter()
        hyps = decoding.rnnt_decoder_predictions_tensor(encoder_output=encoded, encoded_lengths=enc_len,
                                                        return_hypotheses=True)
        sync()
        step_times.append((t1 - t0, time.perf_counter() - t1))
        for i, hyp in enumerate(hyps):  # the chunk's tokens (NeMo's middle-token merge), not timed
            for frame in hyp.alignments[window.left:window.left + window.chunk]:
                tokens[i] += [int(label) for _, label in frame if int(label) != blank]
    return tokens, steps
