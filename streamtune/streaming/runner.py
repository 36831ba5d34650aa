"""The one streaming runner: cache-aware, chunk by chunk, many utterances as concurrent streams.

It serves ``evaluate.py``, ``export parity`` and the benchmarks. For each chunk
mode it decodes a batch of utterances two ways:

* ``offline``: the whole utterance through the encoder with the mode's
  ``att_context_size`` mask, then the RNN-T search;
* ``streaming``: mel frames fed chunk by chunk through
  ``encoder.cache_aware_stream_step`` with the attention / convolution caches
  carried between steps, greedy RNN-T hypotheses carried across chunks (a beam
  search, which NeMo cannot continue across chunks, runs once over the streamed
  encoder output at the end: see ``streamtune.streaming.decoding``).

Features are computed once per utterance (``normalize: "NA"``, no dither in
eval mode), so the two paths see identical features and differ only in how the
encoder is run.

One deliberate difference from NeMo's ``CacheAwareStreamingAudioBuffer``: the
pre-encode cache (the 9 mel frames the causal 8x subsampling needs from the
past) is never filled with zeros from *before* the utterance start. NeMo zero-
fills it, which for the 80 ms mode (first chunk = 1 mel frame) feeds the
subsampling convolutions 8 zero mel frames whose intermediate activations are
not the zero padding the offline convolutions see. We clip the window at the
utterance start and drop exactly the pre-encoded frames already emitted,
which makes streaming equal offline in every mode. That rule (windows, drops, the encoder and decoder steps,
tokens and their emission times) is ``streamtune.streaming.chunking``, which the live streams use too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from streamtune.model.chunks import ChunkMode, att_context
from streamtune.streaming.chunking import (
    ChunkGeometry,
    decoder_step,
    encoder_step,
    hypothesis_stamps,
    hypothesis_tokens,
    record_emissions,
    sample_rate,
)
from streamtune.streaming.endpoint import Turns, eou_id

FEEDINGS = ("exact", "export")


@dataclass(frozen=True)
class StepTiming:
    """One streaming step: its index in the batch, the streams it served, and its wall time split into the
    encoder step (caches in and out) and the greedy RNN-T decoding of the step's frames."""

    step: int
    streams: int
    encoder_s: float
    decoder_s: float


@dataclass
class DecodeResult:
    """Per-utterance outputs of one decoding pass, in input order."""

    tokens: list[list[int]]
    texts: list[str]
    # Encoder outputs [T, D] per utterance (kept when asked, for parity checks).
    encoded: list[torch.Tensor] | None = None
    # Streaming only: number of encoder steps run per batch.
    steps: list[int] = field(default_factory=list)
    # Streaming only: wall time of every step (encoder step + greedy RNN-T, all streams of the batch), seconds,
    # with the number of streams that step served.
    step_times: list[float] = field(default_factory=list)
    step_streams: list[int] = field(default_factory=list)
    # Streaming only: per utterance, per token, the audio time (s) at the end of the chunk that emitted it:
    # the earliest moment a server could show the token (compute time not included).
    emit_s: list[list[float]] | None = None
    # Per utterance, per token: the encoder frame it was emitted at (NeMo's hypothesis timestamps).
    frames: list[list[int]] | None = None
    # Per utterance, per token: NeMo's token confidence, when the decoding computes it.
    token_confidence: list[list[float] | None] | None = None
    # Streaming with endpointing only: per utterance, its segments (streamtune.streaming.endpoint.Segment); the
    # lists above then hold the segments' tokens end to end (frames counted from the utterance's start).
    segments: list[list] | None = None


