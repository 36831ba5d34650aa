"""``python -m export <step> --config RECIPE --model MODEL.nemo [key=value ...]``

Steps: ``parity`` (streaming vs offline per chunk mode, writes parity.json, fails loudly)
and ``package`` (builds dist/<name>/ from a model whose parity passed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamtune.config import add_config_args, load_config
from streamtune.errors import UserError, cli_entry


def bundle_dir(cfg) -> Path:
    return Path(cfg.export.dist_dir) / (cfg.export.name or cfg.run.name)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["parity", "package"])
    parser.add_argument("--model", required=True, help="a local .nemo file")
    add_config_args(parser)
    args = parser.parse_intermixed_args(argv)
    cfg = load_config(args.config, args.overrides)

    from streamtune.models import load_model, select_modes
    from streamtune.runtime import setup_runtime

    setup_runtime(cfg)
    model = load_model(args.model)
    bundle = bundle_dir(cfg)
    bundle.mkdir(parents=True, exist_ok=True)
    if args.step == "parity":
        from export.parity import check_parity, parity_summary, write_parity
        from streamtune.data import load_utterances

        cuts = cfg.export.parity_cuts or cfg.data.dev or cfg.data.test
        if not cuts:
            raise UserError("no parity set: set export.parity_cuts (or data.dev / data.test) in the recipe")
        utts = load_utterances(cuts, cfg.export.parity_max_utts)
        payload = check_parity(model, utts, select_modes(model, list(cfg.eval.chunk_ms)), cfg.export.parity_atol,
                               batch_size=cfg.eval.batch_size)
        path = write_parity(bundle / "parity.json", payload, args.model)
        print(parity_summary(payload))
        if not payload["passed"]:
            failed = [f"{m['chunk_ms']} ms" for m in payload["modes"] if not m["passed"]]
            print(f"FAIL: streaming differs from offline at {', '.join(failed)}; see {path}", file=sys.stderr)
            return 1
        print(f"parity passed in every mode on {len(utts)} utterances; wrote {path}")
    else:
        from export.package import package

        package(model, Path(args.model), bundle, cfg)
        print(f"bundle ready: {bundle}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
