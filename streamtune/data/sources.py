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
import io
import json
import math
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
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
    from lhotse import Recording
    from lhotse.audio import AudioSource

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
    return _cut_on(rec, cut_id, text, offset_s, duration_s, custom, language)


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


# The tar member a tarred cut's audio came from (its full name in the tar), kept in cut.custom.
TAR_MEMBER = "tar_member"


@dataclass(frozen=True)
class Shard:
    """One unit of sharded input: a NeMo tarred shard (``kind="tar"``: manifest + tar, either may be missing),
    or one parquet / arrow file of a Hugging Face dataset (``kind="parquet"``/``"arrow"``, its first row's
    index in the whole dataset in ``row_offset``), or a dataset only ``datasets`` can read (``kind="hf"``)."""

    name: str
    kind: str
    paths: tuple[str, ...]
    row_offset: int = 0


def tarred_shards(manifests: list[str], tars: list[str]) -> list[Shard]:
    """NeMo tarred audio: ``audio_N.tar`` with ``manifest_N.json``, paired by the shard number N, in N's order."""
    manifest_paths = _by_shard(_expand(manifests), "manifest")
    tar_paths = _by_shard(_expand(tars), "tar")
    return [Shard(shard, "tar", (str(manifest_paths.get(shard, "")), str(tar_paths.get(shard, ""))))
            for shard in sorted(set(manifest_paths) | set(tar_paths), key=lambda s: (len(s), s))]


def tarred_shard_items(shard: Shard, text_key: str = "text", language: str | None = None) -> Iterator[Item | Rejected]:
    """The items of one NeMo tarred shard, read in place: the tar streamed member by member, no file written.

    As in NeMo, a manifest entry's ``audio_filepath`` names a member of its shard's tar (here by base name); the
    member's bytes become the cut's in-memory audio (several entries may slice one member by offset). Only
    regular members are read (links, devices and folders never are); a member without an entry is
    ``no_manifest_entry``, an entry without a member ``missing_audio``; a tar that cannot be read from some
    point on (e.g. truncated) rejects the entries of the members it no longer yields as ``corrupt_tar``.
    """
    import tarfile

    manifest, tar_path = shard.paths
    if not tar_path:
        yield Rejected(manifest, "missing_tar", f"{manifest}: no audio tar for shard {shard.name}")
        return
    if not manifest:
        yield Rejected(tar_path, "missing_manifest", f"{tar_path}: no manifest for shard {shard.name}")
        return
    pending: dict[str, list[Item]] = {}
    for item in nemo_manifests([manifest], text_key=text_key, language=language, read_header=False):
        if isinstance(item, Rejected):
            yield item
        else:
            pending.setdefault(Path(item.cut.recording.sources[0].source).name, []).append(item)
    broken = None
    try:
        with tarfile.open(tar_path, mode="r|*") as tar:
            for member in tar:
                name = Path(member.name).name
                if not member.isfile():
                    continue  # its entries end as missing_audio
                items = pending.pop(name, None)
                if items is None:
                    yield Rejected(name, "no_manifest_entry", f"{tar_path}: member {member.name} has no manifest entry")
                    continue
                try:
                    data = tar.extractfile(member).read()
                except (tarfile.TarError, OSError, EOFError) as err:
                    pending[name] = items
                    raise err
                for item in items:
                    cut = item.cut  # a duration of 0 was not declared: the member's header says it
                    yield Item(memory_cut(cut.id, data, cut.supervisions[0].text, offset_s=cut.start,
                                          duration_s=cut.duration or None,
                                          custom={**cut.custom, TAR_MEMBER: member.name},
                                          language=cut.supervisions[0].language), item.origin)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        broken = f"{type(err).__name__}: {err}"
    for name, items in pending.items():
        for item in items:
            if broken:
                yield Rejected(item.cut.id, "corrupt_tar", f"{item.origin}: {tar_path} cannot be read up to {name} "
                               f"({broken})")
            else:
                yield Rejected(item.cut.id, "missing_audio", f"{item.origin}: {name} is not a file in {tar_path}")


def memory_cut(cut_id: str, data: bytes, text: str, *, offset_s: float = 0.0, duration_s: float | None = None,
               custom: dict | None = None, language: str | None = None):
    """A MonoCut over (a slice of) encoded audio held in memory; validation decodes it and reads the truth
    (rate, channels, length) from it, so the values given here are placeholders."""
    from lhotse import Recording
    from lhotse.audio import AudioSource

    if duration_s is None:  # not declared: the header's, when it can be read (else 0 s, rejected as such)
        import soundfile as sf

        try:
            duration_s = max(0.0, sf.info(io.BytesIO(data)).duration - offset_s)
        except Exception:  # soundfile raises several kinds for bytes that are not audio
            duration_s = 0.0
    total = offset_s + duration_s
    rec = Recording(id=cut_id, sources=[AudioSource(type="memory", channels=[0], source=data)],
                    sampling_rate=TARGET_RATE, num_samples=round(total * TARGET_RATE), duration=total)
    return _cut_on(rec, cut_id, text, offset_s, duration_s, custom, language)


def _cut_on(rec, cut_id, text, offset_s, duration_s, custom, language):
    from lhotse import SupervisionSegment
    from lhotse.cut import MonoCut

    sup = SupervisionSegment(id=cut_id, recording_id=rec.id, start=0.0, duration=duration_s, text=text,
                             language=language)
    cut = MonoCut(id=cut_id, start=offset_s, duration=duration_s, channel=0, recording=rec, supervisions=[sup])
    cut.custom = dict(custom or {})
    return cut


