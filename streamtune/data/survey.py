"""What training will read, surveyed from the cut metadata before it starts (no audio is read); an input larger
than ``data.survey_max_cuts`` is surveyed from a random sample of its shards.

NeMo's Lhotse loader drops cuts outside ``[data.min_duration_s, data.max_duration_s]`` without a word and
never truncates one. The survey applies the same rule to every training input, so that each skipped cut is
counted and named (``skipped.jsonl`` in the run dir) instead; transcripts that are empty are refused unless
the recipe allows them (``data.allow_empty_text``). The durations it sees give the duration-bucket bins of
equal size (the same number of cuts in each bucket) that the bucketing sampler then uses.
"""

from __future__ import annotations

import glob
import json
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from streamtune.data.reading import check_safe
from streamtune.data.style import TextStyle
from streamtune.errors import UserError

# Ids named in a message; the run dir's skipped.jsonl lists them all.
SHOWN_IDS = 5


@dataclass
class Survey:
    cuts: int = 0
    kept_s: float = 0.0
    # reason -> [(input path, cut id, duration_s)]
    skipped: dict[str, list[tuple[str, str, float]]] = field(default_factory=dict)
    empty_text: list[tuple[str, str]] = field(default_factory=list)
    durations: np.ndarray | None = None  # kept cuts' durations (s)
    # The transcript style of each input with its mix weight (streamtune.data.style).
    styles: list[tuple[TextStyle, float]] = field(default_factory=list)
    # Inputs surveyed from a sample (data.survey_max_cuts): (input, metadata files opened, files in all).
    sampled: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def skipped_count(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def bucket_bins(self, num_buckets: int, batch_duration_s: float) -> list[float] | None:
        """Bin edges for ``num_buckets`` buckets holding equal numbers of cuts; None when bucketing cannot help
        (fewer than two buckets of at least two full batches each)."""
        if self.durations is None or len(self.durations) == 0 or num_buckets < 2:
            return None
        buckets = min(num_buckets, int(self.kept_s // (2 * batch_duration_s)))
        if buckets < 2:
            return None
        edges = np.quantile(self.durations, np.linspace(0, 1, buckets + 1)[1:-1])
        edges = np.unique(np.round(edges, 3))  # equal edges (many equal durations) would make empty buckets
        return edges.tolist() if len(edges) else None

    def summary(self, where: str, min_s: float, max_s: float) -> str:
        kept = self.cuts - self.skipped_count
        line = f"{where}: {kept} of {self.cuts} cuts ({self.kept_s / 3600:.2f} h) train"
        if self.sampled:
            line += " (surveyed from a sample, data.survey_max_cuts: " + ", ".join(
                f"{label}: {opened} of {total} shards" for label, opened, total in self.sampled) + \
                "; the counts below are the sample's)"
        if self.skipped_count:
            parts = [f"{len(v)} {reason.replace('_', ' ')} (e.g. {', '.join(i for _, i, _ in v[:SHOWN_IDS])})"
                     for reason, v in self.skipped.items()]
            line += f"; skipped, outside data.min_duration_s={min_s:g} .. data.max_duration_s={max_s:g}: " + \
                "; ".join(parts) + " (never truncated; listed in the run dir's skipped.jsonl)"
        return line

    def write_skipped(self, path: Path) -> None:
        with open(path, "w") as f:
            for reason, items in self.skipped.items():
                for source, cut_id, duration in items:
                    f.write(json.dumps({"id": cut_id, "reason": reason, "duration_s": round(duration, 3),
                                        "input": source}) + "\n")


# NeMo's tarred reader finds a shard's number in these names (nemo_adapters.LazyNeMoTarredIterator).
NEMO_MANIFEST_NAME = re.compile(r"manifest[^/]*_(\d+)[^/]*\.json")
NEMO_TAR_NAME = re.compile(r"audio[^/]*_(\d+)[^/]*\.tar")
# Characters NeMo's path expansion rewrites (brackets become braces) or splits on: refused in tarred paths.
_UNSAFE_PATH_CHARS = set("()[]<>{},")


def input_kind(spec) -> tuple[str, object]:
    """``("shar" | "cuts", path)`` or ``("nemo_tarred", {"manifests", "tars", "text_field"})`` of one training
    input; a clear error when it does not exist or cannot be read safely."""
    if isinstance(spec, dict):
        return "nemo_tarred", _nemo_tarred(spec)
    if not isinstance(spec, str):
        raise UserError(f"data input {spec!r} is not a path or {{manifest: ..., tar: ...}}")
    p = Path(spec)
    if (p / "tars.json").is_file():  # `data_prep nemo-tarred --keep-tars`: validated manifests + the input tars
        tars = json.loads((p / "tars.json").read_text())
        manifests = sorted(p.glob("manifest_*.json"))
        shards = [NEMO_MANIFEST_NAME.search(m.name).group(1) for m in manifests]
        missing = [str(m) for m, shard in zip(manifests, shards) if shard not in tars]
        if missing:
            raise UserError(f"data path '{spec}': {missing[0]} names no tar in {p / 'tars.json'}; run "
                            "`python -m data_prep merge` on its --out again")
        return "nemo_tarred", {**_nemo_tarred({"manifest": [str(m) for m in manifests],
                                               "tar": [tars[shard] for shard in shards]}), "skip_missing": True}
    if p.is_dir():
        return "shar", str(p)
    if p.is_file():
        return "cuts", str(p)
    raise UserError(f"data path '{spec}' does not exist; prepare it with `python -m data_prep ...` "
                    "(a cuts_<split>.jsonl.gz file or a Shar dir)")


def _local_files(patterns, what: str, name: re.Pattern) -> list[str]:
    files = []
    for pattern in [patterns] if isinstance(patterns, str) else list(patterns):
        if not isinstance(pattern, str) or pattern.startswith("pipe:") or "://" in pattern:
            raise UserError(f"data.train {what} {pattern!r}: only local files are read (NeMo would run a `pipe:` "
                            "command or fetch a URL)")
        matched = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?") else [pattern]
        if not matched or not all(Path(m).is_file() for m in matched):
            raise UserError(f"data.train {what} '{pattern}' matches no file")
        files += matched
    for path in files:
        if _UNSAFE_PATH_CHARS & set(path) or not name.search(path):
            raise UserError(f"data.train {what} '{path}': NeMo's tarred reader needs names like "
                            f"{'manifest_12.json' if what == 'manifest' else 'audio_12.tar'} and no {{}}()[]<>, "
                            "in the path")
    return files


def _nemo_tarred(spec: dict) -> dict:
    unknown = set(spec) - {"manifest", "tar", "text_field"}
    if unknown or not {"manifest", "tar"} <= set(spec):
        raise UserError(f"a NeMo tarred input is {{manifest: <glob>, tar: <glob>[, text_field: text]}}; got keys "
                        f"{sorted(spec)}")
    manifests = _local_files(spec["manifest"], "manifest", NEMO_MANIFEST_NAME)
    tars = _local_files(spec["tar"], "tar", NEMO_TAR_NAME)
    ids = [{int(NEMO_MANIFEST_NAME.search(p).group(1)) for p in manifests},
           {int(NEMO_TAR_NAME.search(p).group(1)) for p in tars}]
    if ids[0] != ids[1] or len(ids[0]) != len(manifests) or len(ids[1]) != len(tars):
        raise UserError(f"data.train NeMo tarred input: the manifests are shards {sorted(ids[0])}, the tars "
                        f"{sorted(ids[1])}; each shard needs exactly one of each")
    return {"manifests": manifests, "tars": tars, "text_field": str(spec.get("text_field", "text"))}


def _metadata_files(kind: str, value) -> list[Path]:
    """The cut metadata of one input: a cuts file, a Shar dir's ``cuts.*.jsonl*`` or a tarred set's manifests
    (the audio is not opened)."""
    if kind == "nemo_tarred":
        return [Path(m) for m in value["manifests"]]
    path = Path(value)
    if kind == "shar":
        files = sorted(path.glob("cuts.*.jsonl*"))
        if not files:
            raise UserError(f"data path '{path}' is a directory without Lhotse Shar cuts (cuts.000000.jsonl.gz ...)")
        return files
    return [path]


def _records(kind: str, value, path: Path):
    """(id, duration, transcript) of every cut in one metadata file."""
    if kind != "nemo_tarred":
        from lhotse import CutSet

        for cut in CutSet.from_jsonl_lazy(path):
            check_safe(cut, f"data.train {path}")
            yield cut.id, float(cut.duration), " ".join((s.text or "").strip() for s in cut.supervisions).strip()
        return
    single = len(value["manifests"]) == 1
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                duration = float(entry["duration"])
                name = str(entry["audio_filepath"])
                if single and "shard_id" not in entry:  # NeMo groups a single manifest's entries by shard_id
                    raise KeyError("shard_id")
            except (ValueError, KeyError, TypeError) as err:
                raise UserError(f"{path}:{line_no}: not a NeMo tarred manifest line with audio_filepath and duration"
                                f"{' and shard_id (one manifest for all shards)' if single else ''} ({err!r})") \
                    from None
            text = entry.get(value["text_field"])
            yield name, duration, (text if isinstance(text, str) else "").strip()


def weighted_inputs(spec) -> list[tuple[str, object, float]]:
    """``data.train`` as (kind, path or tarred spec, weight) per input: a path or ``{manifest, tar}`` (weight 1), or
    a list ``[[path or {manifest, tar}, weight], ...]``."""
    if isinstance(spec, (str, dict)):
        spec = [[spec, 1.0]]
    inputs = []
    for entry in spec:
        try:
            path, weight = entry
            weight = float(weight)
        except (TypeError, ValueError):
            raise UserError(f"data entry {entry!r} is not [path, weight]") from None
        inputs.append((*input_kind(path), weight))
    return inputs


def _label(kind: str, value) -> str:
    return f"{value['manifests'][0]} (+{len(value['manifests']) - 1} shards)" if kind == "nemo_tarred" else str(value)


@lru_cache(maxsize=8)
def _survey(spec_json: str, min_s: float, max_s: float, allow_empty_text: bool, max_cuts: int) -> Survey:
    out = Survey()
    durations = []
    for kind, value, weight in weighted_inputs(json.loads(spec_json)):
        style = TextStyle()
        out.styles.append((style, weight))
        label = _label(kind, value)
        files = _metadata_files(kind, value)
        # Past max_cuts, a sample: whole metadata files (shards) in a fixed random order, until the budget is spent.
        order = random.Random(0).sample(files, len(files)) if len(files) > 1 else files
        budget, opened, cut_short = max_cuts, 0, False
        for path in order:
            if max_cuts and budget <= 0:
                break
            opened += 1
            for cut_id, duration, text in _records(kind, value, path):
                if max_cuts and budget <= 0:
                    cut_short = True
                    break
                budget -= 1
                out.cuts += 1
                if duration < min_s:
                    out.skipped.setdefault("shorter_than_min_duration", []).append((label, cut_id, duration))
                    continue
                if duration > max_s:
                    out.skipped.setdefault("longer_than_max_duration", []).append((label, cut_id, duration))
                    continue
                if not allow_empty_text and not text:
                    out.empty_text.append((label, cut_id))
                style.add(text)
                durations.append(duration)
        if opened < len(files) or cut_short:
            out.sampled.append((label, opened, len(files)))
    out.durations = np.asarray(durations, dtype=np.float64)
    out.kept_s = float(out.durations.sum())
    return out


def survey_training_data(data_cfg) -> Survey:
    """Survey ``data.train`` (a cuts file, a Shar dir or a weighted mix); UserError on empty transcripts."""
    from omegaconf import OmegaConf

    spec = OmegaConf.to_container(data_cfg.train) if OmegaConf.is_config(data_cfg.train) else data_cfg.train
    min_s, max_s = float(data_cfg.min_duration_s), float(data_cfg.max_duration_s)
    if not 0 < min_s <= max_s:
        raise UserError(f"data.min_duration_s ({min_s:g}) must be > 0 and <= data.max_duration_s ({max_s:g})")
    out = _survey(json.dumps(spec), min_s, max_s, bool(data_cfg.allow_empty_text),
                  int(data_cfg.get("survey_max_cuts", 0) or 0))
    if out.empty_text:
        ids = ", ".join(i for _, i in out.empty_text[:SHOWN_IDS])
        raise UserError(f"data.train has {len(out.empty_text)} cuts with an empty transcript (e.g. {ids} in "
                        f"{out.empty_text[0][0]}); the model would learn to say nothing for their audio. "
                        "Re-prepare the data with `python -m data_prep lhotse` (it rejects them), or set "
                        "data.allow_empty_text=true if silence is what they should teach")
    if out.cuts and out.cuts == out.skipped_count:
        raise UserError(f"every one of the {out.cuts} training cuts is outside data.min_duration_s={min_s:g} .. "
                        f"data.max_duration_s={max_s:g} s")
    return out
