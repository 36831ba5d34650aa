"""Export: PyTorch eager vs ONNX Runtime (fp32, int8) streaming on CPU, and what int8 costs in WER.

    python bench/export.py [--demo-model PATH] [--full/--no-full] [--quick] [--threads N] [--write]

Three sides decode the same precomputed, export-fed features (``StreamingRunner(feeding="export")``:
silence-padded start, fixed cache + chunk windows), one stream at a time (batch 1):

* ``pytorch``: ``StreamingRunner(model, batch_size=1, feeding="export").streaming(mode, feats)`` (NeMo's
  ``cache_aware_stream_step`` + NeMo greedy_batch RNN-T, eager);
* ``ort-fp32``: ``export.onnx.OrtStreamingDecoder`` over ``export_mode``'s encoder / decoder / joiner;
* ``ort-int8``: the same over ``quantize_dir``'s int8 dynamic quantisation of those files.

Torch and ONNX Runtime get the same ``--threads`` (``torch.set_num_threads``, ORT ``intra_op_num_threads``).
Compute = wall time of the decoding calls (features excluded: computed once beforehand, shared by all sides);
RTFx = seconds of audio / seconds of compute (the audio seconds exclude the silence padding). The encoder's
share is timed inside the same calls: PyTorch's ``encoder.cache_aware_stream_step`` and the ORT encoder
session's ``run`` are wrapped with a timer. Repetitions rotate the order of the three sides (ABC, BCA, CAB,
...) so that machine noise hits all of them; medians are reported. A repetition during which other processes
used more than 0.3 cores is redone (at most twice) after waiting for them.

Models: (a) the demo model on the whole demo test set, every chunk mode (WER of fp32 vs int8 ONNX from the same
runs); (b) the target's full geometry (24 layers, d_model 1024, 128 mels; ``FULL_GEOMETRY`` on the demo recipe,
demo tokenizer) with random weights, on demo test utterances concatenated into one stream. A random-weight
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

from bench import cpu_ticks, mode_by_ms, others_seconds  # noqa: E402
RECIPE = REPO / "recipes/demo/tiny_cpu.yaml"
DATA = REPO / "outputs/demo/data"
DEMO_MODEL = "outputs/demo/runs/tiny_cpu/latest/final.nemo"
TITLE = "Export: PyTorch vs ONNX Runtime streaming"
SIDES = ("pytorch", "ort-fp32", "ort-int8")
OTHERS_LIMIT = 0.3  # cores used by other processes during a repetition above which it is redone


# ----- machine ----------------------------------------------------------------------------------
def others_cores(since: tuple[int, int], seconds: float) -> float:
    return max(0.0, others_seconds(since, cpu_ticks()) / max(seconds, 1e-9))


def other_benches() -> list[str]:
    """Command lines of other python processes running a ``bench/`` script."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if args and Path(args[0]).name.startswith("python") and any("bench/" in a for a in args[1:]):
            found.append(f"{proc.name}: {' '.join(args).strip()}")
    return found


def wait_quiet(max_wait_s: float, log) -> float:
    """Wait (up to ``max_wait_s``) until other processes use <= OTHERS_LIMIT cores; returns the seconds waited."""
    start = time.monotonic()
    while True:
        ticks, t0 = cpu_ticks(), time.monotonic()
        time.sleep(2.0)
        load = others_cores(ticks, time.monotonic() - t0)
        if load <= OTHERS_LIMIT or time.monotonic() - start >= max_wait_s:
            return time.monotonic() - start
        log(f"  waiting: other processes use {load:.1f} cores")
        time.sleep(8)


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


class TimedEncoderStep:
    """Times ``encoder.cache_aware_stream_step`` while installed (an instance attribute shadowing the method)."""

    def __init__(self, encoder):
        self.encoder, self.seconds = encoder, 0.0
        self.original = encoder.cache_aware_stream_step

    def __enter__(self):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = self.original(*args, **kwargs)
            self.seconds += time.perf_counter() - t0
            return out

        self.encoder.cache_aware_stream_step = timed
        return self

    def __exit__(self, *exc):
        del self.encoder.cache_aware_stream_step


