"""``python -m export verify --bundle DIR``: is this bundle exactly what was packaged, and does it run?

1. every file listed in ``manifest.json`` exists with its size and sha256; no file is unlisted;
2. ``model.nemo`` loads and, streamed the export way, gives the recorded tokens for ``sample/sample.wav``;
3. every ``onnx/<ms>ms*`` directory loads in ONNX Runtime and gives its recorded tokens for the sample.

Any failure is one line naming the file, and a non-zero exit.
"""

from __future__ import annotations

import json
from pathlib import Path

from export.package import MANIFEST
from export.parity import sha256_file


class VerifyError(Exception):
    pass


def check_files(bundle: Path) -> dict:
    manifest_path = bundle / MANIFEST
    if not manifest_path.exists():
        raise VerifyError(f"{manifest_path}: missing (not a bundle, or it was deleted)")
    try:
        manifest = json.loads(manifest_path.read_text())
        listed = manifest["files"]
    except (ValueError, KeyError) as err:
        raise VerifyError(f"{manifest_path}: unreadable ({err})") from None
    problems = []
    for rel, meta in sorted(listed.items()):
        path = bundle / rel
        if not path.is_file():
            problems.append(f"{rel}: listed in manifest.json but missing")
        elif path.stat().st_size != meta["bytes"]:
            problems.append(f"{rel}: {path.stat().st_size} bytes, manifest.json says {meta['bytes']}")
        elif sha256_file(path) != meta["sha256"]:
            problems.append(f"{rel}: sha256 differs from manifest.json (the file was changed)")
    present = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    for rel in sorted(present - set(listed) - {MANIFEST}):
        problems.append(f"{rel}: not listed in manifest.json (added after packaging)")
    if problems:
        raise VerifyError("; ".join(problems))
    return manifest


def check_decodes(bundle: Path) -> list[str]:
    import soundfile as sf

    from export.onnx_decoder import OrtStreamingDecoder
    from streamtune.chunks import chunk_modes
    from streamtune.models import load_model
    from streamtune.streaming import StreamingRunner

    expected = json.loads((bundle / "sample" / "expected.json").read_text())["modes"]
    audio, rate = sf.read(bundle / "sample" / "sample.wav", dtype="float32")
    try:
        model = load_model(bundle / "model.nemo")
    except Exception as err:  # noqa: BLE001 - any load failure is the bundle's fault, name the file
        raise VerifyError(f"model.nemo: does not load ({type(err).__name__}: {err})") from None
    runner = StreamingRunner(model, batch_size=1, feeding="export")
    feats = runner.features(audio)
    modes = {f"{m.chunk_ms}ms": m for m in chunk_modes(model)}
    done = []
    for key, tokens in sorted(expected.items()):
        if key.endswith("-pytorch"):
            mode = modes[key.removesuffix("-pytorch")]
            got = runner.streaming(mode, [feats]).tokens[0]
            where = "model.nemo"
        else:
            mode_dir = bundle / "onnx" / key
            try:
                got = OrtStreamingDecoder(mode_dir).decode(feats.numpy())[0]
            except Exception as err:  # noqa: BLE001
                raise VerifyError(f"onnx/{key}: does not load or run ({type(err).__name__}: {err})") from None
            where = f"onnx/{key}"
        if got != tokens:
            raise VerifyError(f"{where}: decodes sample/sample.wav to other tokens than when it was packaged")
        done.append(where if where != "model.nemo" else f"model.nemo ({key.removesuffix('-pytorch')})")
    return done


def verify(bundle: Path) -> list[str]:
    if not bundle.is_dir():
        raise VerifyError(f"{bundle}: no such bundle directory")
    manifest = check_files(bundle)
    decoded = check_decodes(bundle)
    return [f"{len(manifest['files'])} files match manifest.json", f"decoded the sample with {', '.join(decoded)}"]
