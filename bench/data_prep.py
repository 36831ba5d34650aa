"""data_prep throughput and memory, measured side by side in one run.

    python bench/data_prep.py [--utts 2000] [--big-lines 1000000] [--write]

1. Throughput: a generated corpus (espeak-ng, ``--utts`` utterances) as a NeMo
   manifest, converted to cuts by ``python -m data_prep nemo`` (full validation:
   every file decoded and checked) and by Lhotse alone (Recording.from_file +
   supervision + cut + writer, no validation). Hours of audio per minute each,
   and the ratio.
2. Memory: peak RSS of ``python -m data_prep nemo --no-audio-check`` on a
   10 k-line and a ``--big-lines`` manifest (lines point at the same few files;
   nothing is decoded). Flat memory means the ratio stays near 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def lhotse_alone(manifest: Path, out: Path) -> None:
    from lhotse import CutSet, Recording, SupervisionSegment
    from lhotse.cut import MonoCut

    with CutSet.open_writer(out) as writer, open(manifest) as f:
        for line in f:
            entry = json.loads(line)
            rec = Recording.from_file(entry["audio_filepath"])
            sup = SupervisionSegment(id=rec.id, recording_id=rec.id, start=0, duration=rec.duration, text=entry["text"])
            writer.write(MonoCut(id=rec.id, start=0, duration=rec.duration, channel=0, recording=rec,
                                 supervisions=[sup]))


_CHILD = """
import resource, runpy, sys
sys.argv = ["data_prep", *sys.argv[1:]]
try:
    runpy.run_module("data_prep", run_name="__main__")
except SystemExit as exit:
    assert not exit.code, exit.code
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def run_data_prep(args: list[str]) -> tuple[float, float, float]:
    """Wall seconds and peak RSS (MiB) of one `python -m data_prep` process (measured inside it) and of its
    largest child process (e.g. a worker)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, *args], cwd=REPO, check=True, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    own, child = proc.stdout.rsplit("PEAK_RSS_KB", 1)[1].split()[:2]
    return elapsed, int(own) / 1024, int(child) / 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utts", type=int, default=2000)
    parser.add_argument("--big-lines", type=int, default=1_000_000)
    parser.add_argument("--write", action="store_true", help="write the results into BENCHMARKS.md")
    args = parser.parse_args(argv)

    from lhotse import CutSet

    from streamtune.data.synthetic import prepare_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepare_synthetic(tmp / "corpus", num_train=args.utts, num_dev=0, num_test=0, seed=11)
        cuts = list(CutSet.from_file(tmp / "corpus" / "cuts_train.jsonl.gz"))
        hours = sum(c.duration for c in cuts) / 3600
        manifest = tmp / "manifest.jsonl"
        with open(manifest, "w") as f:
            for c in cuts:
                f.write(json.dumps({"audio_filepath": c.recording.sources[0].source, "duration": c.duration,
                                    "text": c.supervisions[0].text}) + "\n")

        # Both as fresh processes, start-up included, so the comparison is like for like.
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import sys; from bench.data_prep import lhotse_alone; "
                        "from pathlib import Path; lhotse_alone(Path(sys.argv[1]), Path(sys.argv[2]))",
                        str(manifest), str(tmp / "lhotse_cuts.jsonl.gz")], cwd=REPO, check=True)
        lhotse_s = time.perf_counter() - start
        ours_s, _, _ = run_data_prep(["nemo", "--manifest", str(manifest), "--out", str(tmp / "ours"),
                                      "--num-jobs", "2"])

        def big_manifest(lines: int) -> Path:
            path = tmp / f"big_{lines}.jsonl"
            sample = [json.dumps({"audio_filepath": c.recording.sources[0].source, "duration": round(c.duration, 3),
                                  "text": c.supervisions[0].text}) for c in cuts[:50]]
            with open(path, "w") as f:
                for i in range(lines):
                    entry = json.loads(sample[i % len(sample)])
                    entry["audio_filepath"] = entry["audio_filepath"].replace(".wav", f"-{i}.wav")
                    f.write(json.dumps(entry) + "\n")
            return path

        small_s, small_rss, _ = run_data_prep(["nemo", "--manifest", str(big_manifest(10_000)), "--out",
                                            str(tmp / "m10k"), "--no-audio-check"])
        big_s, big_rss, _ = run_data_prep(["nemo", "--manifest", str(big_manifest(args.big_lines)), "--out",
                                        str(tmp / "mbig"), "--no-audio-check"])

    rows = [
        "| conversion of a NeMo manifest to cuts | wall (s) | audio hours per minute |",
        "|---|---|---|",
        f"| Lhotse alone: headers only, no validation | {lhotse_s:.1f} | {60 * hours / lhotse_s:.1f} |",
        f"| `python -m data_prep nemo`: every file decoded and checked, 2 threads | {ours_s:.1f} | "
        f"{60 * hours / ours_s:.1f} |",
        "",
        f"Ratio (ours / Lhotse alone, throughput): **{lhotse_s / ours_s:.2f}** on {args.utts} utterances "
        f"({hours:.2f} h); "
        "both are fresh processes, start-up included. Decoding is the price of catching bad audio; "
        "`--no-audio-check` skips it.",
        "",
        "| `--no-audio-check` manifest | wall (s) | peak RSS (MiB) |",
        "|---|---|---|",
        f"| 10,000 lines | {small_s:.1f} | {small_rss:.0f} |",
        f"| {args.big_lines:,} lines | {big_s:.1f} | {big_rss:.0f} |",
        "",
        f"Memory ratio (big / 10 k): **{big_rss / small_rss:.2f}**.",
    ]
    text = "\n".join(rows)
    print(text)
    if args.write:
        from bench import write_section

        write_section("data_prep throughput and memory", f"`python bench/data_prep.py --utts {args.utts} "
                      f"--big-lines {args.big_lines}`\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
