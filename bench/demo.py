"""The demo, end to end: ``make demo`` timed, and the WER table its evaluation wrote.

    python bench/demo.py [--write]

Runs ``make demo`` (generated speech is reused when up to date; the run dir and bundle are new), then reads
the newest run's ``eval/results.json`` and ``dist/tiny_cpu/parity.json``. The README links here instead of
copying the numbers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RUN = REPO / "outputs/demo/runs/tiny_cpu/latest"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="write the 'Demo' section of BENCHMARKS.md")
    args = parser.parse_args(argv)

    from bench import Watch, publish, wait_quiet

    wait_quiet()
    with Watch() as watch:
        proc = subprocess.run(["make", "demo"], cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"make demo failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    trained = next((line for line in proc.stdout.splitlines() if line.startswith("trained ")), "")
    results = json.loads((RUN / "eval" / "results.json").read_text())
    test_set = results["test_sets"][0]
    rows = {(r["chunk_ms"], r["decode"]): r for r in results["results"] if r["test_set"] == test_set["name"]}
    equal = {e["chunk_ms"]: e["equal"] for e in results["streaming_equals_offline"]}
    table = ["| chunk (att_context) | streaming WER | offline WER | PnC WER | CER | streaming tokens == offline |",
             "|---|---|---|---|---|---|"]
    for ms in sorted({ms for ms, _ in rows}, reverse=True):
        s, o = rows[ms, "streaming"], rows[ms, "offline"]
        table.append(f"| {ms} ms ({s['att_context']}) | {100 * s['wer']:.2f} % | {100 * o['wer']:.2f} % "
                     f"| {100 * s['wer_pnc']:.2f} % | {100 * s['cer']:.2f} % | {'yes' if equal.get(ms) else 'NO'} |")
    text = "\n".join([
        f"`make demo` — {watch.seconds / 60:.1f} min wall time on this machine with the `.venv` and the generated "
        f"speech already present ({trained.strip() or 'training line not found'}); other processes used "
        f"{watch.others:.2f} cores meanwhile.",
        "",
        f"Held-out test set: {test_set['utts']} generated utterances ({test_set['audio_s']:.0f} s) whose sentences "
        "never occur in training; WER after the Whisper English normaliser (Open ASR leaderboard), PnC WER keeps "
        "case and punctuation (the demo's texts have none). From the run's `eval/results.json`:",
        "",
        *table,
        "",
        "Training is deterministic: a re-run gives the same table to the last digit.",
    ])
    publish("Demo (`make demo`)", text, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
