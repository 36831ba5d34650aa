"""Evaluation: every model x test set x chunk mode x decode type, compared, timed, reported.

``evaluate.py`` is the command line; this module does the work:

* :func:`evaluate_model` decodes every test set in every chunk mode, ``streaming``
  (cache-aware, chunk by chunk, utterances as concurrent streams) and
  ``offline``, and scores WER (Whisper-normalised, the headline), PnC WER and
  CER per test set and over all of them (:mod:`streamtune.metrics`);
* :func:`emission_delays` measures, where the references carry word timings,
  how long after a word ends its first and last token come out of the stream;
* :func:`step_latency` times one streaming step (encoder + greedy RNN-T for all
  streams) at several numbers of concurrent streams;
* :func:`compare` and :func:`gate` turn baseline-vs-candidate deltas into flags
  and a verdict; :func:`write_reports` writes ``results.json`` (checked against
  ``results.schema.json``), ``results.md``, ``hyps.jsonl`` and the plots.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from streamtune.data import Utterance
from streamtune.errors import UserError
from streamtune.metrics import Scores, align, corpus_scores
from streamtune.models import ChunkMode
from streamtune.streaming import DecodeResult, StreamingRunner
from streamtune.text import normalise_text

DECODE_MODES = ("streaming", "offline")
RESULTS_SCHEMA_VERSION = 2
SCHEMA_PATH = Path(__file__).with_name("results.schema.json")
ALL = "all"  # the test-set name of the pooled scores


@dataclass
class ModelSpec:
    label: str
    path: str
    role: str  # "baseline" | "candidate"


@dataclass
class ModeResult:
    """Scores of one model on one test set (or ``all``) in one chunk mode and decode type."""

    model: str
    test_set: str
    chunk_ms: int
    att_context: list[int]
    decode: str  # "streaming" | "offline"
    wer: float  # fractions; Whisper-normalised words
    wer_pnc: float  # case and punctuation kept
    cer: float  # characters of the Whisper-normalised text
    errors: int
    ref_words: int
    substitutions: int
    deletions: int
    insertions: int
    pnc_errors: int
    pnc_ref_words: int
    char_errors: int
    ref_chars: int
    utts: int
    audio_s: float
    decode_s: float
    rtfx: float  # seconds of audio decoded per second of compute
    streams: int  # utterances decoded together (concurrent streams when streaming)
    step_ms_p50: float | None  # streaming: wall time of one step for all streams of the batch
    step_ms_p95: float | None


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _result(model: str, test_set: str, mode: ChunkMode, decode: str, total: Scores, utts: int, audio_s: float,
            decode_s: float, streams: int, step_s: list[float]) -> ModeResult:
    return ModeResult(
        model=model, test_set=test_set, chunk_ms=mode.chunk_ms, att_context=mode.att_context, decode=decode,
        wer=total.words.wer, wer_pnc=total.pnc.wer, cer=total.chars.wer,
        errors=total.words.errors, ref_words=total.words.ref_words, substitutions=total.words.substitutions,
        deletions=total.words.deletions, insertions=total.words.insertions,
        pnc_errors=total.pnc.errors, pnc_ref_words=total.pnc.ref_words,
        char_errors=total.chars.errors, ref_chars=total.chars.ref_words,
        utts=utts, audio_s=audio_s, decode_s=decode_s, rtfx=audio_s / decode_s if decode_s > 0 else float("inf"),
        streams=streams,
        step_ms_p50=None if not step_s else 1000 * _pct(step_s, 50),
        step_ms_p95=None if not step_s else 1000 * _pct(step_s, 95),
    )


# ----- emission delay ---------------------------------------------------------------------------------
def hypothesis_words(tokenizer, tokens: list[int], emit_s: list[float]) -> list[tuple[str, float, float]]:
    """Group SentencePiece tokens into words: ``(word, first token's emission, last token's emission)``."""
    pieces = tokenizer.ids_to_tokens(tokens) if tokens else []
    groups: list[list[int]] = []
    for k, piece in enumerate(pieces):
        if piece.startswith("▁") or not groups:
            groups.append([])
        groups[-1].append(k)
    words = []
    for g in groups:
        text = tokenizer.ids_to_text([tokens[k] for k in g]).strip()
        if text:
            words.append((text, emit_s[g[0]], emit_s[g[-1]]))
    return words


def _match_form(word: str) -> str:
    return normalise_text(word, lowercase=True, strip_punctuation=True)


class EmissionDelays:
    """First- and final-token emission delay relative to the reference word's end, over aligned words,
    accumulated batch by batch.

    A reference word counts when the alignment pairs it with a hypothesis word (correct or substituted);
    its delay is (audio time at the end of the chunk that emitted the token) - (word end). Needs word
    timings in the references (Lhotse ``word`` alignments).
    """

    def __init__(self):
        self.first: list[float] = []
        self.final: list[float] = []
        self.matched = self.timed = 0

    def add(self, tokenizer, utts: list[Utterance], out: DecodeResult) -> None:
        for utt, toks, emits in zip(utts, out.tokens, out.emit_s or []):
            if not utt.words:
                continue
            self.timed += 1
            hyp = hypothesis_words(tokenizer, toks, emits)
            ops = align([_match_form(w) for w, _, _ in utt.words], [_match_form(w) for w, _, _ in hyp])
            for op, i, j in ops:
                if op in ("=", "S"):
                    end = utt.words[i][2]
                    self.first.append(hyp[j][1] - end)
                    self.final.append(hyp[j][2] - end)
                    self.matched += op == "="

    def summary(self) -> dict | None:
        """Percentiles over every aligned word; None when no utterance had word timings."""
        if not self.timed:
            return None
        first, final = self.first, self.final
        return {
            "utts_with_timings": self.timed,
            "aligned_words": len(first),
            "correct_words": self.matched,
            "first_token_ms_p50": None if not first else 1000 * _pct(first, 50),
            "first_token_ms_p95": None if not first else 1000 * _pct(first, 95),
            "final_token_ms_p50": None if not final else 1000 * _pct(final, 50),
            "final_token_ms_p95": None if not final else 1000 * _pct(final, 95),
        }


def emission_delays(tokenizer, utts: list[Utterance], out: DecodeResult) -> dict | None:
    """:class:`EmissionDelays` of one decoding pass."""
    acc = EmissionDelays()
    acc.add(tokenizer, utts, out)
    return acc.summary()


# ----- decoding and scoring ---------------------------------------------------------------------------
@dataclass
class TestSetSource:
    name: str
    cuts: Path  # a cuts file or Shar dir


@dataclass
class _Tally:
    """Scores and timings of one model on one test set (or ``all``) in one chunk mode and decode."""

    scores: Scores = field(default_factory=Scores.zero)
    utts: int = 0
    audio_s: float = 0.0
    decode_s: float = 0.0
    step_s: list[float] = field(default_factory=list)

    def add(self, total: Scores, batch: list[Utterance], decode_s: float, step_s: list[float]) -> None:
        self.scores += total
        self.utts += len(batch)
        self.audio_s += sum(u.duration_s for u in batch)
        self.decode_s += decode_s
        self.step_s += step_s


def _hyp_row(label: str, test_set: str, utt: Utterance, mode: ChunkMode, decode: str, hyp: str, tokens: list[int],
             sc: Scores) -> str:
    return json.dumps({
        "model": label, "test_set": test_set, "id": utt.id, "chunk_ms": mode.chunk_ms, "decode": decode,
        "ref": utt.text, "hyp": hyp, "tokens": tokens, "errors": sc.words.errors, "ref_words": sc.words.ref_words,
        "substitutions": sc.words.substitutions, "deletions": sc.words.deletions, "insertions": sc.words.insertions,
        "pnc_errors": sc.pnc.errors, "char_errors": sc.chars.errors}) + "\n"


def evaluate_model(runner: StreamingRunner, label: str, sets: list[TestSetSource], modes: list[ChunkMode],
                   decodes: list[str], hyps: TextIO) -> tuple[list[ModeResult], list[dict], list[dict], dict]:
    """Decode every set in every mode and decode, streaming the test sets batch by batch.

    Audio is read per batch (``runner.batch_size`` utterances, sorted by duration within a window), turned into
    features and dropped; every hypothesis is written to ``hyps`` (JSON lines) as it is scored. Memory does not
    grow with the number of utterances. Returns (results, streaming-vs-offline entries, emission-delay rows,
    per-set statistics ``{name: {"utts", "audio_s", "word_timings"}}``).
    """
    from streamtune.data import utterance_batches

    bad = [d for d in decodes if d not in DECODE_MODES]
    if bad:
        raise UserError(f"eval.modes has {bad}; choose from {list(DECODE_MODES)}")
    keys = [(mode, decode) for mode in modes for decode in decodes]
    pooled = {key: _Tally() for key in keys}
    results, equal, emissions, stats = [], [], [], {}
    for ts in sets:
        tallies = {key: _Tally() for key in keys}
        delays = {mode.chunk_ms: EmissionDelays() for mode in modes}
        differing = {mode.chunk_ms: 0 for mode in modes}
        stat = stats[ts.name] = {"utts": 0, "audio_s": 0.0, "word_timings": True}
        for batch in utterance_batches(ts.cuts, runner.batch_size):
            feats = [runner.features(u.audio) for u in batch]
            for u in batch:
                u.audio = None  # the features are all decoding needs
            stat["utts"] += len(batch)
            stat["audio_s"] += sum(u.duration_s for u in batch)
            stat["word_timings"] &= all(u.words for u in batch)
            for mode in modes:
                tokens = {}
                for decode in decodes:
                    started = time.perf_counter()
                    out = getattr(runner, decode)(mode, feats)
                    elapsed = time.perf_counter() - started
                    tokens[decode] = out.tokens
                    total, per_utt = corpus_scores([u.text for u in batch], out.texts)
                    tallies[mode, decode].add(total, batch, elapsed, out.step_times)
                    pooled[mode, decode].add(total, batch, elapsed, out.step_times)
                    for utt, hyp, toks, sc in zip(batch, out.texts, out.tokens, per_utt):
                        hyps.write(_hyp_row(label, ts.name, utt, mode, decode, hyp, toks, sc))
                    if decode == "streaming":
                        delays[mode.chunk_ms].add(runner.model.tokenizer, batch, out)
                if "streaming" in tokens and "offline" in tokens:
                    differing[mode.chunk_ms] += sum(a != b for a, b in zip(tokens["streaming"], tokens["offline"]))
        for (mode, decode), tally in tallies.items():
            results.append(_result(label, ts.name, mode, decode, tally.scores, tally.utts, tally.audio_s,
                                   tally.decode_s, runner.batch_size, tally.step_s))
        for mode in modes:
            if "streaming" in decodes and "offline" in decodes:
                equal.append({"model": label, "test_set": ts.name, "chunk_ms": mode.chunk_ms, "utts": stat["utts"],
                              "differing_utts": differing[mode.chunk_ms], "equal": differing[mode.chunk_ms] == 0})
            summary = delays[mode.chunk_ms].summary()
            if summary is not None:
                emissions.append({"model": label, "test_set": ts.name, "chunk_ms": mode.chunk_ms, **summary})
    if len(sets) > 1:
        for (mode, decode), tally in pooled.items():
            results.append(_result(label, ALL, mode, decode, tally.scores, tally.utts, tally.audio_s,
                                   tally.decode_s, runner.batch_size, tally.step_s))
    return results, equal, emissions, stats


# ----- latency ----------------------------------------------------------------------------------------
def step_latency(model, mode: ChunkMode, utts: list[Utterance], streams: list[int], audio_s: float,
                 device: str | torch.device = "cpu") -> list[dict]:
    """Per-step compute at each number of concurrent streams (every stream ``audio_s`` long, all full steps).

    The streams are different slices of the test audio laid end to end, so no two streams are identical.
    """
    rate = 16000
    pool = np.concatenate([u.audio for u in utts])
    need = int(audio_s * rate)
    while len(pool) < need * 2:
        pool = np.concatenate([pool, pool])
    warm = StreamingRunner(model, batch_size=1, device=device)
    warm.streaming(mode, [warm.features(pool[: rate])])  # first-call costs (allocations, kernels) out of the way
    rows = []
    for n in streams:
        runner = StreamingRunner(model, batch_size=n, device=device)
        offsets = np.linspace(0, len(pool) - need, n).astype(int) if n > 1 else [0]
        feats = [runner.features(pool[o: o + need]) for o in offsets]
        out = runner.streaming(mode, feats)
        full = [t for t, k in zip(out.step_times, out.step_streams) if k == n]
        p50, p95 = 1000 * _pct(full, 50), 1000 * _pct(full, 95)
        rows.append({"chunk_ms": mode.chunk_ms, "streams": n, "steps": len(full),
                     "step_ms_p50": p50, "step_ms_p95": p95,
                     "realtime": p95 <= mode.chunk_ms,  # every chunk's compute done before the next chunk arrives
                     "rtfx": n * audio_s / sum(out.step_times)})
    return rows


def algorithmic_latency(mode: ChunkMode) -> dict:
    """What waiting for audio costs, before any compute: a chunk's first frame waits for the whole chunk."""
    return {"chunk_ms": mode.chunk_ms, "att_context": mode.att_context,
            "lookahead_ms": mode.right * mode.frame_ms, "algorithmic_latency_ms": mode.chunk_ms}


