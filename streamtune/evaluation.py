"""WER per chunk mode, streaming and offline, and the reports evaluate.py writes."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from streamtune.data import Utterance
from streamtune.metrics import corpus_errors
from streamtune.models import ChunkMode
from streamtune.streaming import StreamingRunner

DECODE_MODES = ("streaming", "offline")
RESULTS_SCHEMA_VERSION = 1


@dataclass
class ModeResult:
    chunk_ms: int
    att_context: list[int]
    decode: str  # "streaming" | "offline"
    wer: float  # fraction, case/punctuation-insensitive
    errors: int
    ref_words: int
    substitutions: int
    deletions: int
    insertions: int
    decode_s: float
    rtfx: float  # seconds of audio decoded per second of compute


def evaluate(runner: StreamingRunner, utts: list[Utterance], modes: list[ChunkMode], decodes: list[str]):
    """Decode ``utts`` in every chunk mode and decode type; returns (results, per-utterance rows)."""
    bad = [d for d in decodes if d not in DECODE_MODES]
    if bad:
        from streamtune.errors import UserError

        raise UserError(f"eval.modes has {bad}; choose from {list(DECODE_MODES)}")
    feats = [runner.features(u.audio) for u in utts]
    audio_s = sum(u.duration_s for u in utts)
    refs = [u.text for u in utts]
    results, rows = [], []
    for mode in modes:
        for decode in decodes:
            started = time.perf_counter()
            out = getattr(runner, decode)(mode, feats)
            elapsed = time.perf_counter() - started
            total, per_utt = corpus_errors(refs, out.texts)
            results.append(ModeResult(
                chunk_ms=mode.chunk_ms, att_context=mode.att_context, decode=decode, wer=total.wer,
                errors=total.errors, ref_words=total.ref_words, substitutions=total.substitutions,
                deletions=total.deletions, insertions=total.insertions, decode_s=elapsed,
                rtfx=audio_s / elapsed if elapsed > 0 else float("inf"),
            ))
            for utt, hyp, toks, err in zip(utts, out.texts, out.tokens, per_utt):
                rows.append({"id": utt.id, "chunk_ms": mode.chunk_ms, "decode": decode, "ref": utt.text,
                             "hyp": hyp, "tokens": toks, "errors": err.errors, "ref_words": err.ref_words})
    return results, rows


def streaming_matches_offline(rows: list[dict]) -> dict[int, bool]:
    """Per chunk size: are streaming tokens identical to offline tokens for every utterance?"""
    by_key = {(r["id"], r["chunk_ms"], r["decode"]): r["tokens"] for r in rows}
    out: dict[int, bool] = {}
    for (utt_id, chunk_ms, decode), toks in by_key.items():
        if decode == "streaming" and (utt_id, chunk_ms, "offline") in by_key:
            out[chunk_ms] = out.get(chunk_ms, True) and toks == by_key[(utt_id, chunk_ms, "offline")]
    return out


def results_table(results: list[ModeResult]) -> str:
    decodes = [d for d in DECODE_MODES if any(r.decode == d for r in results)]
    chunks = sorted({r.chunk_ms for r in results}, reverse=True)
    by = {(r.chunk_ms, r.decode): r for r in results}
    head = "| chunk | " + " | ".join(f"{d} WER" for d in decodes) + " | streaming RTFx |"
    lines = [head, "|" + "---|" * (len(decodes) + 2)]
    for ms in chunks:
        cells = [f"{100 * by[(ms, d)].wer:.2f} %" if (ms, d) in by else "-" for d in decodes]
        rtfx = f"{by[(ms, 'streaming')].rtfx:.1f}" if (ms, "streaming") in by else "-"
        lines.append(f"| {ms} ms | " + " | ".join(cells) + f" | {rtfx} |")
    return "\n".join(lines)


def write_reports(out_dir: Path, meta: dict, results: list[ModeResult], rows: list[dict]) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        **meta,
        "streaming_equals_offline": {str(k): v for k, v in streaming_matches_offline(rows).items()},
        "results": [asdict(r) for r in results],
    }
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    with open(out_dir / "hyps.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    md = [f"# Evaluation of `{meta['model']}`", "",
          f"Test set `{meta['test_set']}`: {meta['num_utts']} utterances, {meta['audio_s']:.1f} s of audio. "
          "WER is case- and punctuation-insensitive; streaming is cache-aware, chunk by chunk.", "",
          results_table(results), ""]
    (out_dir / "results.md").write_text("\n".join(md))
    return payload
