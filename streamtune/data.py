"""Reading prepared data (Lhotse cuts) for evaluation and export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamtune.errors import UserError

SAMPLE_RATE = 16000


@dataclass
class Utterance:
    id: str
    text: str
    audio: np.ndarray  # float32, 16 kHz mono
    duration_s: float


def load_utterances(cuts_path: str | Path, max_utts: int = 0) -> list[Utterance]:
    """Load (resampled to 16 kHz mono) audio and transcripts of a cuts file or Shar dir, in stored order."""
    from lhotse import CutSet

    path = Path(cuts_path)
    if not path.exists():
        raise UserError(f"cuts file '{cuts_path}' does not exist; prepare it with `python -m data_prep ...`")
    cuts = CutSet.from_shar(in_dir=path) if path.is_dir() else CutSet.from_file(path)
    utts = []
    for cut in cuts:
        if max_utts and len(utts) >= max_utts:
            break
        if cut.sampling_rate != SAMPLE_RATE:
            cut = cut.resample(SAMPLE_RATE)
        audio = cut.load_audio()
        audio = audio.mean(axis=0) if audio.ndim == 2 else audio
        text = " ".join(s.text for s in cut.supervisions if s.text)
        utts.append(Utterance(cut.id, text, audio.astype(np.float32), float(cut.duration)))
    if not utts:
        raise UserError(f"cuts file '{cuts_path}' has no utterances")
    return utts