def hf_shards(source: str, split: str | None = None) -> list[Shard]:
    """A local Hugging Face dataset as shards: its parquet files, or the arrow files of a ``save_to_disk`` dir
    (of ``split`` in a DatasetDict), each with the index of its first row; any other layout ``datasets`` reads
    is one shard. Nothing is fetched from the hub."""
    import pyarrow.parquet as pq

    src = Path(source)
    if not src.exists():
        raise UserError(f"dataset '{source}' does not exist; hf reads local datasets only (no hub access)")
    if (src / "dataset_dict.json").exists():
        splits = json.loads((src / "dataset_dict.json").read_text()).get("splits", [])
        if split is None:
            raise UserError(f"dataset '{source}' has splits {splits}; choose one with --hf-split")
        if split not in splits:
            raise UserError(f"dataset '{source}' has no split '{split}'; its splits are {splits}")
        src = src / split
    if (src / "dataset_info.json").exists():
        state = json.loads((src / "state.json").read_text()) if (src / "state.json").exists() else {}
        files = [src / f["filename"] for f in state.get("_data_files", [])] or sorted(src.glob("*.arrow"))
        kind = "arrow"
    elif src.is_file():
        files, kind = [src], "arrow" if src.suffix == ".arrow" else "parquet"
    elif any(src.glob("*.parquet")):
        files, kind = sorted(src.glob("*.parquet")), "parquet"
    elif any(src.glob("*.arrow")):
        files, kind = sorted(src.glob("*.arrow")), "arrow"
    else:
        return [Shard(src.name, "hf", (str(src),))]
    shards, offset = [], 0
    for path in files:
        shards.append(Shard(path.name, kind, (str(path),), offset))
        try:
            offset += pq.ParquetFile(path).metadata.num_rows if kind == "parquet" else _arrow_rows(path)
        except Exception as err:  # pyarrow raises several kinds
            raise UserError(f"dataset file '{path}' cannot be read as {kind} ({type(err).__name__}: {err})") \
                from None
    return shards


def _arrow_batches(path: Path, columns: list[str] | None = None):
    """Record batches of an arrow file (the IPC stream format ``save_to_disk`` writes, or the file format),
    memory-mapped: nothing is copied."""
    import pyarrow as pa

    source = pa.memory_map(str(path))
    try:
        reader = pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        source = pa.memory_map(str(path))
        file_reader = pa.ipc.open_file(source)
        batches = (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
    else:
        batches = iter(reader)
    for batch in batches:
        yield batch.select(columns) if columns else batch


def _arrow_rows(path: Path) -> int:
    return sum(batch.num_rows for batch in _arrow_batches(path))


def hf_shard_items(shard: Shard, dataset: str, audio_column: str = "audio", text_column: str = "text",
                   id_column: str | None = None, hf_split: str | None = None) -> Iterator[Item | Rejected]:
    """The rows of one shard of a Hugging Face dataset, streamed in batches; embedded audio bytes stay in
    memory (no file is written), audio given as a path is a file cut (relative paths resolve against the
    dataset). Default ids: ``<dataset name>-<row index in the whole dataset, 8 digits>``."""
    src = Path(dataset)
    base = src if src.is_dir() else src.parent
    for index, row, columns in _hf_rows(shard, audio_column, hf_split):
        for column in (audio_column, text_column, id_column):
            if column and column not in columns:
                raise UserError(f"dataset '{dataset}' has no column '{column}'; its columns are {columns}")
        cut_id = str(row[id_column]) if id_column else f"{src.stem}-{index:08d}"
        origin = f"{dataset}[{index}]"
        audio = row[audio_column]
        audio_bytes = audio.get("bytes") if isinstance(audio, dict) else None
        audio_path = audio.get("path") if isinstance(audio, dict) else audio
        text = row[text_column] if isinstance(row[text_column], str) else ""
        if not valid_text(text):
            yield Rejected(cut_id, "invalid_text", f"{origin}: the transcript is not valid Unicode")
            continue
        custom = {k: v for k, v in row.items() if k not in (audio_column, text_column, id_column)
                  and isinstance(v, (str, int, float, bool)) and (not isinstance(v, str) or valid_text(v))}
        if audio_bytes:
            yield Item(memory_cut(cut_id, bytes(audio_bytes), text, custom=custom), origin)
        elif isinstance(audio_path, str) and audio_path:
            target = Path(audio_path)
            yield Item(make_cut(cut_id, target if target.is_absolute() else base / target, text, custom=custom),
                       origin)
        else:
            yield Rejected(cut_id, "missing_audio", f"{origin}: the audio column holds neither bytes nor a path")


def _hf_rows(shard: Shard, audio_column: str, hf_split: str | None):
    """(index in the dataset, row dict, column names) of a shard, the audio column undecoded."""
    if shard.kind == "hf":
        import datasets

        ds = datasets.load_dataset(shard.paths[0])
        if isinstance(ds, datasets.DatasetDict):
            if hf_split is None:
                raise UserError(f"dataset '{shard.paths[0]}' has splits {list(ds)}; choose one with --hf-split")
            ds = ds[hf_split]
        if isinstance(ds.features.get(audio_column), datasets.Audio):
            ds = ds.cast_column(audio_column, datasets.Audio(decode=False))
        for index, row in enumerate(ds):
            yield index, row, ds.column_names
        return
    if shard.kind == "parquet":
        import pyarrow.parquet as pq

        batches = pq.ParquetFile(shard.paths[0]).iter_batches(batch_size=64)
    else:
        batches = _arrow_batches(Path(shard.paths[0]))
    index = shard.row_offset
    for batch in batches:
        columns = batch.schema.names
        for start in range(0, batch.num_rows, 64):  # rows become Python objects 64 at a time
            for row in batch.slice(start, 64).to_pylist():
                yield index, row, columns
                index += 1