# ----- models and export ------------------------------------------------------------------------
def build_full(layers: int):
    import torch

    from streamtune.config import load_config
    from streamtune.models import build_model
    from tests.test_full_geometry_slow import FULL_GEOMETRY

    overrides = [o for o in FULL_GEOMETRY if not o.startswith("model.encoder.n_layers=")]
    overrides += [f"model.encoder.n_layers={layers}", "data.train=null", "data.dev=null",
                  f"data.tokenizer_dir={DATA / 'tokenizer'}"]
    torch.manual_seed(0)
    return build_model(load_config(str(RECIPE), overrides), log=lambda *_: None).eval()


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
    from export.onnx import export_mode, quantize_dir

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
    from export.onnx import OrtStreamingDecoder
    from streamtune.streaming import StreamingRunner

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
            with TimedEncoderStep(model.encoder) as timer:
                t0 = time.perf_counter()
                out = runner.streaming(mode, [feats[i] for i in items])
                total = time.perf_counter() - t0
            return out.tokens, total, timer.seconds
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
            ticks, t0 = cpu_ticks(), time.monotonic()
            out = {side: run(side, everything) for side in order}
            cores = others_cores(ticks, time.monotonic() - t0)
            if cores <= OTHERS_LIMIT or attempt == 2:
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
    from streamtune.metrics import corpus_errors

    return corpus_errors(refs, hyps)[0].wer


# ----- one model --------------------------------------------------------------------------------
def bench_model(name: str, model, utts: list, refs: list[str] | None, modes_ms: list[int], reps: int, threads: int,
                root: Path, quiet_wait: float, log) -> list[dict]:
    """Export, quantise and time every mode of one model; WER per side when ``refs`` are given."""
    from streamtune.streaming import StreamingRunner

    max_symbols = int(model.cfg.decoding.get("greedy", {}).get("max_symbols", 10) or 10)
    fed = StreamingRunner(model, batch_size=1, feeding="export")
    feats = [fed.features(u) for u in utts]  # computed once, shared by every side and mode
    audio_s = sum(len(u) for u in utts) / 16000
    text = fed._texts
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


# ----- report -----------------------------------------------------------------------------------
def fmt_rtfx(audio_s: float, seconds: float) -> str:
    return f"{audio_s / seconds:.1f}" if seconds > 0 else "-"


