"""Sources: each a generator of :class:`Item` / :class:`Rejected`, read lazily (memory stays flat)."""

from __future__ import annotations

import csv
import glob
import json
from collections.abc import Iterator
from pathlib import Path

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
                    yield Rejected(origin, "invalid_utf8",
                                   f"{origin}: line is not UTF-8 ({err.reason}); re-encode the manifest")
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
                # With a declared duration the header is not read here: validation decodes the file once and
                # takes its rate, channels and length from that.
                cut = make_cut(cut_id, audio, text, offset_s=offset,
                               duration_s=float(duration) if duration is not None else None,
                               read_header=read_header and duration is None, custom=entry, language=lang)
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


def _shard_index(path: Path) -> str:
    digits = "".join(ch for ch in path.stem if ch.isdigit())
    return digits or path.stem


def nemo_tarred(manifests: list[str], tars: list[str], audio_out: Path, text_key: str = "text",
                language: str | None = None) -> Iterator[Item | Rejected]:
    """NeMo tarred audio: ``audio_N.tar`` with ``manifest_N.json``, matched by shard number and file name.

    As in NeMo, a manifest entry's ``audio_filepath`` names a member of its shard's tar (by base name). Members
    are extracted under ``audio_out/<shard>/`` so the cuts point at real files.
    """
    import tarfile

    manifest_paths = {_shard_index(p): p for p in _expand(manifests)}
    tar_paths = {_shard_index(p): p for p in _expand(tars)}
    for shard in sorted(set(manifest_paths) | set(tar_paths), key=lambda s: (len(s), s)):
        if shard not in tar_paths:
            yield Rejected(str(manifest_paths[shard]), "missing_tar",
                           f"{manifest_paths[shard]}: no audio tar for shard {shard}")
            continue
        if shard not in manifest_paths:
            yield Rejected(str(tar_paths[shard]), "missing_manifest",
                           f"{tar_paths[shard]}: no manifest for shard {shard}")
            continue
        shard_dir = audio_out / shard
        shard_dir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tar_paths[shard]) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            used: set[str] = set()
            for item in nemo_manifests([str(manifest_paths[shard])], text_key=text_key, language=language,
                                       read_header=False):
                if isinstance(item, Rejected):
                    yield item
                    continue
                name = Path(item.cut.recording.sources[0].source).name
                member = members.get(name)
                if member is None:
                    yield Rejected(item.cut.id, "missing_audio", f"{item.origin}: {name} is not in {tar_paths[shard]}")
                    continue
                target = shard_dir / name
                if name not in used:
                    with tar.extractfile(member) as src, open(target, "wb") as dst:
                        dst.write(src.read())
                    used.add(name)
                cut = item.cut
                yield Item(make_cut(cut.id, target, cut.supervisions[0].text, offset_s=cut.start,
                                    duration_s=cut.duration, custom=cut.custom,
                                    language=cut.supervisions[0].language), item.origin)
            for name in sorted(set(members) - used):
                yield Rejected(name, "no_manifest_entry", f"{tar_paths[shard]}: member {name} has no manifest entry")


def hf_dataset(source: str, audio_out: Path, audio_column: str = "audio", text_column: str = "text",
               id_column: str | None = None, split: str | None = None) -> Iterator[Item | Rejected]:
    """A local Hugging Face dataset: a ``save_to_disk`` dir, parquet/arrow files, or a dir ``load_dataset`` reads.

    Audio may be embedded bytes or paths; it is read undecoded (``Audio(decode=False)``) and written to
    ``audio_out`` so the cuts point at files. Nothing is fetched from the hub.
    """
    import datasets

    src = Path(source)
    if not src.exists():
        raise UserError(f"dataset '{source}' does not exist; hf reads local datasets only (no hub access)")
    if (src / "dataset_info.json").exists() or (src / "dataset_dict.json").exists():
        ds = datasets.load_from_disk(str(src))
    elif src.is_file() or any(src.glob("*.parquet")) or any(src.glob("*.arrow")):
        files = [str(src)] if src.is_file() else sorted(str(p) for p in src.glob("*.parquet")) or sorted(
            str(p) for p in src.glob("*.arrow"))
        kind = "parquet" if files[0].endswith(".parquet") else "arrow"
        ds = datasets.load_dataset(kind, data_files=files, split="train")
    else:
        ds = datasets.load_dataset(str(src))
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            raise UserError(f"dataset '{source}' has splits {list(ds)}; choose one with --hf-split")
        ds = ds[split]
    for column in (audio_column, text_column, id_column):
        if column and column not in ds.column_names:
            raise UserError(f"dataset '{source}' has no column '{column}'; its columns are {ds.column_names}")
    if isinstance(ds.features[audio_column], datasets.Audio):
        ds = ds.cast_column(audio_column, datasets.Audio(decode=False))
    audio_out.mkdir(parents=True, exist_ok=True)
    for index, row in enumerate(ds):
        cut_id = str(row[id_column]) if id_column else f"{src.stem}-{index:08d}"
        origin = f"{source}[{index}]"
        audio = row[audio_column]
        audio_bytes = audio.get("bytes") if isinstance(audio, dict) else None
        audio_path = audio.get("path") if isinstance(audio, dict) else audio
        if audio_bytes:
            suffix = Path(audio_path).suffix if audio_path else ".wav"
            target = audio_out / f"{cut_id.replace('/', '__')}{suffix or '.wav'}"
            target.write_bytes(audio_bytes)
        elif audio_path:
            target = Path(audio_path)
            if not target.is_absolute():
                target = (src if src.is_dir() else src.parent) / target
        else:
            yield Rejected(cut_id, "missing_audio", f"{origin}: the audio column holds neither bytes nor a path")
            continue
        text = row[text_column] if isinstance(row[text_column], str) else ""
        custom = {k: v for k, v in row.items() if k not in (audio_column, text_column, id_column)
                  and isinstance(v, (str, int, float, bool))}
        yield Item(make_cut(cut_id, target, text, custom=custom), origin)
