"""Evaluate models: WER at every chunk mode, cache-aware streaming and offline, base vs tuned, latency.

    python evaluate.py --model runs/.../final.nemo --cuts test=cuts_test.jsonl.gz     # no recipe needed
    python evaluate.py --config recipes/demo/tiny_cpu.yaml --model runs/.../final.nemo [--cuts CUTS] [key=value ...]
    python evaluate.py --config RECIPE --baseline --model base.nemo --model tuned.nemo \\
        --cuts domain=cuts_test.jsonl.gz --cuts general=librispeech/ --max-regression 1.0 --max-wer 15
    python evaluate.py ... eval.decoding=beam eval.beam_size=8 eval.boost_words=product_names.txt
    python evaluate.py --run runs/<name>/latest             # training curves of a run (training_curves.png)

--model LABEL=PATH / --cuts NAME=PATH name them in the reports (default: file names). A test set is a
Lhotse cuts file, a Shar dir, a NeMo JSONL manifest or a folder of audio with sibling .txt transcripts
(the last two go through data_prep's checks; rejected items are counted and listed).

Exit status: 0 all gates passed, 1 a gate failed (--max-wer, --max-regression), 2 bad input.
Writes results.json (schema: streamtune/evaluation/results.schema.json), results.md, hyps.jsonl (every hypothesis
with word times and confidence) and PNG plots; --output-manifest also writes NeMo manifests with pred_text.

config -> models and test sets -> decode every chunk mode both ways, score, time -> compare, gate -> reports
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamtune.config.loading import add_config_args, load_config, printed_config, save_config
from streamtune.errors import UserError, cli_entry


def model_specs(values: list[str], baseline: bool):
    """``[LABEL=]PATH`` -> ModelSpec list with unique labels; the first is the baseline with ``--baseline``."""
    from streamtune.evaluation.scoring import ModelSpec

    if baseline and len(values) < 2:
        raise UserError("--baseline compares the first --model with the others: pass at least two --model")
    specs, taken = [], set()
    for k, value in enumerate(values):
        label, _, path = value.rpartition("=") if "=" in value and not Path(value).exists() else ("", "", value)
        if not Path(path).exists():
            raise UserError(f"model '{path}' does not exist; pass a local .nemo file")
        if not label:
            p = Path(path)
            label = p.stem if p.stem not in taken else f"{p.parent.name}/{p.stem}"
            if label in taken:
                label = f"{label}-{k + 1}"
        if label in taken:
            raise UserError(f"two models are labelled '{label}'; give each its own LABEL=PATH")
        taken.add(label)
        specs.append(ModelSpec(label, path, "baseline" if baseline and k == 0 else "candidate"))
    return specs


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="streamtune-eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, required=False)
    parser.add_argument("--model", action="append", metavar="[LABEL=]PATH",
                        help="a local .nemo file; repeat for several models")
    parser.add_argument("--run", metavar="DIR", help="draw the training curves of a run dir (loss, dev WER per "
                        "chunk mode vs step) into DIR/training_curves.png, and stop")
    parser.add_argument("--baseline", action="store_true",
                        help="the first --model is the baseline: report deltas and flag regressions")
    parser.add_argument("--cuts", action="append", metavar="[NAME=]PATH",
                        help="a test set; repeat for several (default: data.test of the recipe)")
    parser.add_argument("--max-wer", type=float, help="exit 1 if a candidate's streaming WER (%%) is above this "
                        "on any test set and chunk mode (default: eval.max_wer)")
    parser.add_argument("--max-regression", type=float, help="exit 1 if a candidate's streaming WER is above the "
                        "baseline's by more than this many points (default: eval.max_regression)")
    parser.add_argument("--out", help="output dir (default: eval.output_dir, else <first candidate's dir>/eval)")
    parser.add_argument("--output-manifest", action="store_true",
                        help="also write NeMo manifests (audio_filepath, duration, text, pred_text) per model, test "
                        "set, chunk mode and decode into <out>/manifests/")
    return parser.parse_args(argv)


# Without a recipe, the run section only names the output; the eval section is the schema's defaults.
NO_RECIPE = ["run.name=evaluate", "run.seed=0"]


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.run:
        from streamtune.evaluation.reports import plot_training_curves

        run_dir = Path(args.run).resolve()
        print(f"wrote {plot_training_curves(run_dir, run_dir / 'training_curves.png')}")
        return 0
    cfg = load_config(args.config, args.overrides if args.config else [*NO_RECIPE, *args.overrides])
    if args.print_config:
        print(printed_config(cfg))
        return 0
    if not args.model:
        raise UserError("pass --model PATH (a .nemo file; repeat for several), or --run DIR for training curves")
    specs = model_specs(args.model, args.baseline)
    sets_given = args.cuts or ([cfg.data.test] if cfg.data.test else [])
    if not sets_given:
        raise UserError("no test set: pass --cuts [NAME=]PATH (or set data.test in a recipe)")
    max_wer = args.max_wer if args.max_wer is not None else cfg.eval.max_wer
    max_regression = args.max_regression if args.max_regression is not None else cfg.eval.max_regression
    if max_regression is not None and not args.baseline:
        raise UserError("--max-regression needs a baseline: pass --baseline and the base model as the first --model")
    if cfg.eval.batch_size < 1 or any(n < 1 for n in cfg.eval.latency_streams):
        raise UserError("eval.batch_size and every eval.latency_streams entry must be >= 1")
    if not 0 <= cfg.eval.mmap_threshold_mib <= 32:
        raise UserError(f"eval.mmap_threshold_mib must be 0 (glibc's default) to 32 (glibc's limit), "
                        f"not {cfg.eval.mmap_threshold_mib}")

    from streamtune.streaming.decoding import decoding_from_config

    decoding = decoding_from_config(cfg.eval)  # a misspelt strategy or a missing boost file, before any decoding
    from streamtune.streaming.endpoint import EndpointRules

    EndpointRules.from_config(cfg.endpoint)  # contradicting endpoint.* settings, before any decoding
    if not cfg.endpoint.miss_window_s > 0:
        raise UserError(f"endpoint.miss_window_s is {cfg.endpoint.miss_window_s}: a number of seconds above 0")
    import torch

    import streamtune
    from streamtune.data.test_sets import resolve_test_set
    from streamtune.evaluation.gates import utterance_errors
    from streamtune.evaluation.reports import build_payload, print_summary, write_reports
    from streamtune.evaluation.scoring import Manifests, TestSetSource, evaluate_models
    from streamtune.model.runtime import set_mmap_threshold, setup_runtime
    from streamtune.training.rundir import git_state

    setup_runtime(cfg)
    set_mmap_threshold(int(cfg.eval.mmap_threshold_mib))
    candidate = next(s for s in specs if s.role == "candidate")
    out_dir = Path(args.out or cfg.eval.output_dir or Path(candidate.path).resolve().parent / "eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    sources, taken = [], set()
    for spec in sets_given:
        sources.append(resolve_test_set(str(spec), out_dir, taken))
        taken.add(sources[-1].name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    manifests = Manifests(out_dir / "manifests" if args.output_manifest else None)
    with open(out_dir / "hyps.jsonl", "w") as hyps:
        run = evaluate_models(specs, [TestSetSource(t.name, t.cuts) for t in sources], cfg.eval, hyps, device,
                              manifests, cfg.endpoint)
    for path in manifests.close():
        print(f"wrote NeMo manifest {path}")

    settings = {
        "batch_size": int(cfg.eval.batch_size), "device": device, "threads": torch.get_num_threads(),
        "decodes": list(cfg.eval.decodes), "latency_streams": list(cfg.eval.latency_streams),
        "latency_audio_s": float(cfg.eval.latency_audio_s),
        "normaliser": "whisper_normalizer.english.EnglishTextNormalizer", "git_sha": git_state()["sha"],
        "streamtune_version": streamtune.__version__, "decoding": decoding.label,
        "boost_words": list(decoding.boost) or None,
        "bootstrap": {"replications": int(cfg.eval.bootstrap_replications), "seed": 0},
    }
    test_sets = [{"name": t.name, "source": t.source, "kind": t.kind, "rejected": t.rejected} for t in sources]
    per_utt = utterance_errors(out_dir / "hyps.jsonl") if args.baseline else None
    payload = build_payload(specs, test_sets, settings, run, float(cfg.eval.regression_tolerance), max_wer,
                            max_regression, per_utt, int(cfg.eval.bootstrap_replications),
                            bool(cfg.eval.regression_needs_significance))
    write_reports(out_dir, payload)
    save_config(cfg, out_dir / "config.yaml")
    return print_summary(payload, out_dir)


if __name__ == "__main__":
    sys.exit(main())
