"""End-to-end check on recorded human speech the project did not generate.

    python bench/real_speech.py [--model outputs/demo/runs/tiny_cpu/latest/final.nemo] [--write]

The pocketsphinx 5.1.1 source distribution (from PyPI, sha256-checked; BSD-style licence, CMU) ships
recorded English test utterances with transcripts: five LibriVox read-speech clips
(``test/data/librivox``, public domain, 16 kHz WAV, one ``.txt`` each) and five "cards" clips
(``test/data/cards``, 16 kHz WAV, transcripts in ``cards.transcription``). They are copied into a
folder of ``<id>.wav`` + ``<id>.txt``; so that other formats and rates flow through too, each clip
is also written transcoded by this script (LibriVox as 44.1 kHz FLAC, cards as 8 kHz Ogg Vorbis).
Then the two user commands run unchanged:

    python -m data_prep folder --dir outputs/real_speech/recordings --out outputs/real_speech/prepared --split test
    python evaluate.py --config recipes/demo/tiny_cpu.yaml --model MODEL \\
        --cuts real=outputs/real_speech/prepared/cuts_test.jsonl.gz --out outputs/real_speech/eval

The demo model is trained on 96 synthetic words: on real read speech its WER says nothing about
accuracy. The point is that real files flow through preparation, resampling, streaming and scoring
without error, and streaming still equals offline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SDIST_URL = ("https://files.pythonhosted.org/packages/61/e7/13e0e787ff467218de880310d79cba14424f13b87171ac44af0bde1e428c/"
             "pocketsphinx-5.1.1.tar.gz")
SDIST_SHA256 = "675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355"
OUT = REPO / "outputs" / "real_speech"
sys.path.insert(0, str(REPO))


def fetch_sdist(path: Path) -> Path:
    if not path.exists():
        print(f"downloading {SDIST_URL}")
        tmp = path.with_suffix(".part")
        with urllib.request.urlopen(SDIST_URL, timeout=120) as resp, open(tmp, "wb") as f:
            shutil.copyfileobj(resp, f)
        tmp.replace(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"{path}: sha256 {digest} is not the expected {SDIST_SHA256}; delete it and retry")
    return path


def build_folder(sdist: Path, recordings: Path) -> list[str]:
    """Original clips + transcoded copies, each with a sibling .txt; returns what was written."""
    import soundfile as sf
    import soxr

    if recordings.exists():
        shutil.rmtree(recordings)
    (recordings / "librivox").mkdir(parents=True)
    (recordings / "cards").mkdir()
    written = []
    with tarfile.open(sdist) as tar:
        members = {m.name.split("test/data/", 1)[1]: m for m in tar.getmembers() if "/test/data/" in m.name}
        cards_text = {}
        for line in tar.extractfile(members["cards/cards.transcription"]).read().decode().splitlines():
            m = re.match(r"<s>\s*(.*?)\s*</s>\s*\((\w+)\)", line.strip())
            if m:
                cards_text[m.group(2)] = m.group(1)
        for name, member in sorted(members.items()):
            if not name.endswith(".wav") or not name.startswith(("librivox/", "cards/")):
                continue
            group, stem = name.split("/")[0], Path(name).stem
            text = (tar.extractfile(members[f"librivox/{stem}.txt"]).read().decode().strip() if group == "librivox"
                    else cards_text[stem])
            dest = recordings / group / f"{stem}.wav"
            dest.write_bytes(tar.extractfile(member).read())
            dest.with_suffix(".txt").write_text(text + "\n")
            audio, rate = sf.read(dest, dtype="float32")
            new_rate, fmt, suffix = (44100, "FLAC", ".flac") if group == "librivox" else (8000, "OGG", ".ogg")
            copy = recordings / group / f"{stem}-{new_rate // 1000}k{suffix}"
            sf.write(copy, soxr.resample(audio, rate, new_rate), new_rate, format=fmt)
            copy.with_suffix(".txt").write_text(text + "\n")
            written += [f"{dest.relative_to(recordings)} ({rate} Hz WAV, {len(audio) / rate:.2f} s)",
                        f"{copy.relative_to(recordings)} ({new_rate} Hz {fmt}, transcoded)"]
    return written


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run([sys.executable, *cmd], cwd=REPO, check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/demo/runs/tiny_cpu/latest/final.nemo")
    parser.add_argument("--write", action="store_true", help="write the result into BENCHMARKS.md")
    args = parser.parse_args(argv)
    if not (REPO / args.model).exists():
        raise SystemExit(f"model {args.model} does not exist: run `make demo` first, or pass --model")
    started = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    sdist = fetch_sdist(OUT / "pocketsphinx-5.1.1.tar.gz")
    recordings, prepared, eval_dir = OUT / "recordings", OUT / "prepared", OUT / "eval"
    files = build_folder(sdist, recordings)
    run(["-m", "data_prep", "folder", "--dir", str(recordings), "--out", str(prepared), "--split", "test", "--force"])
    run(["evaluate.py", "--config", "recipes/demo/tiny_cpu.yaml", "--model", args.model,
         "--cuts", f"real={prepared / 'cuts_test.jsonl.gz'}", "--out", str(eval_dir)])
    payload = json.loads((eval_dir / "results.json").read_text())
    report = json.loads((prepared / "report_test.json").read_text())
    (ts,) = payload["test_sets"]
    rows = [r for r in payload["results"] if r["decode"] == "streaming"]
    equal = all(e["equal"] for e in payload["streaming_equals_offline"])
    table = ["| chunk | streaming WER | PnC WER | CER | streaming == offline tokens |", "|---|---|---|---|---|"]
    eq = {e["chunk_ms"]: e for e in payload["streaming_equals_offline"]}
    for r in sorted(rows, key=lambda r: -r["chunk_ms"]):
        e = eq[r["chunk_ms"]]
        table.append(f"| {r['chunk_ms']} ms | {100 * r['wer']:.1f} % | {100 * r['wer_pnc']:.1f} % | "
                     f"{100 * r['cer']:.1f} % | {e['utts'] - e['differing_utts']}/{e['utts']} |")
    total = time.perf_counter() - started
    summary = (f"{report.get('read', '?')} files read by data_prep, {report.get('kept', '?')} kept, "
               f"{report.get('rejected', '?')} rejected; {ts['utts']} utterances ({ts['audio_s']:.1f} s) evaluated; "
               f"streaming == offline in every mode: {equal}; {total:.0f} s in all.")
    print("\n".join(table) + "\n\n" + summary)
    if args.write:
        from bench import write_section

        model_arg = f" --model {args.model}" if args.model != parser.get_default("model") else ""
        body = (f"`python bench/real_speech.py{model_arg}"
                f" --write`: the demo model on recorded human speech from the pocketsphinx 5.1.1 sdist "
                f"(see the script's docstring for the source and licence).\n\n"
                "Files:\n\n" + "\n".join(f"* `{f}`" for f in files) + "\n\n" + "\n".join(table) + "\n\n" + summary +
                "\n\nThe demo model knows 96 synthetic words, so these WERs say nothing about accuracy; what the run "
                "shows is that WAV, FLAC and Ogg files at 8, 16 and 44.1 kHz go through data_prep, resampling, "
                "cache-aware streaming and scoring without error.\n")
        write_section("Recorded human speech (pocketsphinx test data)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
