"""Greedy vs beam search on the demo model: WER and decoding speed (RTFx) per chunk mode, side by side.

    python bench/decoding.py [--write] [--beams 4 8] [--demo-model outputs/demo/runs/tiny_cpu/latest/final.nemo]

Every search decodes the demo test set in every chunk mode, streaming (cache-aware; a beam search runs once over
the streamed encoder output at the end of each utterance, see streamtune/streaming/decoding.py) and offline, through the
same StreamingRunner evaluate.py uses; features are computed once and excluded from the timing. RTFx = seconds of
audio per second of decoding (encoder + search). Decodes alternate between searches against drift; each is
timed twice and the faster kept; a measurement disturbed by other processes is redone.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from bench import Guard, add_demo_args, demo_inputs, publish, run_header

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beams", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--batch-size", type=int, default=8)
    add_demo_args(parser)
    args = parser.parse_args(argv)

    from streamtune.evaluation.metrics import corpus_scores
    from streamtune.model.build import load_model
    from streamtune.model.chunks import chunk_modes
    from streamtune.streaming.decoding import Decoding
    from streamtune.streaming.runner import StreamingRunner

    model_path, utts = demo_inputs(args)
    model = load_model(model_path)
    audio_s = sum(u.duration_s for u in utts)
    refs = [u.text for u in utts]
    searches = [Decoding("greedy"), *(Decoding("beam", beam_size=k) for k in args.beams)]
    guard = Guard()
    guard.wait_quiet()
    feats = None
    rows = {}
    for mode in chunk_modes(model):
        for decode in ("streaming", "offline"):
            for search in searches:
                runner = StreamingRunner(model, batch_size=args.batch_size, decoding=search)
                if feats is None:
                    feats = [runner.features(u.audio) for u in utts]

                def run(runner=runner, decode=decode, mode=mode):
                    best, out = float("inf"), None
                    for _ in range(2):
                        began = time.perf_counter()
                        out = getattr(runner, decode)(mode, feats)
                        best = min(best, time.perf_counter() - began)
                    return best, out

                (seconds, out), others = guard.run(f"{search.label} {decode} {mode.chunk_ms} ms", run)
                wer = corpus_scores(refs, out.texts)[0].words.wer
                rows[mode.chunk_ms, decode, search.label] = (wer, audio_s / seconds, others)
                print(f"{mode.chunk_ms:5d} ms {decode:9s} {search.label:7s} WER {100 * wer:6.2f} %  "
                      f"RTFx {audio_s / seconds:7.1f}", flush=True)
    labels = [s.label for s in searches]
    lines = ["| chunk | decode | " + " | ".join(f"{lab} WER | {lab} RTFx" for lab in labels) + " |",
             "|---|---|" + "---|---|" * len(labels)]
    for (ms, decode) in dict.fromkeys((k[0], k[1]) for k in rows):
        cells = [f"{100 * rows[ms, decode, lab][0]:.2f} % | {rows[ms, decode, lab][1]:.1f}" for lab in labels]
        lines.append(f"| {ms} ms | {decode} | " + " | ".join(cells) + " |")
    busiest = max(r[2] for r in rows.values())
    header = run_header(f"python bench/decoding.py {' '.join(argv if argv is not None else sys.argv[1:])}".strip(),
                        f"{len(utts)} utterances, {audio_s:.0f} s of audio, {args.batch_size} at a time; "
                        f"other processes used at most {busiest:.2f} cores while timed "
                        f"({guard.redone} measurements redone)")
    text = "\n".join([header, "", *lines, "",
                      "greedy = NeMo's greedy_batch; beamN = NeMo's malsd_batch with N beams. Streaming with a beam "
                      "runs the encoder chunk by chunk and the beam once at the end of the utterance (NeMo 3.0's "
                      "beam searches cannot continue across chunks), so its WER equals offline beam's."])
    publish("Decoding: greedy vs beam search", text, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
