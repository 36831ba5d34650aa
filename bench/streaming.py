"""Streaming cost on CPU: cache-aware vs buffered at equal latency, growth with audio length, concurrent streams.

    python bench/streaming.py [--demo-model PATH] [--full/--no-full] [--quick] [--threads N] [--quiet-wait S] [--write]

Two models, measured in one run: the demo model (``--demo-model``, a trained ``.nemo``) and, with ``--full`` (the
default), the target's full geometry (``bench.geometry.FULL``) with random weights and a 1024-piece
SentencePiece vocabulary trained on seeded random letter strings (only its size matters for cost); its blank logit
is raised so that greedy decoding emits almost no tokens (a random joint would emit max_symbols tokens on every
frame), which makes its decoding time a lower bound. Input is real speech-like audio: the demo test utterances
concatenated and tiled, each stream starting at a different offset. Features are computed beforehand for both
sides (the same work on both); "compute" is the encoder call plus the greedy RNN-T call of every step, summed.

Cache-aware is ``StreamingRunner.streaming`` itself, timed through its per-step hook (``on_step``: the encoder step
and the greedy RNN-T call of each step, for all streams). Buffered is NeMo's buffered RNN-T inference
re-implemented on the same features (``bench/buffered.py``).

(a) Cache-aware vs buffered, per chunk mode, N concurrent streams in one batch on both sides, repetitions
    alternating the two sides (AB, BA, ...); medians.
(b) Cache-aware cost at growing audio lengths, and the bytes per stream of the encoder caches and of the RNN-T
    decoder state (fixed-size tensors: the cache does not grow with the audio).
(c) The most concurrent streams kept in real time: N streams in one batch; real time when the p95 step time
    (steps after the first two) is <= the chunk. N doubles from 1, then bisection.

A repetition (or probe) during which other processes used more than ``bench.OTHERS_LIMIT`` cores is redone after
they go quiet.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import Guard, add_model_args, cpu_ticks, others_seconds, publish, run_header  # noqa: E402
from bench.buffered import buffer_decoding, buffered, buffered_window, silence_level  # noqa: E402
from bench.full_model import build_full, random_tokenizer, silence_joint  # noqa: E402
from bench.streaming_report import report  # noqa: E402
from streamtune.model.chunks import att_context, mode_by_ms  # noqa: E402

DATA = REPO / "outputs/demo/data"
TITLE = "Streaming: cache-aware vs buffered"


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


class Speech:
    """The demo test utterances concatenated; stream ``i`` starts at a different offset and wraps around."""

    def __init__(self, cuts: Path):
        from streamtune.data.reading import SAMPLE_RATE, load_utterances

        self.utts = load_utterances(cuts)
        self.audio = np.concatenate([u.audio for u in self.utts])
        self.rate = SAMPLE_RATE
        self._cache: dict = {}

    def features(self, runner, seconds: float, n: int) -> list:
        """Mel features ``[F, T]`` of ``n`` distinct streams of ``seconds`` each."""
        key = (id(runner.model), seconds, n)
        if key not in self._cache:
            samples = int(seconds * self.rate)
            step = len(self.audio) // max(n, 1)
            self._cache[key] = [runner.features(np.take(self.audio, np.arange(i * step, i * step + samples),
                                                        mode="wrap")) for i in range(n)]
        return self._cache[key]


def cache_aware(model, mode, feats: list, step_times: list, max_steps: int = 0, give_up=None):
    """``StreamingRunner.streaming`` on ``feats`` as one batch of streams, each step's ``(encoder_s, decoder_s)``
    appended to ``step_times`` by the runner's hook; ``max_steps`` / ``give_up(step_times)`` end it early."""
    from streamtune.streaming.runner import StreamingRunner

    def on_step(timing) -> bool:
        step_times.append((timing.encoder_s, timing.decoder_s))
        return bool(max_steps and len(step_times) >= max_steps) or (give_up is not None and give_up(step_times))

    return StreamingRunner(model, batch_size=len(feats)).streaming(mode, feats, on_step=on_step)


def per_audio_second(times: list, audio_s: float) -> tuple[float, float]:
    """(encoder, decoder) seconds of compute per second of audio."""
    return sum(t[0] for t in times) / audio_s, sum(t[1] for t in times) / audio_s


