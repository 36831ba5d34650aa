"""Live streams: cache-aware streaming of many independent streams that join and leave at any time, every stream
with a chunk ready served by one batched encoder step. What ``python -m export serve`` runs.

Each stream keeps the audio its next features need, its encoder caches and its RNN-T hypothesis. Mel frames are
computed as audio arrives, on segments wide enough that every frame sees exactly the samples it sees when the
whole utterance is featurised at once (the STFT's centred window and the pre-emphasis reach back
``n_fft / 2 + 1`` samples; a frame is final once its window has arrived, or at the end of the stream, where the
zero padding is the whole utterance's). Frames are fed as :class:`streamtune.streaming.runner.StreamingRunner` feeds
them ("exact" feeding: look-back clipped at the stream start), so a stream's tokens are those of
``StreamingRunner.streaming`` on the same audio, whatever the interleaving and the number of streams.

Streams are grouped per step by their window (its length and how many pre-encoded frames it drops): the first
steps of a stream, whose look-back is still clipped, form small groups; every later step of every stream has the
same window and shares one batch.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from streamtune.errors import UserError
from streamtune.model.chunks import ChunkMode, att_context
from streamtune.streaming.chunking import (
    ChunkGeometry,
    decoder_step,
    encoder_step,
    hypothesis_stamps,
    hypothesis_tokens,
    sample_rate,
)
from streamtune.streaming.endpoint import EndpointRules, Turns


@dataclass
class Update:
    """What a step (or the end of a stream) changed for one stream's current segment (a turn)."""

    stream: str
    tokens: list[int]
    text: str
    words: list[tuple[str, float, float]]  # (word, emitted at, last token emitted at), audio seconds
    audio_s: float  # audio the result covers (the end of the last chunk decoded)
    final: bool  # the segment is closed (an endpoint, a forced end, or the stream's end)
    segment: int = 0
    last: bool = False  # the stream's last segment: the stream is closed
    start_s: float = 0.0  # finals: where the segment started and ended (audio seconds), and why it ended
    end_s: float | None = None
    reason: str | None = None
    error: str | None = None  # the step that served the stream failed: the stream is closed, with this message


@dataclass
class _Stream:
    id: str
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    audio_start: int = 0  # global sample index of audio[0] (older audio is no longer needed)
    received: int = 0  # samples received
    ended: bool = False
    frames_total: int | None = None  # frames of the whole stream, once it has ended
    feats: torch.Tensor | None = None  # [F, n]: global frames feats_start .. feats_start + n
    feats_start: int = 0
    start: int = 0  # global frame where the next chunk starts
    step: int = 0
    cache: tuple | None = None  # (channel [L,1,T,D], time [L,1,D,K], channel_len [1])
    hyp: object = None  # the current segment's hypothesis (None: the decoder starts afresh)
    turns: Turns | None = None
    cut: bool = False  # the client asked to end the current segment
    end_reason: str = "end"  # why the stream ended (its last final's reason)

    @property
    def frames_have(self) -> int:
        return self.feats_start + (0 if self.feats is None else self.feats.shape[1])


