"""The server's ONNX Runtime backend (``--backend onnx`` / ``onnx-int8``): a bundle's exported encoder, decoder and
joiner stepped for every stream with a chunk ready, batched as the PyTorch backend batches.

Each stream is fed the way an exported encoder is fed (``streamtune.export.onnx_decoder``, "export" feeding): its
audio starts after a fixed lead of digital silence, every step takes a fixed window of the pre-encode cache and one
chunk of mel frames, and the graph drops its own fixed frames; greedy RNN-T runs over the decoder and joiner graphs
with ``max_symbols`` per frame. So each stream gets the tokens :class:`OrtStreamingDecoder` gives its audio (what
``export`` checks against PyTorch, and ``verify`` against the recorded sample), whatever the batch. ONNX Runtime
runs its kernels on every core (``threads``) and releases the GIL while it does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streamtune.errors import UserError
from streamtune.export.onnx_decoder import OrtStreamingDecoder
from streamtune.streaming.live import LiveStreams, Update


@dataclass
class _Hyp:
    """One stream's current segment under greedy RNN-T: tokens, their frames since the segment's hypothesis started,
    the frames decoded into it, and the prediction net's output and state after its last token."""

    tokens: list
    stamps: list
    frames: int
    out: np.ndarray  # [H]
    h: np.ndarray  # [L, H]
    c: np.ndarray  # [L, H]


