"""Test sets for ``evaluate.py``: Lhotse cuts and Shar dirs as they are; a NeMo manifest or a folder of audio
first becomes validated cuts through the same checks as every other source (rejected items counted and listed,
never dropped silently)."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from streamtune.data import sources
from streamtune.data.validate import ValidationConfig, write_validated
from streamtune.errors import UserError


@dataclass
class TestSet:
    name: str
    source: str  # what the user named
    cuts: Path  # cuts file or Shar dir that is read
    kind: str  # "cuts" | "shar" | "nemo-manifest" | "folder"
    rejected: int = 0  # items data_prep refused (listed in <cuts dir>/rejected_test.jsonl)


def _kind(path: Path) -> str:
    if path.is_dir():
        return "shar" if any(path.glob("cuts.*.jsonl*")) else "folder"
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as f:
            first = json.loads(f.readline() or "{}")
    except (OSError, ValueError) as err:
        raise UserError(f"test set '{path}' is neither Lhotse cuts nor a NeMo manifest (first line: {err})") from None
    if "audio_filepath" in first:
        return "nemo-manifest"
    if "recording" in first or first.get("type") in ("MonoCut", "MultiCut", "MixedCut"):
        return "cuts"
    raise UserError(f"test set '{path}': first line has neither 'audio_filepath' (NeMo manifest) nor 'recording' "
                    "(Lhotse cut); prepare it with `python -m data_prep ...`")


def resolve_test_set(spec: str, work_dir: Path, taken: set[str] = frozenset()) -> TestSet:
    """``[NAME=]PATH`` -> a readable test set; NeMo manifests and audio folders go through data_prep's checks.

    Items data_prep rejects are counted and listed (``rejected_test.jsonl``), never dropped silently.
    """
    name, _, path_text = spec.rpartition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
    path = Path(path_text)
    if not path.exists():
        raise UserError(f"test set '{path_text}' does not exist; pass a cuts file, a Shar dir, a NeMo manifest "
                        "or a folder of audio with .txt transcripts")
    if not name:
        name = path.name.split(".")[0] if path.is_file() else path.name
        base, k = name, 2
        while name in taken:
            name, k = f"{base}-{k}", k + 1
    elif name in taken:
        raise UserError(f"two test sets are named '{name}'; give each its own NAME=PATH")
    kind = _kind(path)
    if kind in ("cuts", "shar"):
        return TestSet(name, spec, path, kind)
    items = sources.folder(str(path)) if kind == "folder" else sources.nemo_manifests([str(path)])
    out = work_dir / "test_sets" / name
    report = write_validated(items, out, "test", ValidationConfig(max_duration_s=3600.0))
    if report.rejected:
        print(f"test set '{name}': {report.rejected} of {report.read} items rejected by data_prep's checks "
              f"(reasons: {dict(report.reasons)}); listed in {out / 'rejected_test.jsonl'}")
    return TestSet(name, spec, out / "cuts_test.jsonl.gz", kind, report.rejected)
