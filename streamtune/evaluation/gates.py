"""Candidates against a baseline (deltas per test set, chunk mode and decode, each with a paired bootstrap
interval) and the pass/fail gates."""

from __future__ import annotations

import hashlib
import json
from array import array
from pathlib import Path

from streamtune.evaluation.scoring import ALL, ModelSpec, ModeResult
from streamtune.evaluation.stats import paired_bootstrap


def utterance_errors(hyps_path: Path) -> dict[tuple, tuple[str, array, array]]:
    """Per (model, test set, chunk, decode): (digest of the utterance ids in order, errors, reference words) of
    every utterance, read back from ``hyps.jsonl`` (ints only: memory stays small for large test sets)."""
    out: dict[tuple, list] = {}
    with open(hyps_path) as f:
        for line in f:
            row = json.loads(line)
            key = (row["model"], row["test_set"], row["chunk_ms"], row["decode"])
            entry = out.setdefault(key, [hashlib.sha256(), array("i"), array("i")])
            entry[0].update(row["id"].encode() + b"\0")
            entry[1].append(row["errors"])
            entry[2].append(row["ref_words"])
    return {k: (h.hexdigest(), e, r) for k, (h, e, r) in out.items()}


def _pooled(per_utt: dict, model: str, chunk_ms: int, decode: str):
    """The ``all`` test set: every set's utterances of this model, chunk and decode, in test-set order."""
    parts = [v for (m, _, ms, d), v in sorted(per_utt.items(), key=lambda kv: kv[0][1])
             if m == model and ms == chunk_ms and d == decode]
    digest = hashlib.sha256("".join(p[0] for p in parts).encode()).hexdigest()
    return digest, [x for p in parts for x in p[1]], [x for p in parts for x in p[2]]


def compare(results: list[ModeResult], baseline: str, tolerance: float, per_utt: dict | None = None,
            replications: int = 10000, seed: int = 0) -> list[dict]:
    """Each candidate vs the baseline, per test set, chunk size and decode; ``tolerance`` in WER points (%).

    With the per-utterance errors (:func:`utterance_errors`), each delta gets its 95 % paired bootstrap interval
    (``ci95_points``), ``significant`` (the interval excludes 0) and ``p_improvement``.
    """
    base = {(r.test_set, r.chunk_ms, r.decode): r for r in results if r.model == baseline}
    deltas = []
    for r in results:
        b = base.get((r.test_set, r.chunk_ms, r.decode))
        if r.model == baseline or b is None:
            continue
        delta = 100 * (r.wer - b.wer)
        ci, p_improvement = None, None
        if per_utt is not None:
            get = (lambda m: _pooled(per_utt, m, r.chunk_ms, r.decode)) if r.test_set == ALL else \
                (lambda m: per_utt.get((m, r.test_set, r.chunk_ms, r.decode)))
            mine, theirs = get(r.model), get(baseline)
            if mine and theirs and mine[0] == theirs[0] and len(mine[2]):  # the same utterances, in the same order
                low, high, p_improvement = paired_bootstrap(theirs[1], mine[1], mine[2], replications, seed)
                ci = [round(low, 4), round(high, 4)]
        deltas.append({"model": r.model, "test_set": r.test_set, "chunk_ms": r.chunk_ms, "decode": r.decode,
                       "decoding": r.decoding, "baseline_wer": b.wer, "wer": r.wer, "delta_points": delta,
                       "relative": (r.wer - b.wer) / b.wer if b.wer > 0 else None,
                       "ci95_points": ci, "significant": bool(ci and (ci[0] > 0 or ci[1] < 0)),
                       "p_improvement": p_improvement, "regression": delta > tolerance})
    return deltas


