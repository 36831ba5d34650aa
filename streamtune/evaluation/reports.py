"""What an evaluation writes: ``results.json`` (checked against ``results.schema.json``), ``results.md`` and the
plots; and the summary printed at the end."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from streamtune.evaluation.gates import compare, gate
from streamtune.evaluation.scoring import Evaluation, ModelSpec, ModeResult

RESULTS_SCHEMA_VERSION = 3
SCHEMA_PATH = Path(__file__).with_name("results.schema.json")


def _fmt(x: float | None, pct: bool = True, digits: int = 2) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.{digits}f} %" if pct else f"{x:.{digits}f}"


def wer_tables(results: list[ModeResult], models: list[str]) -> str:
    """Per test set: a row per chunk size, a column group per model (streaming / offline WER)."""
    out = []
    by = {(r.model, r.test_set, r.chunk_ms, r.decode): r for r in results}
    test_sets = list(dict.fromkeys(r.test_set for r in results))
    for ts in test_sets:
        chunks = sorted({r.chunk_ms for r in results if r.test_set == ts}, reverse=True)
        searches = ", ".join(sorted({r.decoding for r in results if r.test_set == ts}))
        head = "| chunk | " + " | ".join(f"{m} streaming | {m} offline | {m} PnC WER | {m} CER" for m in models) + " |"
        out += [f"**{ts}** ({searches})", "", head, "|" + "---|" * (1 + 4 * len(models))]
        for ms in chunks:
            cells = []
            for m in models:
                s, o = by.get((m, ts, ms, "streaming")), by.get((m, ts, ms, "offline"))
                cells += [_fmt(s.wer if s else None), _fmt(o.wer if o else None),
                          _fmt(s.wer_pnc if s else None), _fmt(s.cer if s else None)]
            out.append(f"| {ms} ms | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def results_markdown(payload: dict) -> str:
    models = [m["label"] for m in payload["models"]]
    results = [ModeResult(**r) for r in payload["results"]]
    md = ["# Evaluation", "",
          "Models: " + ", ".join(f"`{m['label']}` ({m['role']}, `{m['path']}`)" for m in payload["models"]), "",
          "Test sets: " + ", ".join(f"`{t['name']}` ({t['utts']} utterances, {t['audio_s']:.1f} s)"
                                    for t in payload["test_sets"]), "",
          "WER: Whisper English normaliser (Open ASR leaderboard). PnC WER keeps case and punctuation. "
          "Streaming is cache-aware, chunk by chunk, "
          f"{payload['settings']['batch_size']} utterances as concurrent streams; offline is the whole utterance "
          "with the same attention context.", "",
          wer_tables(results, models)]
    if payload.get("comparison"):
        comp = payload["comparison"]
        md += [f"## Against the baseline `{comp['baseline']}`", "",
               f"Regression flag: WER up by more than {comp['tolerance_points']:g} points. 95 % interval: paired "
               "bootstrap over utterances (Bisani & Ney, as Kaldi's compute-wer-bootci; "
               f"{payload['settings'].get('bootstrap', {}).get('replications', '?')} draws, fixed seed); a delta "
               "is significant when its interval excludes 0. P(better): the share of draws in which the model "
               "makes fewer errors than the baseline.", "",
               "| model | test set | chunk | decode | baseline | model | delta | 95 % interval | significant "
               "| P(better) | relative | |",
               "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for d in comp["deltas"]:
            rel = "-" if d["relative"] is None else f"{100 * d['relative']:+.1f} %"
            ci = d.get("ci95_points")
            interval = f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "-"
            p_better = "-" if d.get("p_improvement") is None else f"{d['p_improvement']:.3f}"
            md.append(f"| {d['model']} | {d['test_set']} | {d['chunk_ms']} ms | {d['decode']} | "
                      f"{_fmt(d['baseline_wer'])} | {_fmt(d['wer'])} | {d['delta_points']:+.2f} | {interval} | "
                      f"{'yes' if d.get('significant') else 'no'} | {p_better} | {rel} | "
                      f"{'REGRESSION' if d['regression'] else ''} |")
        md.append("")
    md += ["## Latency and throughput", "",
           "Decoding the test sets (features excluded), RTFx = seconds of audio per second of compute, "
           f"{payload['settings']['batch_size']} utterances at a time:", "",
           "| model | test set | chunk | streaming RTFx | offline RTFx | streaming step p50 | p95 |",
           "|---|---|---|---|---|---|---|"]
    by = {(r.model, r.test_set, r.chunk_ms, r.decode): r for r in results}
    for (model, ts, ms, decode), r in by.items():
        if decode == "streaming":
            off = by.get((model, ts, ms, "offline"))
            md.append(f"| {model} | {ts} | {ms} ms | {r.rtfx:.1f} | {f'{off.rtfx:.1f}' if off else '-'} | "
                      f"{_fmt(r.step_ms_p50, pct=False, digits=1)} ms "
                      f"| {_fmt(r.step_ms_p95, pct=False, digits=1)} ms |")
    md += ["",
           "Per-step compute at a given number of concurrent streams "
           f"({payload['settings']['latency_audio_s']:g} s of audio per stream):", "",
           "Algorithmic latency: a chunk's first frame waits for the whole chunk (look-ahead is inside the chunk). "
           "Step = encoder step + greedy RNN-T for all concurrent streams; real time when p95 <= chunk.", "",
           "| model | chunk | algorithmic | streams | step p50 | step p95 | real time | RTFx |",
           "|---|---|---|---|---|---|---|---|"]
    for row in payload["latency"]:
        md.append(f"| {row['model']} | {row['chunk_ms']} ms | {row['algorithmic_latency_ms']} ms | {row['streams']} | "
                  f"{row['step_ms_p50']:.1f} ms | {row['step_ms_p95']:.1f} ms | {'yes' if row['realtime'] else 'no'} | "
                  f"{row['rtfx']:.1f} |")
    md.append("")
    if payload["emission_delay"]:
        md += ["Emission delay after the reference word ends (audio time at the end of the emitting chunk; "
               "compute not included), over aligned words:", "",
               "| model | test set | chunk | words | first token p50 | p95 | final token p50 | p95 |",
               "|---|---|---|---|---|---|---|---|"]
        for e in payload["emission_delay"]:
            md.append(f"| {e['model']} | {e['test_set']} | {e['chunk_ms']} ms | {e['aligned_words']} | "
                      + " | ".join(_fmt(e[k], pct=False, digits=0) for k in
                                   ("first_token_ms_p50", "first_token_ms_p95", "final_token_ms_p50",
                                    "final_token_ms_p95")) + " |")
        md.append("")
    if payload.get("turn_taking"):
        md += turn_taking_markdown(payload["turn_taking"])
    g = payload["gates"]
    md += ["## Gates", "", ("PASSED" if g["passed"] else "FAILED") + f" (max WER {g['max_wer']}, "
           f"max regression {g['max_regression']} points"
           + (", significant regressions only" if g.get("needs_significance") else "") + ")",
           *[f"* {f}" for f in g["failures"]], *[f"* (not failed) {f}" for f in g.get("not_significant", [])], ""]
    plots = ["`wer_vs_chunk.png`", "`step_compute_vs_streams.png`"]
    if payload["emission_delay"]:
        plots.append("`emission_delay.png`")
    md += [f"Plots: {', '.join(plots)}. Per-utterance hypotheses, with word times and confidence: "
           "`hyps.jsonl`.", ""]
    return "\n".join(md)


def turn_taking_markdown(rows: list[dict]) -> list[str]:
    """The turn-taking table of multi-turn test sets (streamtune.evaluation.turns): rules and <EOU> side by side."""
    md = ["## Turn-taking", "",
          "Multi-turn recordings streamed with endpointing; latency from the end of a turn's speech to its final "
          "(audio time at the end of the chunk that closed it; +compute: the median step's wall time added); early: "
          "turns cut before they ended; missed: no final within the miss window. WER of the segmented transcript.",
          "", "| model | test set | chunk | method | turns | latency p50 / p90 / p95 | +compute p50 / p95 | early | "
          "missed | WER | PnC WER |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    ms = lambda v: "-" if v is None else f"{1000 * v:.0f}"  # noqa: E731
    for r in rows:
        rules = r["rules"]
        method = "`<EOU>`" if r["method"] == "eou" else f"rules ({rules['trailing_silence_s']:g} s)"
        lat, comp = r["latency_s"], r["latency_with_compute_s"]
        md.append(f"| {r['model']} | {r['test_set']} | {r['chunk_ms']} ms | {method} | {r['turns']} | "
                  f"{ms(lat['p50'])} / {ms(lat['p90'])} / {ms(lat['p95'])} ms | {ms(comp['p50'])} / {ms(comp['p95'])} "
                  f"ms | {_fmt(r['early_cutoff_rate'])} | {_fmt(r['miss_rate'])} | {_fmt(r['wer'])} | "
                  f"{_fmt(r['wer_pnc'])} |")
    return [*md, ""]


PLOT_DPI = 100
WER_PLOT_SIZE = (5.0, 4.0)  # inches per test-set panel
STEP_PLOT_SIZE = (7.0, 4.5)


def plot_wer_vs_chunk(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test_sets = [t["name"] for t in payload["test_sets"]]
    fig, axes = plt.subplots(1, len(test_sets), figsize=(WER_PLOT_SIZE[0] * len(test_sets), WER_PLOT_SIZE[1]),
                             squeeze=False)
    for ax, ts in zip(axes[0], test_sets):
        for k, m in enumerate(payload["models"]):
            for decode, style in (("streaming", "-o"), ("offline", "--x")):
                pts = sorted((r["chunk_ms"], 100 * r["wer"]) for r in payload["results"]
                             if r["model"] == m["label"] and r["test_set"] == ts and r["decode"] == decode)
                if pts:
                    ax.plot(*zip(*pts), style, color=f"C{k}", label=f"{m['label']} {decode}")
        ax.set_xscale("log", base=2)
        chunks = sorted({r["chunk_ms"] for r in payload["results"]})
        ax.set_xticks(chunks, [str(c) for c in chunks])
        ax.set_xlabel("chunk (ms)")
        ax.set_ylabel("WER (%)")
        ax.set_title(ts)
    _save(fig, axes[0][:len(test_sets)], path)


def plot_step_compute(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=STEP_PLOT_SIZE)
    keys = list(dict.fromkeys((r["model"], r["chunk_ms"]) for r in payload["latency"]))
    for k, (model, ms) in enumerate(keys):
        pts = sorted((r["streams"], r["step_ms_p50"]) for r in payload["latency"]
                     if r["model"] == model and r["chunk_ms"] == ms)
        ax.plot(*zip(*pts), "-o", color=f"C{k}", label=f"{model} {ms} ms (p50)")
        ax.axhline(ms, color=f"C{k}", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    streams = sorted({r["streams"] for r in payload["latency"]})
    ax.set_xticks(streams, [str(n) for n in streams])
    ax.set_yscale("log")
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("compute per step (ms); dotted: real-time limit")
    _save(fig, [ax], path)


def plot_emission_delay(payload: dict, path: Path) -> None:
    """First- and final-token emission delay (p50, p95) per chunk mode, a line per model and test set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=STEP_PLOT_SIZE)
    keys = list(dict.fromkeys((e["model"], e["test_set"]) for e in payload["emission_delay"]))
    for k, (model, ts) in enumerate(keys):
        rows = sorted((e for e in payload["emission_delay"] if e["model"] == model and e["test_set"] == ts),
                      key=lambda e: e["chunk_ms"])
        chunks = [e["chunk_ms"] for e in rows]
        for key, style in (("first_token_ms_p50", "-o"), ("final_token_ms_p50", "--s"), ("final_token_ms_p95", ":^")):
            ax.plot(chunks, [e[key] for e in rows], style, color=f"C{k}",
                    label=f"{model} {ts}: {key.replace('_ms_', ' ').replace('_', ' ')}")
    chunks = sorted({e["chunk_ms"] for e in payload["emission_delay"]})
    ax.plot(chunks, chunks, color="grey", lw=1, label="the chunk itself")
    ax.set_xscale("log", base=2)
    ax.set_xticks(chunks, [str(c) for c in chunks])
    ax.set_xlabel("chunk (ms)")
    ax.set_ylabel("emission delay after the word ends (ms)")
    _save(fig, [ax], path)