class StreamingRunner:
    """Decode utterances offline or cache-aware streaming with a NeMo RNN-T model.

    ``batch_size`` utterances are decoded together (as concurrent streams in
    streaming mode); results do not depend on it.
    """

    def __init__(self, model, batch_size: int = 8, device: str | torch.device = "cpu",
                 zero_fill_pre_cache: bool = False,
                 feeding: str = "exact", decoding=None):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if feeding not in FEEDINGS:
            raise ValueError(f"feeding must be one of {FEEDINGS}")
        # "exact": windows clipped at the utterance start (streaming == offline). "export": what an exported
        # encoder with a fixed pre-encode cache does (see streamtune/export/onnx_decoder.py): the audio starts with
        # `silence_frames()` frames of digital silence, every window is cache + chunk frames, and the graph
        # drops its fixed `drop_extra_pre_encoded` frames each step.
        self.feeding = feeding
        # True reproduces NeMo's CacheAwareStreamingAudioBuffer (zero mel frames before the start);
        # kept to measure what our clipping fixes, never the default.
        self.zero_fill_pre_cache = zero_fill_pre_cache
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.subsampling = int(model.encoder.subsampling_factor)
        if decoding is not None:  # a streamtune.streaming.decoding.Decoding; None keeps the model's own decoding
            from streamtune.streaming.decoding import apply_decoding

            apply_decoding(model, decoding)
        # Whether the search continues its hypotheses chunk by chunk (greedy) or runs once at the end (beam).
        self.carries = str(model.cfg.decoding.get("strategy", "greedy_batch")).startswith("greedy")
        self.eou = eou_id(model.tokenizer)  # a turn-taking model's end-of-turn token: never part of a text

    # ----- features -------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, audio: np.ndarray) -> torch.Tensor:
        """Mel features ``[F, T]`` of one 16 kHz mono utterance (computed alone, so batch-independent)."""
        signal = torch.as_tensor(audio, dtype=torch.float32, device=self.device).reshape(1, -1)
        if self.feeding == "export":
            signal = torch.nn.functional.pad(signal, (self.silence_samples(), 0))
        length = torch.tensor([signal.shape[1]], device=self.device)
        feats, feat_len = self.model.preprocessor(input_signal=signal, length=length)
        return feats[0, :, : int(feat_len[0])]

    def pre_cache_frames(self) -> int:
        return ChunkGeometry.of(self.model, self.model.encoder).pre_cache

    def hop_samples(self) -> int:
        return int(self.model.preprocessor.featurizer.hop_length)

    def silence_frames(self) -> int:
        """Frames of silence put before the audio in ``export`` feeding.

        ``pre_cache + subsampling - 1`` (16 for the 9-frame cache and 8x subsampling) puts every fixed window
        on exactly the frames exact streaming uses from its second step on, and makes the first window end
        where exact streaming's first chunk ends: the subsampled grid is the offline one, and only the first
        step's look-back differs (silence instead of the convolutions' zero padding). One frame less or more
        shifts the grid against the one the model was trained on (measured: WER doubled on the demo).
        """
        return self.pre_cache_frames() + self.subsampling - 1

    def silence_samples(self) -> int:
        return self.silence_frames() * self.hop_samples()

    @staticmethod
    def _pad(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([f.shape[1] for f in feats], device=feats[0].device)
        batch = feats[0].new_zeros(len(feats), feats[0].shape[0], int(lengths.max()))
        for i, f in enumerate(feats):
            batch[i, :, : f.shape[1]] = f
        return batch, lengths

    def _batches(self, n: int):
        for start in range(0, n, self.batch_size):
            yield list(range(start, min(n, start + self.batch_size)))

    def texts(self, tokens: list[list[int]]) -> list[str]:
        """Token ids -> text, per utterance; a model's end-of-turn token (``<EOU>``) is not text."""
        if self.eou is not None:
            tokens = [[t for t in toks if t != self.eou] for toks in tokens]
        return [self.model.tokenizer.ids_to_text(t) if t else "" for t in tokens]

    @staticmethod
    def _frame_list(hyp) -> list[int]:
        stamps = hyp.timestamp
        if isinstance(stamps, dict):
            stamps = stamps.get("timestep", [])
        if stamps is None:
            return []
        return [int(t) for t in (stamps.tolist() if hasattr(stamps, "tolist") else stamps)]

    @staticmethod
    def _confidence_list(hyp) -> list[float] | None:
        conf = getattr(hyp, "token_confidence", None)
        if not conf:
            return None
        return [float(c.item() if torch.is_tensor(c) else c) for c in conf]

    def frame_s(self) -> float:
        """Seconds of audio per encoder frame (10 ms mel hop x subsampling: 80 ms)."""
        return self.hop_samples() * self.subsampling / float(sample_rate(self.model))

    # ----- offline ---------------------------------------------------------------------------
    @torch.no_grad()
    def offline(self, mode: ChunkMode, feats: list[torch.Tensor], keep_encoded: bool = False) -> DecodeResult:
        tokens: list[list[int]] = [[] for _ in feats]
        frames: list[list[int]] = [[] for _ in feats]
        confidence: list[list[float] | None] = [None] * len(feats)
        encoded_out: list[torch.Tensor | None] = [None] * len(feats)
        with att_context(self.model, mode) as enc:
            for idx in self._batches(len(feats)):
                batch, lengths = self._pad([feats[i] for i in idx])
                encoded, enc_len = enc(audio_signal=batch, length=lengths)
                hyps = decoder_step(self.model, encoded, enc_len, None)
                for j, i in enumerate(idx):
                    tokens[i] = hypothesis_tokens(hyps[j])
                    frames[i] = self._frame_list(hyps[j])
                    confidence[i] = self._confidence_list(hyps[j])
                    if keep_encoded:
                        encoded_out[i] = encoded[j, :, : int(enc_len[j])].T.cpu()
        return DecodeResult(tokens, self.texts(tokens), encoded_out if keep_encoded else None, frames=frames,
                            token_confidence=confidence)

    # ----- streaming -------------------------------------------------------------------------
    @torch.no_grad()
    def streaming(self, mode: ChunkMode, feats: list[torch.Tensor], keep_encoded: bool = False,
                  on_step: Callable[[StepTiming], bool | None] | None = None, endpoint=None) -> DecodeResult:
        """Decode ``feats`` chunk by chunk, ``batch_size`` utterances at a time as concurrent streams.

        ``on_step`` is called after every step (encoder step + greedy RNN-T for all streams of the batch) with its
        :class:`StepTiming`; returning True ends that batch early (benchmarks time the real loop through it).
        ``endpoint`` (a :class:`streamtune.streaming.endpoint.EndpointRules`) cuts each stream into segments as the
        server's live streams do: at each endpoint the stream's decoder is reset, its encoder caches carried on.
        """
        if endpoint is not None and not self.carries:
            raise ValueError("endpointing needs a search that continues chunk by chunk (greedy decoding)")
        eou = endpoint.token_id(self.model.tokenizer) if endpoint is not None else None
        tokens: list[list[int]] = [[] for _ in feats]
        emit_s: list[list[float]] = [[] for _ in feats]
        frames: list[list[int]] = [[] for _ in feats]
        confidence: list[list[float] | None] = [None] * len(feats)
        encoded_out: list[torch.Tensor | None] = [None] * len(feats)
        out = DecodeResult(tokens, [], None, emit_s=emit_s, frames=frames, token_confidence=confidence)
        if endpoint is not None:
            out.segments = [[] for _ in feats]
        with att_context(self.model, mode) as enc:
            for idx in self._batches(len(feats)):
                # Longest first, so the streams still running are always a prefix of the batch.
                idx = sorted(idx, key=lambda i: -feats[i].shape[1])
                turns = None if endpoint is None else [Turns(endpoint, self.frame_s(), eou) for _ in idx]
                hyps, emits, encs, times, streams = self._stream_batch(enc, [feats[i] for i in idx], keep_encoded,
                                                                       on_step, turns)
                out.steps.append(len(times))
                out.step_times.extend(times)
                out.step_streams.extend(streams)
                for j, i in enumerate(idx):
                    if keep_encoded:
                        encoded_out[i] = encs[j]
                    if turns is not None:
                        out.segments[i] = hyps[j]
                        tokens[i] = [t for seg in hyps[j] for t in seg.tokens]
                        emit_s[i] = [e for seg in hyps[j] for e in seg.emit_s]
                        frames[i] = [f for seg in hyps[j] for f in seg.frames]
                        continue
                    tokens[i], emit_s[i] = hypothesis_tokens(hyps[j]), emits[j]
                    frames[i] = self._frame_list(hyps[j]) if hyps[j] is not None else []
                    confidence[i] = self._confidence_list(hyps[j]) if hyps[j] is not None else None
        out.texts = self.texts(tokens) if endpoint is None else \
            [" ".join(t for t in self.texts([seg.tokens for seg in segs]) if t) for segs in out.segments]
        out.encoded = encoded_out if keep_encoded else None
        return out

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _stream_batch(self, enc, feats: list[torch.Tensor], keep_encoded: bool, on_step=None, turns=None):
        """Stream one batch; returns (per stream: its hypothesis, or its segments when ``turns`` are given, ...)."""
        geo = ChunkGeometry.of(self.model, enc)
        pre_cache = geo.pre_cache
        batch, lengths = self._pad(feats)
        n_streams = len(feats)
        cache_channel, cache_time, cache_channel_len = enc.get_initial_cache_state(
            batch_size=n_streams, dtype=batch.dtype, device=batch.device
        )
        fresh = enc.get_initial_cache_state(batch_size=1, dtype=batch.dtype, device=batch.device)
        hyps: list = [None] * n_streams
        segments: list[list] = [[] for _ in range(n_streams)]
        pieces: list[list[torch.Tensor]] = [[] for _ in range(n_streams)]
        emits: list[list[float]] = [[] for _ in range(n_streams)]
        times: list[float] = []
        streams: list[int] = []
        hop_s = self.hop_samples() / float(sample_rate(self.model))
        lengths_list = lengths.tolist()
        export = self.feeding == "export"
        # In export feeding the audio starts after `silence_frames()` frames of silence; the first window
        # takes `pre_cache` frames of look-back from them.
        start, step, shift = (pre_cache, 0, self.silence_frames()) if export else (0, 0, 0)
        while True:
            n = int((lengths > start).sum())  # streams with audio left (a prefix: sorted by length)
            if n == 0:
                break
            self._sync()
            began = time.perf_counter()
            if export:  # fixed windows: cache + chunk frames, the graph's own fixed drop
                end = start + geo.chunk
                window_start, drop = start - pre_cache, None
            else:
                window_start, end = geo.window(start, step)
            window = batch[:n, :, window_start:end]
            window_len = torch.clamp(lengths[:n] - window_start, max=end - window_start)
            if self.zero_fill_pre_cache and not export and step > 0 and start - window_start < pre_cache:
                missing = pre_cache - (start - window_start)
                window = torch.nn.functional.pad(window, (missing, 0))
                window_len = window_len + missing
                window_start -= missing
            if not export:
                drop = geo.drop(start, window_start)
            encoded, enc_len, (next_channel, next_time, next_channel_len) = encoder_step(
                enc, window, window_len, (cache_channel[:, :n], cache_time[:, :n], cache_channel_len[:n]), drop)
            if on_step is not None:
                self._sync()  # only to split the step's time for the hook
            encoded_at = time.perf_counter()
            # Streams are independent: a finished stream simply leaves the batch (the prefix shrinks).
            cache_channel[:, :n] = next_channel
            cache_time[:, :n] = next_time
            cache_channel_len[:n] = next_channel_len
            if self.carries:
                hyps[:n] = decoder_step(self.model, encoded, enc_len, hyps[:n] if step > 0 else None)
            self._sync()
            ended = time.perf_counter()
            times.append(ended - began)
            streams.append(n)
            stop = on_step is not None and on_step(StepTiming(step, n, encoded_at - began, ended - encoded_at))
            if turns is not None:
                for j in range(n):
                    at_s = (min(end, lengths_list[j]) - shift) * hop_s
                    closed = turns[j].step(hypothesis_tokens(hyps[j]), hypothesis_stamps(hyps[j]),
                                           int(enc_len[j]), at_s)
                    if closed is not None:
                        segments[j].append(closed)
                        hyps[j] = None  # the next segment decodes as if alone
                        if turns[j].rules.reset_encoder:
                            cache_channel[:, j] = fresh[0][:, 0]
                            cache_time[:, j] = fresh[1][:, 0]
                            cache_channel_len[j] = fresh[2][0]
            elif self.carries:
                for j in range(n):
                    record_emissions(emits[j], hyps[j], (min(end, lengths_list[j]) - shift) * hop_s)
            if keep_encoded or not self.carries:
                for j in range(n):
                    pieces[j].append(encoded[j, :, : int(enc_len[j])].T)
            start = end
            step += 1
            if stop:
                break
        if not self.carries:
            # The search runs once over each stream's encoder output, when the stream has ended.
            streamed = [torch.cat(p) if p else encoded.new_zeros(0, encoded.shape[1]) for p in pieces]
            batch_out, out_len = self._pad([e.T for e in streamed])
            hyps = decoder_step(self.model, batch_out, out_len, None)
            for j in range(n_streams):
                record_emissions(emits[j], hyps[j], (lengths_list[j] - shift) * hop_s)
        encoded_full = [torch.cat(p).cpu() if p else torch.zeros(0) for p in pieces] if keep_encoded else None
        if turns is not None:  # the stream has ended: its last segment closes
            for j in range(n_streams):
                segments[j].append(turns[j].close((lengths_list[j] - shift) * hop_s, "end"))
            return segments, emits, encoded_full, times, streams
        return hyps, emits, encoded_full, times, streams