def gate(results: list[ModeResult], deltas: list[dict], models: list[ModelSpec], max_wer: float | None,
         max_regression: float | None, needs_significance: bool = True) -> dict:
    """Streaming WER of every candidate (every model when there is no baseline), per test set and chunk size.

    ``max_wer`` / ``max_regression`` are in WER points (%); the pooled ``all`` rows are not gated twice. With
    ``needs_significance``, a regression over ``max_regression`` fails only when its bootstrap interval is above
    0 (the test set is large enough to tell); one that is not is listed in ``not_significant``.
    """
    gated = {m.label for m in models if m.role == "candidate"}
    failures = []
    if max_wer is not None:
        for r in results:
            if r.model in gated and r.decode == "streaming" and r.test_set != ALL and 100 * r.wer > max_wer:
                failures.append(f"{r.model} on {r.test_set} at {r.chunk_ms} ms: streaming WER {100 * r.wer:.2f} % "
                                f"> --max-wer {max_wer:g} %")
    unclear = []
    if max_regression is not None:
        for d in deltas:
            if d["decode"] == "streaming" and d["test_set"] != ALL and d["delta_points"] > max_regression:
                ci = d.get("ci95_points")
                interval = f", 95 % interval [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""
                line = (f"{d['model']} on {d['test_set']} at {d['chunk_ms']} ms: streaming WER "
                        f"{100 * d['baseline_wer']:.2f} -> {100 * d['wer']:.2f} % "
                        f"(+{d['delta_points']:.2f} points > --max-regression {max_regression:g}{interval})")
                if needs_significance and ci is not None and not d["significant"]:
                    unclear.append(line + ": not significant on this test set")
                else:
                    failures.append(line + (", significant" if d.get("significant") else ""))
    return {"max_wer": max_wer, "max_regression": max_regression, "needs_significance": needs_significance,
            "passed": not failures, "failures": failures, "not_significant": unclear}


VERDICTS = ("pass", "inconclusive", "fail")


def margin_verdict(errors_ref, errors_test, ref_words, margin_points: float, replications: int = 10000,
                   seed: int = 0) -> dict:
    """Is decoder ``test`` at most ``margin_points`` WER points worse than decoder ``ref`` on these utterances?

    Decided as evaluate.py decides a regression: the 95 % paired bootstrap interval of WER(test) - WER(ref) over
    utterances (:func:`streamtune.evaluation.stats.paired_bootstrap`). ``fail`` when the interval lies above the margin
    (significantly worse than allowed), ``pass`` when it lies at or below it, ``inconclusive`` otherwise: the
    utterances cannot tell. Then ``words_to_settle`` estimates the reference words that would (the interval
    narrows as 1/sqrt(words); the same rates assumed), None when the difference sits on the margin.
    """
    words = int(sum(ref_words))
    delta = 100.0 * (sum(errors_test) - sum(errors_ref)) / max(words, 1)
    low, high, _ = paired_bootstrap(errors_ref, errors_test, ref_words, replications, seed)
    verdict = "fail" if low > margin_points else "pass" if high <= margin_points else "inconclusive"
    settle = None
    if verdict == "inconclusive" and delta != margin_points:
        half = (high - low) / 2
        settle = int(words * (half / abs(delta - margin_points)) ** 2) + 1
    return {"verdict": verdict, "delta_points": round(delta, 4), "ci95_points": [round(low, 4), round(high, 4)],
            "margin_points": margin_points, "utts": len(ref_words), "words": words, "words_to_settle": settle}


def verdict_line(what: str, v: dict) -> str:
    """One line a person reads: the verdict, the difference and its interval, and what would settle it."""
    line = (f"{what}: {v['verdict'].upper()}: {v['delta_points']:+.2f} WER points, 95 % interval "
            f"[{v['ci95_points'][0]:+.2f}, {v['ci95_points'][1]:+.2f}] against an allowed {v['margin_points']:g} "
            f"on {v['words']} words ({v['utts']} utterances)")
    if v["verdict"] == "inconclusive":
        line += (f"; about {v['words_to_settle']} words would settle it" if v["words_to_settle"] else
                 "; the difference sits on the margin")
    return line