def plot_training_curves(run_dir: Path, path: Path) -> Path:
    """A run's ``logs/metrics.csv`` (and its resumed parts) as curves: training loss, and dev WER per chunk mode,
    against the step."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from streamtune.errors import UserError

    files = sorted((run_dir / "logs").rglob("metrics.csv"))
    if not files:
        raise UserError(f"{run_dir} has no logs/metrics.csv; pass a run dir written by train.py")
    series: dict[str, dict[int, float]] = {}
    for f in files:
        for row in csv.DictReader(open(f)):
            for key, value in row.items():
                if value and (key == "train_loss" or key.startswith("val_wer")) and row.get("step"):
                    series.setdefault(key, {})[int(row["step"])] = float(value)
    fig, (loss_ax, wer_ax) = plt.subplots(1, 2, figsize=(11, 4))
    if "train_loss" in series:
        steps = sorted(series["train_loss"])
        loss_ax.plot(steps, [series["train_loss"][s] for s in steps], lw=1)
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("training loss")
    loss_ax.set_yscale("log")
    loss_ax.grid(alpha=0.3)
    for k, key in enumerate(sorted(k for k in series if k.startswith("val_wer"))):
        steps = sorted(series[key])
        wer_ax.plot(steps, [100 * series[key][s] for s in steps], "-o" if "mean" in key else "-", ms=3,
                    color=f"C{k}", lw=2 if key == "val_wer_mean" else 1, label=key.removeprefix("val_"))
    wer_ax.set_xlabel("step")
    wer_ax.set_ylabel("dev WER (%)")
    wer_ax.grid(alpha=0.3)
    if any(k.startswith("val_wer") for k in series):
        wer_ax.legend(fontsize=7)
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
    return path


def check_schema(payload: dict) -> None:
    """Validate against results.schema.json (a bug, not a user error, if it fails)."""
    import jsonschema

    jsonschema.validate(payload, json.loads(SCHEMA_PATH.read_text()))


def write_reports(out_dir: Path, payload: dict) -> None:
    """results.json, results.md and the plots (hyps.jsonl is written while decoding)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    check_schema(payload)
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out_dir / "results.md").write_text(results_markdown(payload))
    plot_wer_vs_chunk(payload, out_dir / "wer_vs_chunk.png")
    plot_step_compute(payload, out_dir / "step_compute_vs_streams.png")
    if payload["emission_delay"]:
        plot_emission_delay(payload, out_dir / "emission_delay.png")


