"""``python -m export <step> --config RECIPE --model MODEL.nemo [key=value ...]``

Steps, each writing into the bundle dir ``export.dist_dir/<export.name or run.name>/``:

  parity    PyTorch streaming vs offline per chunk mode: tokens identical, encoder outputs within
            export.parity_atol; writes parity.json; exit 1 on failure
  onnx      ONNX per chunk mode (+ int8) in sherpa-onnx's layout; our ONNX Runtime streaming decoder
            must give PyTorch's tokens; int8 and sherpa-onnx WER gated on the evidence (pass, fail or
            inconclusive: a paired bootstrap over the parity set); writes onnx.json; exit 1 on failure
  package   refuses unless parity.json and onnx.json passed for this very .nemo (and, with --strict or
            export.strict_gates, unless no gate was inconclusive); adds the .nemo,
            tokenizer, sample, results.json, MODEL_CARD.md, manifest.json (+ tarball with export.tarball)
  verify    --bundle DIR (or the recipe's bundle): re-hash against manifest.json, load and decode; exit 1
  all       parity, onnx, package, verify; stops at the first failure
  serve     --bundle DIR: a streaming WebSocket server over a verified bundle, with a microphone page at /
            (`python -m export serve --help`; the protocol is in streamtune/serve/server.py)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamtune.config.loading import add_config_args, load_config, printed_config
from streamtune.errors import UserError, cli_entry

STEPS = ["parity", "onnx", "package", "verify", "all", "serve"]


def bundle_dir(cfg) -> Path:
    return Path(cfg.export.dist_dir) / (cfg.export.name or cfg.run.name)


def _parity_set(cfg, bundle: Path):
    """export.parity_cuts, else data.dev, else data.test; with none of them, speech generated with espeak-ng."""
    from streamtune.data.reading import load_utterances

    cuts = cfg.export.parity_cuts or cfg.data.dev or cfg.data.test
    if not cuts:
        from streamtune.data.synthetic import prepare_synthetic

        n = cfg.export.parity_max_utts or 20
        print(f"no parity set in the recipe (export.parity_cuts, data.dev, data.test): generating {n} utterances")
        cuts = prepare_synthetic(bundle.parent / f".{bundle.name}-parity-speech", num_train=0, num_dev=0,
                                 num_test=n, seed=0, id_prefix="parity")["test"]
    want = int(cfg.export.parity_min_words or 0)
    utts = load_utterances(cuts, cfg.export.parity_max_utts, min_words=want)
    words = sum(len(u.text.split()) for u in utts)
    short = f"; fewer than export.parity_min_words={want}: the gates may be inconclusive" if words < want else ""
    print(f"parity set: {len(utts)} utterances, {words} reference words from {cuts}{short}")
    return utts


def run_parity(model, model_path: str, bundle: Path, cfg, modes, utts) -> int:
    from streamtune.export.parity import check_parity, parity_summary, write_verdict

    payload = check_parity(model, utts, modes, cfg.export.parity_atol, batch_size=cfg.eval.batch_size)
    path = write_verdict(bundle / "parity.json", payload, model_path)
    return _report(payload, path, parity_summary(payload), "streaming differs from offline",
                   f"parity passed in every mode on {len(utts)} utterances")


def run_onnx(model, model_path: str, bundle: Path, cfg, modes, utts) -> int:
    import shutil

    from streamtune.export.onnx_check import check_onnx, onnx_summary
    from streamtune.export.parity import write_verdict

    shutil.rmtree(bundle / "onnx", ignore_errors=True)
    from streamtune.export.onnx_export import INT8_VARIANTS
    from streamtune.streaming.decoding import boost_phrases

    unknown = [v for v in cfg.export.int8_variants if v not in INT8_VARIANTS]
    if unknown or (cfg.export.int8 and not cfg.export.int8_variants):
        raise UserError(f"export.int8_variants: {unknown or 'empty'}; choose from {', '.join(INT8_VARIANTS)}")
    hotwords = list(boost_phrases(cfg.export.hotwords, "export.hotwords")) if cfg.export.hotwords is not None else None
    payload = check_onnx(model, utts, modes, bundle / "onnx", cfg.export.parity_atol, cfg.export.int8,
                         cfg.export.int8_max_wer_delta, cfg.export.sherpa_check, cfg.export.sherpa_max_wer_delta,
                         batch_size=cfg.eval.batch_size, int8_variants=list(cfg.export.int8_variants),
                         int8_target=cfg.export.int8_target_wer_delta, sherpa_beam=int(cfg.export.sherpa_beam),
                         hotwords=hotwords)
    path = write_verdict(bundle / "onnx.json", payload, model_path)
    return _report(payload, path, onnx_summary(payload), "the ONNX check failed",
                   f"ONNX fp32 == PyTorch streaming in every mode on {len(utts)} utterances")


def _report(payload: dict, path: Path, table: str, failure: str, success: str) -> int:
    """Print a verdict's table and its one-line outcome (and what it could not decide); 1 when any mode failed."""
    print(table)
    if not payload["passed"]:
        failed = [f"{m['chunk_ms']} ms" for m in payload["modes"] if not m["passed"]]
        print(f"FAIL: {failure} at {', '.join(failed)}; see {path}", file=sys.stderr)
        return 1
    undecided = payload.get("inconclusive") or []
    print(f"{success}; wrote {path}" + (f"; {len(undecided)} gate(s) INCONCLUSIVE on this parity set (above; "
                                        "export.parity_min_words or export.parity_cuts gives them more evidence)"
                                        if undecided else ""))
    return 0