class OrtLiveStreams(LiveStreams):
    """:class:`LiveStreams` stepping a bundle's ONNX graphs of one chunk mode (``mode_dir``: ``onnx/<ms>ms`` or
    ``onnx/<ms>ms-int8``). ``hashes``: the manifest's sha256 per file name, to load exactly the verified bytes."""

    def __init__(self, model, mode, mode_dir: Path, max_batch: int = 256, endpoint=None, threads: int = 2,
                 max_symbols: int = 10, hashes: dict[str, str] | None = None):
        super().__init__(model, mode, device="cpu", max_batch=max_batch, endpoint=endpoint)
        # The graphs, their metadata and the one-stream decoder call: export's own ONNX Runtime decoder's.
        self.ort = ort = OrtStreamingDecoder(mode_dir, max_symbols, threads, hashes)
        meta = ort.encoder.get_modelmeta().custom_metadata_map
        if int(meta["chunk_ms"]) != mode.chunk_ms or ort.pre_cache != self.geometry.pre_cache \
                or ort.shift != self.geometry.chunk:
            raise UserError(f"{mode_dir}: its encoder is for {meta['chunk_ms']} ms chunks (shift "
                            f"{ort.shift}, cache {ort.pre_cache}), not this model's {mode.chunk_ms} ms mode")
        self.pre_cache, self.shift, self.blank = ort.pre_cache, ort.shift, ort.blank
        # Export feeding: the silence before the audio (StreamingRunner.silence_frames), the first window's cache.
        self.lead_frames = self.pre_cache + self.geometry.subsampling - 1
        # Features in float64 (the preprocessor alone: a filterbank, no weights to speak of), cast to the graphs'
        # float32: computed on growing segments, they equal the whole utterance's to far below float32's rounding,
        # so a stream's tokens do not depend on how its audio arrived.
        self.model.preprocessor.double()
        self.dtype = torch.float64

    def _new_stream(self, sid: str):
        s = super()._new_stream(sid)
        s.audio = np.zeros(self.lead_frames * self.hop, dtype=np.float32)
        s.received = len(s.audio)
        s.start = self.pre_cache
        return s

    def _window(self, s):
        """The fixed window of the next step (cache + chunk; the last one ends with the stream), no clipping."""
        if s.ended and s.start >= s.frames_total:
            return None
        end = min(s.start + self.shift, s.frames_total) if s.ended else s.start + self.shift
        if s.frames_have < end:
            return None
        return s.start - self.pre_cache, end, None

    def _predict(self, tokens: np.ndarray, h: np.ndarray, c: np.ndarray):
        """The prediction net after ``tokens`` [B]: (output [B, H], h, c [L, B, H]). The exported decoder takes one
        stream at a time (its cell state's batch axis is fixed at export): it runs once per token emitted, the
        joiner (per frame) batched."""
        outs, hs, cs = [], [], []
        for j, token in enumerate(tokens.tolist()):
            out, (h_j, c_j) = self.ort._predict(token, (h[:, j:j + 1], c[:, j:j + 1]))
            outs.append(out[:, :, 0])
            hs.append(h_j)
            cs.append(c_j)
        return np.concatenate(outs), np.concatenate(hs, axis=1), np.concatenate(cs, axis=1)

    def _fresh(self, n: int) -> list[_Hyp]:
        zeros = np.zeros((self.ort.pred_layers, n, self.ort.pred_hidden), dtype=np.float32)
        out, h, c = self._predict(np.full(n, self.blank), zeros, zeros)
        return [_Hyp([], [], 0, out[j], h[:, j], c[:, j]) for j in range(n)]

    def _greedy(self, encoded: np.ndarray, lengths: list[int], hyps: list[_Hyp | None]) -> list[_Hyp]:
        """Greedy RNN-T over each stream's new frames (``encoded`` [B, D, T]), continuing its hypothesis: per
        frame, up to ``max_symbols`` tokens, the streams still emitting batched together."""
        fresh = [j for j, hyp in enumerate(hyps) if hyp is None]
        for j, hyp in zip(fresh, self._fresh(len(fresh)) if fresh else []):
            hyps[j] = hyp
        out = np.stack([hyp.out for hyp in hyps])
        h = np.stack([hyp.h for hyp in hyps], axis=1)
        c = np.stack([hyp.c for hyp in hyps], axis=1)
        n_frames = np.asarray(lengths)
        for t in range(int(n_frames.max(initial=0))):
            active = np.flatnonzero(n_frames > t)
            for _ in range(self.ort.max_symbols):
                if active.size == 0:
                    break
                logits = self.ort.joiner.run(None, dict(zip(self.ort._join_in, [encoded[active, :, t:t + 1],
                                                                        out[active][:, :, None]])))[0]
                best = logits.reshape(len(active), -1)[:, : self.blank + 1].argmax(axis=1)
                emitting = best != self.blank
                active, best = active[emitting], best[emitting]
                if active.size == 0:
                    break
                for j, k in zip(active.tolist(), best.tolist()):
                    hyps[j].tokens.append(int(k))
                    hyps[j].stamps.append(hyps[j].frames + t)
                out[active], h[:, active], c[:, active] = self._predict(best, h[:, active], c[:, active])
        for j, hyp in enumerate(hyps):
            hyp.out, hyp.h, hyp.c = out[j], h[:, j], c[:, j]
            hyp.frames += int(n_frames[j])
        return hyps

    def _step_group(self, enc, members, drop, first) -> list[Update]:
        n = len(members)
        width = max(end - ws for _, ws, end in members)
        window = np.zeros((n, members[0][0].feats.shape[0], width), dtype=np.float32)
        lengths = np.zeros(n, dtype=np.int64)
        for j, (s, ws, end) in enumerate(members):
            frames = s.feats[:, ws - s.feats_start: end - s.feats_start]
            window[j, :, : frames.shape[1]] = frames.float().numpy()
            lengths[j] = frames.shape[1]
            if s.cache is None:
                s.cache = (np.zeros(self.ort.cache_channel, dtype=np.float32),
                           np.zeros(self.ort.cache_time, dtype=np.float32), np.zeros(1, dtype=np.int64))
        caches = [np.concatenate([s.cache[k] for s, _, _ in members]) for k in range(3)]
        encoded, enc_len, channel, time_, channel_len = self.ort.encoder.run(
            None, dict(zip(self.ort._enc_in, [window, lengths, *caches])))
        hyps = self._greedy(encoded, [int(x) for x in enc_len], [s.hyp for s, _, _ in members])
        return [self._advance(s, end, (channel[j:j + 1], time_[j:j + 1], channel_len[j:j + 1]), hyps[j],
                              list(hyps[j].tokens), list(hyps[j].stamps), int(enc_len[j]), self._at_s(end))
                for j, (s, _, end) in enumerate(members)]
