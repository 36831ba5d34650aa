"""``dist/<name>/``: the model, its ONNX files, the evidence that it streams like it evaluates, and a card.

Bundle layout::

    model.nemo                 the evaluated checkpoint, byte for byte
    onnx/<ms>ms/               encoder.onnx, decoder.onnx, joiner.onnx, tokens.txt, bpe.vocab (sherpa-onnx layout)
    onnx/<ms>ms-int8/          the same, int8: the best of export.int8_variants (when export.int8)
    tokenizer/                 tokenizer.model, vocab.txt, bpe.vocab;   tokens.txt   `piece id` lines + `<blk>`
    sample/                    one parity utterance and the tokens every ONNX mode gave for it (verify)
    parity.json  onnx.json     the two gates' verdicts;      results.json   evaluate.py's (when found)
    config.yaml  MODEL_CARD.md
    manifest.json              sha256 + size of every file above, package versions, git sha
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tarfile
from pathlib import Path

from streamtune.config.loading import save_config
from streamtune.errors import UserError
from streamtune.export.parity import sha256_file

MANIFEST = "manifest.json"


def write_tokenizer(model, out_dir: Path) -> list[Path]:
    """The model's own SentencePiece model (not the recipe's dir: the .nemo is authoritative), its pieces with
    scores (``bpe.vocab``, for sherpa-onnx hotwords) and tokens.txt."""
    from streamtune.export.onnx_export import write_tokens
    from streamtune.model.tokenizers import save_tokenizer

    return [*save_tokenizer(model, out_dir, "bpe.vocab"), write_tokens(model, out_dir.parent / "tokens.txt")]


def write_manifest(bundle: Path) -> Path:
    files = sorted(p for p in bundle.rglob("*") if p.is_file() and p.name != MANIFEST)
    from streamtune.training.rundir import environment

    env = environment()
    manifest = {
        "schema_version": 1,
        "files": {p.relative_to(bundle).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                  for p in files},
        "packages": env["packages"],
        "git": env["git"],
    }
    path = bundle / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def _verdict(bundle: Path, name: str, step: str, model_path: Path) -> dict:
    path = bundle / name
    if not path.exists():
        raise UserError(f"{path} is missing; run `python -m export {step}` first (package needs its verdict)")
    payload = json.loads(path.read_text())
    if not payload.get("passed"):
        raise UserError(f"{path} says the {step} check FAILED; the model is not packaged")
    if payload.get("model_sha256") != sha256_file(model_path):
        raise UserError(f"{path} was made for another model file; rerun `python -m export {step}` for {model_path}")
    return payload


def write_sample(model, utt, bundle: Path, modes) -> Path:
    """One parity utterance + the tokens each exported mode must give for it (checked again by verify)."""
    import soundfile as sf

    from streamtune.export.onnx_decoder import OrtStreamingDecoder
    from streamtune.streaming.runner import StreamingRunner

    out = bundle / "sample"
    out.mkdir(parents=True, exist_ok=True)
    sf.write(out / "sample.wav", utt.audio, 16000, subtype="FLOAT")  # float: the exact samples decoded below
    audio, _ = sf.read(out / "sample.wav", dtype="float32")
    export_fed = StreamingRunner(model, batch_size=1, feeding="export")
    feats = export_fed.features(audio)
    expected = {"id": utt.id, "text": utt.text, "modes": {}}
    for mode in modes:
        torch_tokens = export_fed.streaming(mode, [feats]).tokens[0]
        for suffix in ("", "-int8"):
            mode_dir = bundle / "onnx" / f"{mode.chunk_ms}ms{suffix}"
            if mode_dir.exists():
                tokens = OrtStreamingDecoder(mode_dir).decode(feats.numpy())[0]
                if not suffix and tokens != torch_tokens:
                    raise UserError(f"{mode_dir}: ONNX tokens differ from PyTorch on the sample; rerun `export onnx`")
                expected["modes"][f"{mode.chunk_ms}ms{suffix}"] = tokens
        expected["modes"][f"{mode.chunk_ms}ms-pytorch"] = torch_tokens
    (out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    return out


def _prep_report(cuts: Path) -> tuple[Path, dict] | None:
    """data_prep's report for a ``cuts_<split>.jsonl.gz``: the ``report_*.json`` beside it that kept that split."""
    split = cuts.name.removeprefix("cuts_").split(".")[0]
    for path in sorted(cuts.parent.glob("report_*.json")):
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if split in report.get("kept_per_split", {}):
            return path, report
    return None


def _data_summary(cfg) -> str:
    train = cfg.data.get("train")
    if not train:
        return "No training data recorded in the config."
    report = _prep_report(Path(str(train)))
    if report is not None:
        path, r = report
        return (f"`{train}`, prepared by data_prep ({path.name}): {r.get('read')} items read, {r.get('kept')} kept "
                f"({r.get('kept_hours', 0):.2f} h), {r.get('rejected')} rejected ({r.get('rejected_reasons', {})}).")
    try:
        from lhotse import CutSet

        path = Path(str(train))
        cuts = CutSet.from_shar(in_dir=path) if path.is_dir() else CutSet.from_file(path)
        n, secs = 0, 0.0
        for c in cuts:
            n, secs = n + 1, secs + c.duration
        return f"`{train}`: {n} utterances, {secs / 3600:.2f} h (no data_prep report beside it)."
    except Exception as err:  # noqa: BLE001 - the card says what it could not read, the bundle is still made
        return f"`{train}` (could not be read for a summary: {err})."


