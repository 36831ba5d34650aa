"""``dist/<name>/``: the model, its tokenizer and the evidence that it streams like it evaluates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from export.parity import sha256_file
from streamtune.config import save_config
from streamtune.errors import UserError


def write_tokenizer(model, out_dir: Path) -> list[Path]:
    """The model's own SentencePiece model (not the recipe's dir: the .nemo is authoritative) and tokens.txt."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spm = model.tokenizer.tokenizer
    (out_dir / "tokenizer.model").write_bytes(spm.serialized_model_proto())
    vocab = [spm.id_to_piece(i) for i in range(spm.get_piece_size())]
    (out_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # `piece id` per line, blank last (its id = vocab size in NeMo's RNN-T): what sherpa-onnx reads.
    tokens = out_dir.parent / "tokens.txt"
    tokens.write_text("".join(f"{p} {i}\n" for i, p in enumerate(vocab)) + f"<blk> {len(vocab)}\n")
    return [out_dir / "tokenizer.model", out_dir / "vocab.txt", tokens]


def write_manifest(bundle: Path) -> Path:
    files = sorted(p for p in bundle.rglob("*") if p.is_file() and p.name != "manifest.json")
    manifest = {
        "files": {str(p.relative_to(bundle)): {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files},
    }
    from streamtune.rundir import environment

    env = environment()
    manifest["packages"] = env["packages"]
    manifest["git"] = env["git"]
    path = bundle / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def package(model, model_path: Path, bundle: Path, cfg) -> Path:
    parity_path = bundle / "parity.json"
    if not parity_path.exists():
        raise UserError(f"{parity_path} is missing; run `python -m export parity` first (package needs its verdict)")
    parity = json.loads(parity_path.read_text())
    if not parity.get("passed"):
        raise UserError(f"{parity_path} says streaming parity FAILED; the model is not packaged")
    if parity.get("model_sha256") != sha256_file(model_path):
        raise UserError(f"{parity_path} was made for another model file; rerun `python -m export parity` for {model_path}")
    shutil.copyfile(model_path, bundle / "model.nemo")
    write_tokenizer(model, bundle / "tokenizer")
    save_config(cfg, bundle / "config.yaml")
    write_manifest(bundle)  # last: it hashes everything above
    return bundle