class LiveStreams:
    """Per-stream state and the batched step over every stream with a chunk ready.

    ``open`` / ``feed`` / ``end`` / ``drop`` only queue what a client sent (safe to call from a server's event
    loop while a step runs); :meth:`step` (one compute thread) takes the queue in, computes the new frames and
    steps every stream that has a chunk ready. :meth:`wait` blocks until something new was queued.
    """

    def __init__(self, model, mode: ChunkMode, device: str | torch.device = "cpu", max_batch: int = 256,
                 endpoint: EndpointRules | None = None):
        feat = model.preprocessor.featurizer
        if getattr(feat, "normalize", None) not in (None, "", "NA", "None"):
            raise UserError(f"the model normalises features per utterance (normalize={feat.normalize!r}); live "
                            "streaming needs per-frame features (normalize: NA), as cache-aware models have")
        if getattr(feat, "stft_pad_amount", None) is not None:
            raise UserError("the model's preprocessor uses exact_pad; live streaming supports centred STFT frames")
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.dtype = next(model.parameters()).dtype  # audio, features and caches in the model's own precision
        self.mode = mode
        self.hop = int(feat.hop_length)
        # Samples before (and after) a frame's centre that it depends on: half the FFT window, plus one for the
        # pre-emphasis; a segment starting `margin_frames` before the first frame wanted gives it exactly.
        self.reach = int(feat.n_fft) // 2 + 1
        self.margin_frames = math.ceil(self.reach / self.hop) + 1
        self.sample_rate = sample_rate(model)
        self.max_batch = max_batch
        # Endpointing (streamtune.streaming.endpoint): a stream is a session of segments; none: one segment.
        self.endpoint = endpoint or EndpointRules(method="none")
        self.eou = self.endpoint.token_id(model.tokenizer)
        self.streams: dict[str, _Stream] = {}  # owned by the stepping thread
        self._inbox: list[tuple[str, str, np.ndarray | str | None]] = []  # (op, stream, samples or end reason)
        self._cond = threading.Condition()
        with att_context(model, mode) as enc:
            self.geometry = ChunkGeometry.of(model, enc)
        # Frames of silence a backend puts before every stream's audio (none here; an exported encoder's fixed
        # pre-encode cache wants some: streamtune.serve.ort_streams); times reported leave them out.
        self.lead_frames = 0

    # ----- what clients send (any thread) ------------------------------------------------------
    def _post(self, op: str, stream_id: str, samples: np.ndarray | str | None = None) -> None:
        with self._cond:
            self._inbox.append((op, stream_id, samples))
            self._cond.notify_all()

    def open(self, stream_id: str) -> None:
        self._post("open", stream_id)

    def feed(self, stream_id: str, samples: np.ndarray) -> None:
        """Append float32 samples (16 kHz mono, [-1, 1])."""
        self._post("feed", stream_id, np.asarray(samples, dtype=np.float32))

    def end(self, stream_id: str, reason: str = "end") -> None:
        """No more audio: the stream's remaining frames are decoded and its final result given (with ``reason``:
        ``end`` when the client said so, or the server's, e.g. ``max_session``)."""
        self._post("end", stream_id, reason)

    def cut(self, stream_id: str) -> None:
        """The client ends its turn: the current segment closes after what has been decoded so far (audio received
        but not yet decoded goes to the next segment)."""
        self._post("cut", stream_id)

    def drop(self, stream_id: str) -> None:
        """Forget a stream (its client left): nothing more is computed for it."""
        self._post("drop", stream_id)

    def wait(self, timeout: float | None = None) -> None:
        """Block until a client sends something (or ``timeout`` seconds)."""
        with self._cond:
            if not self._inbox:
                self._cond.wait(timeout)

    def _take_inbox(self) -> None:
        with self._cond:
            inbox, self._inbox = self._inbox, []
        pending: dict[str, list[np.ndarray]] = {}
        for op, sid, samples in inbox:
            if op == "open":
                self.streams[sid] = self._new_stream(sid)
            elif sid not in self.streams:
                continue  # dropped already
            elif op == "feed":
                pending.setdefault(sid, []).append(samples)
            elif op == "end":
                self._append(sid, pending.pop(sid, []))
                s = self.streams[sid]
                # What the preprocessor gives the whole utterance: its own frame count (NeMo 3.0: samples // hop;
                # the STFT's last, partial frame is masked out), none for a stream that sent no audio.
                s.ended, s.frames_total = True, self._frames_of(s.received) if s.received else 0
                s.end_reason = samples
            elif op == "cut":
                self.streams[sid].cut = True
            elif op == "drop":
                pending.pop(sid, None)
                del self.streams[sid]
        for sid, parts in pending.items():
            self._append(sid, parts)

    def _new_stream(self, sid: str) -> _Stream:
        return _Stream(sid, turns=self._turns())

    def _turns(self) -> Turns:
        return Turns(self.endpoint, self.hop * self.geometry.subsampling / self.sample_rate, self.eou)

    def _frames_of(self, samples: int) -> int:
        return int(self.model.preprocessor.featurizer.get_seq_len(torch.tensor([samples]))[0])

    def _append(self, sid: str, parts: list[np.ndarray]) -> None:
        if parts:
            s = self.streams[sid]
            s.audio = np.concatenate([s.audio, *parts])
            s.received += sum(len(p) for p in parts)

    # ----- features --------------------------------------------------------------------------
    def _segment(self, s: _Stream) -> tuple[int, int, int] | None:
        """(first sample, first frame wanted, last frame + 1) of the audio that gives every frame final so far and
        not yet computed; None when there is none."""
        have = s.frames_have
        # Frame t's window ends at t * hop + n_fft / 2: final once those samples are in.
        last = s.frames_total if s.ended else max(0, (s.received - (self.reach - 1)) // self.hop + 1)
        if last <= have:
            return None
        return max(s.audio_start, (have - self.margin_frames) * self.hop, 0), have, last

    def _fail(self, streams: list[_Stream], err: Exception) -> list[Update]:
        """Close ``streams`` after a failed step: each gets a last update carrying the error."""
        message = f"{type(err).__name__}: {err}"[:300]
        for s in streams:
            self.streams.pop(s.id, None)
        return [Update(s.id, [], "", [], self._at_s(s.start), True, s.turns.index, last=True, reason="error",
                       error=message) for s in streams]

    def _at_s(self, frame: int) -> float:
        """The audio time (seconds of the client's audio) of a mel frame of the stream."""
        return max(0, frame - self.lead_frames) * self.hop / self.sample_rate

    @torch.no_grad()
    def _extend_features(self, streams: list[_Stream]) -> list[Update]:
        """Compute every frame that is final given the audio received so far (all of them once a stream ended),
        one preprocessor call per group of streams with similar segment lengths.

        Exact whatever the batch: the segments are zero-padded on the right, the preprocessor zeroes the signal
        past each length after pre-emphasis (as its own centre padding would), and no frame taken reaches past
        its segment."""
        plans = sorted(((s, plan, s.received - plan[0]) for s in streams if (plan := self._segment(s)) is not None),
                       key=lambda spl: spl[2])
        groups: list[list] = []
        for s, plan, length in plans:
            if not groups or length > 2 * groups[-1][0][2]:
                groups.append([])
            groups[-1].append((s, plan, length))
        failed = []
        for group in groups:
            try:
                self._featurise(group)
            except Exception as err:  # the group's streams fail, the others go on
                failed += self._fail([s for s, _, _ in group], err)
        return failed

    def _featurise(self, group: list) -> None:
        """One preprocessor call over a group of streams' segments (see :meth:`_extend_features`)."""
        longest = max(length for _, _, length in group)
        signal = torch.zeros(len(group), longest, device=self.device, dtype=self.dtype)
        for k, (s, (seg_start, _, _), length) in enumerate(group):
            signal[k, :length] = torch.as_tensor(s.audio[seg_start - s.audio_start:], device=self.device)
        lengths = torch.tensor([length for _, _, length in group], device=self.device)
        feats, _ = self.model.preprocessor(input_signal=signal, length=lengths)
        for k, (s, (seg_start, have, last), _) in enumerate(group):
            first = seg_start // self.hop  # the global frame of the segment's frame 0
            self._add_features(s, feats[k, :, have - first: last - first], last)

    def _add_features(self, s: _Stream, new: torch.Tensor, last: int) -> None:
        s.feats = new.clone() if s.feats is None else torch.cat([s.feats, new], dim=1)
        # Drop what neither the next window (its look-back) nor the next segment needs.
        keep_frame = self.geometry.window(s.start, s.step)[0]
        if keep_frame > s.feats_start:
            s.feats = s.feats[:, keep_frame - s.feats_start:]
            s.feats_start = keep_frame
        keep_sample = max(0, (last - self.margin_frames) * self.hop)
        if keep_sample > s.audio_start:
            s.audio = s.audio[keep_sample - s.audio_start:]
            s.audio_start = keep_sample

    # ----- stepping --------------------------------------------------------------------------
    def _window(self, s: _Stream) -> tuple[int, int, int] | None:
        """(window start, window end, pre-encoded frames to drop) of the stream's next step, when its frames are
        there: the runner's exact feeding (look-back clipped at the stream start)."""
        window_start, end = self.geometry.window(s.start, s.step)
        if s.ended and s.start >= s.frames_total:
            return None
        if s.frames_have < (min(end, s.frames_total) if s.ended else end):
            return None
        return window_start, end, self.geometry.drop(s.start, window_start)

    @torch.no_grad()
    def step(self) -> list[Update]:
        """Take in what clients sent; one encoder step + greedy RNN-T for every stream with a chunk ready (grouped
        by window, at most ``max_batch`` per batch); return a partial for each stream that stepped and a final for
        each stream that has ended and is fully decoded (it is then closed)."""
        self._take_inbox()
        groups: dict[tuple[int, int, bool], list[tuple[_Stream, int, int]]] = {}
        finished = []
        failed = self._extend_features(list(self.streams.values()))
        for s in self.streams.values():
            w = self._window(s)
            if w is not None:
                window_start, end, drop = w
                groups.setdefault((end - window_start, drop, s.step == 0), []).append((s, window_start, end))
            elif s.ended and s.start >= s.frames_total:
                finished.append(s)
        updates = failed
        with att_context(self.model, self.mode) as enc:
            for (_, drop, first), members in groups.items():
                for k in range(0, len(members), self.max_batch):
                    batch = members[k:k + self.max_batch]
                    try:
                        updates += self._step_group(enc, batch, drop, first)
                    except Exception as err:  # one failed batch fails its own streams, not the server
                        updates += self._fail([s for s, _, _ in batch], err)
        for s in list(self.streams.values()):
            if s.cut and s not in finished:
                s.cut = False
                at_s = self._at_s(s.start)
                updates.append(self._close(s, s.turns.close(at_s, "forced"), at_s))
        for s in finished:
            # The segment ends where the runner's does (the last frame); the result covers every sample received.
            updates.append(self._close(s, s.turns.close(self._at_s(s.frames_total), s.end_reason),
                                       (s.received - self.lead_frames * self.hop) / self.sample_rate, last=True))
            del self.streams[s.id]
        return updates

    def _step_group(self, enc, members, drop: int, first: bool) -> list[Update]:
        n = len(members)
        width = max(end - ws for _, ws, end in members)
        window = torch.zeros(n, members[0][0].feats.shape[0], width, device=self.device, dtype=self.dtype)
        window_len = torch.zeros(n, dtype=torch.long, device=self.device)
        for j, (s, ws, end) in enumerate(members):
            stop = min(end, s.frames_total) if s.ended else end
            frames = s.feats[:, ws - s.feats_start: stop - s.feats_start]
            window[j, :, : frames.shape[1]] = frames
            window_len[j] = frames.shape[1]
            if s.cache is None:
                s.cache = enc.get_initial_cache_state(batch_size=1, dtype=window.dtype, device=self.device)
        cache = (torch.cat([s.cache[0] for s, _, _ in members], dim=1),
                 torch.cat([s.cache[1] for s, _, _ in members], dim=1),
                 torch.cat([s.cache[2] for s, _, _ in members], dim=0))
        encoded, enc_len, (next_channel, next_time, next_len) = encoder_step(enc, window, window_len, cache, drop)
        hyps = decoder_step(self.model, encoded, enc_len, None if first else [s.hyp for s, _, _ in members])
        hop_s = self.hop / self.sample_rate
        return [self._advance(s, end, (next_channel[:, j:j + 1].clone(), next_time[:, j:j + 1].clone(),
                                       next_len[j:j + 1].clone()), hyps[j], hypothesis_tokens(hyps[j]),
                              hypothesis_stamps(hyps[j]), int(enc_len[j]),
                              (min(end, s.frames_total) if s.ended else end) * hop_s)
                for j, (s, _, end) in enumerate(members)]

    def _advance(self, s: _Stream, end: int, cache, hyp, tokens: list[int], stamps: list[int], n_frames: int,
                 covered_s: float) -> Update:
        """A stream after a step that decoded up to frame ``end``: its caches and hypothesis, and its partial (or
        the final of the segment the step closed)."""
        s.cache, s.hyp = cache, hyp
        closed = s.turns.step(tokens, stamps, n_frames, covered_s)
        s.start, s.step = end, s.step + 1
        if closed is None:
            return self._update(s, s.turns.index, s.turns.tokens, s.turns.emit_s, covered_s)
        return self._close(s, closed, covered_s)

    def _close(self, s: _Stream, segment, covered_s: float, last: bool = False) -> Update:
        """A segment's final; the stream's decoder starts afresh (its encoder caches too with ``reset_encoder``)."""
        s.hyp = None
        if self.endpoint.reset_encoder and s.cache is not None:
            s.cache = None  # the next step starts from the encoder's initial cache state
        return self._update(s, segment.index, segment.tokens, segment.emit_s, covered_s, final=True, last=last,
                            start_s=segment.start_s, end_s=segment.end_s, reason=segment.reason)

    def _update(self, s: _Stream, segment: int, tokens: list[int], emit_s: list[float], covered_s: float,
                final: bool = False, **closed) -> Update:
        from streamtune.streaming.words import hypothesis_words

        tokenizer = self.model.tokenizer
        return Update(s.id, list(tokens), tokenizer.ids_to_text(tokens) if tokens else "",
                      hypothesis_words(tokenizer, tokens, emit_s), covered_s, final, segment, **closed)


def probe_capacity(model, mode: ChunkMode, device: str = "cpu", budget: float = 0.5, limit: int = 256,
                   live: LiveStreams | None = None) -> int:
    """The largest number of streams (a power of two, up to ``limit``) whose batched step takes at most
    ``budget`` x the chunk's duration on random audio: a quick estimate of what this machine serves in real time.
    ``live``: the streams to probe (another backend's, e.g. ONNX Runtime); default: PyTorch on ``device``."""
    live = live if live is not None else LiveStreams(model, mode, device=device, max_batch=limit)
    chunk_s = mode.chunk_ms / 1000
    rng = np.random.default_rng(0)
    best, n = 0, 1
    while n <= limit:
        for k in range(n):
            live.open(f"probe{n}-{k}")
            live.feed(f"probe{n}-{k}", 0.01 * rng.standard_normal(int(8 * chunk_s * live.sample_rate) + 8000)
                      .astype(np.float32))
        live.step()  # the first steps of every stream (clipped look-back) in small groups
        live.step()
        times = []
        for _ in range(4):  # steady state: every stream in one batch
            began = time.perf_counter()
            live.step()
            times.append(time.perf_counter() - began)
        for k in range(n):
            live.drop(f"probe{n}-{k}")
        live.step()
        if sorted(times)[len(times) // 2] > budget * chunk_s:
            break
        best, n = n, n * 2
    return best