# ----- comparison and gates ---------------------------------------------------------------------------
def compare(results: list[ModeResult], baseline: str, tolerance: float) -> list[dict]:
    """Each candidate vs the baseline, per test set, chunk size and decode; ``tolerance`` in WER points (%)."""
    base = {(r.test_set, r.chunk_ms, r.decode): r for r in results if r.model == baseline}
    deltas = []
    for r in results:
        b = base.get((r.test_set, r.chunk_ms, r.decode))
        if r.model == baseline or b is None:
            continue
        delta = 100 * (r.wer - b.wer)
        deltas.append({"model": r.model, "test_set": r.test_set, "chunk_ms": r.chunk_ms, "decode": r.decode,
                       "baseline_wer": b.wer, "wer": r.wer, "delta_points": delta,
                       "relative": (r.wer - b.wer) / b.wer if b.wer > 0 else None,
                       "regression": delta > tolerance})
    return deltas


def gate(results: list[ModeResult], deltas: list[dict], models: list[ModelSpec], max_wer: float | None,
         max_regression: float | None) -> dict:
    """Streaming WER of every candidate (every model when there is no baseline), per test set and chunk size.

    ``max_wer`` / ``max_regression`` are in WER points (%); the pooled ``all`` rows are not gated twice.
    """
    gated = {m.label for m in models if m.role == "candidate"}
    failures = []
    if max_wer is not None:
        for r in results:
            if r.model in gated and r.decode == "streaming" and r.test_set != ALL and 100 * r.wer > max_wer:
                failures.append(f"{r.model} on {r.test_set} at {r.chunk_ms} ms: streaming WER {100 * r.wer:.2f} % "
                                f"> --max-wer {max_wer:g} %")
    if max_regression is not None:
        for d in deltas:
            if d["decode"] == "streaming" and d["test_set"] != ALL and d["delta_points"] > max_regression:
                failures.append(f"{d['model']} on {d['test_set']} at {d['chunk_ms']} ms: streaming WER "
                                f"{100 * d['baseline_wer']:.2f} -> {100 * d['wer']:.2f} % "
                                f"(+{d['delta_points']:.2f} points > --max-regression {max_regression:g})")
    return {"max_wer": max_wer, "max_regression": max_regression, "passed": not failures, "failures": failures}


