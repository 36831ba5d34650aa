"""``python -m data_prep <command> ...``: each command a pure function plus this thin CLI."""

from __future__ import annotations

import argparse

from streamtune.errors import cli_entry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamtune-prep", description=__doc__)
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
    syn.add_argument("--style", default="written", choices=["written", "plain"],
                     help="written: transcripts as the target model writes them (capitals, punctuation, digits, "
                     "[noise] tags); plain: lower-case words")
    syn.add_argument("--word-timings", action="store_true", help="speak word by word and store each word's start "
                     "and end (Lhotse word alignment): a test set for evaluate.py's emission delay")
    syn.set_defaults(func=run_synthetic)

    def add_common(p):
        p.add_argument("--out", required=True,
                       help="output directory (cuts_<split>.jsonl.gz, rejected_<split>.jsonl, report_<split>.json)")
        p.add_argument("--split", default="train", help="name of the cuts file written: cuts_<split>.jsonl.gz")
        p.add_argument("--split-ratio", help="e.g. train=0.9,dev=0.05,test=0.05: deterministic split by --split-key")
        p.add_argument("--split-key", default="id",
                       help="what decides the split: id, or speaker (keeps a speaker whole)")
        p.add_argument("--num-jobs", type=int, default=2, help="threads decoding and checking audio (nemo-tarred, "
                       "hf: processes, each preparing whole input shards)")
        p.add_argument("--threads-per-job", type=int, default=1, help="nemo-tarred, hf: threads within each process")
        p.add_argument("--shard-index", type=int, help="nemo-tarred, hf: this task's index K (from 0) of "
                       "--num-shards N; it prepares input shards K, K+N, ... (default: SLURM_ARRAY_TASK_ID - "
                       "SLURM_ARRAY_TASK_MIN in a SLURM array job)")
        p.add_argument("--num-shards", type=int, help="nemo-tarred, hf: how many tasks share the input shards "
                       "(default: SLURM_ARRAY_TASK_COUNT); then `python -m data_prep merge --out DIR`")
        p.add_argument("--force", action="store_true", help="redo even if the outputs are up to date")
        p.add_argument("--no-audio-check", action="store_true", help="trust the metadata; do not decode audio")
        p.add_argument("--tokenizer", help="tokenizer dir: reject transcripts with characters it cannot spell")
        p.add_argument("--lowercase", action="store_true")
        p.add_argument("--strip-punctuation", action="store_true")
        p.add_argument("--min-duration", type=float, default=0.1, help="seconds")
        p.add_argument("--max-duration", type=float, default=40.0, help="seconds")
        p.add_argument("--shar", action="store_true",
                       help="also write Lhotse Shar shards (flac) under <out>/shar/<split> (nemo-tarred and hf "
                       "always write Shar, one shard per input shard)")
        p.add_argument("--shar-shard-size", type=int, default=1000, help="cuts per Shar shard (with --shar)")
        p.set_defaults(func=run_source)

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
    tarred.add_argument("--keep-tars", action="store_true", help="instead of Lhotse Shar, write validated NeMo "
                        "manifests (<out>/nemo/<split>/manifest_N.json) that name the kept members of the input "
                        "tars: no audio is copied; data.train reads <out>/nemo/<split> with the tars")
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

    merge = sub.add_parser("merge", help="combine the tasks of a sharded run (--num-shards): check every input "
                           "shard was done once, resolve ids kept twice, write the report and rejections")
    merge.add_argument("--out", required=True, help="the --out every task wrote to")
    merge.set_defaults(func=run_merge)

    noise = sub.add_parser("noise", help="a folder of noise (or room impulse response) recordings for data.augment")
    noise.add_argument("--dir", required=True, help="audio files under it, any depth")
    noise.add_argument("--out", required=True, help="output directory (cuts_noise.jsonl.gz or rirs.jsonl.gz)")
    noise.add_argument("--rirs", action="store_true", help="impulse responses: write a RecordingSet for "
                       "data.augment.rir_path instead of noise cuts for data.augment.noise_path")
    noise.set_defaults(func=run_noise)

    turns = sub.add_parser("turns", help="multi-turn recordings (turns, pauses between and within them) made from "
                           "prepared single-utterance cuts, with every turn's start and end: endpointing test sets")
    turns.add_argument("--cuts", required=True, help="prepared cuts whose utterances become turns (only read)")
    turns.add_argument("--out", required=True, help="output directory (cuts_turns.jsonl.gz, audio/)")
    turns.add_argument("--sessions", type=int, default=50, help="recordings to make")
    turns.add_argument("--seed", type=int, default=0)
    turns.add_argument("--turns", type=int, nargs=2, default=[2, 4], metavar=("MIN", "MAX"), help="turns per session")
    turns.add_argument("--gap-s", type=float, nargs=2, default=[1.5, 3.0], metavar=("MIN", "MAX"),
                       help="pause between turns, seconds")
    turns.add_argument("--pause-s", type=float, nargs=2, default=[0.2, 0.5], metavar=("MIN", "MAX"),
                       help="pause within a turn (mid-utterance, between two words), seconds")
    turns.add_argument("--pause-prob", type=float, default=0.5, help="share of turns with a within-turn pause")
    turns.add_argument("--tail-s", type=float, nargs=2, default=[3.0, 3.0], metavar=("MIN", "MAX"),
                       help="silence after the last turn, seconds")
    turns.add_argument("--append-token", help="append this token to every turn's text (training data for an "
                       "end-of-turn token: --turns 1 1 --tail-s 0.5 2.0 --append-token '<EOU>')")
    turns.set_defaults(func=run_turns)

    tok = sub.add_parser("tokenizer", help="train a SentencePiece tokenizer from cuts into a NeMo tokenizer dir")
    tok.add_argument("--cuts", required=True, nargs="+", help="cuts file(s) whose transcripts train it")
    tok.add_argument("--out", required=True, help="output tokenizer directory")
    tok.add_argument("--vocab-size", type=int, default=128)
    tok.add_argument("--type", default="bpe", choices=["bpe", "unigram"])
    tok.add_argument("--force", action="store_true")
    tok.set_defaults(func=run_tokenizer)
    return parser