def _wer_section(results: dict | None) -> str:
    if not results:
        return "No evaluate.py results were found (set `export.results` or run `python evaluate.py` first)."
    from streamtune.evaluation.reports import RESULTS_SCHEMA_VERSION, wer_tables
    from streamtune.evaluation.scoring import ModeResult

    if results.get("schema_version") != RESULTS_SCHEMA_VERSION:
        return (f"The results.json found has schema version {results.get('schema_version')}, not "
                f"{RESULTS_SCHEMA_VERSION}; re-run `python evaluate.py` for a WER table here.")
    labels = [m["label"] for m in results["models"]]
    lines = [wer_tables([ModeResult(**r) for r in results["results"]], labels)]
    comp = results.get("comparison")
    if comp:
        lines += [f"Against the baseline `{comp['baseline']}` (streaming, WER points):", "",
                  "| model | test set | chunk | baseline | model | delta |", "|---|---|---|---|---|---|"]
        for d in comp["deltas"]:
            if d["decode"] == "streaming":
                lines.append(f"| {d['model']} | {d['test_set']} | {d['chunk_ms']} ms | {100 * d['baseline_wer']:.2f} % "
                             f"| {100 * d['wer']:.2f} % | {d['delta_points']:+.2f}"
                             f"{' REGRESSION' if d['regression'] else ''} |")
    lines += ["", "WER after the Whisper English normaliser; streaming is cache-aware, chunk by chunk."]
    return "\n".join(lines)


def front_matter(name: str, cfg, results: dict | None) -> str:
    """The card's YAML front matter in the Hugging Face Hub's format (NeMo's conventions: ``library_name: nemo``,
    a model-index with the streaming WER of each test set and chunk mode)."""
    import yaml

    init_from = cfg.model.get("init_from")
    meta = {"library_name": "nemo", "language": ["en"], "license": "other",
            "license_name": "nvidia-open-model-license" if init_from else "apache-2.0",
            "pipeline_tag": "automatic-speech-recognition",
            "tags": ["automatic-speech-recognition", "streaming", "cache-aware", "FastConformer", "RNNT", "NeMo",
                     "streamtune"]}
    if not init_from:
        meta["license"] = "apache-2.0"
        del meta["license_name"]
    elif "/" in str(init_from) and not Path(str(init_from)).exists():
        meta["base_model"] = str(init_from)
    entries = []
    if results and results.get("schema_version") is not None:
        for r in results.get("results", []):
            if r.get("decode") != "streaming" or r.get("test_set") == "all":
                continue
            entries.append({
                "task": {"type": "automatic-speech-recognition", "name": "Automatic Speech Recognition"},
                "dataset": {"name": r["test_set"], "type": r["test_set"]},
                "metrics": [{"type": "wer", "value": round(100 * r["wer"], 2),
                             "name": f"WER, streaming {r['chunk_ms']} ms chunks ({r.get('decoding', 'greedy')}, "
                                     f"model {r['model']})"}]})
    meta["model-index"] = [{"name": name, "results": entries}]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n"


def _int8_section(onnx_report: dict) -> str:
    choice = onnx_report.get("int8_choice")
    if not choice:
        return "No int8 copies were made (export.int8=false)."
    if not choice["variant"]:
        return "No int8 variant could be made."
    ranking = ", ".join(f"{r['variant']} {r['worst_mode_delta_points']:+.2f}" for r in choice["ranking"])
    verdict = ("meets" if choice["meets_target"] else "misses") + f" the {choice['target_points']:g}-point target"
    return (f"`onnx/<ms>ms-int8/` is the `{choice['variant']}` variant: its worst WER rise over the chunk modes is "
            f"{choice['worst_mode_delta_points']:+.2f} points on the parity set ({verdict}). All variants, worst "
            f"rise in points: {ranking}.")