def build_payload(models: list[ModelSpec], test_sets: list[dict], settings: dict, run: Evaluation,
                  tolerance: float, max_wer: float | None, max_regression: float | None, per_utt: dict | None = None,
                  replications: int = 10000, needs_significance: bool = True) -> dict:
    """``results.json``: settings, models, test sets (with what :func:`evaluate_models` counted), every result,
    the streaming-vs-offline check, latency, emission delay, the comparison with a baseline (with paired
    bootstrap intervals from ``per_utt``, ``streamtune.evaluation.gates.utterance_errors``) and the gates."""
    baseline = next((m.label for m in models if m.role == "baseline"), None)
    deltas = compare(run.results, baseline, tolerance, per_utt, replications) if baseline else []
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {**settings, "chunk_ms": run.chunk_ms},
        "models": [asdict(m) for m in models],
        "test_sets": [{**t, **run.test_sets[t["name"]]} for t in test_sets],
        "results": [asdict(r) for r in run.results],
        "streaming_equals_offline": run.streaming_equals_offline,
        "latency": run.latency,
        "emission_delay": run.emission_delay,
        "turn_taking": run.turn_taking,
        "comparison": {"baseline": baseline, "tolerance_points": tolerance, "deltas": deltas} if baseline else None,
        "gates": gate(run.results, deltas, models, max_wer, max_regression, needs_significance),
    }


