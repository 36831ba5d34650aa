"""The ONNX check: every chunk mode exported, decoded by ONNX Runtime (fp32 and int8) and by sherpa-onnx, and
compared with PyTorch streaming; the verdict is ``onnx.json``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.onnx_decoder import OrtStreamingDecoder
from export.onnx_export import export_mode, quantize_dir
from export.parity import tokens_cell
from export.sherpa import sherpa_decode
from streamtune.chunks import ChunkMode
from streamtune.metrics import corpus_errors
from streamtune.streaming import StreamingRunner
from streamtune.text import normalise_text


def _wer(refs: list[str], hyps: list[str]) -> float:
    return corpus_errors(refs, hyps)[0].wer


def check_onnx(model, utts, modes: list[ChunkMode], onnx_root: Path, atol: float, int8: bool,
               int8_max_wer_delta: float, sherpa: bool, sherpa_max_wer_delta: float, batch_size: int = 8) -> dict:
    """Export every mode into ``onnx_root/<ms>ms`` and check it; returns the ``onnx.json`` payload.

    Per mode: ONNX Runtime fp32 tokens must equal PyTorch streaming tokens under the same (export)
    feeding and encoder outputs agree within ``atol``; int8 (optional) may raise WER by at most
    ``int8_max_wer_delta`` points; sherpa-onnx (optional) must land within ``sherpa_max_wer_delta`` points
    of our ONNX streaming WER. The agreement of export feeding with exact streaming is reported, not gated.
    """
    max_symbols = int(model.cfg.decoding.get("greedy", {}).get("max_symbols", 10) or 10)
    refs = [u.text for u in utts]
    exact = StreamingRunner(model, batch_size=batch_size)
    export_fed = StreamingRunner(model, batch_size=batch_size, feeding="export")
    exact_feats = [exact.features(u.audio) for u in utts]
    export_feats = [export_fed.features(u.audio) for u in utts]
    report = []
    for mode in modes:
        mode_dir = onnx_root / f"{mode.chunk_ms}ms"
        info = export_mode(model, mode, mode_dir)
        exact_out = exact.streaming(mode, exact_feats)
        torch_out = export_fed.streaming(mode, export_feats, keep_encoded=True)
        ort_dec = OrtStreamingDecoder(mode_dir, max_symbols=max_symbols)
        ort_out = [ort_dec.decode(f.numpy(), keep_encoded=True) for f in export_feats]
        ort_tokens = [t for t, _ in ort_out]
        diffs = [float(np.abs(e - t.numpy()).max()) if e is not None and e.shape == tuple(t.shape) else
                 (0.0 if e is None and t.numel() == 0 else float("inf")) for (_, e), t in zip(ort_out,
                                                                                              torch_out.encoded)]
        mismatched = [u.id for u, a, b in zip(utts, ort_tokens, torch_out.tokens) if a != b]
        ort_texts = exact.texts(ort_tokens)
        entry = {
            "chunk_ms": mode.chunk_ms, "att_context": mode.att_context, "dir": f"onnx/{mode.chunk_ms}ms",
            "metadata": info["metadata"],
            "fp32": {"token_mismatched_utts": mismatched, "encoder_max_abs_diff": max(diffs, default=0.0),
                     "wer": _wer(refs, ort_texts)},
            "export_feeding_vs_exact": {
                "utts_identical": sum(a == b for a, b in zip(torch_out.tokens, exact_out.tokens)),
                "wer_exact": _wer(refs, exact_out.texts), "wer_export_feeding": _wer(refs, torch_out.texts)},
        }
        passed = not mismatched and entry["fp32"]["encoder_max_abs_diff"] <= atol
        if int8:
            q_dir = onnx_root / f"{mode.chunk_ms}ms-int8"
            quantize_dir(mode_dir, q_dir)
            q_dec = OrtStreamingDecoder(q_dir, max_symbols=max_symbols)
            q_texts = exact.texts([q_dec.decode(f.numpy())[0] for f in export_feats])
            q_wer = _wer(refs, q_texts)
            delta = 100 * (q_wer - entry["fp32"]["wer"])
            entry["int8"] = {"dir": f"onnx/{mode.chunk_ms}ms-int8", "wer": q_wer, "wer_delta_points": delta,
                             "max_wer_delta_points": int8_max_wer_delta, "passed": delta <= int8_max_wer_delta}
            passed = passed and entry["int8"]["passed"]
        if sherpa:
            s_texts, padding = sherpa_decode(mode_dir, [u.audio for u in utts])
            s_wer = _wer(refs, s_texts)
            agree = sum(normalise_text(a) == normalise_text(b) for a, b in zip(s_texts, ort_texts))
            delta = 100 * (s_wer - entry["fp32"]["wer"])
            entry["sherpa_onnx"] = {
                "wer": s_wer, "wer_delta_points": delta, "max_wer_delta_points": sherpa_max_wer_delta,
                "utts_agreeing_with_ours": agree, "agreement_rate": agree / len(utts), "padding": padding,
                "differences": [{"id": u.id, "ours": a, "sherpa_onnx": b}
                                for u, a, b in zip(utts, ort_texts,
                                                   s_texts) if normalise_text(a) != normalise_text(b)][:20],
                "passed": abs(delta) <= sherpa_max_wer_delta}
            passed = passed and entry["sherpa_onnx"]["passed"]
        entry["passed"] = passed
        report.append(entry)
    return {"schema_version": 1, "passed": all(m["passed"] for m in report), "atol": atol, "num_utts": len(utts),
            "utt_ids": [u.id for u in utts], "modes": report}


def onnx_summary(payload: dict) -> str:
    lines = ["| chunk | ONNX fp32 tokens == PyTorch | encoder max abs diff | fp32 WER | int8 WER (delta) "
             "| sherpa-onnx WER (agreement) | export vs exact feeding WER |", "|---|---|---|---|---|---|---|"]
    for m in payload["modes"]:
        f = m["fp32"]
        q = m.get("int8")
        s = m.get("sherpa_onnx")
        x = m["export_feeding_vs_exact"]
        q_cell = "-" if not q else f"{100 * q['wer']:.2f} % ({q['wer_delta_points']:+.2f})"
        s_cell = "-" if not s else f"{100 * s['wer']:.2f} % ({100 * s['agreement_rate']:.0f} %)"
        lines.append(
            f"| {m['chunk_ms']} ms | {tokens_cell(f['token_mismatched_utts'])} "
            f"| {f['encoder_max_abs_diff']:.2e} | {100 * f['wer']:.2f} % "
            f"| {q_cell} | {s_cell} "
            f"| {100 * x['wer_export_feeding']:.2f} / {100 * x['wer_exact']:.2f} % |")
    return "\n".join(lines)
