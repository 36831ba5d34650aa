"""Sources: each a generator of :class:`Item` / :class:`Rejected`, read lazily (memory stays flat).

A value that cannot be used (a duration that is not a number, a negative offset, a transcript that is not
valid Unicode) rejects its item with a reason; only an input that cannot be read at all (a missing
manifest, a directory where a file is expected) stops the run with one line.

Cut ids (NeMo manifests and folders name no ids): the audio path relative to the manifest's folder (or to the
folder given), without its suffix, ``/`` written ``__`` (``followme/sorry.wav`` -> ``followme__sorry``); a name
that itself contains ``__`` gets ``-`` and 8 hex digits of its path's hash, so that two paths never share an id;
a slice at an offset adds ``-<offset in ms>``. Paths outside that folder use their absolute path the same way.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

from streamtune.data.reading import AUDIO_SUFFIXES
from streamtune.data.validate import TARGET_RATE, Item, Rejected
from streamtune.errors import UserError


def _expand(patterns: list[str]) -> list[Path]:
    paths: list[Path] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not matched:
            raise UserError(f"no file matches '{pattern}'")
        for p in matched:
            if not Path(p).exists():
                raise UserError(f"input '{p}' does not exist")
            if Path(p).is_dir():
                raise UserError(f"input '{p}' is a directory; name the file(s) in it (globs allowed)")
            paths.append(Path(p))
    return paths


def cut_id_for(audio: Path, base: Path) -> str:
    """A unique, stable id from the audio's path relative to ``base`` (see the module docstring)."""
    try:
        rel = audio.relative_to(base)
    except ValueError:
        rel = Path(*audio.parts[1:]) if audio.is_absolute() else audio
    parts = rel.with_suffix("").parts
    cut_id = "__".join(parts)
    if any("__" in part for part in parts):
        cut_id += "-" + hashlib.blake2b(rel.as_posix().encode(), digest_size=4).hexdigest()
    return cut_id


def _number(value, name: str, minimum: float = 0.0) -> float:
    """A finite number >= ``minimum`` from a manifest field, or ValueError saying what is wrong with it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{name} {value!r} is not a number")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name} {value!r} is not a number") from None
    if not math.isfinite(number) or number < minimum:
        raise ValueError(f"{name} {value!r} is not a finite number >= {minimum:g}")
    return number


def valid_text(text: str) -> bool:
    """False for text that is not valid Unicode (lone surrogates), which no writer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def make_cut(cut_id: str, audio: Path, text: str, *, offset_s: float = 0.0, duration_s: float | None = None,
             read_header: bool = True, custom: dict | None = None, language: str | None = None):
    """A MonoCut over (a slice of) one audio file. Without ``read_header`` the declared duration is trusted.

    The header is read only for known audio suffixes (Lhotse hands others, e.g. ``.sph``, to shell commands);
    validation rejects the rest as ``unsafe_source``.
    """
    from lhotse import Recording, SupervisionSegment
    from lhotse.audio import AudioSource
    from lhotse.cut import MonoCut

    rec = None
    if read_header and audio.suffix.lower() in AUDIO_SUFFIXES and audio.is_file():
        try:
            rec = Recording.from_file(audio, recording_id=cut_id)
        except Exception:  # unreadable header: keep the item so validation can reject it with a reason
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


def _manifest_item(entry, origin: str, base: Path, text_key: str, language: str | None, read_header: bool):
    """One manifest line (parsed JSON) -> Item, or Rejected with the reason."""
    if not isinstance(entry, dict) or not isinstance(entry.get("audio_filepath"), str) \
            or not entry["audio_filepath"].strip():
        return Rejected(origin, "malformed_line", f"{origin}: not a JSON object with an audio_filepath string")
    entry = dict(entry)
    audio = Path(entry.pop("audio_filepath"))
    if not audio.is_absolute():
        audio = base / audio
    cut_id = cut_id_for(audio, base)
    try:
        offset = _number(entry.pop("offset", 0.0) or 0.0, "offset")
        duration = entry.pop("duration", None)
        duration = None if duration is None else _number(duration, "duration")
    except ValueError as err:
        return Rejected(cut_id, "malformed_value", f"{origin}: {err}")
    if offset:
        cut_id = f"{cut_id}-{round(offset * 1000)}"
    lang = entry.get("source_lang", entry.get("lang"))
    if language is not None and lang is not None and lang != language:
        return Rejected(cut_id, "other_language", f"{origin}: language {lang!r}, keeping {language!r}")
    text = entry.pop(text_key, None)
    if not isinstance(text, str):
        text = ""  # validation rejects it as empty_text, naming the line
    if not valid_text(text):
        return Rejected(cut_id, "invalid_text", f"{origin}: the transcript is not valid Unicode (a lone surrogate)")
    custom = {k: v for k, v in entry.items() if not isinstance(v, str) or valid_text(v)}
    return Item(make_cut(cut_id, audio, text, offset_s=offset, duration_s=duration,
                         read_header=read_header and duration is None, custom=custom, language=lang), origin)