def compare(name, model, runner, speech, plan: Plan, guard: Guard, log) -> list[dict]:
    """(a): cache-aware vs buffered compute per audio second, interleaved repetitions."""
    import torch

    decoding = buffer_decoding(model)
    fill = silence_level(model)
    rows = []
    for ms in plan.modes_ms:
        mode = mode_by_ms(model, ms)
        window = buffered_window(mode.chunk_frames, 0, mode.frame_ms)
        for n in plan.streams:
            feats = speech.features(runner, plan.audio_s[ms], n)
            stacked = torch.stack(feats)
            audio = n * feats[0].shape[1] / 100  # stream-seconds (10 ms hop)

            def ours(times, limit=0):
                out = cache_aware(model, mode, feats, times, max_steps=limit)
                return out.tokens, len(times)

            def theirs(times, limit=0):
                with att_context(model, mode) as enc, torch.no_grad():
                    return buffered(model, enc, decoding, stacked, window, times, fill, max_steps=limit)

            sides = {"cache-aware": ours, "buffered": theirs}

            def one_rep(order):
                out = {}
                for side in order:
                    times: list = []
                    tokens, steps = sides[side](times)
                    out[side] = (per_audio_second(times, audio), steps, sum(len(t) for t in tokens) / audio)
                return out

            guard.wait_quiet()
            for run in sides.values():  # warm-up: a few steps of each
                run([], 3)
            reps, load = [], []
            for rep in range(plan.reps):
                order = list(sides) if rep % 2 == 0 else list(sides)[::-1]
                out, cores = guard.run(f"{name} {mode} N={n} rep {rep + 1}", lambda: one_rep(order))
                reps.append(out)
                load.append(cores)
            total = {side: [sum(r[side][0]) for r in reps] for side in sides}
            enc_only = {side: [r[side][0][0] for r in reps] for side in sides}
            ratios = [b / c for b, c in zip(total["buffered"], total["cache-aware"])]
            enc_ratio = statistics.median(b / c for b, c in zip(enc_only["buffered"], enc_only["cache-aware"]))
            row = dict(model=name, mode=str(mode), ms=ms, n=n, audio_s=feats[0].shape[1] / 100, window=window,
                       frame_ms=mode.frame_ms, cache_aware_s=statistics.median(total["cache-aware"]),
                       buffered_s=statistics.median(total["buffered"]), ratio=statistics.median(ratios), ratios=ratios,
                       enc_ratio=enc_ratio, cache_aware_encoder_s=statistics.median(enc_only["cache-aware"]),
                       buffered_encoder_s=statistics.median(enc_only["buffered"]),
                       steps={side: reps[-1][side][1] for side in sides},
                       tokens={side: reps[-1][side][2] for side in sides}, others=max(load))
            rows.append(row)
            log(f"  (a) {name} {mode} N={n}: cache-aware {row['cache_aware_s']:.4f}, "
                f"buffered {row['buffered_s']:.4f} s/s, ratio "
                f"{row['ratio']:.2f} (each rep: {', '.join(f'{r:.2f}' for r in ratios)}; encoder only "
                f"{enc_ratio:.2f}); others up to {max(load):.2f} cores")
    return rows


def sanity(model, runner, speech, ms: int, max_utts: int = 20) -> dict:
    """Both sides decode: WER of cache-aware streaming (the runner) and of buffered, one utterance at a time."""
    import torch

    from streamtune.evaluation.metrics import ErrorCounts, word_errors

    mode = mode_by_ms(model, ms)
    utts = speech.utts[:max_utts]
    feats = [runner.features(u.audio) for u in utts]
    ours = runner.streaming(mode, feats)
    decoding, fill = buffer_decoding(model), silence_level(model)
    window = buffered_window(mode.chunk_frames, 0, mode.frame_ms)
    ca_err, bu_err = ErrorCounts(), ErrorCounts()
    with att_context(model, mode) as enc, torch.no_grad():
        for u, f, text in zip(utts, feats, ours.texts):
            ca_err += word_errors(u.text, text)
            tokens, _ = buffered(model, enc, decoding, f[None], window, [], fill)
            bu_err += word_errors(u.text, model.tokenizer.ids_to_text(tokens[0]) if tokens[0] else "")
    return dict(mode=str(mode), utts=len(utts), ca_wer=ca_err.wer, bu_wer=bu_err.wer)


def state_bytes(model, mode) -> tuple[float, float, list]:
    """Bytes per stream of the three encoder cache tensors and of the RNN-T decoder state (fixed sizes)."""
    import torch

    with att_context(model, mode) as enc:
        caches = enc.get_initial_cache_state(batch_size=1)
    state = model.decoder.initialize_state(torch.zeros(1, 1))
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    return nbytes(caches), nbytes(state), [tuple(c.shape) for c in caches]


