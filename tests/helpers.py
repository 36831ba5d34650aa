"""What the tests share besides fixtures (those are in conftest.py): paths, the suite's seed offset and thread
count, running an entry point, dropping or reading overrides by key, checking a one-line error, a model whose
greedy search writes a hypothesis the test chooses, and reading an offline W&B run back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO_RECIPE = REPO / "recipes" / "demo" / "tiny_cpu.yaml"
NEMOTRON = REPO / "recipes" / "nemotron"

# STREAMTUNE_TEST_SEED shifts the seed of every corpus the suite generates and of every training run it makes
# (0 by default), so the suite can be run against other trained models than one machine's;
# STREAMTUNE_TEST_THREADS sets torch's thread count (and trainer.num_threads) for the whole suite.
SEED_OFFSET = int(os.environ.get("STREAMTUNE_TEST_SEED") or 0)
THREADS = int(os.environ["STREAMTUNE_TEST_THREADS"]) if os.environ.get("STREAMTUNE_TEST_THREADS") else None


# The ten words of the model that must really recognise speech (sherpa-onnx against our decoding, serving,
# boosting, word times), spoken by one voice, written as the target model writes ("Red door, blue lamp.").
TENWORDS = "red green blue black white lamp door window chair table".split()
# What the session's tiny run keeps in its config as ${oc.env:STREAMTUNE_TEST_SECRET}: no file may hold it.
SECRET = "s3cr3t-token-5577"


def seeded(seed: int) -> int:
    """A seed of the suite, shifted by STREAMTUNE_TEST_SEED."""
    return seed + SEED_OFFSET


# What a cached test artefact is built from: the library, the demo recipe, the pinned versions and the test setup.
CACHE_INPUTS = ("streamtune", "bench/geometry.py", "recipes/demo/tiny_cpu.yaml", "constraints.txt", "tests/conftest.py",
                "tests/helpers.py")
CACHE = REPO / "outputs" / "test-cache"


def content_key(*extra) -> str:
    """sha256 over every file of CACHE_INPUTS (path and bytes) and ``extra``: changes with any of them."""
    import hashlib

    digest = hashlib.sha256(repr(extra).encode())
    for top in CACHE_INPUTS:
        root = REPO / top
        for path in sorted([root] if root.is_file() else (p for p in root.rglob("*") if p.is_file())):
            if "__pycache__" in path.parts:
                continue
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def cached_build(name: str, build, *extra) -> Path:
    """The directory ``build(dir)`` fills, kept under outputs/test-cache/<name>-<content key>: a second session
    (the second tier after the first, a rerun) with the same code, recipe, pins and ``extra`` (seed, threads)
    reuses it; anything changed builds anew. Built in place (paths inside stay valid), marked complete last, under
    a lock (two sessions do not build at once); older builds of ``name`` are removed."""
    import fcntl
    import shutil

    key = content_key(name, *extra)[:16]
    target = CACHE / f"{name}-{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        complete = target / ".complete"
        if not complete.exists() or complete.read_text() != _tree_digest(target):  # never built, or changed since
            for old in CACHE.glob(f"{name}-*"):
                shutil.rmtree(old, ignore_errors=True)
            target.mkdir()
            build(target)
            complete.write_text(_tree_digest(target))
    return target


def _tree_digest(root: Path) -> str:
    """sha256 over every file under ``root`` but the marker: a cached build that a test changed is built again."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".complete"):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def without(overrides: list[str], *keys: str) -> list[str]:
    """``overrides`` less every one whose key (the text before its first ``=``) is one of ``keys``."""
    return [o for o in overrides if o.split("=", 1)[0] not in keys]


def value_of(overrides: list[str], key: str) -> str:
    """The value the last ``key=value`` of ``overrides`` sets (later overrides win, as in load_config)."""
    return next(o.split("=", 1)[1] for o in reversed(overrides) if o.startswith(f"{key}="))


