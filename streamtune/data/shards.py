"""Sharded sources (NeMo tarred shards, parquet / arrow files) prepared in place, on as many machines as wanted.

Each input shard is read streaming (tar member by member, rows in batches), every item decoded and checked as
any source's, and the kept ones written as one Lhotse Shar shard per split:
``<out>/shar/<split>/cuts.NNNNNN.jsonl.gz`` + ``recording.NNNNNN.tar``, ``NNNNNN`` the input shard's position in
the plan (``<out>/plan.json``: the shards in order, the options' key). No audio file is written anywhere: a
member that already is the cut's whole 16 kHz mono WAV or FLAC is copied into the Shar tar as it is, anything
else (a slice, another rate) is encoded once as FLAC. With ``--keep-tars`` (NeMo tarred input) no audio is
written at all: ``<out>/nemo/<split>/manifest_<N>.json`` lists the kept members of ``audio_<N>.tar`` for NeMo's
tarred reader, and ``tars.json`` beside them names the tars.

The work is split by input shard: task K of N prepares the shards at positions K, K + N, K + 2N, ... in
``--num-jobs`` processes. A shard's outcome (report counts, the 64-bit hashes of its kept ids, its rejections)
is recorded under ``<out>/shards/`` last, so a shard is done or not; a task records itself under
``<out>/tasks/`` when all its shards are, and a rerun skips the shards already done with the same inputs and
options. :func:`merge` checks that every shard was done once by the tasks of one split of the work, resolves an
id kept by two shards as one run does (the first shard in plan order keeps it, the later one's copy is rejected
as ``duplicate_id`` and removed from its Shar shard), and writes the run's report and rejections.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from streamtune.data import sources
from streamtune.data.prep_report import Report
from streamtune.data.validate import (
    TARGET_RATE,
    IdSet,
    Rejected,
    Validation,
    ValidationConfig,
    rejection_line,
    run_name,
    split_by_ratio,
)
from streamtune.errors import UserError

PLAN = "plan.json"
TARS = "tars.json"  # beside --keep-tars manifests: shard -> the input tar they name members of


@dataclass
class ShardJob:
    """Everything a worker process needs to prepare one input shard (picklable)."""

    out: str
    position: int
    shard: sources.Shard
    key: str
    task: str
    cfg: ValidationConfig
    splits: list[str]
    split_ratio: dict[str, float] | None
    split_key: str
    source: dict  # the source's options: text_key, lang, dataset, columns, hf_split
    threads: int = 1
    output: str = "shar"  # or "nemo": validated manifests naming the input tars' members (--keep-tars)


def task_of(shard_index: int | None, num_shards: int | None) -> tuple[int, int]:
    """(K, N) from ``--shard-index K --num-shards N``, else from a SLURM array job's environment, else (0, 1)."""
    if shard_index is None and num_shards is None:
        env = os.environ
        if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            try:
                first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
                shard_index, num_shards = int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"])
            except ValueError:
                raise UserError("SLURM_ARRAY_TASK_ID / _MIN / _COUNT are not integers; pass --shard-index and "
                                "--num-shards") from None
            print(f"task {shard_index} of {num_shards} (from the SLURM array job's environment)")
        else:
            return 0, 1
    if shard_index is None or num_shards is None:
        raise UserError("give both --shard-index K and --num-shards N (task K of N, K from 0)")
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise UserError(f"--shard-index {shard_index} --num-shards {num_shards}: need N >= 1 and 0 <= K < N")
    return shard_index, num_shards


def task_name(index: int, count: int) -> str:
    return f"task-{index}-of-{count}"


def _write_json(path: Path, payload) -> None:
    """Atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(path)


def plan_shards(args) -> list[sources.Shard]:
    if args.command == "nemo-tarred":
        return sources.tarred_shards(args.manifest, args.tar)
    return sources.hf_shards(args.dataset, args.hf_split)


def _shard_items(job: ShardJob):
    src = job.source
    if job.shard.kind == "tar":
        return sources.tarred_shard_items(job.shard, text_key=src["text_key"], language=src["lang"])
    return sources.hf_shard_items(job.shard, src["dataset"], audio_column=src["audio_column"],
                                  text_column=src["text_column"], id_column=src["id_column"],
                                  hf_split=src["hf_split"])


def _tag(position: int) -> str:
    return f"{position:06d}"


def _output_files(out: Path, output: str, position: int, shard_name: str) -> list[Path]:
    """The files a shard's earlier preparation left (every split)."""
    if output == "nemo":
        return list((out / "nemo").glob(f"*/manifest_{shard_name}.json"))
    return list((out / "shar").glob(f"*/*.{_tag(position)}.*"))