def run_verify(bundle: Path, expect_manifest_sha256: str | None = None) -> int:
    from streamtune.export.verify import VerifyError, verify

    try:
        lines = verify(bundle, expect_manifest_sha256)
    except VerifyError as err:
        print(f"FAIL: {bundle}: {err}", file=sys.stderr)
        return 1
    print(f"verified {bundle}: " + "; ".join(lines))
    return 0


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamtune-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=STEPS)
    parser.add_argument("--model", help="a local .nemo file (every step but verify)")
    parser.add_argument("--bundle", help="verify, serve: the bundle dir (default: the recipe's "
                        "export.dist_dir/<name>)")
    parser.add_argument("--expect-manifest-sha256", metavar="HEX",
                        help="verify: the sha256 of manifest.json as its publisher states it (package prints it)")
    parser.add_argument("--strict", action="store_true", help="package, all: an inconclusive int8 or sherpa-onnx "
                        "gate blocks packaging (export.strict_gates=true)")
    serving = parser.add_argument_group("serve")
    serving.add_argument("--chunk-ms", type=int, help="the chunk mode to serve (default: the model's default)")
    serving.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    serving.add_argument("--port", type=int, default=8765)
    serving.add_argument("--max-streams", type=int,
                         help="streams served at once; more are refused (default: a capacity probe at start-up)")
    serving.add_argument("--idle-s", type=float, default=30.0,
                         help="close a stream that sends no audio for this long (default 30 s)")
    serving.add_argument("--max-session-s", type=float, default=3600.0,
                         help="end a stream after this long: its last final is sent (default 3600 s)")
    serving.add_argument("--send-timeout-s", type=float, default=10.0,
                         help="drop a client whose results cannot be sent (it does not read) for this long; also "
                         "the heartbeat's interval (default 10 s)")
    serving.add_argument("--token-file", metavar="FILE",
                         help="require this file's token of WebSocket and /metrics clients (header "
                         "'Authorization: Bearer TOKEN'; the page: open /#token=TOKEN)")
    serving.add_argument("--max-message-kib", type=int, default=256, help="largest audio message accepted")
    serving.add_argument("--max-backlog-s", type=float, default=5.0,
                         help="audio a client may send ahead of decoding; beyond it the server stops reading its "
                         "socket until decoding catches up (its sends block)")
    serving.add_argument("--device", default="cpu", help="cpu or cuda (the pytorch backend)")
    serving.add_argument("--backend", choices=["pytorch", "onnx", "onnx-int8"], default="pytorch",
                         help="what steps the streams: the bundle's model.nemo in PyTorch, or its ONNX Runtime "
                         "graphs of the chunk mode (onnx/<ms>ms, or onnx/<ms>ms-int8), batched the same way; on "
                         "CPU, ONNX Runtime is the faster (BENCHMARKS.md, Serving)")
    serving.add_argument("--endpoint", choices=["auto", "none", "rules", "eou"], default="auto",
                         help="how a session is cut into turns (default: eou when the model has the <EOU> token, "
                         "else rules; see docs/serving.md)")
    serving.add_argument("--trailing-silence-s", type=float,
                         help="silence after speech that ends a turn (default 0.8 s; with <EOU>, 1.6 s as a "
                         "fallback; 0: off)")
    serving.add_argument("--leading-silence-s", type=float,
                         help="silence with nothing decoded after which a segment restarts (default 2.4 s; 0: off)")
    serving.add_argument("--max-segment-s", type=float, help="the longest a turn may run (default 20 s)")
    serving.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                         help="a host name clients may reach the server by, besides the loopback names and --host "
                         "(repeat; requests naming another Host are refused)")
    serving.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                         help="a web page origin (https://app.example) whose pages may open streams, besides the "
                         "server's own page (repeat)")
    add_config_args(parser, required=False)
    args = parser.parse_intermixed_args(argv)
    if args.step == "serve":
        from streamtune.serve.server import ServeOptions, read_token, serve

        if not args.bundle:
            raise UserError("`python -m export serve` needs --bundle DIR (an exported, verified bundle)")
        if args.max_streams is not None and args.max_streams < 1:
            raise UserError("--max-streams must be >= 1")
        given = {key: (value or None) if key != "max_segment_s" else value for key, value in (
            ("trailing_silence_s", args.trailing_silence_s), ("leading_silence_s", args.leading_silence_s),
            ("max_segment_s", args.max_segment_s)) if value is not None}
        for flag in ("max_backlog_s", "idle_s", "max_session_s", "send_timeout_s"):
            if not getattr(args, flag) > 0:
                raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: a number of seconds above 0")
        token = read_token(Path(args.token_file)) if args.token_file else None
        serve(Path(args.bundle), ServeOptions(args.chunk_ms, args.host, args.port, args.max_streams, args.idle_s,
                                              args.max_message_kib, args.device, args.max_backlog_s, args.endpoint,
                                              given, args.allow_host, args.allow_origin, args.max_session_s,
                                              args.send_timeout_s, token, args.backend),
              args.expect_manifest_sha256)
        return 0
    if args.step == "verify" and args.bundle:
        return run_verify(Path(args.bundle), args.expect_manifest_sha256)
    if not args.config:
        raise UserError(f"`python -m export {args.step}` needs --config RECIPE" +
                        (" (or --bundle DIR)" if args.step == "verify" else ""))
    cfg = load_config(args.config, args.overrides)
    if args.strict:
        cfg.export.strict_gates = True
    if args.print_config:
        print(printed_config(cfg))
        return 0
    bundle = bundle_dir(cfg)
    if args.step == "verify":
        return run_verify(bundle, args.expect_manifest_sha256)
    if not args.model:
        raise UserError(f"`python -m export {args.step}` needs --model (a local .nemo file)")

    from streamtune.model.build import load_model
    from streamtune.model.chunks import select_modes
    from streamtune.model.runtime import setup_runtime

    setup_runtime(cfg)
    model = load_model(args.model)
    modes = select_modes(model, list(cfg.eval.chunk_ms))
    bundle.mkdir(parents=True, exist_ok=True)
    steps = ["parity", "onnx", "package", "verify"] if args.step == "all" else [args.step]
    utts = _parity_set(cfg, bundle) if {"parity", "onnx", "package"} & set(steps) else []
    for step in steps:
        if step == "parity":
            rc = run_parity(model, args.model, bundle, cfg, modes, utts)
        elif step == "onnx":
            rc = run_onnx(model, args.model, bundle, cfg, modes, utts)
        elif step == "package":
            from streamtune.export.package import package

            package(model, Path(args.model), bundle, cfg, modes, utts[0])
            from streamtune.export.parity import sha256_file

            print(f"bundle ready: {bundle}; manifest.json sha256 {sha256_file(bundle / 'manifest.json')} "
                  "(publish it: `verify --expect-manifest-sha256` checks it)")
            rc = 0
        else:
            rc = run_verify(bundle, args.expect_manifest_sha256)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
