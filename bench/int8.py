"""int8 variants of the exported demo model: WER rise and ONNX Runtime decoding time per chunk mode.

    python bench/int8.py [--write] [--demo-model outputs/demo/runs/tiny_cpu/latest/final.nemo]

Runs export's ONNX step (streamtune/export/onnx_check.py) on the demo test set with every variant of
``export.int8_variants`` into a scratch dir: each chunk mode exported, decoded by ONNX Runtime in fp32 and by
every int8 variant (one thread, one stream at a time, the export feeding), WER against the references. The
variant with the smallest worst-mode WER rise is the one ``export`` keeps.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from bench import Guard, add_demo_args, demo_inputs, publish, run_header

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_demo_args(parser)
    args = parser.parse_args(argv)

    from streamtune.config.schema import ExportConfig
    from streamtune.evaluation.metrics import normalise
    from streamtune.export.onnx_check import check_onnx
    from streamtune.model.build import load_model
    from streamtune.model.chunks import chunk_modes

    model_path, utts = demo_inputs(args)
    model = load_model(model_path)
    variants = ExportConfig().int8_variants
    guard = Guard()
    guard.wait_quiet()
    with tempfile.TemporaryDirectory() as tmp:
        payload, others = guard.run("the ONNX step", lambda: check_onnx(
            model, utts, chunk_modes(model), Path(tmp) / "onnx", 1e-4, True, 100.0, False, 100.0,
            int8_variants=variants, int8_target=0.5, sherpa_beam=0))
    lines = ["| variant | " + " | ".join(f"{m['chunk_ms']} ms ΔWER (decode s)" for m in payload["modes"])
             + " | worst ΔWER |", "|---|" + "---|" * (len(payload["modes"]) + 1)]
    fp32 = " | ".join(f"{100 * m['fp32']['wer']:.2f} % ({m['fp32']['decode_s']:.1f})" for m in payload["modes"])
    lines.append(f"| fp32 (WER) | {fp32} | - |")
    ranking = {r["variant"]: r["worst_mode_delta_points"] for r in payload["int8_choice"]["ranking"]}
    for variant in variants:
        cells = []
        for m in payload["modes"]:
            r = m["int8_variants"].get(variant, {})
            cells.append(f"failed: {r['error'][:60]}" if "error" in r else
                         f"{r['wer_delta_points']:+.2f} ({r['decode_s']:.1f})")
        worst = f"{ranking[variant]:+.2f}" if variant in ranking else "-"
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {worst} |")
    choice = payload["int8_choice"]
    verdict = (f"Kept: **{choice['variant']}**, worst rise {choice['worst_mode_delta_points']:+.2f} points: "
               + ("meets" if choice["meets_target"] else "misses") + " the 0.5-point target.")
    header = run_header(f"python bench/int8.py {' '.join(argv if argv is not None else sys.argv[1:])}".strip(),
                        f"{len(utts)} test utterances; ONNX Runtime 1 thread, one stream at a time; other processes "
                        f"used {others:.2f} cores")
    words = sum(len(normalise(u.text).split()) for u in utts)  # as the WER counts reference words
    how = ("ΔWER = int8 WER − fp32 WER in points, both ONNX Runtime greedy with the export feeding (each chunk's "
           "features cut from the whole utterance's, as export's parity gate feeds them), so the fp32 row can differ "
           "from evaluate's exact-streaming WER of the same model. decode s = ONNX Runtime time for the "
           f"{len(utts)} utterances in that mode. Variants (streamtune/export/onnx_export.py): "
           "dynamic = every graph, "
           "int8 weights per tensor, activations quantised on the fly; -per-channel = one scale per output channel; "
           "encoder- = decoder and joiner stay fp32; matmul = only the encoder's MatMuls (convolutions and "
           "subsampling fp32); static = QDQ scales calibrated on the parity set.")
    how += f" The test set has {words} reference words (normalised): one word is {100 / words:.2f} points."
    publish("Export: int8 variants", "\n".join([header, "", how, "", *lines, "", verdict]), args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
