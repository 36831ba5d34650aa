"""Reading prepared data (Lhotse cuts) for evaluation and export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from streamtune.errors import UserError

SAMPLE_RATE = 16000


@dataclass
class Utterance:
    id: str
    text: str
    audio: np.ndarray  # float32, 16 kHz mono
    duration_s: float
    # Word timings (word, start_s, end_s) when the cut's supervision carries a Lhotse "word" alignment.
    words: list[tuple[str, float, float]] | None = None


def _open_cuts(cuts_path: str | Path):
    """A lazy CutSet over a cuts file or a Shar dir (cuts read as iterated, never all at once)."""
    from lhotse import CutSet

    path = Path(cuts_path)
    if not path.exists():
        raise UserError(f"cuts file '{cuts_path}' does not exist; prepare it with `python -m data_prep ...`")
    return CutSet.from_shar(in_dir=path) if path.is_dir() else CutSet.from_jsonl_lazy(path)


def read_utterance(cut) -> Utterance:
    """A cut's audio (16 kHz mono float32) and transcript."""
    if cut.sampling_rate != SAMPLE_RATE:
        cut = cut.resample(SAMPLE_RATE)
    audio = cut.load_audio()
    audio = audio.mean(axis=0) if audio.ndim == 2 else audio
    text = " ".join(s.text for s in cut.supervisions if s.text)
    return Utterance(cut.id, text, audio.astype(np.float32), float(cut.duration), _word_timings(cut))


def load_utterances(cuts_path: str | Path, max_utts: int = 0, max_audio_s: float = 0.0) -> list[Utterance]:
    """Load (resampled to 16 kHz mono) audio and transcripts of a cuts file or Shar dir, in stored order: all of
    them, or the first ``max_utts`` / the first holding at least ``max_audio_s`` seconds.

    Everything in memory: for parity sets and tests. Test sets of any size go through :func:`utterance_batches`.
    """
    utts = []
    for cut in _open_cuts(cuts_path):
        if (max_utts and len(utts) >= max_utts) or (max_audio_s and sum(u.duration_s for u in utts) >= max_audio_s):
            break
        utts.append(read_utterance(cut))
    if not utts:
        raise UserError(f"cuts file '{cuts_path}' has no utterances")
    return utts


def utterance_batches(cuts_path: str | Path, batch_size: int, window: int | None = None) -> Iterator[list[Utterance]]:
    """The utterances of a cuts file or Shar dir, ``batch_size`` at a time, audio loaded per batch.

    Cut metadata is read ``window`` cuts at a time (default 8 batches) and each window sorted by duration,
    longest first, so that a batch holds similar lengths (little padding) while memory stays bounded by the
    window whatever the size of the set.
    """
    window = max(batch_size, window or 8 * batch_size)
    pending: list = []
    seen = 0

    def flush():
        pending.sort(key=lambda c: -c.duration)
        for start in range(0, len(pending), batch_size):
            yield [read_utterance(c) for c in pending[start: start + batch_size]]
        pending.clear()

    for cut in _open_cuts(cuts_path):
        seen += 1
        pending.append(cut)
        if len(pending) >= window:
            yield from flush()
    yield from flush()
    if not seen:
        raise UserError(f"cuts file '{cuts_path}' has no utterances")


def _word_timings(cut) -> list[tuple[str, float, float]] | None:
    """Word alignment of all supervisions, relative to the cut start; None unless every supervision has one."""
    words = []
    for sup in cut.supervisions:
        items = (sup.alignment or {}).get("word")
        if not items:
            return None
        words.extend((w.symbol, sup.start + w.start, sup.start + w.end) for w in items)
    return words or None


@dataclass
class TestSet:
    name: str
    source: str  # what the user named
    cuts: Path  # cuts file or Shar dir that is read
    kind: str  # "cuts" | "shar" | "nemo-manifest" | "folder"
    rejected: int = 0  # items data_prep refused (listed in <cuts dir>/rejected.jsonl)


def _kind(path: Path) -> str:
    if path.is_dir():
        return "shar" if any(path.glob("cuts.*.jsonl*")) else "folder"
    import gzip
    import json

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

    Items data_prep rejects are counted and listed (``rejected.jsonl``), never dropped silently.
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
    from data_prep import sources
    from data_prep.validate import ValidationConfig, write_validated

    items = sources.folder(str(path)) if kind == "folder" else sources.nemo_manifests([str(path)])
    out = work_dir / "test_sets" / name
    report = write_validated(items, out, "test", ValidationConfig(max_duration_s=3600.0))
    if report.rejected:
        print(f"test set '{name}': {report.rejected} of {report.read} items rejected by data_prep's checks "
              f"(reasons: {dict(report.reasons)}); listed in {out / 'rejected.jsonl'}")
    return TestSet(name, spec, out / "cuts_test.jsonl.gz", kind, report.rejected)
