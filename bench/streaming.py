"""Streaming cost on CPU: cache-aware vs buffered at equal latency, growth with audio length, concurrent streams.

    python bench/streaming.py [--demo-model PATH] [--full/--no-full] [--quick] [--threads N] [--quiet-wait S] [--write]

Two models, measured in one run: the demo model (``--demo-model``, a trained
``.nemo``) and, with ``--full`` (the default), the target's full geometry
(24 layers, d_model 1024, 8 heads, 128 mels; ``FULL_GEOMETRY`` on the demo
recipe) with random weights and a 1024-piece SentencePiece vocabulary trained
on seeded random letter strings (only its size matters for cost); its blank
logit is raised so that greedy decoding emits almost no tokens (a random joint
would emit max_symbols tokens on every frame), which makes its decoding time a
lower bound. Input is
real speech-like audio: the demo test utterances concatenated and tiled, each
stream starting at a different offset. Features are computed beforehand for
both sides (the same work on both); "compute" is the encoder call plus the
greedy RNN-T call of every step, summed, with ``--threads`` torch threads.

(a) Cache-aware vs buffered, per chunk mode, N concurrent streams in one batch
    on both sides. Cache-aware: ``encoder.cache_aware_stream_step`` on each
    chunk with the caches carried (the same loop as ``StreamingRunner``,
    copied here so that each step can be timed), greedy RNN-T with hypotheses
    carried. Buffered: NeMo's buffered RNN-T inference
    (``BatchedFrameASRRNNT`` + ``speech_to_text_buffered_infer_rnnt.py``)
    re-implemented on precomputed features: every step encodes a whole window
    of ~4 s (left context + chunk + look-ahead; silence-level padding before
    the start and look-ahead padding after the end, as NeMo pads), decodes all
    of it with stateless greedy_batch and ``preserve_alignments`` (NeMo's
    settings) and keeps the tokens of the chunk's frames. Its latency, chunk +
    look-ahead, equals the cache-aware chunk. Repetitions alternate the two
    sides (AB, BA, AB, ...) so that machine noise hits both; medians. A
    repetition (or probe, in (c)) during which other processes used more than
    0.2 cores is discarded and run again after they go quiet: with 2 threads on
    2 cores one busy process elsewhere can slow a step many times over.
(b) Cache-aware cost at growing audio lengths, and the bytes per stream of the
    three encoder cache tensors and of the RNN-T decoder state, read from the
    tensors that the last step returned.
(c) The most concurrent streams kept in real time: N streams in one batch; a
    step = encoder step + greedy RNN-T for all N; real time when the p95 step
    time (steps after the first two) is <= the chunk duration. N doubles from
    1, then bisection.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import shlex
import statistics
import string
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import cpu_ticks, mode_by_ms, others_seconds  # noqa: E402
RECIPE = REPO / "recipes/demo/tiny_cpu.yaml"
DATA = REPO / "outputs/demo/data"
DEMO_MODEL = "outputs/demo/runs/tiny_cpu/latest/final.nemo"
BUFFER_S = 4.0  # NeMo's default total_buffer_in_secs
TITLE = "Streaming: cache-aware vs buffered"


# ----- sizes ------------------------------------------------------------------------------------
@dataclass
class Plan:
    """What to measure for one model."""

    modes_ms: list[int]  # chunk modes for (a)
    streams: list[int]  # N values for (a)
    audio_s: dict[int, float]  # (a): audio per stream, per mode
    reps: int  # (a): repetitions per side
    growth_mode_ms: int = 560
    growth_lengths_s: list[float] = field(default_factory=lambda: [5, 10, 20, 40])
    growth_streams: int = 1
    growth_reps: int = 1
    rt_modes_ms: list[int] = field(default_factory=lambda: [560, 160])
    rt_steps: int = 30  # timed steps per probe in (c)
    rt_max_streams: int = 4096


def plans(quick: bool) -> dict[str, Plan]:
    if quick:
        return {
            "demo": Plan([560, 160], [4], {560: 5, 160: 3}, 3, growth_lengths_s=[5, 10],
                         growth_streams=4, growth_reps=1, rt_steps=10, rt_max_streams=256),
            "full": Plan([560], [1], {560: 2.5}, 3, growth_lengths_s=[2.5, 5], rt_modes_ms=[560, 160],
                         rt_steps=6, rt_max_streams=8),
        }
    return {
        "demo": Plan([1120, 560, 160, 80], [1, 16], {1120: 20, 560: 20, 160: 10, 80: 6}, 3,
                     growth_streams=16, growth_reps=3, rt_steps=25),
        "full": Plan([560, 160], [1, 4], {560: 8, 160: 3}, 3, growth_lengths_s=[5, 10, 20, 40],
                     growth_streams=1, growth_reps=1, rt_steps=20, rt_max_streams=64),
    }


# ----- machine ----------------------------------------------------------------------------------
# ----- models -----------------------------------------------------------------------------------
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


def build_full(tmp: Path):
    import torch

    from streamtune.config import load_config
    from streamtune.models import build_model
    from tests.test_full_geometry_slow import FULL_GEOMETRY

    tok = random_tokenizer(tmp)
    torch.manual_seed(0)
    cfg = load_config(str(RECIPE), [*FULL_GEOMETRY, "data.train=null", "data.dev=null", f"data.tokenizer_dir={tok}"])
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


# ----- input ------------------------------------------------------------------------------------
class Speech:
    """The demo test utterances concatenated; stream ``i`` starts at a different offset and wraps around."""

    def __init__(self, cuts: Path):
        from streamtune.data import SAMPLE_RATE, load_utterances

        self.utts = load_utterances(cuts)
        self.audio = np.concatenate([u.audio for u in self.utts])
        self.rate = SAMPLE_RATE
        self._cache: dict = {}

    def features(self, runner, seconds: float, n: int):
        """Mel features ``[n, F, T]`` of ``n`` distinct streams of ``seconds`` each."""
        import torch

        key = (id(runner.model), seconds, n)
        if key not in self._cache:
            samples = int(seconds * self.rate)
            step = len(self.audio) // max(n, 1)
            feats = [runner.features(np.take(self.audio, np.arange(i * step, i * step + samples), mode="wrap"))
                     for i in range(n)]
            self._cache[key] = torch.stack(feats)
        return self._cache[key]


# ----- the two ways to stream -------------------------------------------------------------------
def cache_aware(model, enc, feats, step_times: list, max_steps: int = 0, pool_index=None, give_up=None):
    """Stream ``feats [P, F, T]`` chunk by chunk with the encoder caches carried; returns (hyps, caches, steps).

    All streams have the same length. ``pool_index`` (N indices into P) makes N streams from a pool of P feature
    sequences; gathering them is not timed. Only the encoder step and the greedy RNN-T call are timed: one
    ``(encoder_s, decoder_s)`` pair per step is appended to ``step_times``. ``give_up(step_times)`` may end the
    run early.
    """
    import torch

    cfg = enc.streaming_cfg
    first_chunk, chunk = cfg.chunk_size
    pre_cache = cfg.pre_encode_cache_size[1]
    subsampling = int(enc.subsampling_factor)
    n = feats.shape[0] if pool_index is None else len(pool_index)
    total = feats.shape[2]
    caches = enc.get_initial_cache_state(batch_size=n, dtype=feats.dtype, device=feats.device)
    hyps, start, step = None, 0, 0
    while start < total and (not max_steps or step < max_steps):
        end = min(total, start + (first_chunk if step == 0 else chunk))
        # The subsampling's look-back: up to `pre_cache` frames, never before the start (as StreamingRunner).
        window_start = max(0, start - pre_cache)
        window = feats[:, :, window_start:end]
        if pool_index is not None:
            window = window[pool_index]
        window = window.contiguous()
        window_len = torch.full((n,), end - window_start, dtype=torch.long)
        drop = math.ceil((start - window_start) / subsampling)
        t0 = time.perf_counter()
        encoded, enc_len, *caches = enc.cache_aware_stream_step(
            processed_signal=window, processed_signal_length=window_len,
            cache_last_channel=caches[0], cache_last_time=caches[1], cache_last_channel_len=caches[2],
            keep_all_outputs=True, drop_extra_pre_encoded=drop,
        )
        t1 = time.perf_counter()
        hyps = model.decoding.rnnt_decoder_predictions_tensor(
            encoder_output=encoded, encoded_lengths=enc_len, return_hypotheses=True, partial_hypotheses=hyps
        )
        step_times.append((t1 - t0, time.perf_counter() - t1))
        start, step = end, step + 1
        if give_up is not None and give_up(step_times):
            break
    return hyps, caches, step


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
    from omegaconf import OmegaConf

    from nemo.collections.asr.parts.submodules.rnnt_decoding import RNNTBPEDecoding

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
    lengths = torch.full((n,), width, dtype=torch.long)
    blank = decoding.blank_id
    tokens: list[list[int]] = [[] for _ in range(n)]
    for step in range(min(steps, max_steps) if max_steps else steps):
        start = step * window.chunk * sub
        buffer = padded[:, :, start:start + width].contiguous()
        t0 = time.perf_counter()
        encoded, enc_len = enc(audio_signal=buffer, length=lengths)
        t1 = time.perf_counter()
        hyps = decoding.rnnt_decoder_predictions_tensor(encoder_output=encoded, encoded_lengths=enc_len,
                                                        return_hypotheses=True)
        step_times.append((t1 - t0, time.perf_counter() - t1))
        for i, hyp in enumerate(hyps):  # the chunk's tokens (NeMo's middle-token merge), not timed
            for frame in hyp.alignments[window.left:window.left + window.chunk]:
                tokens[i] += [int(label) for _, label in frame if int(label) != blank]
    return tokens, steps


# ----- measurements -----------------------------------------------------------------------------
def median(xs) -> float:
    return statistics.median(xs)


class Others:
    """Other processes on the (shared) machine: wait for them to go quiet; redo a measurement they disturbed.

    With 2 torch threads on 2 cores, one busy process elsewhere can make a step many times slower (the threads
    wait for each other), so a disturbed repetition is discarded and run again rather than kept.
    """

    LIMIT = 0.2  # cores used by others during a measurement above which it is redone

    def __init__(self, log, max_wait_s: float):
        self.log, self.max_wait_s, self.waited_s, self.discarded = log, max_wait_s, 0.0, 0

    @staticmethod
    def load(seconds: float = 2.0) -> float:
        before = cpu_ticks()
        time.sleep(seconds)
        return others_seconds(before, cpu_ticks()) / seconds

    def wait_quiet(self) -> None:
        start = time.monotonic()
        while (load := self.load()) > self.LIMIT and time.monotonic() - start < self.max_wait_s:
            self.log(f"  waiting: other processes use {load:.1f} cores")
            time.sleep(10)
        self.waited_s += time.monotonic() - start

    def run(self, what: str, fn, attempts: int = 3):
        """``(fn(), cores other processes used meanwhile)``; redone after a wait when they used more than LIMIT."""
        for attempt in range(attempts):
            ticks, start = cpu_ticks(), time.monotonic()
            result = fn()
            cores = others_seconds(ticks, cpu_ticks()) / (time.monotonic() - start)
            if cores <= self.LIMIT or attempt == attempts - 1:
                return result, cores
            self.discarded += 1
            self.log(f"  discarded {what}: other processes used {cores:.2f} cores; again after a wait")
            self.wait_quiet()


def per_audio_second(times: list, audio_s: float) -> tuple[float, float]:
    """(encoder, decoder) seconds of compute per second of audio."""
    return sum(t[0] for t in times) / audio_s, sum(t[1] for t in times) / audio_s


def compare(name, model, runner, speech, plan: Plan, others: Others, log) -> list[dict]:
    """(a): cache-aware vs buffered compute per audio second, interleaved repetitions."""
    import torch

    from streamtune.streaming import att_context

    decoding = buffer_decoding(model)
    fill = silence_level(model)
    rows = []
    for ms in plan.modes_ms:
        mode = mode_by_ms(model, ms)
        window = buffered_window(mode.chunk_frames, 0, mode.frame_ms)
        for n in plan.streams:
            feats = speech.features(runner, plan.audio_s[ms], n)
            audio = n * feats.shape[2] / 100  # stream-seconds (10 ms hop)
            with att_context(model, mode) as enc, torch.no_grad():
                sides = {
                    "cache-aware": lambda times, limit=0: cache_aware(model, enc, feats, times, max_steps=limit),
                    "buffered": lambda times, limit=0: buffered(model, enc, decoding, feats, window, times, fill,
                                                                max_steps=limit),
                }

                def one_rep(order):
                    out = {}
                    for side in order:
                        times: list = []
                        result = sides[side](times)
                        kept = result[0]
                        tokens = sum(len(h.y_sequence) for h in kept) if side == "cache-aware" else \
                            sum(len(t) for t in kept)
                        out[side] = (per_audio_second(times, audio), result[-1], tokens / audio)
                    return out

                others.wait_quiet()
                for run in sides.values():  # warm-up: a few steps of each
                    run([], 3)
                reps, load = [], []
                for rep in range(plan.reps):
                    order = list(sides) if rep % 2 == 0 else list(sides)[::-1]
                    out, cores = others.run(f"{name} {mode} N={n} rep {rep + 1}", lambda: one_rep(order))
                    reps.append(out)
                    load.append(cores)
            total = {side: [sum(r[side][0]) for r in reps] for side in sides}
            enc_only = {side: [r[side][0][0] for r in reps] for side in sides}
            ratios = [b / c for b, c in zip(total["buffered"], total["cache-aware"])]
            enc_ratio = median(b / c for b, c in zip(enc_only["buffered"], enc_only["cache-aware"]))
            row = dict(model=name, mode=str(mode), ms=ms, n=n, audio_s=feats.shape[2] / 100, window=window,
                       frame_ms=mode.frame_ms, ca=median(total["cache-aware"]), bu=median(total["buffered"]),
                       ratio=median(ratios), ratios=ratios, enc_ratio=enc_ratio,
                       ca_enc=median(enc_only["cache-aware"]), bu_enc=median(enc_only["buffered"]),
                       steps={side: reps[-1][side][1] for side in sides},
                       tokens={side: reps[-1][side][2] for side in sides}, others=max(load))
            rows.append(row)
            log(f"  (a) {name} {mode} N={n}: cache-aware {row['ca']:.4f}, buffered {row['bu']:.4f} s/s, ratio "
                f"{row['ratio']:.2f} (each rep: {', '.join(f'{r:.2f}' for r in ratios)}; encoder only "
                f"{enc_ratio:.2f}); others up to {max(load):.2f} cores")
    return rows


def sanity(model, runner, speech, ms: int, max_utts: int = 20) -> dict:
    """The loops decode: our cache-aware loop vs StreamingRunner (tokens), and WER of both sides (demo model)."""
    import torch

    from streamtune.metrics import ErrorCounts, word_errors
    from streamtune.streaming import att_context

    mode = mode_by_ms(model, ms)
    utts = speech.utts[:max_utts]
    feats = [runner.features(u.audio) for u in utts]
    reference = runner.streaming(mode, feats)
    decoding, fill = buffer_decoding(model), silence_level(model)
    window = buffered_window(mode.chunk_frames, 0, mode.frame_ms)
    same, ca_err, bu_err = 0, ErrorCounts(), ErrorCounts()
    with att_context(model, mode) as enc, torch.no_grad():
        for u, f, ref_tokens in zip(utts, feats, reference.tokens):
            hyps, _, _ = cache_aware(model, enc, f[None], [])
            ours = [int(t) for t in hyps[0].y_sequence]
            same += ours == ref_tokens
            ca_err += word_errors(u.text, model.tokenizer.ids_to_text(ours) if ours else "")
            tokens, _ = buffered(model, enc, decoding, f[None], window, [], fill)
            bu_err += word_errors(u.text, model.tokenizer.ids_to_text(tokens[0]) if tokens[0] else "")
    return dict(mode=str(mode), utts=len(utts), same=same, ca_wer=ca_err.wer, bu_wer=bu_err.wer)


def growth(name, model, runner, speech, plan: Plan, others: Others, log) -> list[dict]:
    """(b): cache-aware compute per audio second and state bytes per stream at growing audio lengths."""
    import torch

    from streamtune.streaming import att_context

    mode = mode_by_ms(model, plan.growth_mode_ms)
    n = plan.growth_streams
    per = {s: [] for s in plan.growth_lengths_s}
    state, load = {}, {s: [] for s in plan.growth_lengths_s}
    with att_context(model, mode) as enc, torch.no_grad():
        others.wait_quiet()
        cache_aware(model, enc, speech.features(runner, plan.growth_lengths_s[0], n), [], max_steps=4)  # warm-up
        for rep in range(plan.growth_reps):
            for seconds in plan.growth_lengths_s if rep % 2 == 0 else plan.growth_lengths_s[::-1]:
                feats = speech.features(runner, seconds, n)
                times: list = []

                def one_run():
                    times.clear()
                    return cache_aware(model, enc, feats, times)

                (hyps, caches, steps), cores = others.run(f"{name} {mode} {seconds:g} s rep {rep + 1}", one_run)
                per[seconds].append(sum(per_audio_second(times, n * feats.shape[2] / 100)))
                load[seconds].append(cores)
                state[seconds] = dict(steps=steps, shapes=[tuple(c.shape) for c in caches],
                                      cache=sum(tensor_bytes(c) for c in caches) / n,
                                      decoder=median(tensor_bytes(h.dec_state) for h in hyps))
    rows = []
    for seconds in plan.growth_lengths_s:
        rows.append(dict(model=name, mode=str(mode), n=n, audio_s=seconds, cost=median(per[seconds]),
                         costs=per[seconds], others=max(load[seconds]), **state[seconds]))
        log(f"  (b) {name} {mode} {seconds:g} s: {rows[-1]['cost']:.4f} s/s, cache {rows[-1]['cache']:.0f} B/stream "
            f"{state[seconds]['shapes']}, decoder state {rows[-1]['decoder']:.0f} B/stream")
    return rows


def realtime(name, model, runner, speech, plan: Plan, others: Others, log) -> list[dict]:
    """(c): most streams in one batch with p95 step time <= chunk; doubling then bisection."""
    import torch

    from streamtune.streaming import att_context

    rows = []
    pool_size = 8
    for ms in plan.rt_modes_ms:
        mode = mode_by_ms(model, ms)
        chunk_s = ms / 1000
        pool = speech.features(runner, (plan.rt_steps + 2) * chunk_s + 0.2, pool_size)
        probes: dict[int, tuple[float, float]] = {}
        load = []
        # A probe stops early once more steps than 5 % of the planned ones were over the chunk (p95 > chunk then).
        too_slow = max(2, math.ceil(0.05 * plan.rt_steps) + 1)

        def probe(n: int) -> bool:
            index = torch.arange(n) % pool_size

            def one_probe():
                cache_aware(model, enc, pool, [], max_steps=3, pool_index=index)  # warm-up at this batch size
                times: list = []
                cache_aware(model, enc, pool, times, max_steps=plan.rt_steps + 2, pool_index=index,
                            give_up=lambda t: sum(e + d > chunk_s for e, d in t[2:]) >= too_slow)
                return np.array([e + d for e, d in times[2:]])  # the first two steps differ (first chunk)

            timed, cores = others.run(f"{name} {mode} N={n}", one_probe)
            load.append(cores)
            probes[n] = float(np.percentile(timed, 50)), float(np.percentile(timed, 95))
            ok = probes[n][1] <= chunk_s
            log(f"  (c) {name} {mode} N={n}: p50 {probes[n][0] * 1000:.1f} ms, p95 {probes[n][1] * 1000:.1f} ms "
                f"over {len(timed)} steps ({'real time' if ok else 'too slow'})")
            return ok

        with att_context(model, mode) as enc, torch.no_grad():
            others.wait_quiet()
            good, bad, n = 0, None, 1
            while n <= plan.rt_max_streams:  # doubling
                if not probe(n):
                    bad = n
                    break
                good, n = n, n * 2
            # Bisection between the last good and the first bad N, to within 1 stream or 3 %.
            while bad is not None and good and bad - good > max(1, good // 32):
                mid = (good + bad) // 2
                good, bad = (mid, bad) if probe(mid) else (good, mid)
        p50, p95 = probes[good or 1]
        rows.append(dict(model=name, mode=str(mode), ms=ms, max_n=good, capped=bad is None, p50=p50, p95=p95,
                         bad=bad, probes=dict(sorted(probes.items())), others=max(load)))
    return rows


# ----- report -----------------------------------------------------------------------------------
HOW = """How: the features of every stream are computed first (the same work for both sides; not timed). \
Cache-aware = `encoder.cache_aware_stream_step` per chunk with the three caches carried, then greedy RNN-T \
(`greedy_batch`) with the hypotheses carried: `StreamingRunner`'s loop, copied so that each step can be timed (the \
sanity line checks it gives the same tokens). Buffered = NeMo's buffered RNN-T inference (`BatchedFrameASRRNNT` as \
`speech_to_text_buffered_infer_rnnt.py` drives it) re-implemented on the same features: each step encodes a whole \
window, left context + chunk + look-ahead, of about 4 s (NeMo's default `total_buffer_in_secs`; silence before the \
start, padding after the end, as NeMo pads), with the same model in the same `att_context_size`, decodes all of it \
(stateless `greedy_batch` with `preserve_alignments`, as that script sets) and keeps the tokens of the chunk's frames. \
Its latency, chunk + look-ahead, equals the cache-aware chunk, with look-ahead 0: at a fixed latency a look-ahead L \
shrinks the chunk to latency - L and multiplies the buffered steps by latency / (latency - L), so 0 is buffered's \
cheapest setting (and with the chunked attention mask it gives each frame the same right context as cache-aware). \
The left context is a whole number of chunks, so that the kept chunk sits on the model's attention-chunk grid. Not \
NeMo's class itself: it reads audio files, normalises every buffer per feature (wrong for this `normalize: NA` \
model), and its NumPy buffer copies would be charged to buffered. Timed per step: the encoder call and the greedy \
RNN-T call (for all N streams at once). Repetitions alternate the side that goes first; a repetition during which \
other processes used more than 0.2 cores is discarded and run again after they go quiet (up to 3 tries)."""


def findings(results: dict) -> list[str]:
    """Facts read off the tables (no more)."""
    out = []
    for model in dict.fromkeys(r["model"] for r in results["compare"]):
        parts = []
        for n in dict.fromkeys(r["n"] for r in results["compare"] if r["model"] == model):
            rs = [r for r in results["compare"] if r["model"] == model and r["n"] == n]
            ratios, enc = [r["ratio"] for r in rs], [r["enc_ratio"] for r in rs]
            span = (lambda xs: f"{min(xs):.2f}" if f"{min(xs):.2f}" == f"{max(xs):.2f}" else f"{min(xs):.2f}-{max(xs):.2f}")
            parts.append(f"N={n}: {span(ratios)} (encoder only {span(enc)}) over "
                         f"{', '.join(str(r['ms']) for r in rs)} ms")
        out.append(f"(a) {model}: buffered / cache-aware compute " + "; ".join(parts) + ".")
    for model in dict.fromkeys(r["model"] for r in results["growth"]):
        rs = [r for r in results["growth"] if r["model"] == model]
        same = len({r["cache"] for r in rs}) == 1 and len({r["decoder"] for r in rs}) == 1
        out.append(f"(b) {model}: compute per audio second at {rs[-1]['audio_s']:g} s / at {rs[0]['audio_s']:g} s "
                   f"= {rs[-1]['cost'] / rs[0]['cost']:.2f}; cache and decoder-state bytes per stream "
                   f"{'the same at every length' if same else 'DIFFER between lengths'}.")
    return out


def report(results: dict) -> str:
    out = ["**(a) Compute per audio second, cache-aware vs buffered at the same latency.** Seconds of compute "
           "(encoder + greedy RNN-T) per second of audio per stream, N streams in one batch on both sides, median "
           "of the interleaved repetitions. Ratio = buffered / cache-aware: how many more streams the same compute "
           "serves cache-aware. \"Encoder only\" leaves out both sides' decoding (buffered decodes the whole "
           "window each step, as NeMo's buffered RNN-T does).",
           "", "| model | mode | N | audio per stream (s) | buffered window (left + chunk + look-ahead) | steps "
           "(cache-aware / buffered) | tokens/s (cache-aware / buffered) | cache-aware s/s (encoder) | buffered s/s "
           "(encoder) | **ratio** | ratio of each rep | encoder-only ratio | others (cores, max) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["compare"]:
        out.append(f"| {r['model']} | {r['mode']} | {r['n']} | {r['audio_s']:g} | {r['window'].describe(r['frame_ms'])} "
                   f"| {r['steps']['cache-aware']} / {r['steps']['buffered']} | {r['tokens']['cache-aware']:.1f} / "
                   f"{r['tokens']['buffered']:.1f} | {r['ca']:.4f} ({r['ca_enc']:.4f}) | "
                   f"{r['bu']:.4f} ({r['bu_enc']:.4f}) | **{r['ratio']:.2f}** | "
                   f"{', '.join(f'{x:.2f}' for x in r['ratios'])} | {r['enc_ratio']:.2f} | {r['others']:.2f} |")
    for s in results["sanity"]:
        out += ["", f"Sanity check (demo model, {s['mode']}, first {s['utts']} test utterances one at a time): this "
                f"script's cache-aware loop gives the same tokens as `StreamingRunner.streaming` on "
                f"{s['same']}/{s['utts']}; WER cache-aware {100 * s['ca_wer']:.1f} %, buffered "
                f"{100 * s['bu_wer']:.1f} % (buffered attends to the silence padding before the start; "
                "cache-aware masks its empty cache)."]
    out += ["", "**(b) Cache-aware cost vs audio length, and state per stream.** Cache = the three encoder cache "
            "tensors (`cache_last_channel`, `cache_last_time`, `cache_last_channel_len`) returned by the last step, "
            "bytes / N; decoder state = the tensors in one hypothesis' `dec_state` (LSTM state + last output).",
            "", "| model | mode | N | audio (s) | steps | compute (s per audio s) | each rep | cache bytes per stream "
            "| cache shapes | decoder state bytes per stream | others (cores, max) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["growth"]:
        out.append(f"| {r['model']} | {r['mode']} | {r['n']} | {r['audio_s']:g} | {r['steps']} | {r['cost']:.4f} | "
                   f"{', '.join(f'{x:.4f}' for x in r['costs'])} | {r['cache']:,.0f} | "
                   f"{' '.join('x'.join(map(str, s)) for s in r['shapes'])} | {r['decoder']:,.0f} | "
                   f"{r['others']:.2f} |")
    out += ["", "**(c) Most concurrent streams in real time.** One batch of N streams; a step = encoder step + greedy "
            "RNN-T for all N; real time when the p95 step time <= the chunk. N doubles from 1, then bisection "
            "(to within 1 stream or 3 %).",
            "", "| model | mode | max N in real time | p50 step (ms) | p95 step (ms) | probes (N: p95 ms) | "
            "others (cores, max) |", "|---|---|---|---|---|---|---|"]
    for r in results["realtime"]:
        n = f"**{r['max_n']}**" + (" (cap reached)" if r["capped"] else "")
        at = "" if r["max_n"] else " at N=1"
        probes = ", ".join(f"{k}: {v[1] * 1000:.0f}" for k, v in r["probes"].items())
        out.append(f"| {r['model']} | {r['mode']} | {n} | {r['p50'] * 1000:.1f}{at} | {r['p95'] * 1000:.1f}{at} | "
                   f"{probes} | {r['others']:.2f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-model", default=DEMO_MODEL, help="the trained demo .nemo")
    parser.add_argument("--full", action=argparse.BooleanOptionalAction, default=True,
                        help="also the full 24-layer d_model-1024 geometry (random weights)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a ~2 minute smoke check")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--quiet-wait", type=float, default=300,
                        help="seconds to wait, before each section, for other processes to go quiet")
    parser.add_argument("--write", action="store_true", help=f"write the '{TITLE}' section of BENCHMARKS.md")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    cuts = DATA / "cuts_test.jsonl.gz"
    if not cuts.exists():
        raise SystemExit(f"no demo test cuts at {cuts}: run `make demo-data` first")

    import torch

    torch.set_num_threads(args.threads)
    load_before, ticks_before, wall = os.getloadavg(), cpu_ticks(), time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - wall:6.0f} s] {msg}", flush=True)

    log(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}; {args.threads} torch threads")
    from streamtune.models import load_model
    from streamtune.streaming import StreamingRunner

    speech = Speech(cuts)
    sizes = plans(args.quick)
    others = Others(log, args.quiet_wait)
    results = {"compare": [], "sanity": [], "growth": [], "realtime": []}
    described = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ["demo", "full"] if args.full else ["demo"]:
            model = load_model(args.demo_model) if name == "demo" else build_full(Path(tmp))
            params = sum(p.numel() for p in model.parameters())
            enc = model.encoder
            described[name] = (f"{params / 1e6:.1f} M parameters, {len(enc.layers)} layers, d_model {enc.d_model}, "
                               f"{model.cfg.preprocessor.features} mels, vocabulary {model.tokenizer.vocab_size} + blank")
            log(f"{name}: {described[name]}")
            runner = StreamingRunner(model, batch_size=1)
            if name == "full":
                silence_joint(model)
                described[name] += ("; random weights, blank logit raised so that greedy decoding emits (almost) no "
                                    "tokens: its decoding time is a lower bound (see tokens/s)")
            plan = sizes[name]
            if name == "demo":
                results["sanity"].append(sanity(model, runner, speech, 560, 8 if args.quick else 20))
            results["compare"] += compare(name, model, runner, speech, plan, others, log)
            results["growth"] += growth(name, model, runner, speech, plan, others, log)
            results["realtime"] += realtime(name, model, runner, speech, plan, others, log)
            del model, runner, enc  # free the weights before the next model

    elapsed = time.perf_counter() - wall
    load_after, ticks_after = os.getloadavg(), cpu_ticks()
    busy_all = others_seconds(ticks_before, ticks_after)
    table = report(results)
    command = shlex.join(["python", "bench/streaming.py", *argv])
    sections = [r["others"] for key in ("compare", "growth", "realtime") for r in results[key]]
    header = [
        f"`{command}` — {elapsed / 60:.1f} min in all ({others.waited_s / 60:.1f} min of it checking for or "
        f"waiting on other processes; {others.discarded} disturbed repetitions or probes redone); {args.threads} torch threads on {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__}, fp32, CPU.",
        f"Load average (1/5/15 min) before {' '.join(f'{x:.2f}' for x in load_before)}, after "
        f"{' '.join(f'{x:.2f}' for x in load_after)}; other processes used {busy_all / elapsed:.2f} cores on "
        f"average over the whole run (waits included), at most {max(sections):.2f} during a kept measurement.",
    ]
    if max(sections) > 0.2:
        header.append("**Warning: other processes used CPU during kept measurements (see the \"others\" columns); "
                      "absolute times there are inflated. Ratios come from interleaved repetitions and suffer less.**")
    header.append("Models: " + "; ".join(f"{k}: {v}" for k, v in described.items()) + ".")
    header += [HOW, "Findings (read off the tables below):\n\n" + "\n".join(f"* {x}" for x in findings(results))]
    text = "\n\n".join(header) + "\n\n" + table
    print(text)
    if args.write:
        from bench import write_section

        write_section(TITLE, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
