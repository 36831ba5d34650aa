"""The source subcommands (nemo, granary, nemo-tarred, hf, folder, lhotse): read the source, validate every item,
write the cuts (or, for sharded sources, Shar shards), the rejections and the report; skipped when the inputs and
options are those of the last finished run."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from streamtune.data import sources
from streamtune.data.stamp import Stamp, key_of
from streamtune.data.validate import ValidationConfig, split_by_ratio, tokenizer_alphabet, write_validated
from streamtune.errors import UserError

SHARDED = ("nemo-tarred", "hf")


def _parse_ratios(text: str) -> dict[str, float]:
    try:
        ratios = {k.strip(): float(v) for k, v in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise UserError(f"--split-ratio '{text}' is not of the form train=0.9,dev=0.05,test=0.05") from None
    if not ratios or any(v < 0 for v in ratios.values()) or sum(ratios.values()) <= 0:
        raise UserError(f"--split-ratio '{text}' needs non-negative ratios that are not all zero")
    return ratios


def _input_files(args) -> list[str]:
    """Every file the command reads (globs expanded, folders walked)."""
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
    opts = {k: v for k, v in sorted(vars(args).items())
            if k not in ("force", "num_jobs", "func", "shard_index", "num_shards", "threads_per_job")}
    return key_of(opts, [(f, os.stat(f).st_size,
                          os.stat(f).st_mtime_ns) for f in _input_files(args) if os.path.exists(f)])


def _items(args):
    """The items of a source that is not sharded, as the subcommand names it."""
    if args.command == "folder":
        return sources.folder(args.dir, args.transcripts)
    if args.command == "lhotse":
        return sources.lhotse_cuts(args.cuts)
    return sources.nemo_manifests(args.manifest, text_key=args.text_key, language=args.lang,
                                  read_header=not args.no_audio_check)


def _refuse_writing_inputs(args, out: Path, splits: list[str]) -> None:
    """Outputs never replace an input (``lhotse --cuts X/cuts_train.jsonl.gz --out X`` would read and rewrite it)."""
    written = {(out / f"cuts_{name}.jsonl.gz").resolve() for name in splits}
    for path in _input_files(args):
        if Path(path).resolve() in written:
            raise UserError(f"--out {out} would overwrite the input {path}; write to another directory")


def prepare_source(args) -> None:
    """nemo / granary / nemo-tarred / hf / folder / lhotse (``args`` as ``python -m data_prep`` parses them).

    nemo-tarred and hf are sharded sources: prepared in place into Lhotse Shar, split across tasks
    (:mod:`streamtune.data.shards`); the others write ``cuts_<split>.jsonl.gz`` pointing at their files.
    """
    out = Path(args.out)
    sharded = args.command in SHARDED
    if sharded:
        from streamtune.data.shards import merge, run_task, task_of

        if args.no_audio_check:
            raise UserError(f"{args.command} decodes every audio to check it (and write it into Lhotse Shar); "
                            "drop --no-audio-check")
        index, count = task_of(args.shard_index, args.num_shards)
    elif args.shard_index is not None or args.num_shards is not None:
        raise UserError(f"--shard-index/--num-shards split the shards of {' and '.join(SHARDED)} sources; "
                        f"{args.command} is not sharded")
    else:
        index, count = 0, 1
    stamp, key = Stamp(out, "data_prep"), _inputs_key(args)
    if count == 1:
        if not args.force and stamp.up_to_date(key):
            print(f"{out} is up to date for these inputs and options (use --force to redo)")
            return
        stamp.start()
    cfg = ValidationConfig(
        check_audio=not args.no_audio_check, min_duration_s=args.min_duration, max_duration_s=args.max_duration,
        alphabet=tokenizer_alphabet(args.tokenizer) if args.tokenizer else None,
        lowercase=args.lowercase, strip_punctuation=args.strip_punctuation,
    )
    splits, ratios = [args.split], None
    if args.split_ratio:
        ratios = _parse_ratios(args.split_ratio)
        splits = list(ratios)
    if sharded:
        run_task(args, index, count, key, cfg, splits, ratios)
        if count > 1:
            print(f"task {index} of {count} done; when all {count} are: python -m data_prep merge --out {out}")
            return
        merge(out)
    else:
        _refuse_writing_inputs(args, out, splits)
        splitter = split_by_ratio(ratios, key=args.split_key) if ratios else None
        write_validated(_items(args), out, splits, cfg, splitter=splitter, num_jobs=args.num_jobs)
        if args.shar:
            from streamtune.data.shar import export_shar

            for name in splits:
                export_shar(out / f"cuts_{name}.jsonl.gz", out / "shar" / name, args.shar_shard_size)
    stamp.done(key)