def run_synthetic(args) -> None:
    from streamtune.data.synthetic import prepare_synthetic, read_words

    words = read_words(args.words_file) if args.words_file else None
    voices = [v.strip() for v in args.voices.split(",") if v.strip()] if args.voices else None
    prepare_synthetic(args.out, args.num_train, args.num_dev, args.num_test, seed=args.seed, num_jobs=args.num_jobs,
                      min_words=args.min_words, max_words=args.max_words, force=args.force, words=words,
                      voices=voices, id_prefix=args.id_prefix, word_timings=args.word_timings,
                      style=args.style)


def run_source(args) -> None:
    from streamtune.data.prepare import prepare_source

    prepare_source(args)


def run_merge(args) -> None:
    from streamtune.data.shards import merge

    merge(args.out)


def run_noise(args) -> None:
    from streamtune.data.noise import prepare_noise

    prepare_noise(args.dir, args.out, rirs=args.rirs)


def run_turns(args) -> None:
    from streamtune.data.turns import TurnPlan, prepare_turns

    plan = TurnPlan(turns=tuple(args.turns), gap_s=tuple(args.gap_s), pause_s=tuple(args.pause_s),
                    pause_prob=args.pause_prob, tail_s=tuple(args.tail_s), append_token=args.append_token)
    prepare_turns(args.cuts, args.out, args.sessions, seed=args.seed, plan=plan)


def run_tokenizer(args) -> None:
    from streamtune.data.train_tokenizer import train_tokenizer

    train_tokenizer(args.cuts, args.out, vocab_size=args.vocab_size, tokenizer_type=args.type, force=args.force)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
