"""Reading a ``.nemo`` before NeMo restores it.

A ``.nemo`` is a tar of a config and weights; restoring one builds every class its config names (``_target_``,
and the model class under ``target``). NeMo 3.0 limits those to an allow-list that still admits every class and
function under large parts of ``nemo.collections``; streamtune only ever restores the few classes a cache-aware
streaming RNN-T (or its hybrid RNN-T+CTC form) is made of, so before any restore it reads the archive's config
itself and refuses any other name, naming it (:func:`check_targets`). A Lightning ``.ckpt``'s config gets the same
check (``streamtune.model.start_points``).

:func:`private_copy` reads a file once, hashing what it reads into a copy only this process may write: the copy is
what gets restored, so the bytes restored are the bytes hashed (a bundle's ``model.nemo`` swapped after ``verify``
is never loaded). The copy lives as long as the process: NeMo reads a restored model's tokenizer files from its
archive again when the model is saved.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path

from streamtune.errors import UserError

# (package, class names): what a cache-aware streaming RNN-T restored or fine-tuned here is built from. A config may
# name a class by its package (nemo.collections.asr.modules.ConformerEncoder) or by its defining module.
ALLOWED = {
    "nemo.collections.asr.models": ("EncDecRNNTBPEModel", "EncDecHybridRNNTCTCBPEModel"),
    "nemo.collections.asr.modules": ("AudioToMelSpectrogramPreprocessor", "SpectrogramAugmentation",
                                     "ConformerEncoder", "ConformerEncoderAdapter", "RNNTDecoder", "RNNTJoint",
                                     "ConvASRDecoder"),
    "nemo.collections.common.parts.adapter_modules": ("LinearAdapter",),
    "nemo.core.classes.mixins.adapter_mixin_strategies": ("ResidualAddAdapterStrategy",),  # how adapters add in
}
MAX_CONFIG_BYTES = 4 << 20  # a model config is a few KiB


def allowed_targets() -> set[str]:
    """Every spelling of the allowed classes: ``package.Name`` and ``defining.module.Name``."""
    import importlib

    names = set()
    for package, classes in ALLOWED.items():
        module = importlib.import_module(package)
        for name in classes:
            names.add(f"{package}.{name}")
            cls = getattr(module, name)
            names.add(f"{cls.__module__}.{cls.__qualname__}")
    return names


def config_targets(config, where: str = "") -> list[tuple[str, str]]:
    """(key path, name) of every ``_target_`` and ``target`` in a (nested) config of dicts and lists."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(config, (DictConfig, ListConfig)):
        config = OmegaConf.to_container(config, resolve=False)
    found = []
    if isinstance(config, dict):
        for key, value in config.items():
            path = f"{where}.{key}" if where else str(key)
            if key in ("_target_", "target"):
                found.append((path, value if isinstance(value, str) else repr(value)))
            else:
                found += config_targets(value, path)
    elif isinstance(config, list):
        for k, value in enumerate(config):
            found += config_targets(value, f"{where}[{k}]")
    return found


def check_targets(config, source: str) -> None:
    """Refuse a config that names a class outside :data:`ALLOWED` (one error naming the first such key)."""
    allowed = allowed_targets()
    for path, name in config_targets(config):
        if name not in allowed:
            raise UserError(f"{source}: refused before loading: its config names {path}: {name!r}, which is not "
                            "one of the classes streamtune restores (a cache-aware streaming RNN-T: "
                            f"{', '.join(sorted(n for p, ns in ALLOWED.items() for n in ns))}); restoring it would "
                            "build (run) whatever that name is")


def archive_config(path: Path, source: str | None = None) -> dict:
    """The ``model_config.yaml`` of a ``.nemo`` archive, read without extracting anything."""
    import yaml

    source = source or str(path)
    try:
        with tarfile.open(path, "r:*") as tar:
            members = [m for m in tar.getmembers() if Path(m.name).name == "model_config.yaml"]
            if len(members) != 1 or not members[0].isfile() or members[0].size > MAX_CONFIG_BYTES:
                raise UserError(f"{source}: not a NeMo archive (no single model_config.yaml of at most "
                                f"{MAX_CONFIG_BYTES >> 20} MiB)")
            config = yaml.safe_load(tar.extractfile(members[0]).read())
    except (tarfile.TarError, OSError, EOFError, yaml.YAMLError) as err:
        raise UserError(f"{source}: not a readable .nemo archive ({type(err).__name__}: {err})") from None
    if not isinstance(config, dict):
        raise UserError(f"{source}: model_config.yaml is not a mapping")
    return config


def check_archive(path: Path, source: str | None = None) -> dict:
    """The archive's config, after :func:`check_targets` accepted it."""
    config = archive_config(path, source)
    check_targets(config, source or str(path))
    return config


def _open_regular(path: Path) -> int:
    """A read descriptor on a regular file; a FIFO, device or directory is refused without reading it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise UserError(f"'{path}' cannot be read ({err.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"'{path}' is not a regular file (a pipe, device or directory is not read)")
    os.set_blocking(fd, True)
    return fd


_COPIES: list[str] = []


def _remove_copies() -> None:
    for folder in _COPIES:
        shutil.rmtree(folder, ignore_errors=True)


def private_copy(path: Path, expect_sha256: str | None = None) -> tuple[Path, str]:
    """(copy, sha256): ``path`` read once into a file in a directory only this user may write, hashed as it is
    read; with ``expect_sha256``, a copy of other bytes is refused. Removed when the process exits."""
    fd = _open_regular(path)
    if not _COPIES:
        atexit.register(_remove_copies)
    folder = tempfile.mkdtemp(prefix="streamtune-restore-")  # mode 0700
    _COPIES.append(folder)
    copy = Path(folder) / Path(path).name
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as src, open(copy, "wb") as dst:
        while block := src.read(1 << 20):
            digest.update(block)
            dst.write(block)
    sha = digest.hexdigest()
    if expect_sha256 is not None and sha != expect_sha256:
        shutil.rmtree(folder, ignore_errors=True)
        raise UserError(f"'{path}' has sha256 {sha}, not the {expect_sha256} it was verified with (the file "
                        "changed after verification); it is not loaded")
    return copy, sha
