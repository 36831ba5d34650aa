"""Reading prepared data (Lhotse cuts or Shar dirs): utterances with their audio, for evaluation and export."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamtune.errors import UserError

SAMPLE_RATE = 16000
# Audio the pipeline reads: plain files with these suffixes (decoded by libsndfile) and in-memory audio (Shar).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3")
SAFE_SOURCE_TYPES = ("file", "memory", "shar")


def _recordings(cut) -> list:
    """The recordings a cut reads its audio from (a mixed cut has one per track; padding has none)."""
    if getattr(cut, "tracks", None) is not None:
        return [rec for track in cut.tracks for rec in _recordings(track.cut)]
    rec = getattr(cut, "recording", None)
    return [rec] if rec is not None else []


def unsafe_source(cut) -> str | None:
    """Why reading this cut's audio could run or fetch something the data names; None when it is safe.

    Lhotse runs a ``command`` source in a shell, fetches a ``url`` one, and pastes a ``.sph`` path into an
    ``sph2pipe`` shell command; a file of another suffix may go to other external decoders. So only plain files
    with a known audio suffix and in-memory (Shar) audio are read, from any input.
    """
    for rec in _recordings(cut):
        why = unsafe_recording(rec)
        if why:
            return why
    return None


def unsafe_recording(rec) -> str | None:
    """:func:`unsafe_source` for one Lhotse ``Recording``."""
    for source in rec.sources:
        if source.type not in SAFE_SOURCE_TYPES:
            return f"audio source of type '{source.type}' ({str(source.source)[:80]!r}); only files are read"
        if source.type == "file" and Path(str(source.source)).suffix.lower() not in AUDIO_SUFFIXES:
            return (f"audio file {source.source!r} is not one of {', '.join(AUDIO_SUFFIXES)}; convert it "
                    "(e.g. with sox or ffmpeg) before preparing")
    return None


def check_safe(cut, where: str) -> None:
    """A :class:`UserError` naming the cut when :func:`unsafe_source` refuses it."""
    why = unsafe_source(cut)
    if why:
        raise UserError(f"{where}: cut '{cut.id}' is refused: {why}. Prepare the data with `python -m data_prep`, "
                        "which rejects such items and lists them in rejected_<split>.jsonl")


@dataclass
class Utterance:
    id: str
    text: str
    audio: np.ndarray  # float32, 16 kHz mono
    duration_s: float
    # Word timings (word, start_s, end_s) when the cut's supervision carries a Lhotse "word" alignment.
    words: list[tuple[str, float, float]] | None = None
    # Where the audio is (a file's path and the cut's offset in it), when it is a file: for NeMo manifests.
    source: str | None = None
    offset_s: float = 0.0
    # A multi-turn recording (one supervision per turn, `python -m data_prep turns`): (start_s, end_s, text) of
    # every turn, in order; None for a plain utterance.
    turns: list[tuple[float, float, str]] | None = None


def _open_cuts(cuts_path: str | Path):
    """A lazy CutSet over a cuts file or a Shar dir (cuts read as iterated, never all at once)."""
    from lhotse import CutSet

    path = Path(cuts_path)
    if not path.exists():
        raise UserError(f"cuts file '{cuts_path}' does not exist; prepare it with `python -m data_prep ...`")
    if (path / "tars.json").exists():
        raise UserError(f"'{cuts_path}' holds NeMo tarred manifests (`data_prep nemo-tarred --keep-tars`), which "
                        "only data.train reads; prepare evaluation sets without --keep-tars (Lhotse Shar)")
    return CutSet.from_shar(in_dir=path) if path.is_dir() else CutSet.from_jsonl_lazy(path)


def read_utterance(cut) -> Utterance:
    """A cut's audio (16 kHz mono float32) and transcript."""
    if cut.sampling_rate != SAMPLE_RATE:
        cut = cut.resample(SAMPLE_RATE)
    audio = cut.load_audio()
    audio = audio.mean(axis=0) if audio.ndim == 2 else audio
    text = " ".join(s.text for s in cut.supervisions if s.text)
    rec = getattr(cut, "recording", None)
    source = None
    if rec is not None and len(rec.sources) == 1 and rec.sources[0].type == "file":
        source = str(rec.sources[0].source)
    turns = None
    if len(cut.supervisions) > 1:
        sups = sorted(cut.supervisions, key=lambda s: s.start)
        turns = [(round(float(s.start), 6), round(float(s.end), 6), s.text or "") for s in sups]
    return Utterance(cut.id, text, audio.astype(np.float32), float(cut.duration), _word_timings(cut), source,
                     float(getattr(cut, "start", 0.0)), turns)


def load_utterances(cuts_path: str | Path, max_utts: int = 0, max_audio_s: float = 0.0,
                    min_words: int = 0) -> list[Utterance]:
    """Load (resampled to 16 kHz mono) audio and transcripts of a cuts file or Shar dir, in stored order: all of
    them, or the first ``max_utts`` / the first holding at least ``max_audio_s`` seconds / ``min_words``
    reference words (whichever comes first).

    Everything in memory: for parity sets and tests. Test sets of any size go through :func:`utterance_batches`.
    """
    utts = []
    for cut in _open_cuts(cuts_path):
        if (max_utts and len(utts) >= max_utts) or (max_audio_s and sum(u.duration_s for u in utts) >= max_audio_s) \
                or (min_words and sum(len(u.text.split()) for u in utts) >= min_words):
            break
        check_safe(cut, str(cuts_path))
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
        check_safe(cut, str(cuts_path))
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
