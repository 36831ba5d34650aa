"""The parity gate: streaming must reproduce offline, mode by mode, or export stops.

For each chunk mode, the parity set is decoded offline (whole utterance, the
mode's ``att_context_size``) and cache-aware streaming (our runner). Tokens must
be identical and encoder outputs within ``atol``. Because our runner never
feeds zero frames from before the utterance start into the subsampling, the
maths says every mode matches, 80 ms included; the NeMo-style zero-filled
pre-encode cache is measured beside it and reported (it is what makes 80 ms
drift in NeMo's own streaming buffer), but does not gate.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

from streamtune.data.reading import Utterance
from streamtune.model.chunks import ChunkMode
from streamtune.streaming.runner import StreamingRunner

PARITY_SCHEMA_VERSION = 1


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _max_abs_diff(a_list, b_list) -> float:
    worst = 0.0
    for a, b in zip(a_list, b_list, strict=True):
        if a.shape != b.shape:
            return float("inf")
        if a.numel():
            worst = max(worst, float((a - b).abs().max()))
    return worst


def check_parity(model, utts: list[Utterance], modes: list[ChunkMode], atol: float, batch_size: int = 8) -> dict:
    """Compare streaming with offline per mode; returns the ``parity.json`` payload (``passed`` inside)."""
    runner = StreamingRunner(model, batch_size=batch_size)
    nemo_style = StreamingRunner(model, batch_size=batch_size, zero_fill_pre_cache=True)
    feats = [runner.features(u.audio) for u in utts]
    report_modes = []
    for mode in modes:
        started = time.perf_counter()
        try:
            offline = runner.offline(mode, feats, keep_encoded=True)
            streaming = runner.streaming(mode, feats, keep_encoded=True)
            zero_filled = nemo_style.streaming(mode, feats, keep_encoded=True)
        except Exception as err:  # noqa: BLE001 - a model that cannot stream in a mode fails parity there
            report_modes.append({
                "chunk_ms": mode.chunk_ms, "att_context": mode.att_context, "expected_to_match": True,
                "passed": False, "error": f"{type(err).__name__}: {err}", "token_mismatched_utts": [u.id for u in utts],
                "encoder_max_abs_diff": float("inf"),
                "nemo_zero_filled_pre_cache": {"encoder_max_abs_diff": float("inf"), "token_mismatched_utts": []},
                "seconds": time.perf_counter() - started,
            })
            continue
        mismatched = [u.id for u, a, b in zip(utts, offline.tokens, streaming.tokens) if a != b]
        max_diff = _max_abs_diff(offline.encoded, streaming.encoded)
        passed = not mismatched and max_diff <= atol
        report_modes.append({
            "chunk_ms": mode.chunk_ms,
            "att_context": mode.att_context,
            "expected_to_match": True,
            "passed": passed,
            "token_mismatched_utts": mismatched,
            "encoder_max_abs_diff": max_diff,
            "nemo_zero_filled_pre_cache": {
                "encoder_max_abs_diff": _max_abs_diff(offline.encoded, zero_filled.encoded),
                "token_mismatched_utts": [u.id for u, a, b in zip(utts, offline.tokens, zero_filled.tokens) if a != b],
            },
            "seconds": time.perf_counter() - started,
        })
    return {
        "schema_version": PARITY_SCHEMA_VERSION,
        "passed": all(m["passed"] for m in report_modes),
        "atol": atol,
        "num_utts": len(utts),
        "utt_ids": [u.id for u in utts],
        "modes": report_modes,
    }


def _finite(value):
    """Strict JSON: a non-finite number (a mode that could not be compared) is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_verdict(path: Path, payload: dict, model_path: str | Path) -> Path:
    """Write a verdict (parity.json, onnx.json) tied to the model file by its sha256."""
    payload = _finite({**payload, "model": str(model_path), "model_sha256": sha256_file(model_path)})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    return path


def tokens_cell(mismatched: list) -> str:
    """A report cell: 'yes' when no utterance's tokens differ, else how many do."""
    return "yes" if not mismatched else f"NO: {len(mismatched)}"


def parity_summary(payload: dict) -> str:
    lines = ["| chunk | tokens identical | encoder max abs diff | NeMo zero-filled cache: max diff / utts differing |",
             "|---|---|---|---|"]
    for m in payload["modes"]:
        if m.get("error"):
            lines.append(f"| {m['chunk_ms']} ms | NO: streaming fails ({m['error'][:80]}) | - | - |")
            continue
        z = m["nemo_zero_filled_pre_cache"]
        lines.append(
            f"| {m['chunk_ms']} ms | {tokens_cell(m['token_mismatched_utts'])} "
            f"| {m['encoder_max_abs_diff']:.2e} | {z['encoder_max_abs_diff']:.2e} / {len(z['token_mismatched_utts'])} |"
        )
    return "\n".join(lines)