# ----- reports ----------------------------------------------------------------------------------------
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
        head = "| chunk | " + " | ".join(f"{m} streaming | {m} offline | {m} PnC WER | {m} CER" for m in models) + " |"
        out += [f"**{ts}**", "", head, "|" + "---|" * (1 + 4 * len(models))]
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
               f"Regression flag: WER up by more than {comp['tolerance_points']:g} points.", "",
               "| model | test set | chunk | decode | baseline | model | delta | relative | |",
               "|---|---|---|---|---|---|---|---|---|"]
        for d in comp["deltas"]:
            rel = "-" if d["relative"] is None else f"{100 * d['relative']:+.1f} %"
            md.append(f"| {d['model']} | {d['test_set']} | {d['chunk_ms']} ms | {d['decode']} | "
                      f"{_fmt(d['baseline_wer'])} | {_fmt(d['wer'])} | {d['delta_points']:+.2f} | {rel} | "
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
                      f"{_fmt(r.step_ms_p50, pct=False, digits=1)} ms | {_fmt(r.step_ms_p95, pct=False, digits=1)} ms |")
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
    g = payload["gates"]
    md += ["## Gates", "", ("PASSED" if g["passed"] else "FAILED") + f" (max WER {g['max_wer']}, "
           f"max regression {g['max_regression']} points)", *[f"* {f}" for f in g["failures"]], ""]
    md += ["Plots: `wer_vs_chunk.png`, `step_compute_vs_streams.png`. Per-utterance hypotheses: `hyps.jsonl`.", ""]
    return "\n".join(md)


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
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)


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
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)