def _writer(output: str, folder: Path, shard: sources.Shard):
    return NemoManifestWriter(folder, shard) if output == "nemo" else SharShardWriter(folder)


def _install(output: str, tmp: Path, out: Path, split: str, position: int, shard_name: str) -> None:
    """Move a shard's finished files (one split) into place."""
    target = out / output / split
    target.mkdir(parents=True, exist_ok=True)
    if output == "nemo":
        (tmp / "manifest.json").replace(target / f"manifest_{shard_name}.json")
        return
    tag = _tag(position)
    (tmp / "recording.tar").replace(target / f"recording.{tag}.tar")
    (tmp / "cuts.jsonl.gz").replace(target / f"cuts.{tag}.jsonl.gz")


class NemoManifestWriter:
    """A validated NeMo tarred manifest for one input tar (``--keep-tars``): a line per kept cut naming its member
    (``audio_filepath``), its span, its normalised text, ``shard_id`` and ``cut_id``; no audio is written. NeMo's
    tarred reader reads it with the input tar (``skip_missing_manifest_entries``: rejected members stay in it)."""

    def __init__(self, folder: Path, shard: sources.Shard):
        # run_task refuses --keep-tars unless every shard's name is its number (audio_N.tar)
        self.folder, self.shard_id, self.count, self._file = folder, int(shard.name), 0, None

    def write(self, cut, samples=None, encoded=None) -> None:
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._file = open(self.folder / "manifest.json", "w", encoding="utf-8")
        custom = {k: v for k, v in (cut.custom or {}).items() if k not in (sources.TAR_MEMBER, "shard_id", "cut_id")}
        sup = cut.supervisions[0]
        line = {"audio_filepath": cut.custom[sources.TAR_MEMBER], "duration": cut.duration,
                **({"offset": cut.start} if cut.start else {}), "text": sup.text,
                **({"lang": sup.language} if sup.language else {}), **custom,
                "shard_id": self.shard_id, "cut_id": cut.id}
        self._file.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _kept(out: Path, output: str, split: str, position: int, shard_name: str):
    """(id, duration, text) of a shard's kept cuts in one split."""
    if output == "nemo":
        path = out / "nemo" / split / f"manifest_{shard_name}.json"
        for line in open(path, encoding="utf-8") if path.exists() else []:
            entry = json.loads(line)
            yield entry["cut_id"], entry["duration"], entry["text"]
        return
    from lhotse import CutSet

    path = out / "shar" / split / f"cuts.{_tag(position)}.jsonl.gz"
    for cut in CutSet.from_jsonl_lazy(path) if path.exists() else []:
        yield cut.id, cut.duration, " ".join(s.text for s in cut.supervisions)


