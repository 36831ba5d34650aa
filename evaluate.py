"""Evaluate models: WER at every chunk size, cache-aware streaming and offline, base vs tuned, latency.

    python evaluate.py --config recipes/demo/tiny_cpu.yaml --model runs/.../final.nemo [--cuts CUTS] [key=value ...]
    python evaluate.py --config RECIPE --baseline --model base.nemo --model tuned.nemo \\
        --cuts domain=cuts_test.jsonl.gz --cuts general=librispeech/ --max-regression 1.0 --max-wer 15

--model LABEL=PATH / --cuts NAME=PATH name them in the reports (default: file names). A test set is a
Lhotse cuts file, a Shar dir, a NeMo JSONL manifest or a folder of audio with sibling .txt transcripts
(the last two go through data_prep's checks; rejected items are counted and listed).

Exit status: 0 all gates passed, 1 a gate failed (--max-wer, --max-regression), 2 bad input.
Writes results.json (schema: streamtune/results.schema.json), results.md, hyps.jsonl and two PNG plots.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

from streamtune.config import add_config_args, load_config, resolved, save_config
from streamtune.errors import UserError, cli_entry


def model_specs(values: list[str], baseline: bool):
    """``[LABEL=]PATH`` -> ModelSpec list with unique labels; the first is the baseline with ``--baseline``."""
    from streamtune.evaluation import ModelSpec

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


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--model", action="append", required=True, metavar="[LABEL=]PATH",
                        help="a local .nemo file; repeat for several models")
    parser.add_argument("--baseline", action="store_true",
                        help="the first --model is the baseline: report deltas and flag regressions")
    parser.add_argument("--cuts", action="append", metavar="[NAME=]PATH",
                        help="a test set; repeat for several (default: data.test of the recipe)")
    parser.add_argument("--max-wer", type=float, help="exit 1 if a candidate's streaming WER (%%) is above this "
                        "on any test set and chunk size (default: eval.max_wer)")
    parser.add_argument("--max-regression", type=float, help="exit 1 if a candidate's streaming WER is above the "
                        "baseline's by more than this many points (default: eval.max_regression)")
    parser.add_argument("--out", help="output dir (default: eval.output_dir, else <first candidate's dir>/eval)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(OmegaConf.to_yaml(resolved(cfg)))
        return 0
    specs = model_specs(args.model, args.baseline)
    sets_given = args.cuts or ([cfg.data.test] if cfg.data.test else [])
    if not sets_given:
        raise UserError("no test set: pass --cuts or set data.test in the recipe")
    max_wer = args.max_wer if args.max_wer is not None else cfg.eval.max_wer
    max_regression = args.max_regression if args.max_regression is not None else cfg.eval.max_regression
    if max_regression is not None and not args.baseline:
        raise UserError("--max-regression needs a baseline: pass --baseline and the base model as the first --model")
    if cfg.eval.batch_size < 1 or any(n < 1 for n in cfg.eval.latency_streams):
        raise UserError("eval.batch_size and every eval.latency_streams entry must be >= 1")

    import torch

    import streamtune
    from streamtune.data import load_utterances, resolve_test_set
    from streamtune.evaluation import (TestSetSource, algorithmic_latency, build_payload, evaluate_model,
                                       step_latency, wer_tables, write_reports)
    from streamtune.models import load_model, select_modes
    from streamtune.rundir import git_state
    from streamtune.runtime import setup_runtime
    from streamtune.streaming import StreamingRunner

    setup_runtime(cfg)
    candidate = next(s for s in specs if s.role == "candidate")
    out_dir = Path(args.out or cfg.eval.output_dir or Path(candidate.path).resolve().parent / "eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    sources, taken = [], set()
    for spec in sets_given:
        ts = resolve_test_set(str(spec), out_dir, taken)
        taken.add(ts.name)
        sources.append(ts)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # The latency sweep streams slices of the first test set's first utterances (enough for two streams' worth).
    latency_utts = load_utterances(sources[0].cuts, max_audio_s=2 * float(cfg.eval.latency_audio_s))

    results, equal, emissions, latency, chunk_union, stats = [], [], [], [], [], {}
    with open(out_dir / "hyps.jsonl", "w") as hyps:
        for spec in specs:
            model = load_model(spec.path)
            modes = select_modes(model, list(cfg.eval.chunk_ms))
            chunk_union += [m.chunk_ms for m in modes if m.chunk_ms not in chunk_union]
            runner = StreamingRunner(model, batch_size=cfg.eval.batch_size, device=device)
            print(f"[{spec.label}] decoding {len(sources)} test set(s) x {len(modes)} chunk sizes "
                  f"x {list(cfg.eval.modes)}")
            res, eq, em, stats = evaluate_model(runner, spec.label, [TestSetSource(t.name, t.cuts) for t in sources],
                                                modes, list(cfg.eval.modes), hyps)
            results += res
            equal += eq
            emissions += em
            if "streaming" in cfg.eval.modes:
                for mode in modes:
                    for row in step_latency(model, mode, latency_utts, list(cfg.eval.latency_streams),
                                            float(cfg.eval.latency_audio_s), device):
                        latency.append({"model": spec.label, **algorithmic_latency(mode), **row})
            del model, runner

    settings = {
        "batch_size": int(cfg.eval.batch_size), "device": device, "threads": torch.get_num_threads(),
        "decodes": list(cfg.eval.modes), "chunk_ms": chunk_union,
        "latency_streams": list(cfg.eval.latency_streams), "latency_audio_s": float(cfg.eval.latency_audio_s),
        "normaliser": "whisper_normalizer.english.EnglishTextNormalizer", "streamtune_version": streamtune.__version__,
        "git_sha": git_state()["sha"],
    }
    test_sets = [{"name": ts.name, "source": ts.source, "kind": ts.kind, "rejected": ts.rejected, **stats[ts.name]}
                 for ts in sources]
    payload = build_payload(specs, test_sets, settings, results, equal, emissions, latency,
                            float(cfg.eval.regression_tolerance), max_wer, max_regression)
    write_reports(out_dir, payload)
    save_config(cfg, out_dir / "config.yaml")

    from streamtune.evaluation import ModeResult

    print(wer_tables([ModeResult(**r) for r in payload["results"]], [s.label for s in specs]))
    for entry in payload["streaming_equals_offline"]:
        if not entry["equal"]:
            print(f"note: {entry['model']} on {entry['test_set']} at {entry['chunk_ms']} ms: streaming tokens differ "
                  f"from offline on {entry['differing_utts']} of {entry['utts']} utterances")
    flagged = [d for d in (payload["comparison"] or {}).get("deltas", []) if d["regression"]]
    for d in flagged:
        print(f"regression: {d['model']} on {d['test_set']} at {d['chunk_ms']} ms ({d['decode']}): "
              f"{d['delta_points']:+.2f} WER points vs {payload['comparison']['baseline']}")
    print(f"reports in {out_dir}")
    if not payload["gates"]["passed"]:
        print("FAIL:\n  " + "\n  ".join(payload["gates"]["failures"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