def check_schema(payload: dict) -> None:
    """Validate against results.schema.json when jsonschema is installed (it is in the dev extras)."""
    try:
        import jsonschema
    except ImportError:
        return
    jsonschema.validate(payload, json.loads(SCHEMA_PATH.read_text()))


def write_reports(out_dir: Path, payload: dict) -> None:
    """results.json, results.md and the plots (hyps.jsonl is written while decoding)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    check_schema(payload)
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out_dir / "results.md").write_text(results_markdown(payload))
    plot_wer_vs_chunk(payload, out_dir / "wer_vs_chunk.png")
    plot_step_compute(payload, out_dir / "step_compute_vs_streams.png")


def build_payload(models: list[ModelSpec], test_sets: list[dict], settings: dict, results: list[ModeResult],
                  equal: list[dict], emissions: list[dict], latency: list[dict], tolerance: float,
                  max_wer: float | None, max_regression: float | None) -> dict:
    baseline = next((m.label for m in models if m.role == "baseline"), None)
    deltas = compare(results, baseline, tolerance) if baseline else []
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": settings,
        "models": [asdict(m) for m in models],
        "test_sets": test_sets,
        "results": [asdict(r) for r in results],
        "streaming_equals_offline": equal,
        "latency": latency,
        "emission_delay": emissions,
        "comparison": {"baseline": baseline, "tolerance_points": tolerance, "deltas": deltas} if baseline else None,
        "gates": gate(results, deltas, models, max_wer, max_regression),
    }
