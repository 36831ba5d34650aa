"""The ONNX check: every chunk mode exported, decoded by ONNX Runtime (fp32 and int8) and by sherpa-onnx, and
compared with PyTorch streaming; the verdict is ``onnx.json``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from streamtune.data.text import normalise_text
from streamtune.evaluation.gates import margin_verdict, verdict_line
from streamtune.evaluation.metrics import corpus_errors, normalise
from streamtune.export.onnx_decoder import OrtStreamingDecoder
from streamtune.export.onnx_export import export_mode, quantize_dir
from streamtune.export.parity import tokens_cell
from streamtune.export.sherpa import sherpa_decode
from streamtune.model.chunks import ChunkMode
from streamtune.streaming.runner import StreamingRunner


def _wer(refs: list[str], hyps: list[str]) -> float:
    return corpus_errors(refs, hyps)[0].wer


def _errors(refs: list[str], hyps: list[str]) -> tuple[list[int], list[int]]:
    """Per utterance: (word errors, reference words)."""
    per_utt = corpus_errors(refs, hyps)[1]
    return [e.errors for e in per_utt], [e.ref_words for e in per_utt]


def _versus(refs: list[str], ours: list[str], theirs: list[str], margin: float) -> dict:
    """:func:`streamtune.evaluation.gates.margin_verdict` of ``theirs`` against ``ours`` on the parity set."""
    mine, words = _errors(refs, ours)
    return margin_verdict(mine, _errors(refs, theirs)[0], words, margin)


CALIBRATION_UTTS = 16  # parity utterances whose streaming encoder inputs calibrate static int8


def check_onnx(model, utts, modes: list[ChunkMode], onnx_root: Path, atol: float, int8: bool,
               int8_max_wer_delta: float, sherpa: bool, sherpa_max_wer_delta: float, batch_size: int = 8,
               int8_variants: list[str] | tuple[str, ...] = ("dynamic",), int8_target: float = 0.5,
               sherpa_beam: int = 4, hotwords: list[str] | None = None) -> dict:
    """Export every mode into ``onnx_root/<ms>ms`` and check it; returns the ``onnx.json`` payload.

    Per mode: ONNX Runtime fp32 tokens must equal PyTorch streaming tokens under the same (export)
    feeding and encoder outputs agree within ``atol``; int8 (optional): every variant in ``int8_variants`` is
    made and scored, the one with the smallest worst-mode WER rise is kept as ``<ms>ms-int8`` and may raise WER
    by at most ``int8_max_wer_delta`` points (``int8_target`` is the goal the report measures it against);
    sherpa-onnx (optional) greedy may be at most ``sherpa_max_wer_delta`` points worse than our ONNX streaming,
    and its modified beam search (with ``hotwords``, when given) is scored beside it. Both gates decide on the
    evidence (:func:`streamtune.evaluation.gates.margin_verdict`): a mode fails only when the parity set shows the
    difference significantly over the allowed points; one it cannot tell is ``inconclusive``, listed in the
    payload's ``inconclusive`` (whether that blocks packaging is export.strict_gates). Export feeding against
    exact streaming is measured the same way and reported, not gated.
    """
    from streamtune.progress import progress

    max_symbols = int(model.cfg.decoding.get("greedy", {}).get("max_symbols", 10) or 10)
    refs = [u.text for u in utts]
    exact = StreamingRunner(model, batch_size=batch_size)
    export_fed = StreamingRunner(model, batch_size=batch_size, feeding="export")
    exact_feats = [exact.features(u.audio) for u in utts]
    export_feats = [export_fed.features(u.audio) for u in utts]
    report, variant_runs, fp32_texts = [], {}, {}
    for mode in progress(modes, "ONNX export and checks", unit="mode"):
        mode_dir = onnx_root / f"{mode.chunk_ms}ms"
        info = export_mode(model, mode, mode_dir)
        exact_out = exact.streaming(mode, exact_feats)
        torch_out = export_fed.streaming(mode, export_feats, keep_encoded=True)
        ort_dec = OrtStreamingDecoder(mode_dir, max_symbols=max_symbols)
        calibration: list[dict] = []
        began = time.perf_counter()
        ort_out = [ort_dec.decode(f.numpy(), keep_encoded=True, record=calibration if k < CALIBRATION_UTTS else None)
                   for k, f in enumerate(export_feats)]
        fp32_s = time.perf_counter() - began
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
                     "wer": _wer(refs, ort_texts), "decode_s": round(fp32_s, 3)},
            "export_feeding_vs_exact": {
                "utts_identical": sum(a == b for a, b in zip(torch_out.tokens, exact_out.tokens)),
                "wer_exact": _wer(refs, exact_out.texts), "wer_export_feeding": _wer(refs, torch_out.texts),
                "versus_exact": _versus(refs, exact_out.texts, torch_out.texts, 0.0)},
        }
        entry["passed"] = not mismatched and entry["fp32"]["encoder_max_abs_diff"] <= atol
        if int8:
            variant_runs[mode.chunk_ms] = _int8_variants(mode_dir, onnx_root, mode, int8_variants, calibration,
                                                         export_feats, exact, refs, entry["fp32"]["wer"],
                                                         max_symbols)
            fp32_texts[mode.chunk_ms] = ort_texts
        if sherpa:
            s_texts, padding = sherpa_decode(mode_dir, [u.audio for u in utts])
            s_wer = _wer(refs, s_texts)
            agree = sum(normalise_text(a) == normalise_text(b) for a, b in zip(s_texts, ort_texts))
            verdict = _versus(refs, ort_texts, s_texts, sherpa_max_wer_delta)
            entry["sherpa_onnx"] = {
                "wer": s_wer, "wer_delta_points": verdict["delta_points"],
                "max_wer_delta_points": sherpa_max_wer_delta, "verdict": verdict,
                "utts_agreeing_with_ours": agree, "agreement_rate": agree / len(utts), "padding": padding,
                "differences": [{"id": u.id, "ours": a, "sherpa_onnx": b}
                                for u, a, b in zip(utts, ort_texts,
                                                   s_texts) if normalise_text(a) != normalise_text(b)][:20],
                "passed": verdict["verdict"] != "fail"}
            if sherpa_beam:
                b_texts, _ = sherpa_decode(mode_dir, [u.audio for u in utts], beam=sherpa_beam)
                entry["sherpa_onnx"]["modified_beam_search"] = {"max_active_paths": sherpa_beam,
                                                                "wer": _wer(refs, b_texts)}
            if hotwords:
                h_texts, _ = sherpa_decode(mode_dir, [u.audio for u in utts], beam=sherpa_beam, hotwords=hotwords)
                entry["sherpa_onnx"]["hotwords"] = {"words": len(hotwords), "wer": _wer(refs, h_texts),
                                                    "utts_changed": sum(a != b for a, b in zip(h_texts, s_texts))}
            entry["passed"] = entry["passed"] and entry["sherpa_onnx"]["passed"]
        report.append(entry)
    choice = None
    if int8:
        choice = _keep_best_int8(variant_runs, onnx_root, int8_target)
        for entry in report:
            runs = variant_runs[entry["chunk_ms"]]
            best = runs.get(choice["variant"], {}) if choice["variant"] else {}
            verdict = _versus(refs, fp32_texts[entry["chunk_ms"]], best["texts"], int8_max_wer_delta) \
                if "texts" in best else None
            for run in runs.values():
                run.pop("texts", None)
            entry["int8_variants"] = runs
            entry["int8"] = {"dir": f"onnx/{entry['chunk_ms']}ms-int8", "variant": choice["variant"],
                             "wer": best.get("wer"), "wer_delta_points": best.get("wer_delta_points"),
                             "decode_s": best.get("decode_s"), "max_wer_delta_points": int8_max_wer_delta,
                             "verdict": verdict, "passed": verdict is not None and verdict["verdict"] != "fail"}
            entry["passed"] = entry["passed"] and entry["int8"]["passed"]
    inconclusive = [verdict_line(f"{m['chunk_ms']} ms {what}", m[key]["verdict"]) for m in report
                    for key, what in (("sherpa_onnx", "sherpa-onnx vs ours"), ("int8", "int8 vs fp32"))
                    if m.get(key) and m[key].get("verdict") and m[key]["verdict"]["verdict"] == "inconclusive"]
    return {"schema_version": 2, "passed": all(m["passed"] for m in report), "inconclusive": inconclusive,
            "atol": atol, "num_utts": len(utts), "num_words": sum(len(normalise(r).split()) for r in refs),
            "utt_ids": [u.id for u in utts], "int8_choice": choice, "modes": report}


def _int8_variants(mode_dir: Path, onnx_root: Path, mode: ChunkMode, variants, calibration: list[dict],
                   export_feats, runner: StreamingRunner, refs: list[str], fp32_wer: float, max_symbols: int) -> dict:
    """Make and score every int8 variant of one mode (in ``onnx_root/.<ms>ms-int8-<variant>``)."""
    runs = {}
    for variant in variants:
        q_dir = onnx_root / f".{mode.chunk_ms}ms-int8-{variant}"
        shutil.rmtree(q_dir, ignore_errors=True)
        try:
            quantize_dir(mode_dir, q_dir, variant, calibration)
            q_dec = OrtStreamingDecoder(q_dir, max_symbols=max_symbols)
            began = time.perf_counter()
            tokens = [q_dec.decode(f.numpy())[0] for f in export_feats]
            elapsed = time.perf_counter() - began
        except Exception as err:  # noqa: BLE001 - a variant ONNX Runtime cannot make or run is reported, not fatal
            runs[variant] = {"error": f"{type(err).__name__}: {str(err)[:200]}"}
            shutil.rmtree(q_dir, ignore_errors=True)
            continue
        texts = runner.texts(tokens)
        wer = _wer(refs, texts)
        runs[variant] = {"wer": wer, "wer_delta_points": 100 * (wer - fp32_wer), "decode_s": round(elapsed, 3),
                         "bytes": sum(p.stat().st_size for p in q_dir.iterdir() if p.suffix == ".onnx"),
                         "texts": texts}
    return runs


def _keep_best_int8(variant_runs: dict[int, dict], onnx_root: Path, target: float) -> dict:
    """The variant whose worst WER rise over the modes is smallest (then the fastest) becomes ``<ms>ms-int8``."""
    scored = []
    names = {v for runs in variant_runs.values() for v in runs}
    for variant in names:
        runs = [variant_runs[ms].get(variant, {}) for ms in variant_runs]
        if any("error" in r or not r for r in runs):
            continue
        scored.append((max(r["wer_delta_points"] for r in runs), sum(r["decode_s"] for r in runs), variant))
    scored.sort()
    best = scored[0][2] if scored else None
    for ms in variant_runs:
        dst = onnx_root / f"{ms}ms-int8"
        shutil.rmtree(dst, ignore_errors=True)
        for variant in names:
            src = onnx_root / f".{ms}ms-int8-{variant}"
            if variant == best:
                src.rename(dst)
            else:
                shutil.rmtree(src, ignore_errors=True)
    worst = scored[0][0] if scored else None
    return {"variant": best, "worst_mode_delta_points": worst, "target_points": target,
            "meets_target": worst is not None and worst <= target,
            "ranking": [{"variant": v, "worst_mode_delta_points": d, "decode_s": round(t, 3)} for d, t, v in scored]}


def _verdict_word(gate: dict) -> str:
    verdict = (gate.get("verdict") or {}).get("verdict")
    return {"pass": "pass", "fail": "FAIL", "inconclusive": "inconclusive"}.get(verdict, "-")


def onnx_summary(payload: dict) -> str:
    lines = ["| chunk | ONNX fp32 tokens == PyTorch | encoder max abs diff | fp32 WER | int8 WER (delta, verdict) "
             "| sherpa-onnx WER (identical texts, verdict) | export vs exact feeding WER |",
             "|---|---|---|---|---|---|---|"]
    for m in payload["modes"]:
        f = m["fp32"]
        q = m.get("int8")
        s = m.get("sherpa_onnx")
        x = m["export_feeding_vs_exact"]
        q_cell = "-" if not q or q.get("wer") is None else \
            f"{100 * q['wer']:.2f} % ({q['wer_delta_points']:+.2f}, {q['variant']}, {_verdict_word(q)})"
        s_cell = "-" if not s else f"{100 * s['wer']:.2f} % ({100 * s['agreement_rate']:.0f} %, {_verdict_word(s)})"
        lines.append(
            f"| {m['chunk_ms']} ms | {tokens_cell(f['token_mismatched_utts'])} "
            f"| {f['encoder_max_abs_diff']:.2e} | {100 * f['wer']:.2f} % "
            f"| {q_cell} | {s_cell} "
            f"| {100 * x['wer_export_feeding']:.2f} / {100 * x['wer_exact']:.2f} % |")
    if payload.get("inconclusive"):
        lines += ["", f"The gates decide on the parity set ({payload['num_utts']} utterances, "
                  f"{payload['num_words']} words) with the paired bootstrap evaluate.py uses: a mode fails only when "
                  "it is significantly worse than allowed; what the set cannot tell is inconclusive:",
                  *(f"* {line}" for line in payload["inconclusive"])]
    return "\n".join(lines)
