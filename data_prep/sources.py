"""Sources: each a generator of :class:`Item` / :class:`Rejected`, read lazily (memory stays flat)."""

from __future__ import annotations

import csv
import glob
import json
from pathlib import Path
from typing import Iterator

from data_prep.validate import TARGET_RATE, Item, Rejected
from streamtune.errors import UserError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3")


def _expand(patterns: list[str]) -> list[Path]:
    paths: list[Path] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not matched:
            raise UserError(f"no file matches '{pattern}'")
        for p in matched:
            if not Path(p).exists():
                raise UserError(f"input '{p}' does not exist")
            paths.append(Path(p))
    return paths


def make_cut(cut_id: str, audio: Path, text: str, *, offset_s: float = 0.0, duration_s: float | None = None,
             read_header: bool = True, custom: dict | None = None, language: str | None = None):
    """A MonoCut over (a slice of) one audio file. Without ``read_header`` the declared duration is trusted."""
    from lhotse import Recording, SupervisionSegment
    from lhotse.audio import AudioSource
    from lhotse.cut import MonoCut

    if read_header and audio.exists():
        try:
            rec = Recording.from_file(audio, recording_id=cut_id)
        except Exception:  # unreadable header: keep the item so validation can reject it with a reason
            rec = None
    else:
        rec = None
    if rec is None:
        total = (offset_s + duration_s) if duration_s is not None else 0.0
        rec = Recording(id=cut_id, sources=[AudioSource(type="file", channels=[0], source=str(audio))],
                        sampling_rate=TARGET_RATE, num_samples=round(total * TARGET_RATE), duration=total)
    if duration_s is None:
        duration_s = max(0.0, rec.duration - offset_s)
    sup = SupervisionSegment(id=cut_id, recording_id=rec.id, start=0.0, duration=duration_s, text=text,
                             language=language)
    cut = MonoCut(id=cut_id, start=offset_s, duration=duration_s, channel=0, recording=rec, supervisions=[sup])
    cut.custom = dict(custom or {})
    return cut


def nemo_manifests(manifests: list[str], text_key: str = "text", language: str | None = None,
                   read_header: bool = True) -> Iterator[Item | Rejected]:
    """NeMo / Granary JSONL manifests: ``audio_filepath``, ``duration``, ``offset``, ``text`` (or ``answer``).

    Relative audio paths are resolved against the manifest's folder; keys we do not use go to ``cut.custom``;
    ``language`` keeps only lines whose ``source_lang`` / ``lang`` matches (others are rejected as ``other_language``).
    """
    for manifest in _expand(manifests):
        with open(manifest, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                origin = f"{manifest}:{line_no}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    yield Rejected(origin, "invalid_utf8", f"{origin}: line is not UTF-8 ({err.reason}); re-encode the manifest")
                    continue
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    audio = Path(entry.pop("audio_filepath"))
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
                    yield Rejected(origin, "malformed_line", f"{origin}: not a JSON object with audio_filepath ({err})")
                    continue
                if not audio.is_absolute():
                    audio = manifest.parent / audio
                lang = entry.get("source_lang", entry.get("lang"))
                offset = float(entry.pop("offset", 0.0) or 0.0)
                duration = entry.pop("duration", None)
                text = entry.pop(text_key, None)
                cut_id = f"{audio.stem}-{round(offset * 1000)}" if offset else audio.stem
                if language is not None and lang is not None and lang != language:
                    yield Rejected(cut_id, "other_language", f"{origin}: language {lang!r}, keeping {language!r}")
                    continue
                if not isinstance(text, str):
                    text = ""  # validation rejects it as empty_text, naming the line
                cut = make_cut(cut_id, audio, text, offset_s=offset,
                               duration_s=float(duration) if duration is not None else None,
                               read_header=read_header, custom=entry, language=lang)
                yield Item(cut, origin)


def folder(root: str, transcripts: str | None = None) -> Iterator[Item | Rejected]:
    """Audio files under ``root`` with a sibling ``<name>.txt`` each, or one TSV/CSV (``id``/``path``, ``text``)."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise UserError(f"folder '{root}' does not exist or is not a directory")
    audio_files = sorted(p for p in root_path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    table: dict[str, str] | None = None
    if transcripts:
        table = _read_table(Path(transcripts))
    for audio in audio_files:
        rel = audio.relative_to(root_path).with_suffix("")
        cut_id = str(rel).replace("/", "__")
        if table is not None:
            text = table.pop(str(rel), table.pop(audio.name, table.pop(audio.stem, None)))
            if text is None:
                yield Rejected(cut_id, "no_transcript", f"{audio}: no row for it in {transcripts}")
                continue
        else:
            txt = audio.with_suffix(".txt")
            if not txt.exists():
                yield Rejected(cut_id, "no_transcript", f"{audio}: no sibling {txt.name}")
                continue
            text = txt.read_text(encoding="utf-8", errors="replace")
        yield Item(make_cut(cut_id, audio, text), str(audio))
    for key in table or {}:
        yield Rejected(key, "missing_audio", f"{transcripts}: row {key!r} names no audio file under {root}")


def _read_table(path: Path) -> dict[str, str]:
    if not path.exists():
        raise UserError(f"transcript table '{path}' does not exist")
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter=delimiter))
    if not rows or "text" not in rows[0] or not ({"id", "path"} & set(rows[0])):
        raise UserError(f"transcript table '{path}' needs a header with 'text' and 'id' or 'path' columns")
    key = "path" if "path" in rows[0] else "id"
    return {str(Path(r[key]).with_suffix("")) if key == "path" else r[key]: r["text"] for r in rows}


def lhotse_cuts(paths: list[str]) -> Iterator[Item | Rejected]:
    """Existing Lhotse cuts pass through validation."""
    from lhotse import CutSet

    for path in _expand(paths):
        for cut in CutSet.from_file(path):
            yield Item(cut, str(path))