class SharShardWriter:
    """One Lhotse Shar shard (``cuts.jsonl.gz`` + ``recording.tar``, as Lhotse's ``SharWriter`` writes them)
    from audio already decoded: a cut that is its whole 16 kHz mono WAV / FLAC source keeps those bytes; any
    other is encoded once, as FLAC, at 16 kHz."""

    def __init__(self, folder: Path):
        self.folder, self.count, self._writers = folder, 0, None

    def write(self, cut, samples: np.ndarray | None, encoded: tuple[bytes, str, int] | None = None) -> None:
        """Write ``cut`` with its decoded ``samples``, or with its audio already ``encoded`` (bytes, format,
        samples at 16 kHz)."""
        from lhotse import Recording
        from lhotse.audio import AudioSource
        from lhotse.shar.writers import JsonlShardWriter, TarWriter
        from lhotse.utils import fastcopy

        if self._writers is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._writers = (TarWriter(str(self.folder / "recording.tar"), shard_size=None).__enter__(),
                             JsonlShardWriter(str(self.folder / "cuts.jsonl.gz"), shard_size=None).__enter__())
        data, ext, num_samples = encoded or _encoded(cut, samples)
        duration = num_samples / TARGET_RATE
        placeholder = Recording(id=cut.id, sources=[AudioSource(type="shar", channels=[0], source="")],
                                sampling_rate=TARGET_RATE, num_samples=num_samples, duration=duration)
        tar, cuts = self._writers
        tar.write(f"{cut.id}.{ext}", io.BytesIO(data))
        tar.write(f"{cut.id}.json", io.BytesIO((json.dumps(placeholder.to_dict()) + "\n").encode()), count=False)
        sups = [fastcopy(s, start=0.0, duration=duration, recording_id=cut.id) for s in cut.supervisions]
        cuts.write(fastcopy(cut, start=0.0, duration=duration, recording=placeholder, supervisions=sups))
        self.count += 1

    def close(self) -> None:
        for writer in self._writers or ():
            writer.close()


def _audio_format(data: bytes) -> str | None:
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    return None


def _encoded(cut, samples: np.ndarray | None) -> tuple[bytes, str, int]:
    """(bytes, their format, samples at 16 kHz) of the cut's audio."""
    import soundfile as sf

    rec = cut.recording
    source = rec.sources[0]
    whole = (samples is not None and not rec.transforms and rec.sampling_rate == TARGET_RATE
             and len(rec.channel_ids) == 1 and cut.start == 0 and samples.shape[-1] == rec.num_samples)
    if whole:
        data = source.source if source.type == "memory" else Path(source.source).read_bytes()
        fmt = _audio_format(data)
        if fmt:
            return bytes(data), fmt, rec.num_samples
    audio = cut.load_audio() if samples is None or rec.transforms else samples  # 16 kHz, the cut's span
    stream = io.BytesIO()
    sf.write(stream, np.asarray(audio).reshape(-1), TARGET_RATE, format="FLAC")
    return stream.getvalue(), "flac", int(np.asarray(audio).shape[-1])


def id_hash(cut_id: str) -> int:
    return IdSet._hash(cut_id)