def run_entry(*args: str, env: dict | None = None, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    """An entry point in a fresh process, as a user types it (``train.py ...``, ``-m data_prep ...``)."""
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def one_line_error(returncode: int, stderr: str, *needles: str) -> str:
    """Exit status 2, no traceback, exactly one ``error:`` line, holding every needle; returns that line."""
    assert returncode == 2, (returncode, stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def tokenizer_from_texts(texts: list[str], out: Path, vocab_size: int) -> Path:
    """A SentencePiece BPE tokenizer dir trained on ``texts`` with NeMo's own trainer (what data_prep uses)."""
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    out.mkdir(parents=True, exist_ok=True)
    (out / "texts.txt").write_text("\n".join(texts) + "\n")
    create_spt_model(str(out / "texts.txt"), vocab_size, sample_size=-1, do_lower_case=False, tokenizer_type="bpe",
                     output_dir=str(out))
    return out


def script_model(model, pieces: list[str]):
    """Set ``model``'s prediction net and joint so that its greedy search writes ``pieces`` (tokenizer pieces, none
    twice) at the first frame of any audio and nothing after: a real NeMo model whose hypothesis a test chooses.

    The LSTM forgets (forget gate shut, no recurrence), so its output names the last token only; the joint ignores
    the encoder and maps "after piece k" to piece k+1, and the start (the blank's zero embedding) to the first.
    """
    import torch

    script = [model.tokenizer.tokens_to_ids([p])[0] for p in pieces]
    assert len(set(script)) == len(script), "each piece once: the state is the last piece"
    dec, joint = model.decoder, model.joint
    lstm = dec.prediction["dec_rnn"].lstm
    hidden, n = lstm.hidden_size, len(script)
    assert n < min(hidden, joint.joint_net[-1].in_features) and lstm.num_layers == 1
    with torch.no_grad():
        for p in [*dec.parameters(), *joint.parameters()]:
            p.zero_()
        for k, token in enumerate(script):
            dec.prediction["embed"].weight[token, k] = 4.0
        lstm.weight_ih_l0[2 * hidden: 3 * hidden] = torch.eye(hidden)  # cell input = the embedding
        lstm.bias_ih_l0[:hidden] = 10.0  # input gate open
        lstm.bias_ih_l0[hidden: 2 * hidden] = -10.0  # forget gate shut
        lstm.bias_ih_l0[3 * hidden:] = 10.0  # output gate open: h = tanh(tanh(4)) ~ 0.76 in unit k after piece k
        for k in range(n):
            joint.pred.weight[k, k] = 10.0
        joint.pred.weight[n, :n] = -10.0  # joint unit n fires only at the start (h = 0)
        joint.pred.bias[n] = 1.0
        out = joint.joint_net[-1]
        for k, following in enumerate([*script[1:], dec.blank_idx]):
            out.weight[following, k] = 10.0
        out.weight[script[0], n] = 10.0
    return model


def read_offline_history(wandb_file: str | Path) -> list[dict]:
    """The history rows of an offline W&B run (``run-*.wandb``), without network or the W&B service.

    The file is W&B's 7-byte header followed by LevelDB-log framed protobuf ``Record`` messages
    (32 KiB blocks; each fragment has a 7-byte header: crc32c, length, type FULL/FIRST/MIDDLE/LAST).
    """
    import json
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(wandb_file).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{wandb_file} is not a W&B run file")
    block, pos, pending, rows = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too small for a header: skipped
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos: pos + 7])
        chunk = data[pos + 7: pos + 7 + length]
        pos += 7 + length
        if kind == 0:  # zero padding to the end of a block
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows



def shar_cuts(out: Path, split: str = "train") -> dict:
    """id -> cut (audio in memory) of the Lhotse Shar shards a sharded data_prep run wrote under ``out``."""
    from lhotse import CutSet

    return {c.id: c for c in CutSet.from_shar(in_dir=out / "shar" / split)}


def loose_audio_files(root: Path) -> list[Path]:
    """Every audio file under ``root`` (sharded preparation must write none)."""
    from streamtune.data.reading import AUDIO_SUFFIXES

    return [p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES]