def print_summary(payload: dict, out_dir: Path) -> int:
    """The WER tables, any streaming/offline difference, regressions and the verdict; returns the exit status."""
    import sys

    print(wer_tables([ModeResult(**r) for r in payload["results"]], [m["label"] for m in payload["models"]]))
    for entry in payload["streaming_equals_offline"]:
        if not entry["equal"]:
            print(f"note: {entry['model']} on {entry['test_set']} at {entry['chunk_ms']} ms: streaming tokens differ "
                  f"from offline on {entry['differing_utts']} of {entry['utts']} utterances")
    for t in payload["test_sets"]:
        if t["word_extras_failed"]:
            print(f"note: per-word times and confidence failed on {t['word_extras_failed']} hypotheses of "
                  f"{t['name']} (their scores count; `words_error` in hyps.jsonl says why)")
    if payload.get("turn_taking"):
        print("\n".join(turn_taking_markdown(payload["turn_taking"])[4:]))
    for d in (payload["comparison"] or {}).get("deltas", []):
        if d["regression"]:
            ci = d.get("ci95_points")
            sig = (f", 95 % interval [{ci[0]:+.2f}, {ci[1]:+.2f}]: " + ("significant" if d["significant"] else
                   "not significant")) if ci else ""
            print(f"regression: {d['model']} on {d['test_set']} at {d['chunk_ms']} ms ({d['decode']}): "
                  f"{d['delta_points']:+.2f} WER points vs {payload['comparison']['baseline']}{sig}")
    print(f"reports in {out_dir}")
    if not payload["gates"]["passed"]:
        print("FAIL:\n  " + "\n  ".join(payload["gates"]["failures"]), file=sys.stderr)
        return 1
    return 0


def _save(fig, axes, path: Path) -> None:
    """Grid and legend on each axis, then write the figure at the reports' resolution and close it."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
