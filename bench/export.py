"""Export: PyTorch eager vs ONNX Runtime (fp32, int8) streaming on CPU, and what int8 costs in WER.

    python bench/export.py [--demo-model PATH] [--full/--no-full] [--quick] [--threads N] [--write]

Three sides decode the same precomputed, export-fed features (``StreamingRunner(feeding="export")``:
silence-padded start, fixed cache + chunk windows), one stream at a time (batch 1):

* ``pytorch``: ``StreamingRunner(model, batch_size=1, feeding="export").streaming(mode, feats)`` (NeMo's
  ``cache_aware_stream_step`` + NeMo greedy_batch RNN-T, eager);
* ``ort-fp32``: ``export.onnx_decoder.OrtStreamingDecoder`` over ``export_mode``'s encoder / decoder / joiner;
* ``ort-int8``: the same over ``quantize_dir``'s int8 dynamic quantisation of those files.

Torch and ONNX Runtime get the same ``--threads`` (``torch.set_num_threads``, ORT ``intra_op_num_threads``).
Compute = wall time of the decoding calls (features excluded: computed once beforehand, shared by all sides);
RTFx = seconds of audio / seconds of compute (the audio seconds exclude the silence padding). The encoder's
share is timed inside the same calls: PyTorch's ``encoder.cache_aware_stream_step`` and the ORT encoder
session's ``run`` are wrapped with a timer. Repetitions rotate the order of the three sides (ABC, BCA, CAB,
...) so that machine noise hits all of them; medians are reported. A repetition during which other processes
used more than 0.3 cores is redone (at most twice) after waiting for them.

Models: (a) the demo model on the whole demo test set, every chunk mode (WER of fp32 vs int8 ONNX from the same
runs); (b) the target's full geometry (24 layers, d_model 1024, 128 mels; ``bench.geometry.FULL`` on the demo
recipe, demo tokenizer) with random weights, on demo test utterances concatenated into one stream. A random-weight
joint makes greedy RNN-T emit up to ``max_symbols`` tokens on every frame, so its decoding cost is inflated far
beyond a trained model's; the encoder-only columns are the numbers that carry over to a trained model.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import OTHERS_LIMIT, Watch, add_model_args, cpu_ticks, other_benches, others_seconds, publish, wait_quiet  # noqa: E402
from bench.export_report import SIDES, findings, report  # noqa: E402
from bench.full_model import build_full  # noqa: E402
from streamtune.model.chunks import mode_by_ms  # noqa: E402

RECIPE = REPO / "recipes/demo/tiny_cpu.yaml"
DATA = REPO / "outputs/demo/data"
TITLE = "Export: PyTorch vs ONNX Runtime streaming"


# ----- timers -----------------------------------------------------------------------------------
class TimedSession:
    """An ONNX Runtime session whose ``run`` calls are timed (the rest passes through)."""

    def __init__(self, session):
        self.session, self.seconds = session, 0.0

    def run(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self.session.run(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        return out

    def __getattr__(self, name):
        return getattr(self.session, name)


# ----- models and export ------------------------------------------------------------------------
def dir_mb(path: Path, encoder_only: bool = False) -> float:
    """Size of a mode directory's graphs (external data files included), MB."""
    files = [p for p in path.iterdir() if p.suffix != ".txt"]
    if encoder_only:
        files = [p for p in files if p.name not in ("decoder.onnx", "joiner.onnx")]
    return sum(p.stat().st_size for p in files) / 1e6


def _failure(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if "/export/" in f.filename or "/onnx/" in f.filename]
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in (ours or frames)[::-1][:4])
    return f"{type(err).__name__}: {str(err).strip() or '(no message)'} (at {where})"