def growth(name, model, runner, speech, plan: Plan, guard: Guard, log) -> list[dict]:
    """(b): cache-aware compute per audio second at growing audio lengths."""
    mode = mode_by_ms(model, plan.growth_mode_ms)
    n = plan.growth_streams
    per = {s: [] for s in plan.growth_lengths_s}
    steps, load = {}, {s: [] for s in plan.growth_lengths_s}
    cache, decoder, shapes = state_bytes(model, mode)
    guard.wait_quiet()
    cache_aware(model, mode, speech.features(runner, plan.growth_lengths_s[0], n), [], max_steps=4)  # warm-up
    for rep in range(plan.growth_reps):
        for seconds in plan.growth_lengths_s if rep % 2 == 0 else plan.growth_lengths_s[::-1]:
            feats = speech.features(runner, seconds, n)
            times: list = []

            def one_run():
                times.clear()
                return cache_aware(model, mode, feats, times)

            _, cores = guard.run(f"{name} {mode} {seconds:g} s rep {rep + 1}", one_run)
            per[seconds].append(sum(per_audio_second(times, n * feats[0].shape[1] / 100)))
            load[seconds].append(cores)
            steps[seconds] = len(times)
    rows = []
    for seconds in plan.growth_lengths_s:
        rows.append(dict(model=name, mode=str(mode), n=n, audio_s=seconds, cost=statistics.median(per[seconds]),
                         costs=per[seconds], others=max(load[seconds]), steps=steps[seconds], shapes=shapes,
                         cache=cache, decoder=decoder))
        log(f"  (b) {name} {mode} {seconds:g} s: {rows[-1]['cost']:.4f} s/s, cache {cache:.0f} B/stream {shapes}, "
            f"decoder state {decoder:.0f} B/stream")
    return rows


def realtime(name, model, runner, speech, plan: Plan, guard: Guard, log) -> list[dict]:
    """(c): most streams in one batch with p95 step time <= chunk; doubling then bisection."""
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
            feats = [pool[i % pool_size] for i in range(n)]

            def one_probe():
                cache_aware(model, mode, feats, [], max_steps=3)  # warm-up at this batch size
                times: list = []
                cache_aware(model, mode, feats, times, max_steps=plan.rt_steps + 2,
                            give_up=lambda t: sum(e + d > chunk_s for e, d in t[2:]) >= too_slow)
                return np.array([e + d for e, d in times[2:]])  # the first two steps differ (first chunk)

            timed, cores = guard.run(f"{name} {mode} N={n}", one_probe)
            load.append(cores)
            probes[n] = float(np.percentile(timed, 50)), float(np.percentile(timed, 95))
            ok = probes[n][1] <= chunk_s
            log(f"  (c) {name} {mode} N={n}: p50 {probes[n][0] * 1000:.1f} ms, p95 {probes[n][1] * 1000:.1f} ms "
                f"over {len(timed)} steps ({'real time' if ok else 'too slow'})")
            return ok

        guard.wait_quiet()
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser, "small sizes: a quick smoke check")
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

    from streamtune.model.build import load_model
    from streamtune.streaming.runner import StreamingRunner

    torch.set_num_threads(args.threads)
    ticks_before, wall = cpu_ticks(), time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - wall:6.0f} s] {msg}", flush=True)

    speech = Speech(cuts)
    sizes = plans(args.quick)
    guard = Guard(log, args.quiet_wait)
    results = {"compare": [], "sanity": [], "growth": [], "realtime": []}
    described = {}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for name in ["demo", "full"] if args.full else ["demo"]:
            model = load_model(args.demo_model) if name == "demo" else build_full(random_tokenizer(Path(tmp)))
            params = sum(p.numel() for p in model.parameters())
            enc = model.encoder
            described[name] = (f"{params / 1e6:.1f} M parameters, {len(enc.layers)} layers, d_model {enc.d_model}, "
                               f"{model.cfg.preprocessor.features} mels, "
                               f"vocabulary {model.tokenizer.vocab_size} + blank")
            log(f"{name}: {described[name]}")
            runner = StreamingRunner(model, batch_size=1)
            if name == "full":
                silence_joint(model)
                described[name] += ("; random weights, blank logit raised so that greedy decoding emits (almost) no "
                                    "tokens: its decoding time is a lower bound (see tokens/s)")
            plan = sizes[name]
            if name == "demo":
                results["sanity"].append(sanity(model, runner, speech, 560, 8 if args.quick else 20))
            results["compare"] += compare(name, model, runner, speech, plan, guard, log)
            results["growth"] += growth(name, model, runner, speech, plan, guard, log)
            results["realtime"] += realtime(name, model, runner, speech, plan, guard, log)
            del model, runner, enc  # free the weights before the next model

    elapsed = time.perf_counter() - wall
    busy_all = others_seconds(ticks_before, cpu_ticks())
    kept = max(r["others"] for key in ("compare", "growth", "realtime") for r in results[key])
    header = [run_header(shlex.join(["python", "bench/streaming.py", *argv]),
                         f"{elapsed / 60:.1f} min in all ({guard.waited_s / 60:.1f} min waiting on other processes; "
                         f"{guard.redone} disturbed repetitions or probes redone); "
                         f"torch {torch.__version__}, fp32, CPU; "
                         f"other processes used {busy_all / elapsed:.2f} cores on average over the whole run, at most "
                         f"{kept:.2f} during a kept measurement"),
              "Models: " + "; ".join(f"{k}: {v}" for k, v in described.items()) + "."]
    text = "\n\n".join(header) + "\n\n" + report(results)
    publish(TITLE, text, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
