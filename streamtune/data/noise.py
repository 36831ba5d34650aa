"""Noise and room-impulse-response sets for ``data.augment``: every audio file under a folder, decoded once,
as Lhotse cuts (``cuts_noise.jsonl.gz``, for ``data.augment.noise_path``) or a RecordingSet
(``rirs.jsonl.gz``, for ``data.augment.rir_path``). Files that do not decode, are empty or have several
channels are counted and listed in ``rejected_noise.jsonl`` / ``rejected_rirs.jsonl``, never dropped silently."""

from __future__ import annotations

import json
from pathlib import Path

from streamtune.data.reading import AUDIO_SUFFIXES
from streamtune.data.sources import cut_id_for
from streamtune.errors import UserError


def prepare_noise(root: str | Path, out: str | Path, rirs: bool = False) -> Path:
    from lhotse import CutSet, Recording, RecordingSet

    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise UserError(f"--dir '{root}' does not exist or is not a directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {root}")
    out.mkdir(parents=True, exist_ok=True)
    what = "rirs" if rirs else "noise"
    kept, rejected = [], []
    for audio in files:
        rec_id = cut_id_for(audio, root)
        try:
            rec = Recording.from_file(audio, recording_id=rec_id)
            samples = rec.load_audio()
        except Exception as err:  # noqa: BLE001 - decoders raise many kinds
            rejected.append({"id": rec_id, "reason": "unreadable_audio", "detail": f"{audio}: {err}"[:300]})
            continue
        if rec.num_channels != 1:
            rejected.append({"id": rec_id, "reason": "not_mono", "detail": f"{audio}: {rec.num_channels} channels"})
        elif samples.size == 0 or rec.duration <= 0:
            rejected.append({"id": rec_id, "reason": "empty_audio", "detail": str(audio)})
        else:
            kept.append(rec)
    with open(out / f"rejected_{what}.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rejected)
    if not kept:
        raise UserError(f"none of the {len(files)} audio files under {root} is usable; see "
                        f"{out / f'rejected_{what}.jsonl'}")
    recordings = RecordingSet.from_recordings(kept)
    path = out / ("rirs.jsonl.gz" if rirs else "cuts_noise.jsonl.gz")
    (recordings if rirs else CutSet.from_manifests(recordings=recordings)).to_file(path)
    hours = sum(r.duration for r in kept) / 3600
    print(f"read {len(files)}, kept {len(kept)} ({hours:.3f} h), rejected {len(rejected)} -> {path} "
          f"(data.augment.{'rir_path' if rirs else 'noise_path'}={path})")
    return path