def export_both(model, mode, root: Path, log) -> dict:
    """fp32 (``export_mode``) and int8 (``quantize_dir``) directories for one mode, with what went wrong."""
    from streamtune.export.onnx_export import export_mode, quantize_dir

    fp32, int8 = root / f"{mode.chunk_ms}ms", root / f"{mode.chunk_ms}ms-int8"
    info = {"fp32": fp32, "int8": int8, "quantize_error": None}
    t0 = time.perf_counter()
    export_mode(model, mode, fp32)
    info["export_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        quantize_dir(fp32, int8)
    except Exception as err:  # noqa: BLE001 - reported; the int8 side is then left out
        info["quantize_error"] = _failure(err)
        log(f"  quantize_dir failed: {info['quantize_error']}")
    info["quantize_s"] = time.perf_counter() - t0
    info["fp32_mb"], info["fp32_enc_mb"] = dir_mb(fp32), dir_mb(fp32, True)
    info["external_files"] = sum(1 for p in fp32.iterdir() if p.suffix not in (".onnx", ".txt"))
    if info["quantize_error"] is None:
        info["int8_mb"], info["int8_enc_mb"] = dir_mb(int8), dir_mb(int8, True)
    return info


# ----- measurement ------------------------------------------------------------------------------
def measure(model, mode, feats: list, info: dict, threads: int, max_symbols: int, reps: int, quiet_wait: float,
            log) -> dict:
    """Interleaved repetitions of the three sides on ``feats``; per side the tokens and median times."""
    from streamtune.export.onnx_decoder import OrtStreamingDecoder
    from streamtune.streaming.runner import StreamingRunner

    runner = StreamingRunner(model, batch_size=1, feeding="export")
    feats_np = [f.numpy() for f in feats]
    decoders = {"ort-fp32": OrtStreamingDecoder(info["fp32"], max_symbols=max_symbols, threads=threads)}
    if info["quantize_error"] is None:
        decoders["ort-int8"] = OrtStreamingDecoder(info["int8"], max_symbols=max_symbols, threads=threads)
    for dec in decoders.values():
        dec.encoder = TimedSession(dec.encoder)

    def run(side: str, items: list) -> tuple[list, float, float]:
        """(tokens per utterance, total seconds, encoder seconds)."""
        if side == "pytorch":
            encoder_s = []
            t0 = time.perf_counter()
            out = runner.streaming(mode, [feats[i] for i in items], on_step=lambda s: encoder_s.append(s.encoder_s))
            return out.tokens, time.perf_counter() - t0, sum(encoder_s)
        dec = decoders[side]
        dec.encoder.seconds = 0.0
        tokens = []
        t0 = time.perf_counter()
        for i in items:
            tokens.append(dec.decode(feats_np[i])[0])
        return tokens, time.perf_counter() - t0, dec.encoder.seconds

    sides = [s for s in SIDES if s == "pytorch" or s in decoders]
    everything = list(range(len(feats)))
    shortest = min(everything, key=lambda i: feats[i].shape[1])
    warm = [feats[shortest][:, :300]]  # warm-up: at most 3 s of the shortest utterance, untimed
    for side in sides:
        if side == "pytorch":
            runner.streaming(mode, warm)
        else:
            decoders[side].decode(warm[0].numpy())
    times = {side: [] for side in sides}
    tokens = {}
    changed = {side: 0 for side in sides}
    disturbed, redone = [], 0
    for rep in range(reps):
        order = sides[rep % len(sides):] + sides[: rep % len(sides)]
        for attempt in range(3):
            with Watch() as watch:
                out = {side: run(side, everything) for side in order}
            cores = watch.others
            if not watch.disturbed or attempt == 2:
                break
            redone += 1
            log(f"  rep {rep + 1} disturbed (others used {cores:.2f} cores): redone after a wait")
            wait_quiet(quiet_wait, log)
        disturbed.append(cores)
        for side in sides:
            toks, total, enc = out[side]
            times[side].append((total, enc))
            if side not in tokens:
                tokens[side] = toks
            elif toks != tokens[side]:
                changed[side] += 1
        log(f"  rep {rep + 1} ({' '.join(order)}): " + ", ".join(
            f"{side} {out[side][1]:.2f} s (enc {out[side][2]:.2f})" for side in sides) + f"; others {cores:.2f} cores")
    result = {"tokens": tokens, "others": max(disturbed), "redone": redone, "changed": changed, "sides": {}}
    for side in sides:
        result["sides"][side] = {
            "total": statistics.median(t for t, _ in times[side]),
            "enc": statistics.median(e for _, e in times[side]),
            "reps": [t for t, _ in times[side]],
        }
    return result


def wer(refs: list[str], hyps: list[str]) -> float:
    from streamtune.evaluation.metrics import corpus_errors

    return corpus_errors(refs, hyps)[0].wer


# ----- one model --------------------------------------------------------------------------------
def bench_model(name: str, model, utts: list, refs: list[str] | None, modes_ms: list[int], reps: int, threads: int,
                root: Path, quiet_wait: float, log) -> list[dict]:
    """Export, quantise and time every mode of one model; WER per side when ``refs`` are given."""
    from streamtune.streaming.runner import StreamingRunner

    max_symbols = int(model.cfg.decoding.get("greedy", {}).get("max_symbols", 10) or 10)
    export_fed = StreamingRunner(model, batch_size=1, feeding="export")
    feats = [export_fed.features(u) for u in utts]  # computed once, shared by every side and mode
    audio_s = sum(len(u) for u in utts) / 16000
    text = export_fed.texts
    rows = []
    for ms in modes_ms:
        mode = mode_by_ms(model, ms)
        log(f"{name} {mode}: exporting")
        info = export_both(model, mode, root / name, log)
        log(f"  exported in {info['export_s']:.0f} s, quantised in {info['quantize_s']:.0f} s; timing {reps} reps")
        wait_quiet(quiet_wait, log)
        res = measure(model, mode, feats, info, threads, max_symbols, reps, quiet_wait, log)
        row = {"model": name, "ms": ms, "mode": str(mode), "audio_s": audio_s, "utts": len(utts), "info": info,
               "res": res, "max_symbols": max_symbols}
        toks = res["tokens"]
        row["same_fp32"] = sum(a == b for a, b in zip(toks["pytorch"], toks["ort-fp32"]))
        if "ort-int8" in toks:
            row["same_int8"] = sum(a == b for a, b in zip(toks["ort-fp32"], toks["ort-int8"]))
        row["emitted"] = {side: sum(len(t) for t in toks[side]) for side in toks}
        row["frames"] = sum(int(np.ceil(f.shape[1] / model.encoder.subsampling_factor)) for f in feats)
        if refs is not None:
            row["wer"] = {side: wer(refs, text(toks[side])) for side in toks}
        rows.append(row)
        del res["tokens"]
        for path in (info["fp32"], info["int8"]):  # the full model's directories are GB each
            if path.exists():
                for p in path.iterdir():
                    p.unlink()
                path.rmdir()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser, "small sizes: a smoke check")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads = ONNX Runtime intra-op threads (default 1: on a shared 2-core machine "
                             "one busy process stalls 2-thread runs many times over, and unequally per runtime)")
    parser.add_argument("--quiet-wait", type=float, default=None,
                        help="seconds to wait, before each mode, for other processes to go quiet "
                             "(120; 10 with --quick)")
    parser.add_argument("--write", action="store_true", help=f"write the '{TITLE}' section of BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.quiet_wait is None:
        args.quiet_wait = 10 if args.quick else 120
    argv = sys.argv[1:] if argv is None else argv
    cuts = DATA / "cuts_test.jsonl.gz"
    if not cuts.exists():
        raise SystemExit(f"no demo test cuts at {cuts}: run `make demo-data` first")

    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    load_before, ticks_before, wall = os.getloadavg(), cpu_ticks(), time.perf_counter()
    benches_before = other_benches()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - wall:6.0f} s] {msg}", flush=True)

    log(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}; {args.threads} threads")
    for b in benches_before:
        log(f"  WARNING: another benchmark is running: {b}")
    from streamtune.data.reading import load_utterances
    from streamtune.model.build import load_model

    test = load_utterances(cuts)
    demo_utts = test[:15] if args.quick else test
    demo_modes = [560, 160] if args.quick else [1120, 560, 160, 80]
    full_target_s = 4.0 if args.quick else 10.0
    full_modes = [560] if args.quick else [560, 160]
    rows, described, notes = [], {}, []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        model = load_model(args.demo_model)
        described["demo"] = (f"`{args.demo_model}`, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M "
                             f"parameters, on the demo test set ({len(demo_utts)} utterances, "
                             f"{sum(len(u.audio) for u in demo_utts) / 16000:.1f} s)")
        rows += bench_model("demo", model, [u.audio for u in demo_utts], [u.text for u in demo_utts], demo_modes,
                            2 if args.quick else 5, args.threads, Path(tmp), args.quiet_wait, log)
        del model
        if args.full:
            stream, total = [], 0.0
            for u in test:
                if total >= full_target_s:
                    break
                stream.append(u.audio)
                total += len(u.audio) / 16000
            stream = np.concatenate(stream)
            model = build_full(DATA / "tokenizer", 24)
            enc = model.encoder
            name = f"full ({len(enc.layers)} layers)"
            described[name] = (f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters "
                               f"({sum(p.numel() for p in enc.parameters()) / 1e6:.0f} M encoder), "
                               f"{len(enc.layers)} layers, d_model {enc.d_model}, "
                               f"{model.cfg.preprocessor.features} mels, demo tokenizer ({model.tokenizer.vocab_size} "
                               f"+ blank), random weights, on {len(stream) / 16000:.1f} s of demo test utterances "
                               "concatenated into one stream")
            log(f"{name}: {described[name]}")
            try:
                rows += bench_model(name, model, [stream], None, full_modes, 1 if args.quick else 3, args.threads,
                                    Path(tmp), args.quiet_wait, log)
            except Exception as err:  # noqa: BLE001 - the full export failing is a result, not a crash
                notes.append(f"The 24-layer model could not be measured: {_failure(err)}. Fell back to 12 layers.")
                log(notes[-1])
                del model
                model = build_full(DATA / "tokenizer", 12)
                name = "full-geometry 12-layer variant"
                described[name] = "as the full geometry but 12 layers (the 24-layer export failed; see above)"
                rows += bench_model(name, model, [stream], None, full_modes, 1 if args.quick else 3, args.threads,
                                    Path(tmp), args.quiet_wait, log)
            del model

    elapsed = time.perf_counter() - wall
    load_after, ticks_after = os.getloadavg(), cpu_ticks()
    benches_after = other_benches()
    busy_all = others_seconds(ticks_before, ticks_after)
    command = shlex.join(["python", "bench/export.py", *argv])
    table = report(rows)
    worst = max(r["res"]["others"] for r in rows)
    redone = sum(r["res"]["redone"] for r in rows)
    header = [
        f"`{command}` — {elapsed / 60:.1f} min in all; {args.threads} torch threads = {args.threads} ONNX Runtime "
        f"intra-op threads (inter-op 1) on {os.cpu_count()} cores ({platform.processor() or platform.machine()}); "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; CPU, batch 1 (one stream at a time).",
        f"Load average (1/5/15 min) before {' '.join(f'{x:.2f}' for x in load_before)}, after "
        f"{' '.join(f'{x:.2f}' for x in load_after)}; other processes used {busy_all / elapsed:.2f} cores on average "
        f"over the whole run, at most {worst:.2f} during a kept repetition ({redone} disturbed repetitions redone)."
        + (f" Other benchmarks running at the start: {len(benches_before)}, at the end: {len(benches_after)}."
           if benches_before or benches_after else " No other `bench/` process was running at the start or end."),
    ]
    busy = [why for why, hit in [
        (f"other processes used up to {worst:.2f} cores during a kept repetition", worst > OTHERS_LIMIT),
        (f"1-minute load average {load_before[0]:.2f} at the start", load_before[0] > 0.5),
        ("another benchmark was running", bool(benches_before or benches_after))] if hit]
    if busy:
        header.append(f"**Warning: the machine was busy ({'; '.join(busy)}); absolute times may be inflated. "
                      "Ratios come from interleaved repetitions and suffer less.**")
    header.append("Models: " + "; ".join(f"{k}: {v}" for k, v in described.items()) + ".")
    full_rows = [r for r in rows if r["model"] != "demo"]
    for r in full_rows:
        i = r["info"]
        if i["external_files"]:
            notes.append(f"{r['model']}, {r['ms']} ms: the encoder is over 2 GB, so its weights live beside it in "
                         f"{i['external_files']} external-data file(s) (`encoder.onnx.data`, written by `export_mode`)"
                         + ("." if not i["quantize_error"] else f"; `quantize_dir` failed: `{i['quantize_error']}`."))
    demo_rows = [r for r in rows if r["model"] == "demo"]
    demo_rate = "" if not demo_rows else (
        "; the trained demo model emitted "
        f"{sum(r['emitted']['pytorch'] for r in demo_rows) / sum(r['frames'] for r in demo_rows):.2f}"
        " per frame")
    if full_rows:
        r = full_rows[0]
        notes.append(
            f"Random weights: greedy RNN-T emitted {r['emitted']['pytorch']} tokens over ~{r['frames']} encoder "
            f"frames ({r['emitted']['pytorch'] / max(r['frames'], 1):.1f} per frame, max_symbols = "
            f"{r['max_symbols']}), so each frame costs up to {r['max_symbols']} prediction-network steps and "
            f"{r['max_symbols'] + 1} joint calls" + demo_rate + ". The whole-pipeline columns "
            "of the full model are dominated by that inflated decoding; its encoder columns are the ones that "
            "carry over to a trained model. Its WER is meaningless and not reported.")
    how = ("How: features computed once per utterance (export feeding), outside the timed calls. Per mode, the "
           "fp32 directory is written by `streamtune.export.onnx_export.export_mode` and the int8 one by "
           "`streamtune.export.onnx_export.quantize_dir` "
           "(int8 dynamic: weights int8, activations quantised on the fly) into a temporary directory. One warm-up "
           "call per side, then repetitions in rotated order; each repetition decodes every utterance one at a "
           "time on each side. \"compute\" is the wall time of the decoding calls (PyTorch: one "
           "`StreamingRunner.streaming` call over all utterances with batch_size 1; ORT: `OrtStreamingDecoder.decode`"
           " per utterance); \"encoder\" is the part of it inside `encoder.cache_aware_stream_step` (PyTorch) or the "
           "encoder session's `run` (ORT); the rest is greedy RNN-T (NeMo greedy_batch on PyTorch, the Python loop "
           "over decoder/joiner sessions on ORT) and bookkeeping. RTFx = audio seconds / compute seconds (silence "
           "padding not counted as audio). WER: `streamtune.evaluation.metrics.corpus_errors` (Whisper-normalised) "
           "over the same utterances, from the timed runs' tokens (every repetition gave the same tokens unless "
           "noted).")
    changed = [f"{r['model']} {r['ms']} ms {side}" for r in rows for side, n in r["res"]["changed"].items() if n]
    if changed:
        notes.append("Tokens differed between repetitions for: " + ", ".join(changed) + ".")
    parts = header + [how]
    if notes:
        parts.append("Notes:\n\n" + "\n".join(f"* {n}" for n in notes))
    parts.append("Read off the tables:\n\n" + "\n".join(f"* {n}" for n in findings(rows)))
    text = "\n\n".join(parts) + "\n\n" + table
    publish(TITLE, text, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