def report(rows: list[dict]) -> str:
    out = ["| model | chunk | side | compute (s, median) | RTFx | encoder (s) | encoder RTFx | encoder share "
           "| speed-up vs PyTorch (all / encoder) | reps (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = r["res"]["sides"]["pytorch"]
        for side, s in r["res"]["sides"].items():
            speed = "-" if side == "pytorch" else f"{base['total'] / s['total']:.2f}x / {base['enc'] / s['enc']:.2f}x"
            out.append(f"| {r['model']} | {r['ms']} ms | {side} | {s['total']:.2f} | {fmt_rtfx(r['audio_s'], s['total'])} "
                       f"| {s['enc']:.2f} | {fmt_rtfx(r['audio_s'], s['enc'])} | {100 * s['enc'] / s['total']:.0f} % "
                       f"| {speed} | {', '.join(f'{x:.2f}' for x in s['reps'])} |")
    out += ["", "| model | chunk | fp32 dir (MB; encoder) | int8 dir (MB; encoder) | export / quantise (s) "
            "| ORT fp32 tokens == PyTorch | int8 tokens == fp32 | tokens emitted (PyTorch / fp32 / int8) "
            "| WER PyTorch / fp32 / int8 | int8 - fp32 WER | others (cores, max) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        i = r["info"]
        int8 = f"{i['int8_mb']:.1f} ({i['int8_enc_mb']:.1f})" if "int8_mb" in i else "failed"
        emitted = " / ".join(str(r["emitted"].get(s, "-")) for s in SIDES)
        if "wer" in r:
            w = r["wer"]
            wers = " / ".join(f"{100 * w[s]:.2f} %" if s in w else "-" for s in SIDES)
            delta = f"{100 * (w['ort-int8'] - w['ort-fp32']):+.2f} points" if "ort-int8" in w else "-"
        else:
            wers, delta = "n/a (random weights)", "-"
        out.append(f"| {r['model']} | {r['ms']} ms | {i['fp32_mb']:.1f} ({i['fp32_enc_mb']:.1f}) | {int8} "
                   f"| {i['export_s']:.0f} / {i['quantize_s']:.0f} | {r['same_fp32']}/{r['utts']} "
                   f"| {r.get('same_int8', '-')}/{r['utts']} | {emitted} | {wers} | {delta} | {r['res']['others']:.2f} |")
    return "\n".join(out)


def _span(xs: list[float], unit: str = "x") -> str:
    lo, hi = min(xs), max(xs)
    return f"{lo:.2f}{unit}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}-{hi:.2f}{unit}"


def findings(rows: list[dict]) -> list[str]:
    """Statements read off the medians (ratios of medians of the same run), nothing more."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        group = [r for r in rows if r["model"] == model]
        modes = "/".join(f"{r['ms']}" for r in group) + " ms"
        s = [r["res"]["sides"] for r in group]
        fp32 = [x["pytorch"]["total"] / x["ort-fp32"]["total"] for x in s]
        fp32_enc = [x["pytorch"]["enc"] / x["ort-fp32"]["enc"] for x in s]
        out.append(f"{model}, {modes}: ORT fp32 vs PyTorch eager: {_span(fp32)} less compute in all, "
                   f"{_span(fp32_enc)} less in the encoder (PyTorch time / ORT time).")
        if all("ort-int8" in x for x in s):
            q = [x["ort-fp32"]["total"] / x["ort-int8"]["total"] for x in s]
            q_enc = [x["ort-fp32"]["enc"] / x["ort-int8"]["enc"] for x in s]
            line = (f"{model}: ORT int8 vs ORT fp32: {_span(q)} in all, {_span(q_enc)} in the encoder "
                    f"(fp32 time / int8 time; below 1 means int8 is slower); encoder file(s) "
                    f"{group[0]['info']['fp32_enc_mb']:.1f} -> {group[0]['info']['int8_enc_mb']:.1f} MB")
            if "wer" in group[0]:
                deltas = [100 * (r["wer"]["ort-int8"] - r["wer"]["ort-fp32"]) for r in group]
                line += ("; WER int8 - fp32: " + ", ".join(f"{d:+.2f}" for d in deltas) + f" points at {modes} "
                         f"({group[0]['utts']} utterances; int8 tokens equal fp32's on "
                         + ", ".join(f"{r['same_int8']}" for r in group) + " of them)")
            out.append(line + ".")
        bad = [f"{r['ms']} ms ({r['same_fp32']}/{r['utts']})" for r in group if r["same_fp32"] != r["utts"]]
        if bad:
            out.append(f"{model}: ORT fp32 tokens differ from PyTorch's (same feeding) at " + ", ".join(bad) + ".")
        else:
            out.append(f"{model}: ORT fp32 tokens equal PyTorch's (same feeding) on every utterance, every mode.")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-model", default=DEMO_MODEL, help="the trained demo .nemo")
    parser.add_argument("--full", action=argparse.BooleanOptionalAction, default=True,
                        help="also the full 24-layer d_model-1024 geometry (random weights)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke check")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads = ONNX Runtime intra-op threads (default 1: on a shared 2-core machine "
                             "one busy process stalls 2-thread runs many times over, and unequally per runtime)")
    parser.add_argument("--quiet-wait", type=float, default=None,
                        help="seconds to wait, before each mode, for other processes to go quiet (120; 10 with --quick)")
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
    from streamtune.data import load_utterances
    from streamtune.models import load_model

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
            model = build_full(24)
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
                model = build_full(12)
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
        f"; the trained demo model emitted {sum(r['emitted']['pytorch'] for r in demo_rows) / sum(r['frames'] for r in demo_rows):.2f}"
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
           "fp32 directory is written by `export.onnx.export_mode` and the int8 one by `export.onnx.quantize_dir` "
           "(int8 dynamic: weights int8, activations quantised on the fly) into a temporary directory. One warm-up "
           "call per side, then repetitions in rotated order; each repetition decodes every utterance one at a "
           "time on each side. \"compute\" is the wall time of the decoding calls (PyTorch: one "
           "`StreamingRunner.streaming` call over all utterances with batch_size 1; ORT: `OrtStreamingDecoder.decode`"
           " per utterance); \"encoder\" is the part of it inside `encoder.cache_aware_stream_step` (PyTorch) or the "
           "encoder session's `run` (ORT); the rest is greedy RNN-T (NeMo greedy_batch on PyTorch, the Python loop "
           "over decoder/joiner sessions on ORT) and bookkeeping. RTFx = audio seconds / compute seconds (silence "
           "padding not counted as audio). WER: `streamtune.metrics.corpus_errors` (Whisper-normalised) over the "
           "same utterances, from the timed runs' tokens (every repetition gave the same tokens unless noted).")
    changed = [f"{r['model']} {r['ms']} ms {side}" for r in rows for side, n in r["res"]["changed"].items() if n]
    if changed:
        notes.append("Tokens differed between repetitions for: " + ", ".join(changed) + ".")
    parts = header + [how]
    if notes:
        parts.append("Notes:\n\n" + "\n".join(f"* {n}" for n in notes))
    parts.append("Read off the tables:\n\n" + "\n".join(f"* {n}" for n in findings(rows)))
    text = "\n\n".join(parts) + "\n\n" + table
    print(text)
    if args.write:
        from bench import write_section

        write_section(TITLE, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
