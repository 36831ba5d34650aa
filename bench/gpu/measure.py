"""The GPU proof's measurements (run by bench/gpu/run.sh; ``--smoke`` runs every section at toy sizes on CPU).

Sections, each written to ``$OUT/gpu.json`` as soon as it ends (a run cut short keeps what it measured), then
``$OUT/gpu.md``:

* ``env``: GPU, driver, torch / CUDA / NeMo / Lightning versions, date.
* ``train``: the full 24-layer geometry (random weights, 1024-piece tokenizer, 128 mels) in bf16-mixed on synthetic
  real-length audio (2-20 s; generated here, the machine has no espeak-ng): ``train.py`` steps/s and audio hours
  per GPU-hour against NeMo's plain ``Trainer.fit`` on identical batches (bench/train_throughput.py's two sides),
  NeMo's default loss (numba-CUDA RNN-T); and ``train.py`` without the callbacks that read a GPU value on the host
  every step (SkipNonFinite, Throughput): what those syncs cost. Model FLOP utilisation is estimated from the
  encoder's parameters (6 FLOPs per parameter per frame for a training step; attention over the 70 + chunk frames
  of context adds under 1 %).
* ``max_batch``: ``data.batch_duration_s`` doubled (bucketed data) until out of memory; peak memory of each.
* ``streaming``: cache-aware vs buffered compute per audio second at N = 1, 16, 64 streams, and the most streams
  in real time (p95 step <= chunk) at 560, 160 and 80 ms, fp32 and bf16 (autocast), for the demo model (when
  carried in .gpukit/) and the full geometry; bf16-vs-fp32 token agreement on the demo test set.

streamtune's own RNN-T loss is a CPU loss (numba on the host); on a GPU NeMo's numba-CUDA loss is the one used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

H200_BF16_PEAK = 989e12  # dense bf16 FLOP/s: NVIDIA's datasheet figure (a large bf16 matmul reaches less)
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec " \
        "romeo sierra tango uniform victor whiskey xray yankee zulu".split()


def synthetic_corpus(out: Path, n: int, min_s: float, max_s: float, seed: int = 0) -> Path:
    """``n`` utterances of noise shaped like speech (amplitude-modulated, 2-20 s) with random word transcripts, as
    wavs + a Lhotse cuts file: the throughput of training depends on durations and token counts, not content."""
    import soundfile as sf
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    cuts = []
    for k in range(n):
        dur = float(rng.uniform(min_s, max_s))
        t = np.arange(int(dur * 16000)) / 16000
        audio = (0.1 * rng.standard_normal(len(t)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
        path = out / f"syn{k:05d}.wav"
        sf.write(path, audio, 16000)
        rec = Recording.from_file(path, recording_id=f"syn{k:05d}")
        text = " ".join(rng.choice(WORDS, size=max(1, int(dur * 2.5))))
        cuts.append(MonoCut(id=rec.id, start=0.0, duration=rec.duration, channel=0, recording=rec,
                            supervisions=[SupervisionSegment(id=rec.id, recording_id=rec.id, start=0.0,
                                                             duration=rec.duration, text=text)]))
    CutSet.from_cuts(cuts).to_file(out / "cuts_train.jsonl.gz")
    return out / "cuts_train.jsonl.gz"


def section_env(args) -> dict:
    import torch

    env = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version(),
           "torch": torch.__version__, "cuda": torch.version.cuda, "device": args.device,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available()
           else None, "cpu_count": os.cpu_count()}
    from importlib import metadata

    for name in ("nemo_toolkit", "lightning", "lhotse", "numba", "numba-cuda"):
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env[name] = None
    return env


def _overrides(args, corpus: Path, tokenizer: Path) -> list[str]:
    from bench.geometry import FULL, TINY

    common = [f"data.train={corpus}", "data.dev=null", f"model.tokenizer_dir={tokenizer}", "logger.wandb_mode=disabled",
              "model.loss.loss_name=default", "data.num_buckets=8", "data.max_duration_s=20"]
    if args.smoke:
        return [*common, *TINY, "trainer.accelerator=cpu", "trainer.precision=32-true", "data.batch_duration_s=8"]
    return [*common, *FULL, "trainer.accelerator=gpu", "trainer.devices=1", "trainer.precision=bf16-mixed",
            f"data.batch_duration_s={args.batch_duration_s:g}", "data.num_workers=4"]


def section_train(args, corpus: Path, tokenizer: Path) -> dict:
    from bench.train_throughput import rates, run_side

    overrides = _overrides(args, corpus, tokenizer)
    warmup, steps = (1, 2) if args.smoke else (5, args.train_steps)
    out = {"overrides": overrides, "warmup": warmup, "steps": steps, "runs": {}}
    for side in ("ours", "plain", "ours-nosync"):
        r = run_side(side, overrides, warmup, steps, quiet_wait=0, timeout=args.step_timeout)
        if r is None:
            out["runs"][side] = {"error": "out of memory"}
            continue
        steps_s, audio_s = rates(r)
        out["runs"][side] = {"steps_per_s": steps_s, "audio_s_per_s": audio_s,
                             "audio_hours_per_gpu_hour": audio_s, "gpu_peak_mib": r["gpu_peak_mib"],
                             "same_batches_as_ours": None, "audio": r["audio"], "losses": r["losses"]}
    ours, plain = out["runs"].get("ours", {}), out["runs"].get("plain", {})
    if "steps_per_s" in ours and "steps_per_s" in plain:
        out["ours_over_plain"] = ours["steps_per_s"] / plain["steps_per_s"]
        out["same_batches"] = ours["audio"] == plain["audio"]
        nosync = out["runs"].get("ours-nosync", {})
        if "steps_per_s" in nosync:
            out["host_sync_cost"] = 1 - ours["steps_per_s"] / nosync["steps_per_s"]
        params = encoder_parameters(overrides)
        frames_per_s = ours["audio_s_per_s"] * 12.5  # 8x subsampling of 10 ms frames
        out["encoder_parameters"] = params
        out["mfu_estimate"] = 6 * params * frames_per_s / H200_BF16_PEAK if not args.smoke else None
    for run in out["runs"].values():
        run.pop("audio", None)
        run.pop("losses", None)
    return out


def encoder_parameters(overrides: list[str]) -> int:
    from streamtune.config.loading import load_config
    from streamtune.model.nemo_config import model_class, nemo_model_config

    cfg = load_config(REPO / "recipes/demo/tiny_cpu.yaml", overrides)
    model = model_class(cfg.model.target)(cfg=nemo_model_config(cfg))
    return sum(p.numel() for p in model.encoder.parameters())


def section_max_batch(args, corpus: Path, tokenizer: Path) -> dict:
    from bench.train_throughput import rates, run_side

    overrides = [o for o in _overrides(args, corpus, tokenizer) if not o.startswith("data.batch_duration_s=")]
    size, rows, largest = (4.0 if args.smoke else args.batch_duration_s), [], None
    limit = 8.0 if args.smoke else 8192.0  # smoke: two sizes show the doubling
    while size <= limit:
        r = run_side("ours", [*overrides, f"data.batch_duration_s={size:g}", "data.batch_size=null"], 1, 2,
                     quiet_wait=0, timeout=args.step_timeout)
        if r is None:
            rows.append({"batch_duration_s": size, "fits": False})
            break
        rows.append({"batch_duration_s": size, "fits": True, "steps_per_s": rates(r)[0],
                     "audio_s_per_s": rates(r)[1], "gpu_peak_mib": r["gpu_peak_mib"]})
        largest = size
        size *= 2
    return {"largest_batch_duration_s": largest, "rows": rows}


def section_streaming(args) -> dict:
    import torch

    from bench import Guard
    from bench.full_model import build_full, random_tokenizer, silence_joint
    from bench.streaming import Plan, Speech, compare, realtime
    from streamtune.model.build import load_model
    from streamtune.model.chunks import mode_by_ms
    from streamtune.streaming.runner import StreamingRunner

    kit = REPO / ".gpukit"
    cuts = Path(args.demo_cuts) if args.demo_cuts else kit / "test" / "cuts_test.jsonl.gz"
    if not cuts.exists():
        cuts = REPO / "outputs/demo/data/cuts_test.jsonl.gz"
    out = {"models": {}}
    if not cuts.exists():
        return {"error": f"no test audio ({cuts}); run `make gpu-wheels` after `make demo`"}
    speech = Speech(cuts)
    guard = Guard(max_wait_s=0)
    models = {}
    demo_path = Path(args.demo_model) if args.demo_model else kit / "demo.nemo"
    if not demo_path.exists():
        demo_path = REPO / "outputs/demo/runs/tiny_cpu/latest/final.nemo"
    if demo_path.exists():
        models["demo"] = lambda: load_model(demo_path, device=args.device)
    if not args.smoke:
        tmp = Path(tempfile.mkdtemp())

        def full():
            model = build_full(random_tokenizer(tmp)).to(args.device)
            silence_joint(model)
            return model

        models["full (random weights)"] = full
    if args.smoke:
        plan = Plan([560], [1, 2], {560: 2}, 1, rt_modes_ms=[560], rt_steps=4, rt_max_streams=4)
    else:
        plan = Plan([560, 160], [1, 16, 64], {560: 8, 160: 4}, 3, rt_modes_ms=[560, 160, 80], rt_steps=20,
                    rt_max_streams=4096)
    for name, make in models.items():
        model = make()
        runner = StreamingRunner(model, device=args.device)
        entry = out["models"][name] = {}
        # CPU autocast to bf16 cannot run the LSTM decoder (oneDNN has no bf16 LSTM primitive on CPUs without
        # AMX/avx512_bf16), so a CPU smoke run checks the fp32 path and says bf16 was not run.
        precisions = ("fp32", "bf16") if args.device == "cuda" else ("fp32",)
        if args.device != "cuda":
            entry["bf16"] = {"not_run": "bf16 autocast of the LSTM decoder is unsupported on CPU"}
        for precision in precisions:
            ctx = torch.autocast(device_type=args.device, dtype=torch.bfloat16, enabled=precision == "bf16")
            with ctx:
                rows = compare(name, model, runner, speech, plan, guard, print)
                rt = realtime(name, model, runner, speech, plan, guard, print)
            entry[precision] = {"cache_aware_vs_buffered": rows, "realtime": rt}
        if name == "demo" and args.device == "cuda":
            feats = [runner.features(u.audio) for u in speech.utts]
            mode = mode_by_ms(model, 560)
            fp32 = runner.streaming(mode, feats).tokens
            with torch.autocast(device_type=args.device, dtype=torch.bfloat16):
                bf16 = runner.streaming(mode, feats).tokens
            entry["bf16_token_agreement"] = {"utts": len(fp32), "identical": sum(a == b for a, b in zip(fp32, bf16))}
        del model, runner
        if args.device == "cuda":
            torch.cuda.empty_cache()
    out["buffered"] = "bench/buffered.py (NeMo's buffered RNN-T on the same features)"
    return out


def markdown(results: dict) -> str:
    env = results.get("env", {})
    lines = [f"GPU: {env.get('gpu')} ({env.get('gpu_memory_gib') or 0:.0f} GiB), torch {env.get('torch')}, CUDA "
             f"{env.get('cuda')}, NeMo {env.get('nemo_toolkit')}, Lightning {env.get('lightning')}; {env.get('date')}"
             + (" — SMOKE RUN ON CPU, toy sizes: not GPU results." if results.get("smoke") else ""), ""]
    train = results.get("train", {})
    if "runs" in train:
        lines += ["| train side | steps/s | audio h per GPU-hour | GPU peak (MiB) |", "|---|---|---|---|"]
        for side, r in train["runs"].items():
            lines.append(f"| {side} | {r.get('steps_per_s', float('nan')):.3f} | "
                         f"{r.get('audio_hours_per_gpu_hour', float('nan')):.0f} | {r.get('gpu_peak_mib') or 0:.0f} |")
        lines += ["", f"train.py / plain NeMo: {train.get('ours_over_plain', float('nan')):.3f} (same batches: "
                  f"{train.get('same_batches')}); host syncs cost {100 * train.get('host_sync_cost', float('nan')):.1f}"
                  f" % of a step; MFU estimate {train.get('mfu_estimate')}", ""]
    mb = results.get("max_batch", {})
    if "rows" in mb:
        lines += [f"Largest data.batch_duration_s that fits: {mb['largest_batch_duration_s']}", ""]
    for name, entry in results.get("streaming", {}).get("models", {}).items():
        lines += [f"Streaming, {name}: cache-aware vs buffered (compute per audio second, N streams) and real-time "
                  "streams (largest N with p95 step <= chunk)", "",
                  "| precision | mode | N | cache-aware / buffered | max real-time N | p95 step (ms) |",
                  "|---|---|---|---|---|---|"]
        for precision in ("fp32", "bf16"):
            rows = entry.get(precision, {})
            if "not_run" in rows:
                lines.append(f"| {precision} | not run: {rows['not_run']} | | | | |")
                continue
            rt = {r["ms"]: r for r in rows.get("realtime", [])}
            for r in rows.get("cache_aware_vs_buffered", []):
                lines.append(f"| {precision} | {r['ms']} ms | {r['n']} | {r['ratio']:.2f}x | | |")
            for ms, r in rt.items():
                capped = "+" if r.get("capped") else ""
                lines.append(f"| {precision} | {ms} ms | | | {r['max_n']}{capped} | {1000 * (r.get('p95') or 0):.1f} |")
        if "bf16_token_agreement" in entry:
            agree = entry["bf16_token_agreement"]
            lines.append(f"\nbf16 vs fp32 tokens identical on {agree['identical']} of {agree['utts']} utterances")
        lines.append("")
    for section, value in results.items():
        if isinstance(value, dict) and "error" in value:
            lines += [f"**{section} failed:** `{value['error'].splitlines()[-1][:200]}`", ""]
    lines += ["Full results: gpu.json"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "outputs/gpu"))
    parser.add_argument("--smoke", action="store_true", help="toy sizes on CPU: check the script, not the GPU")
    parser.add_argument("--sections", nargs="+", default=["env", "train", "max_batch", "streaming"])
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--batch-duration-s", type=float, default=600.0)
    parser.add_argument("--step-timeout", type=float, default=240.0, help="seconds one training run may take")
    parser.add_argument("--demo-model", help="a trained .nemo (default: .gpukit/demo.nemo, else the demo's)")
    parser.add_argument("--demo-cuts", help="its test cuts (default: .gpukit/test/, else the demo's)")
    args = parser.parse_args(argv)
    import torch

    args.device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    if not args.smoke and args.device != "cuda":
        raise SystemExit("no CUDA device: run with --smoke to check the script on CPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"smoke": args.smoke, "command": " ".join(sys.argv)}
    work = Path(tempfile.mkdtemp(prefix="gpu-proof-"))
    corpus = tokenizer = None
    for name in args.sections:
        began = time.monotonic()
        print(f"== {name}", flush=True)
        try:
            if name in ("train", "max_batch") and corpus is None:
                from bench.full_model import random_tokenizer

                n, lo, hi = (24, 1.0, 3.0) if args.smoke else (1200, 2.0, 20.0)
                corpus = synthetic_corpus(work / "corpus", n, lo, hi)
                tokenizer = random_tokenizer(work, vocab_size=64 if args.smoke else 1024)
            fn = {"env": lambda: section_env(args), "train": lambda: section_train(args, corpus, tokenizer),
                  "max_batch": lambda: section_max_batch(args, corpus, tokenizer),
                  "streaming": lambda: section_streaming(args)}[name]
            results[name] = fn()
        except (Exception, SystemExit) as err:  # noqa: BLE001 - a failed section is recorded; the others still run
            results[name] = {"error": "".join(traceback.format_exception(err))[-3000:]}
        results.setdefault("seconds", {})[name] = round(time.monotonic() - began, 1)
        (out / "gpu.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "gpu.md").write_text(markdown(results) + "\n")
    print(markdown(results))
    return 1 if any(isinstance(v, dict) and "error" in v for v in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
