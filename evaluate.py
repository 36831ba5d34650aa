"""Evaluate a model: WER at every chunk size, cache-aware streaming and offline.

    python evaluate.py --config recipes/demo/tiny_cpu.yaml --model runs/.../final.nemo [--cuts CUTS] [key=value ...]

config -> model -> test utterances -> decode per chunk mode -> results.json, results.md, hyps.jsonl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

from streamtune.config import add_config_args, load_config, resolved, save_config
from streamtune.errors import UserError, cli_entry


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--model", required=True, help="a local .nemo file")
    parser.add_argument("--cuts", help="test cuts file (default: data.test of the recipe)")
    parser.add_argument("--out", help="output dir (default: eval.output_dir, else <model dir>/eval)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(OmegaConf.to_yaml(resolved(cfg)))
        return 0
    cuts = args.cuts or cfg.data.test
    if not cuts:
        raise UserError("no test set: pass --cuts or set data.test in the recipe")

    from streamtune.data import load_utterances
    from streamtune.evaluation import evaluate, results_table, write_reports
    from streamtune.models import load_model, select_modes
    from streamtune.runtime import setup_runtime
    from streamtune.streaming import StreamingRunner

    setup_runtime(cfg)
    model = load_model(args.model)
    modes = select_modes(model, list(cfg.eval.chunk_ms))
    utts = load_utterances(cuts)
    out_dir = Path(args.out or cfg.eval.output_dir or Path(args.model).resolve().parent / "eval")
    runner = StreamingRunner(model, batch_size=cfg.eval.batch_size)
    results, rows = evaluate(runner, utts, modes, list(cfg.eval.modes))
    meta = {"model": str(args.model), "test_set": str(cuts), "num_utts": len(utts),
            "audio_s": sum(u.duration_s for u in utts), "batch_size": cfg.eval.batch_size}
    payload = write_reports(out_dir, meta, results, rows)
    save_config(cfg, out_dir / "config.yaml")
    print(results_table(results))
    print(f"streaming tokens == offline tokens per chunk size: {payload['streaming_equals_offline']}")
    print(f"reports in {out_dir}")
    if cfg.eval.max_wer is not None:
        worst = [r for r in results if r.decode == "streaming" and 100 * r.wer > cfg.eval.max_wer]
        if worst:
            print(f"FAIL: streaming WER above eval.max_wer={cfg.eval.max_wer} % at "
                  + ", ".join(f"{r.chunk_ms} ms ({100 * r.wer:.2f} %)" for r in worst), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
