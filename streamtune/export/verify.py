"""``python -m export verify --bundle DIR``: is this bundle exactly what was packaged, and does it run?

1. ``manifest.json`` itself has the sha256 the publisher states, when given (``--expect-manifest-sha256``; it is
   printed by ``package`` and ``verify``): nothing else covers it, so without it a bundle whose files and manifest
   were both rewritten would pass;
2. every file listed in ``manifest.json`` exists with its size and sha256, as a plain file inside the bundle (no
   link, no ``..``, no absolute path); no file is unlisted;
3. the sample covers every exported chunk mode (each ``onnx/<ms>ms*`` directory and ``model.nemo`` in every chunk
   mode): ``model.nemo`` loads and, streamed the export way, gives the recorded tokens for ``sample/sample.wav``;
   every ONNX directory loads in ONNX Runtime and gives its recorded tokens.

Any failure is one line naming the file, and a non-zero exit.
"""

from __future__ import annotations

import json
from pathlib import Path

from streamtune.export.package import MANIFEST
from streamtune.export.parity import sha256_file


class VerifyError(Exception):
    pass


def _entries(bundle: Path) -> tuple[set[str], list[str], list[str]]:
    """(plain files, links, other non-directories: pipes, devices, sockets) under ``bundle``, as posix paths
    relative to it; links are not followed and nothing is opened."""
    import os
    import stat

    files, links, special = set(), [], []
    for root, dirs, names in os.walk(bundle, followlinks=False):
        for name in dirs + names:
            path = Path(root) / name
            rel = path.relative_to(bundle).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                links.append(rel)
            elif name in names and stat.S_ISREG(mode):
                files.add(rel)
            elif name in names:
                special.append(rel)
    return files, sorted(links), sorted(special)


def _inside(rel: str) -> bool:
    parts = Path(rel).parts
    return bool(parts) and not Path(rel).is_absolute() and ".." not in parts and "\\" not in rel


def check_files(bundle: Path, expect_manifest_sha256: str | None = None) -> dict:
    manifest_path = bundle / MANIFEST
    if manifest_path.is_symlink() or not manifest_path.is_file():  # is_file: a regular file
        raise VerifyError(f"{manifest_path}: missing or not a plain file (not a bundle, or it was deleted)")
    digest = sha256_file(manifest_path)
    if expect_manifest_sha256 and digest != expect_manifest_sha256.strip().lower():
        raise VerifyError(f"{MANIFEST}: sha256 {digest}, not the {expect_manifest_sha256} the publisher states")
    try:
        manifest = json.loads(manifest_path.read_text())
        listed = {str(rel): (int(meta["bytes"]), str(meta["sha256"])) for rel, meta in manifest["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise VerifyError(f"{MANIFEST}: unreadable or incomplete ({type(err).__name__}: {err})") from None
    present, links, special = _entries(bundle)
    problems = [f"{rel}: a link (bundles hold plain files only)" for rel in links]
    problems += [f"{rel}: not a regular file (a pipe, device or socket; bundles hold plain files only, it is not "
                 "read)" for rel in special]
    for rel, (size, digest_listed) in sorted(listed.items()):
        path = bundle / rel
        if not _inside(rel):
            problems.append(f"{rel}: listed in manifest.json with a path outside the bundle")
        elif rel in special:
            continue  # named above
        elif rel not in present:
            problems.append(f"{rel}: listed in manifest.json but missing")
        elif path.stat().st_size != size:
            problems.append(f"{rel}: {path.stat().st_size} bytes, manifest.json says {size}")
        elif sha256_file(path) != digest_listed:
            problems.append(f"{rel}: sha256 differs from manifest.json (the file was changed)")
    for rel in sorted(present - set(listed) - {MANIFEST}):
        problems.append(f"{rel}: not listed in manifest.json (added after packaging)")
    if problems:
        raise VerifyError("; ".join(problems))
    manifest["sha256"] = digest
    return manifest


def check_decodes(bundle: Path, manifest: dict):
    """(what decoded the sample as recorded, the model): ``model.nemo`` is read once, its bytes checked against
    ``manifest`` (from :func:`check_files`) as they are restored, so the model returned is the one verified."""
    import soundfile as sf

    from streamtune.export.onnx_decoder import OrtStreamingDecoder
    from streamtune.model.build import load_model
    from streamtune.model.chunks import chunk_modes
    from streamtune.streaming.runner import StreamingRunner

    try:
        expected = json.loads((bundle / "sample" / "expected.json").read_text())["modes"]
        audio, rate = sf.read(bundle / "sample" / "sample.wav", dtype="float32")
        expected = {str(k): [int(t) for t in v] for k, v in expected.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as err:
        raise VerifyError(f"sample/: expected.json or sample.wav unreadable ({type(err).__name__}: {err})") from None
    try:
        model = load_model(bundle / "model.nemo", expect_sha256=manifest["files"]["model.nemo"]["sha256"])
    except Exception as err:  # noqa: BLE001 - any load failure is the bundle's fault, name the file
        raise VerifyError(f"model.nemo: does not load ({type(err).__name__}: {err})") from None
    runner = StreamingRunner(model, batch_size=1, feeding="export")
    feats = runner.features(audio)
    modes = {f"{m.chunk_ms}ms": m for m in chunk_modes(model)}
    # The sample must cover what the bundle ships: every ONNX directory and model.nemo in every chunk mode.
    onnx_dirs = sorted(p.name for p in (bundle / "onnx").iterdir() if p.is_dir()) if (bundle / "onnx").is_dir() else []
    missing = [d for d in onnx_dirs if d not in expected] + \
        [f"{ms}-pytorch" for ms in modes if f"{ms}-pytorch" not in expected]
    unknown = [k for k in expected if k not in onnx_dirs and k.removesuffix("-pytorch") not in modes]
    if missing or unknown:
        raise VerifyError("sample/expected.json: " + (f"no recorded tokens for {', '.join(missing)}" if missing
                          else f"tokens for {', '.join(unknown)}, which the bundle does not have"))
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
    return done, model


def verified(bundle: Path, expect_manifest_sha256: str | None = None):
    """(what :func:`verify` reports, the bundle's model as verified, the manifest): what ``serve`` streams with."""
    if not bundle.is_dir() or bundle.is_symlink():
        raise VerifyError(f"{bundle}: no such bundle directory")
    manifest = check_files(bundle, expect_manifest_sha256)
    if "model.nemo" not in manifest["files"]:
        raise VerifyError(f"{MANIFEST}: lists no model.nemo")
    decoded, model = check_decodes(bundle, manifest)
    stated = " (as stated)" if expect_manifest_sha256 else ""
    return [f"manifest.json sha256 {manifest['sha256']}{stated}", f"{len(manifest['files'])} files match it",
            f"decoded the sample with {', '.join(decoded)}"], model, manifest


def verify(bundle: Path, expect_manifest_sha256: str | None = None) -> list[str]:
    return verified(bundle, expect_manifest_sha256)[0]
