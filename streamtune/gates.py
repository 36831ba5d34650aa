"""Candidates against a baseline (deltas per test set, chunk mode and decode) and the pass/fail gates."""

from __future__ import annotations

from streamtune.evaluation import ALL, ModelSpec, ModeResult


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