def prepare_shard(job: ShardJob) -> dict:
    """Prepare one input shard (see the module docstring); returns its record."""
    out = Path(job.out)
    shard_dir, tag = out / "shards", _tag(job.position)
    record_path = shard_dir / f"{tag}.json"
    record_path.unlink(missing_ok=True)  # from here on the shard is not done
    for stale in _output_files(out, job.output, job.position, job.shard.name):
        stale.unlink()
    tmp = shard_dir / f".tmp-{tag}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    splitter = split_by_ratio(job.split_ratio, key=job.split_key) if job.split_ratio else None
    validation = Validation(job.cfg, job.splits, splitter, keep_notes=True)
    writers = {name: _writer(job.output, tmp / name, job.shard) for name in job.splits}
    hashes = []
    try:
        with open(tmp / "rejected.jsonl", "w") as rejected:
            for result in validation.run(_shard_items(job), num_jobs=job.threads, with_audio=job.output == "shar"):
                if isinstance(result, Rejected):
                    rejected.write(rejection_line(result))
                    continue
                name, cut, samples = result
                writers[name].write(cut, samples)
                hashes.append(id_hash(cut.id))
    finally:
        for writer in writers.values():
            writer.close()
    for name, writer in writers.items():
        if writer.count:
            _install(job.output, tmp / name, out, name, job.position, job.shard.name)
    np.save(tmp / "ids.npy", np.asarray(hashes, dtype=np.uint64))
    (tmp / "ids.npy").replace(shard_dir / f"{tag}.ids.npy")
    (tmp / "rejected.jsonl").replace(shard_dir / f"{tag}.rejected.jsonl")
    record = {"position": job.position, "shard": asdict(job.shard), "key": job.key, "task": job.task,
              "report": validation.report.state(), "notes": validation.notes}
    _write_json(record_path, record)
    shutil.rmtree(tmp, ignore_errors=True)
    return record


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_task(args, index: int, count: int, key: str, cfg: ValidationConfig, splits: list[str],
             split_ratio: dict | None) -> None:
    """Prepare task ``index`` of ``count``'s share of the input shards. With one task the outputs of an earlier
    run with other inputs or options are removed first (with more, :func:`merge` names what is stale)."""
    out = Path(args.out)
    shards = plan_shards(args)
    if not shards:
        raise UserError("no input shards")
    output = "nemo" if getattr(args, "keep_tars", False) else "shar"
    unnumbered = [s.paths[1] for s in shards if output == "nemo" and not s.name.isdigit()]
    if unnumbered:
        raise UserError(f"--keep-tars writes manifests NeMo's tarred reader pairs with the tars by the number in "
                        f"their names (audio_N.tar), and {unnumbered[0]} has none")
    plan = {"key": key, "command": args.command, "splits": splits, "output": output,
            "shards": [asdict(s) for s in shards]}
    previous = _read(out / PLAN)
    if count == 1 and previous is not None and previous.get("key") != key:
        for stale in ("shar", "nemo", "shards", "tasks"):
            shutil.rmtree(out / stale, ignore_errors=True)
    for folder in ("shards", "tasks"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    _write_json(out / PLAN, plan)
    name = task_name(index, count)
    (out / "tasks" / f"{name}.json").unlink(missing_ok=True)
    mine = [p for p in range(len(shards)) if p % count == index]
    source = {k: getattr(args, k, None) for k in ("text_key", "lang", "dataset", "audio_column", "text_column",
                                                  "id_column", "hf_split")}
    jobs = []
    for position in mine:
        record = _read(out / "shards" / f"{_tag(position)}.json")
        if not args.force and record is not None and record.get("key") == key:
            continue  # done by an earlier run of this task with these inputs and options
        jobs.append(ShardJob(str(out), position, shards[position], key, name, cfg, splits, split_ratio,
                             args.split_key, source, threads=max(1, args.threads_per_job), output=output))
    print(f"{name}: {len(mine)} of {len(shards)} input shards, {len(mine) - len(jobs)} already done; "
          f"{min(args.num_jobs, len(jobs)) or 1} process(es)")
    for record in _map(prepare_shard, jobs, args.num_jobs):
        report = record["report"]
        print(f"  shard {record['shard']['name']}: read {report['read']}, kept {report['kept']}, "
              f"rejected {report['rejected']}", flush=True)
    _write_json(out / "tasks" / f"{name}.json", {"index": index, "count": count, "key": key, "positions": mine})


def _map(fn, jobs: list, processes: int):
    """``fn`` over ``jobs`` in this process, or in ``processes`` others, results as they finish. The workers are
    forked (no second import of Lhotse and torch: ~1.5 s of CPU each, BENCHMARKS) when this process runs no other
    thread, so that no lock can be held across the fork; else spawned."""
    if processes <= 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    import multiprocessing
    import threading
    from concurrent.futures import ProcessPoolExecutor, as_completed

    method = "fork" if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods() \
        else "spawn"
    with ProcessPoolExecutor(min(processes, len(jobs)), mp_context=multiprocessing.get_context(method)) as pool:
        for future in as_completed([pool.submit(fn, job) for job in jobs]):
            yield future.result()


def merge(out_dir: str | Path) -> Report:
    """Check the tasks' work, resolve ids kept by two shards, write ``report_<run>.*`` and ``rejected_<run>.jsonl``
    (see the module docstring). Every problem is one error naming the task(s) to rerun."""
    out = Path(out_dir)
    plan = _read(out / PLAN)
    if plan is None:
        raise UserError(f"{out} has no {PLAN}: no task of a sharded data_prep run has started there")
    key, splits, shards = plan["key"], plan["splits"], plan["shards"]
    tasks = {p.stem: _read(p) for p in sorted((out / "tasks").glob("task-*.json"))}
    if not tasks:
        raise UserError(f"no task has finished in {out} (none is recorded in {out / 'tasks'})")
    claims: dict[int, list[str]] = {}
    for name, task in tasks.items():
        if task is None:
            raise UserError(f"{out / 'tasks' / (name + '.json')} cannot be read; rerun that task")
        if task["key"] != key:
            raise UserError(f"{name} prepared other inputs or options than {out / PLAN} names (the last task "
                            f"started); rerun {name} with the same command as the others")
        for position in task["positions"]:
            claims.setdefault(position, []).append(name)
    for position, names in sorted(claims.items()):
        if len(names) > 1:
            raise UserError(f"input shard {shards[position]['name']} was prepared by {len(names)} tasks: "
                            f"{', '.join(names)}; tasks of two splits of the work overlap. Remove the records "
                            f"of the split you did not mean under {out / 'tasks'} (and rerun a task if shards "
                            "are left undone)")
    counts = sorted({task["count"] for task in tasks.values()})
    missing = {}
    for position in range(len(shards)):
        if position not in claims:
            owners = [task_name(position % c, c) for c in counts]
            missing.setdefault(owners[0], []).append(shards[position]["name"])
    if missing:
        raise UserError("unfinished: " + "; ".join(
            f"{name} (input shards {', '.join(names[:5])}{' ...' if len(names) > 5 else ''})"
            for name, names in missing.items()) + ". Rerun each with its --shard-index/--num-shards; its "
            "finished shards are kept")
    records = []
    for position, shard in enumerate(shards):
        record = _read(out / "shards" / f"{_tag(position)}.json")
        if record is None or record["key"] != key:  # done by any task, with these inputs and options
            raise UserError(f"input shard {shard['name']} has no record of {claims[position][0]} with these "
                            f"inputs and options under {out / 'shards'}; rerun {claims[position][0]}")
        records.append(record)
    output = plan.get("output", "shar")
    if output == "nemo":
        planned = {f"manifest_{shard['name']}.json" for shard in shards} | {TARS}
        stray = sorted(str(p) for p in (out / "nemo").glob("*/*") if p.parent.name not in splits
                       or p.name not in planned)
    else:
        planned = {_tag(p) for p in range(len(shards))}
        stray = sorted(str(p) for p in (out / "shar").glob("*/*") if p.parent.name not in splits
                       or (p.name.split(".") + [""])[1] not in planned)
    if stray:
        raise UserError(f"{len(stray)} files under {out / output} belong to no shard of this run (e.g. "
                        f"{stray[0]}): left by a run with other inputs or options; prepare into a fresh --out")
    _drop_duplicates(out, output, records)
    if output == "nemo":
        for split in splits:
            folder = out / "nemo" / split
            tars = {shard["name"]: str(Path(shard["paths"][1]).resolve()) for shard in shards
                    if (folder / f"manifest_{shard['name']}.json").exists()}
            if tars:
                _write_json(folder / TARS, tars)
    report = Report(max_duration_s=records[0]["report"]["max_duration_s"])
    run = run_name(splits)
    with open(out / f".rejected_{run}.jsonl.tmp", "w") as rejected:
        for position, record in enumerate(records):
            shard_report = Report.from_state(record["report"])
            if shard_report.kept + shard_report.rejected != shard_report.read:
                raise UserError(f"the record of input shard {shards[position]['name']} does not add up; rerun "
                                f"{record['task']}")
            report += shard_report
            with open(out / "shards" / f"{_tag(position)}.rejected.jsonl") as f:
                shutil.copyfileobj(f, rejected)
    (out / f".rejected_{run}.jsonl.tmp").replace(out / f"rejected_{run}.jsonl")
    assert report.kept + report.rejected == report.read
    report.write(out, run)
    print(f"merged {len(records)} input shards of {len(tasks)} task(s): read {report.read}, kept {report.kept} "
          f"({report.kept_s / 3600:.3f} h: {dict(report.per_split)}), rejected {report.rejected}"
          + (f": {dict(report.reasons)}" if report.reasons else "") + f" -> {out / output}")
    print(f"transcript style: {report.style.describe()}")
    if report.kept == 0:
        raise UserError(f"nothing valid remains of {report.read} items; see {out / f'rejected_{run}.jsonl'} for why")
    return report


def _drop_duplicates(out: Path, output: str, records: list[dict]) -> None:
    """An id kept by two shards stays in the first (plan order) and is rejected as ``duplicate_id`` in the others:
    what one run over all shards keeps. Found by 64-bit hashes, confirmed on the ids themselves."""
    hashes = [np.load(out / "shards" / f"{_tag(p)}.ids.npy") for p in range(len(records))]
    joined = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    values, counts = np.unique(joined, return_counts=True)
    repeated = values[counts > 1]
    if not len(repeated):
        return
    seen: dict[str, int] = {}
    for position, shard_hashes in enumerate(hashes):
        repeated_here = set(shard_hashes[np.isin(shard_hashes, repeated)].tolist())
        if not repeated_here:
            continue
        drop = {}
        name = records[position]["shard"]["name"]
        for split in records[position]["report"]["per_split"]:
            for cut_id, duration, text in _kept(out, output, split, position, name):
                if id_hash(cut_id) in repeated_here:
                    if cut_id in seen:
                        drop[cut_id] = (split, duration, text, records[seen[cut_id]]["shard"]["name"])
                    else:
                        seen[cut_id] = position
        if drop:
            records[position] = _rewrite_without(out, output, position, records[position], drop)


def _rewrite_without(out: Path, output: str, position: int, record: dict, drop: dict) -> dict:
    """Rewrite a shard's outputs without the ``drop`` cuts (Shar audio bytes are copied, not re-encoded) and its
    record, ids and rejections with them rejected as ``duplicate_id``; returns the new record."""
    tag = _tag(position)
    tmp = out / "shards" / f".tmp-merge-{tag}"
    shutil.rmtree(tmp, ignore_errors=True)
    report = Report.from_state(record["report"])
    notes = record.get("notes", {})
    for split in sorted({split for split, _, _, _ in drop.values()}):
        if output == "nemo":
            _rewrite_manifest(out / "nemo" / split / f"manifest_{record['shard']['name']}.json", drop, tmp)
        else:
            _rewrite_shar(out / "shar" / split, tag, drop, tmp / split)
    with open(out / "shards" / f"{tag}.rejected.jsonl", "a") as rejected:
        for cut_id, (split, duration, text, first) in drop.items():
            report.unkeep(split, duration, text, notes.pop(cut_id, []), "duplicate_id")
            rejected.write(rejection_line(Rejected(cut_id, "duplicate_id", f"input shard {record['shard']['name']}: "
                                                   f"id {cut_id} was already kept (input shard {first})")))
    tmp.mkdir(parents=True, exist_ok=True)
    hashes = np.load(out / "shards" / f"{tag}.ids.npy")
    gone = np.asarray([id_hash(i) for i in drop], dtype=np.uint64)
    np.save(tmp / "ids.npy", hashes[~np.isin(hashes, gone)])
    (tmp / "ids.npy").replace(out / "shards" / f"{tag}.ids.npy")
    record = {**record, "report": report.state(), "notes": notes,
              "duplicates_removed_by_merge": sorted(drop) + record.get("duplicates_removed_by_merge", [])}
    _write_json(out / "shards" / f"{tag}.json", record)
    shutil.rmtree(tmp, ignore_errors=True)
    return record


def _rewrite_manifest(path: Path, drop: dict, tmp: Path) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    kept = [line for line in open(path, encoding="utf-8") if json.loads(line)["cut_id"] not in drop]
    if kept:
        (tmp / path.name).write_text("".join(kept), encoding="utf-8")
        (tmp / path.name).replace(path)
    else:
        path.unlink()


def _rewrite_shar(folder: Path, tag: str, drop: dict, tmp: Path) -> None:
    from lhotse import CutSet

    fields = {"cuts": [str(folder / f"cuts.{tag}.jsonl.gz")], "recording": [str(folder / f"recording.{tag}.tar")]}
    writer = SharShardWriter(tmp)
    try:
        for cut in CutSet.from_shar(fields=fields):
            if cut.id not in drop:
                data = cut.recording.sources[0].source  # the shard's own bytes: copied, not re-encoded
                writer.write(cut, None, (data, _audio_format(data) or "flac", cut.recording.num_samples))
    finally:
        writer.close()
    for field in ("recording", "cuts"):
        target = Path(fields[field][0])
        if writer.count:
            (tmp / target.name.replace(f".{tag}", "")).replace(target)
        else:
            target.unlink()
