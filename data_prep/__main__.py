"""``python -m data_prep <command> ...``: each command a pure function plus this thin CLI."""

from __future__ import annotations

import argparse

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

    tok = sub.add_parser("tokenizer", help="train a SentencePiece tokenizer from cuts into a NeMo tokenizer dir")
    tok.add_argument("--cuts", required=True, nargs="+", help="cuts file(s) whose transcripts train it")
    tok.add_argument("--out", required=True, help="output tokenizer directory")
    tok.add_argument("--vocab-size", type=int, default=128)
    tok.add_argument("--type", default="bpe", choices=["bpe", "unigram"])
    tok.add_argument("--force", action="store_true")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "synthetic":
        from data_prep.synthetic import prepare_synthetic

        prepare_synthetic(args.out, args.num_train, args.num_dev, args.num_test, seed=args.seed,
                          num_jobs=args.num_jobs, min_words=args.min_words, max_words=args.max_words, force=args.force)
    elif args.command == "tokenizer":
        from data_prep.tokenizer import train_tokenizer

        train_tokenizer(args.cuts, args.out, vocab_size=args.vocab_size, tokenizer_type=args.type, force=args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