def nemo_manifests(manifests: list[str], text_key: str = "text", language: str | None = None,
                   read_header: bool = True) -> Iterator[Item | Rejected]:
    """NeMo / Granary JSONL manifests: ``audio_filepath``, ``duration``, ``offset``, ``text`` (or ``answer``).

    Relative audio paths are resolved against the manifest's folder; keys we do not use go to ``cut.custom``;
    ``language`` keeps only lines whose ``source_lang`` / ``lang`` matches (others are rejected as
    ``other_language``). With a declared duration the header is not read here: validation decodes the file
    once and takes its rate, channels and length from that.
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
                except (json.JSONDecodeError, RecursionError) as err:
                    yield Rejected(origin, "malformed_line", f"{origin}: not JSON ({str(err)[:80]})")
                    continue
                yield _manifest_item(entry, origin, manifest.parent, text_key, language, read_header)


def folder(root: str, transcripts: str | None = None) -> Iterator[Item | Rejected]:
    """Audio files under ``root`` with a sibling ``<name>.txt`` each, or one TSV/CSV (``id``/``path``, ``text``)."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise UserError(f"folder '{root}' does not exist or is not a directory")
    audio_files = sorted(p for p in root_path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    table: dict[str, str] | None = None
    if transcripts:
        table = _read_table(Path(transcripts))
    for audio in audio_files:
        rel = audio.relative_to(root_path).with_suffix("")
        cut_id = cut_id_for(audio, root_path)
        if table is not None:
            text = table.pop(str(rel), table.pop(audio.name, table.pop(audio.stem, None)))
            if text is None:
                yield Rejected(cut_id, "no_transcript", f"{audio}: no row for it in {transcripts}")
                continue
        else:
            txt = audio.with_suffix(".txt")
            if not txt.is_file():
                yield Rejected(cut_id, "no_transcript", f"{audio}: no sibling {txt.name}")
                continue
            text = txt.read_text(encoding="utf-8", errors="replace")
        yield Item(make_cut(cut_id, audio, text), str(audio))
    for key in table or {}:
        yield Rejected(key, "missing_audio", f"{transcripts}: row {key!r} names no audio file under {root}")


def _read_table(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise UserError(f"transcript table '{path}' does not exist or is not a file")
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        try:
            rows = list(reader)
        except csv.Error as err:
            raise UserError(f"transcript table '{path}' line {reader.line_num}: {err}") from None
    if not rows or "text" not in rows[0] or not ({"id", "path"} & set(rows[0])):
        raise UserError(f"transcript table '{path}' needs a header with 'text' and 'id' or 'path' columns")
    key = "path" if "path" in rows[0] else "id"
    return {str(Path(r[key]).with_suffix("")) if key == "path" else r[key]: r["text"] or "" for r in rows}


def lhotse_cuts(paths: list[str]) -> Iterator[Item | Rejected]:
    """Existing Lhotse cuts pass through validation (which refuses sources that are not plain files)."""
    from lhotse import CutSet

    for path in _expand(paths):
        for cut in CutSet.from_file(path):
            yield Item(cut, str(path))


def shard_number(path: Path) -> str:
    """The shard a NeMo tarred file belongs to: the last number in its name (``audio_12.tar`` -> ``12``)."""
    numbers = re.findall(r"\d+", path.stem)
    return numbers[-1] if numbers else path.stem


def _by_shard(paths: list[Path], what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in paths:
        shard = shard_number(path)
        if shard in out:
            raise UserError(f"two {what} files are shard {shard}: {out[shard]} and {path}; NeMo tarred data pairs "
                            "manifest_N with audio_N, so pass one dataset's shards at a time")
        out[shard] = path
    return out


def safe_member_name(name: str) -> str:
    """A file name for a tar member we write: its base name if that is plain, else a hash of the full name."""
    base = Path(name).name
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", base) and len(base) <= 200:
        return base
    return hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest() + \
        "".join(Path(base).suffixes[-1:])[:10]


def nemo_tarred(manifests: list[str], tars: list[str], audio_out: Path, text_key: str = "text",
                language: str | None = None) -> Iterator[Item | Rejected]:
    """NeMo tarred audio: ``audio_N.tar`` with ``manifest_N.json``, paired by the shard number N.

    As in NeMo, a manifest entry's ``audio_filepath`` names a member of its shard's tar (by base name). Regular
    members are extracted under ``audio_out/<shard>/`` with plain file names (links and odd names never reach
    the file system as the tar spells them), so the cuts point at real files. A tar that cannot be read (e.g.
    truncated) rejects its shard's entries with ``corrupt_tar``.
    """
    import tarfile

    manifest_paths = _by_shard(_expand(manifests), "manifest")
    tar_paths = _by_shard(_expand(tars), "tar")
    for shard in sorted(set(manifest_paths) | set(tar_paths), key=lambda s: (len(s), s)):
        if shard not in tar_paths:
            yield Rejected(str(manifest_paths[shard]), "missing_tar",
                           f"{manifest_paths[shard]}: no audio tar for shard {shard}")
            continue
        if shard not in manifest_paths:
            yield Rejected(str(tar_paths[shard]), "missing_manifest",
                           f"{tar_paths[shard]}: no manifest for shard {shard}")
            continue
        yield from _one_shard(shard, manifest_paths[shard], tar_paths[shard], audio_out / shard, text_key, language,
                              tarfile)


def _one_shard(shard, manifest: Path, tar_path: Path, shard_dir: Path, text_key, language, tarfile):
    entries = nemo_manifests([str(manifest)], text_key=text_key, language=language, read_header=False)
    try:
        tar = tarfile.open(tar_path)
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, EOFError) as err:
        for item in entries:
            yield item if isinstance(item, Rejected) else Rejected(
                item.cut.id, "corrupt_tar", f"{item.origin}: {tar_path} cannot be read ({err})")
        return
    shard_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    with tar:
        for item in entries:
            if isinstance(item, Rejected):
                yield item
                continue
            name = Path(item.cut.recording.sources[0].source).name
            member = members.get(name)
            if member is None:
                yield Rejected(item.cut.id, "missing_audio", f"{item.origin}: {name} is not in {tar_path}")
                continue
            if name not in written:
                target = shard_dir / safe_member_name(member.name)
                try:
                    with tar.extractfile(member) as src, open(target, "wb") as dst:
                        dst.write(src.read())
                except (tarfile.TarError, OSError, EOFError) as err:
                    yield Rejected(item.cut.id, "corrupt_tar", f"{item.origin}: {name} in {tar_path}: {err}")
                    continue
                written[name] = target
            cut = item.cut
            yield Item(make_cut(cut.id, written[name], cut.supervisions[0].text, offset_s=cut.start,
                                duration_s=cut.duration, custom=cut.custom,
                                language=cut.supervisions[0].language), item.origin)
        for name in sorted(set(members) - set(written)):
            yield Rejected(name, "no_manifest_entry", f"{tar_path}: member {name} has no manifest entry")


def hf_dataset(source: str, audio_out: Path, audio_column: str = "audio", text_column: str = "text",
               id_column: str | None = None, split: str | None = None) -> Iterator[Item | Rejected]:
    """A local Hugging Face dataset: a ``save_to_disk`` dir, parquet/arrow files, or a dir ``load_dataset`` reads.

    Audio may be embedded bytes or paths; it is read undecoded (``Audio(decode=False)``); embedded bytes are
    written to ``audio_out/<row index>-<id>`` (the index keeps ids that differ only in spelling, ``a/1`` and
    ``a__1``, from sharing a file). Nothing is fetched from the hub.
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
            suffix = Path(audio_path).suffix.lower() if audio_path else ".wav"
            target = audio_out / f"{index:08d}-{safe_member_name(cut_id)}{suffix or '.wav'}"
            target.write_bytes(audio_bytes)
        elif audio_path:
            target = Path(audio_path)
            if not target.is_absolute():
                target = (src if src.is_dir() else src.parent) / target
        else:
            yield Rejected(cut_id, "missing_audio", f"{origin}: the audio column holds neither bytes nor a path")
            continue
        text = row[text_column] if isinstance(row[text_column], str) else ""
        if not valid_text(text):
            yield Rejected(cut_id, "invalid_text", f"{origin}: the transcript is not valid Unicode")
            continue
        custom = {k: v for k, v in row.items() if k not in (audio_column, text_column, id_column)
                  and isinstance(v, (str, int, float, bool)) and (not isinstance(v, str) or valid_text(v))}
        yield Item(make_cut(cut_id, target, text, custom=custom), origin)
