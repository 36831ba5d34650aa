"""``python -m data_prep <command> ...``: each command a pure function plus this thin CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

from streamtune.errors import cli_entry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    syn = sub.add_parser("synthetic", help="espeak-ng speech from a word list (train/dev/test, disjoint sentences)")
    syn.add_argument("--out", required=True, help="output directory")
    syn.add_argument("--num-train", type=int, default=3000)
    syn.add_argument("--num-dev", type=int, default=40)
    syn.add_argument("--num-test", type=int, default=60)
    syn.add_argument("--min-words", type=int, default=2)
    syn.add_argument("--max-words", type=int, default=5)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--num-jobs", type=int, default=2)
    syn.add_argument("--force", action="store_true", help="regenerate even if the corpus is up to date")
    syn.add_argument("--words-file", help="word list to draw sentences from (whitespace-separated, # comments); "
                     "default: the demo's 96 words")
    syn.add_argument("--voices", help="comma-separated espeak-ng voices, e.g. en-gb-x-gbcwmd+f5,en-us+m4; "
                     "default: the demo's seven")
    syn.add_argument("--id-prefix", default="synth", help="cut ids are <prefix>-<split>-00000")
    syn.add_argument("--word-timings", action="store_true", help="speak word by word and store each word's start "
                     "and end (Lhotse word alignment): a test set for evaluate.py's emission delay")

    def add_common(p):
        p.add_argument("--out", required=True, help="output directory (cuts_<split>.jsonl.gz, rejected.jsonl, report.json)")
        p.add_argument("--split", default="train", help="name of the cuts file written: cuts_<split>.jsonl.gz")
        p.add_argument("--split-ratio", help="e.g. train=0.9,dev=0.05,test=0.05: deterministic split by --split-key")
        p.add_argument("--split-key", default="id", help="what decides the split: id, or speaker (keeps a speaker whole)")
        p.add_argument("--num-jobs", type=int, default=2, help="threads decoding and checking audio")
        p.add_argument("--force", action="store_true", help="redo even if the outputs are up to date")
        p.add_argument("--no-audio-check", action="store_true", help="trust the metadata; do not decode audio")
        p.add_argument("--tokenizer", help="tokenizer dir: reject transcripts with characters it cannot spell")
        p.add_argument("--lowercase", action="store_true")
        p.add_argument("--strip-punctuation", action="store_true")
        p.add_argument("--min-duration", type=float, default=0.1, help="seconds")
        p.add_argument("--max-duration", type=float, default=40.0, help="seconds")
        p.add_argument("--shar", action="store_true", help="also write Lhotse Shar shards (flac) under <out>/shar/<split>")
        p.add_argument("--shar-shard-size", type=int, default=1000, help="cuts per Shar shard")

    nemo = sub.add_parser("nemo", aliases=["granary"], help="NeMo / Granary JSONL manifests (globs allowed)")
    nemo.add_argument("--manifest", required=True, nargs="+")
    nemo.add_argument("--text-key", default="text", help="transcript field: text, or answer for Granary")
    nemo.add_argument("--lang", help="keep only lines whose source_lang/lang is this")
    add_common(nemo)

    tarred = sub.add_parser("nemo-tarred", help="NeMo tarred audio: audio_N.tar + manifest_N.json (globs allowed)")
    tarred.add_argument("--manifest", required=True, nargs="+")
    tarred.add_argument("--tar", required=True, nargs="+")
    tarred.add_argument("--text-key", default="text")
    tarred.add_argument("--lang")
    add_common(tarred)

    hf = sub.add_parser("hf", help="a local Hugging Face dataset (save_to_disk dir, parquet/arrow files)")
    hf.add_argument("--dataset", required=True, help="local path; the hub is never contacted")
    hf.add_argument("--hf-split", help="which split of a DatasetDict")
    hf.add_argument("--audio-column", default="audio")
    hf.add_argument("--text-column", default="text")
    hf.add_argument("--id-column")
    add_common(hf)

    fold = sub.add_parser("folder", help="a folder of audio files with sibling .txt transcripts or one TSV/CSV")
    fold.add_argument("--dir", required=True)
    fold.add_argument("--transcripts", help="TSV/CSV with columns id or path, and text")
    add_common(fold)

    lho = sub.add_parser("lhotse", help="existing Lhotse cuts: validate and rewrite")
    lho.add_argument("--cuts", required=True, nargs="+")
    add_common(lho)

    tok = sub.add_parser("tokenizer", help="train a SentencePiece tokenizer from cuts into a NeMo tokenizer dir")
    tok.add_argument("--cuts", required=True, nargs="+", help="cuts file(s) whose transcripts train it")
    tok.add_argument("--out", required=True, help="output tokenizer directory")
    tok.add_argument("--vocab-size", type=int, default=128)
    tok.add_argument("--type", default="bpe", choices=["bpe", "unigram"])
    tok.add_argument("--force", action="store_true")
    return parser


def _parse_ratios(text: str) -> dict[str, float]:
    from streamtune.errors import UserError

    try:
        ratios = {k.strip(): float(v) for k, v in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise UserError(f"--split-ratio '{text}' is not of the form train=0.9,dev=0.05,test=0.05") from None
    if not ratios or any(v < 0 for v in ratios.values()) or sum(ratios.values()) <= 0:
        raise UserError(f"--split-ratio '{text}' needs non-negative ratios that are not all zero")
    return ratios


def _input_files(args) -> list[str]:
    """Every file the command reads (globs expanded, folders walked)."""
    import glob
    import os

    files = []
    for key in ("manifest", "tar", "cuts", "dataset", "dir", "transcripts", "tokenizer"):
        value = getattr(args, key, None)
        for pattern in value if isinstance(value, list) else [value] if value else []:
            for path in sorted(glob.glob(pattern)) or [pattern]:
                if os.path.isdir(path):
                    files += sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names)
                else:
                    files.append(path)
    return files


def _inputs_key(args) -> str:
    """Options plus size and mtime of every input file: re-running with the same inputs skips the work."""
    import hashlib
    import json
    import os

    opts = {k: v for k, v in sorted(vars(args).items()) if k not in ("force", "num_jobs")}
    stats = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in _input_files(args) if os.path.exists(f)]
    return hashlib.sha256(json.dumps([opts, stats], default=str).encode()).hexdigest()


def _stamp(args) -> Path:
    return Path(args.out) / ".data_prep.done"


def _up_to_date(args) -> bool:
    stamp = _stamp(args)
    return not args.force and stamp.exists() and stamp.read_text() == _inputs_key(args)


def _mark_done(args) -> None:
    _stamp(args).write_text(_inputs_key(args))


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "synthetic":
        from data_prep.synthetic import prepare_synthetic, read_words

        words = read_words(args.words_file) if args.words_file else None
        voices = [v.strip() for v in args.voices.split(",") if v.strip()] if args.voices else None
        prepare_synthetic(args.out, args.num_train, args.num_dev, args.num_test, seed=args.seed,
                          num_jobs=args.num_jobs, min_words=args.min_words, max_words=args.max_words, force=args.force,
                          words=words, voices=voices, id_prefix=args.id_prefix, word_timings=args.word_timings)
    elif args.command in ("nemo", "granary", "nemo-tarred", "hf", "folder", "lhotse"):
        from data_prep import sources
        from data_prep.validate import ValidationConfig, tokenizer_alphabet, write_validated

        done = _up_to_date(args)
        if done:
            print(f"{args.out} is up to date for these inputs and options (use --force to redo)")
            return 0
        cfg = ValidationConfig(
            check_audio=not args.no_audio_check, min_duration_s=args.min_duration, max_duration_s=args.max_duration,
            alphabet=tokenizer_alphabet(args.tokenizer) if args.tokenizer else None,
            lowercase=args.lowercase, strip_punctuation=args.strip_punctuation,
        )
        if args.command == "folder":
            items = sources.folder(args.dir, args.transcripts)
        elif args.command == "lhotse":
            items = sources.lhotse_cuts(args.cuts)
        elif args.command == "nemo-tarred":
            items = sources.nemo_tarred(args.manifest, args.tar, Path(args.out) / "audio", text_key=args.text_key,
                                        language=args.lang)
        elif args.command == "hf":
            items = sources.hf_dataset(args.dataset, Path(args.out) / "audio", audio_column=args.audio_column,
                                       text_column=args.text_column, id_column=args.id_column, split=args.hf_split)
        else:
            items = sources.nemo_manifests(args.manifest, text_key=args.text_key, language=args.lang,
                                           read_header=not args.no_audio_check)
        splits, splitter = [args.split], None
        if args.split_ratio:
            from data_prep.validate import split_by_ratio

            ratios = _parse_ratios(args.split_ratio)
            splits, splitter = list(ratios), split_by_ratio(ratios, key=args.split_key)
        write_validated(items, args.out, splits, cfg, splitter=splitter, num_jobs=args.num_jobs)
        if args.shar:
            from data_prep.shar import export_shar

            for name in splits:
                export_shar(f"{args.out}/cuts_{name}.jsonl.gz", f"{args.out}/shar/{name}", args.shar_shard_size)
        _mark_done(args)
    elif args.command == "tokenizer":
        from data_prep.tokenizer import train_tokenizer

        train_tokenizer(args.cuts, args.out, vocab_size=args.vocab_size, tokenizer_type=args.type, force=args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
