"""The BENCHMARKS.md section of ``bench/export.py``: tables and what they say."""

from __future__ import annotations

SIDES = ("pytorch", "ort-fp32", "ort-int8")


def fmt_rtfx(audio_s: float, seconds: float) -> str:
    return f"{audio_s / seconds:.1f}" if seconds > 0 else "-"


def report(rows: list[dict]) -> str:
    out = ["| model | chunk | side | compute (s, median) | RTFx | encoder (s) | encoder RTFx | encoder share "
           "| speed-up vs PyTorch (all / encoder) | reps (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = r["res"]["sides"]["pytorch"]
        for side, s in r["res"]["sides"].items():
            speed = "-" if side == "pytorch" else f"{base['total'] / s['total']:.2f}x / {base['enc'] / s['enc']:.2f}x"
            out.append(f"| {r['model']} | {r['ms']} ms | {side} | {s['total']:.2f} "
                       f"| {fmt_rtfx(r['audio_s'], s['total'])} "
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
                   f"| {r.get('same_int8', '-')}/{r['utts']} | {emitted} | {wers} | {delta} "
                   f"| {r['res']['others']:.2f} |")
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
