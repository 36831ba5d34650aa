"""Sharded data_prep at corpus scale: NeMo tarred shards validated in place into Lhotse Shar.

    python bench/data_prep_shards.py [--utts 20000] [--shards 25] [--write]

A pool of espeak-ng utterances (FLAC, 16 kHz) is packed into ``--shards`` NeMo tarred shards of ``--utts`` members
in all (each member a pool utterance under its own name: the work per member is the same as for distinct audio).
Every run is a fresh ``python -m data_prep nemo-tarred`` process (start-up included) on the whole corpus:

1. throughput with 1 process, 1 process x 2 threads, and 2 processes (audio hours per minute, files per second);
2. what is written: files and bytes, against the input tars;
3. peak RSS as the shard count grows (the first 5 shards, or fewer, vs all), 1 process;
4. the work split into two tasks (run one after the other) plus ``merge``, against the single run: the same kept
   ids and the same report.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.data_prep import run_data_prep  # noqa: E402  (after the path, as a script)


def make_corpus(root: Path, utts: int, shards: int, pool_size: int = 300) -> tuple[float, int]:
    """NeMo tarred shards of generated speech; returns (audio hours, input bytes)."""
    import soundfile as sf
    from lhotse import CutSet

    from streamtune.data.synthetic import prepare_synthetic

    prepare_synthetic(root / "pool", num_train=pool_size, num_dev=0, num_test=0, seed=13, id_prefix="pool")
    pool = []
    for cut in CutSet.from_file(root / "pool" / "cuts_train.jsonl.gz"):
        audio, rate = sf.read(cut.recording.sources[0].source, dtype="float32")
        path = root / "pool" / f"{cut.id}.flac"
        sf.write(path, audio, rate, format="FLAC")
        pool.append((path.read_bytes(), len(audio) / rate, cut.supervisions[0].text))
    corpus = root / "corpus"
    corpus.mkdir()
    hours, per_shard = 0.0, -(-utts // shards)
    for shard in range(shards):
        with tarfile.open(corpus / f"audio_{shard}.tar", "w") as tar, \
                open(corpus / f"manifest_{shard}.json", "w") as manifest:
            for i in range(shard * per_shard, min(utts, (shard + 1) * per_shard)):
                data, duration, text = pool[i % len(pool)]
                info = tarfile.TarInfo(f"utt-{i:07d}.flac")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                manifest.write(json.dumps({"audio_filepath": info.name, "duration": duration, "text": text,
                                           "shard_id": shard}) + "\n")
                hours += duration / 3600
    return hours, sum(p.stat().st_size for p in corpus.glob("audio_*.tar"))


def written(out: Path) -> tuple[int, int, int]:
    """(files, bytes, audio files) under a data_prep output dir."""
    from streamtune.data.reading import AUDIO_SUFFIXES

    files = [p for p in out.rglob("*") if p.is_file()]
    audio = [p for p in files if p.suffix.lower() in AUDIO_SUFFIXES]
    return len(files), sum(p.stat().st_size for p in files), len(audio)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utts", type=int, default=20000)
    parser.add_argument("--shards", type=int, default=25)
    parser.add_argument("--write", action="store_true", help="write the results into BENCHMARKS.md")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hours, in_bytes = make_corpus(tmp, args.utts, args.shards)
        corpus = tmp / "corpus"
        source = ["nemo-tarred", "--manifest", str(corpus / "manifest_*.json"), "--tar", str(corpus / "audio_*.tar")]
        runs = {}
        for label, opts in (("1 process", ["--num-jobs", "1"]),
                            ("1 process x 2 threads", ["--num-jobs", "1", "--threads-per-job", "2"]),
                            ("2 processes", ["--num-jobs", "2"])):
            out = tmp / label.replace(" ", "_")
            runs[label] = (*run_data_prep(source + ["--out", str(out), *opts]), out)
            print(label, runs[label][:3], flush=True)
        single = runs["1 process"][3]
        files, out_bytes, audio_files = written(single)
        few, few_shards = tmp / "few", min(5, args.shards)
        few_s, few_rss, _ = run_data_prep(["nemo-tarred", "--manifest", *[str(corpus / f"manifest_{i}.json")
                                                                         for i in range(few_shards)],
                                           "--tar", *[str(corpus / f"audio_{i}.tar") for i in range(few_shards)],
                                           "--out", str(few), "--num-jobs", "1"])
        split = tmp / "split"
        split_s = 0.0
        for index in range(2):
            split_s += run_data_prep(source + ["--out", str(split), "--num-jobs", "1", "--shard-index", str(index),
                                               "--num-shards", "2"])[0]
        merge_s = run_data_prep(["merge", "--out", str(split)])[0]
        from lhotse import CutSet

        same_ids = {c.id for c in CutSet.from_shar(in_dir=single / "shar" / "train")} == \
            {c.id for c in CutSet.from_shar(in_dir=split / "shar" / "train")}
        report = json.loads((single / "report_train.json").read_text())
        same_report = report == json.loads((split / "report_train.json").read_text())

    one_s = runs["1 process"][0]
    rows = [
        f"{args.utts:,} utterances ({hours:.2f} h of FLAC audio) in {args.shards} NeMo tarred shards "
        f"({in_bytes / 2**20:.0f} MiB); every member decoded and checked; each run a fresh process, start-up "
        "included.",
        "",
        "| workers | wall (s) | audio hours per minute | files per second | peak RSS, main process / largest "
        "child (MiB) |",
        "|---|---|---|---|---|",
    ]
    for label, (wall, own, child, _) in runs.items():
        rows.append(f"| {label} | {wall:.1f} | {60 * hours / wall:.1f} | {args.utts / wall:.0f} | "
                    f"{own:.0f} / {child:.0f} |")
    two_s = runs["2 processes"][0]
    threads_s = runs["1 process x 2 threads"][0]
    rate_per_core = 60 * hours / two_s / 2  # audio hours per minute per core, 2 processes on 2 cores
    rows += [
        "",
        f"2 processes vs 1: **{one_s / two_s:.2f}x**; 2 threads in one process vs 1: **{one_s / threads_s:.2f}x**.",
        f"Written by the single run: {files} files, {out_bytes / 2**20:.0f} MiB (**{out_bytes / in_bytes:.2f}x** the "
        f"input tars), {audio_files} loose audio files; kept {report['kept']:,}, rejected {report['rejected']}.",
        f"Peak RSS, 1 process: {few_rss:.0f} MiB on {few_shards} shards, {runs['1 process'][1]:.0f} MiB on "
        f"{args.shards} (ratio **{runs['1 process'][1] / few_rss:.2f}**).",
        f"Two tasks (--num-shards 2, run one after the other: {split_s:.1f} s) + merge ({merge_s:.1f} s) against the "
        f"single run: same kept ids **{same_ids}**, same report **{same_report}**.",
        "",
        f"On paper (a projection, not a measurement): at {rate_per_core:.1f} audio hours per minute per core (this "
        "machine, 2 processes), the 285k hours of Granary's English part take "
        + ", ".join(f"{285000 / (rate_per_core * nodes * cores) / 60:.1f} h on {nodes} nodes x {cores} cores"
                    for nodes, cores in ((1, 2), (8, 32), (32, 64)))
        + ", if cores scale as they do here and storage keeps up (each core reads about "
        f"{in_bytes / 2**20 / hours * rate_per_core / 60:.2f} MiB/s of FLAC).",
    ]
    text = "\n".join(rows)
    print(text)
    if args.write:
        from bench import write_section

        write_section("data_prep of tarred shards at scale", f"`python bench/data_prep_shards.py --utts {args.utts} "
                      f"--shards {args.shards}`\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