def model_card(name: str, cfg, model_path: Path, parity: dict, onnx_report: dict, results: dict | None) -> str:
    from streamtune.export.onnx_check import onnx_summary
    from streamtune.export.parity import parity_summary

    run_dir = model_path.resolve().parent
    run_cfg = run_dir / "config.yaml"
    env = json.loads((run_dir / "env.json").read_text()) if (run_dir / "env.json").exists() else {}
    init_from = cfg.model.get("init_from")
    base = (f"`{init_from}` (fine-tuned from it)" if init_from else
            f"trained from scratch with `{cfg.model.get('target')}`")
    from streamtune.export.sherpa import padding_samples

    pads = []
    for m in onnx_report["modes"]:
        meta = m["metadata"]
        pre, sub, shift = int(meta["pre_encode_cache_size"]), int(meta["subsampling_factor"]), int(meta["chunk_shift"])
        left, tail = padding_samples(pre, sub, shift)
        pads.append(f"{m['chunk_ms']} ms: {left} before, {tail} after")
    modes = ", ".join(f"{m['chunk_ms']} ms (`att_context_size` {m['att_context']})" for m in onnx_report["modes"])
    return front_matter(name, cfg, results) + f"""# {name}

Cache-aware streaming FastConformer-RNNT, packaged by streamtune.

## Model
* Base: {base}.
* Chunk modes: {modes}. Algorithmic latency = the chunk (a chunk's first frame waits for all of it).
* Training run: `{run_dir.name}` (config: `{run_cfg.name if run_cfg.exists() else 'not found'}` beside the
  checkpoint), git `{(env.get('git') or {}).get('sha')}`; run name `{cfg.run.name}`.

## Data
{_data_summary(cfg)}

## Word error rates
{_wer_section(results)}

## Streaming parity (PyTorch streaming vs offline)
{parity_summary(parity)}

## ONNX
{onnx_summary(onnx_report)}

{_int8_section(onnx_report)}

ONNX files are fed the way `StreamingRunner(feeding="export")` feeds them: pre-encode cache + subsampling - 1
hops of silence before the audio, then fixed windows of pre-encode cache + chunk frames. With sherpa-onnx
(`OnlineRecognizer.from_transducer(..., model_type="nemo_transducer")` on `onnx/<ms>ms/`), pad every stream
with silence as `streamtune/export/sherpa.py` does (samples at 16 kHz): {'; '.join(pads)}. For hotwords, use
`decoding_method="modified_beam_search"`, `modeling_unit="bpe"` and `bpe_vocab="onnx/<ms>ms/bpe.vocab"`.

## Intended use
English speech recognition in real-time streaming, in the domain of the training data above. Check the
WER table for your chunk size before deploying; a model tuned on a narrow domain can be worse on general
speech than its base.

## Licence
Weights derived from `nvidia/nemotron-speech-streaming-en-0.6b` carry the terms of the
NVIDIA Open Model License under which that checkpoint is distributed; this bundle does not change them.
streamtune itself is Apache-2.0.

## Verify
`python -m export verify --bundle <this dir>` re-hashes every file against `manifest.json`, loads the
`.nemo` and the ONNX files, and decodes `sample/sample.wav`.
"""


def package(model, model_path: Path, bundle: Path, cfg, modes, sample_utt) -> Path:
    parity = _verdict(bundle, "parity.json", "parity", model_path)
    onnx_report = _verdict(bundle, "onnx.json", "onnx", model_path)
    if cfg.export.strict_gates and onnx_report.get("inconclusive"):
        raise UserError(f"{bundle / 'onnx.json'}: {len(onnx_report['inconclusive'])} gate(s) inconclusive and "
                        f"export.strict_gates (--strict) is set; first: {onnx_report['inconclusive'][0]}")
    exported = {m["chunk_ms"] for m in onnx_report["modes"]}
    missing = [m.chunk_ms for m in modes if m.chunk_ms not in exported]
    if missing:
        raise UserError(f"onnx.json has no {missing} ms export; rerun `python -m export onnx`")
    # Stale files from an earlier package run would be listed in the manifest as if they belonged.
    for stale in ("model.nemo", "results.json", "MODEL_CARD.md", MANIFEST):
        (bundle / stale).unlink(missing_ok=True)
    shutil.rmtree(bundle / "sample", ignore_errors=True)
    shutil.copyfile(model_path, bundle / "model.nemo")
    write_tokenizer(model, bundle / "tokenizer")
    results_path = Path(cfg.export.results or model_path.resolve().parent / "eval" / "results.json")
    results = None
    if results_path.exists():
        shutil.copyfile(results_path, bundle / "results.json")
        results = json.loads(results_path.read_text())
    elif cfg.export.results:
        raise UserError(f"export.results: '{results_path}' does not exist")
    write_sample(model, sample_utt, bundle, modes)
    save_config(cfg, bundle / "config.yaml")
    name = bundle.name
    (bundle / "MODEL_CARD.md").write_text(model_card(name, cfg, model_path, parity, onnx_report, results))
    write_manifest(bundle)  # last: it hashes everything above
    if cfg.export.tarball:
        write_tarball(bundle, bundle.parent / f"{name}.tar.gz")
    return bundle


def write_tarball(bundle: Path, path: Path) -> Path:
    """Byte-reproducible: entries sorted, mtime 0 (or SOURCE_DATE_EPOCH), owner 0/root, fixed modes, gzip mtime 0."""
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=mtime) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in sorted(bundle.rglob("*"), key=lambda q: q.relative_to(bundle).as_posix()):
            info = tar.gettarinfo(str(p), arcname=f"{bundle.name}/{p.relative_to(bundle).as_posix()}")
            info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "root", "root"
            info.mode = 0o755 if p.is_dir() else 0o644
            if p.is_file():
                with open(p, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    tmp.replace(path)
    return path
