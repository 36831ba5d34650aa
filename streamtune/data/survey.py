"""What training will read, surveyed from the cut metadata before it starts (no audio is read).

NeMo's Lhotse loader drops cuts outside ``[data.min_duration_s, data.max_duration_s]`` without a word and
never truncates one. The survey applies the same rule to every training input, so that each skipped cut is
counted and named (``skipped.jsonl`` in the run dir) instead; transcripts that are empty are refused unless
the recipe allows them (``data.allow_empty_text``). The durations it sees give the duration-bucket bins of
equal size (the same number of cuts in each bucket) that the bucketing sampler then uses.
"""

from __future__ import annotations

import json
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


def input_kind(path: str) -> tuple[str, str]:
    """``("shar" | "cuts", path)`` of one training input; a clear error when it does not exist."""
    p = Path(path)
    if p.is_dir():
        return "shar", str(p)
    if p.is_file():
        return "cuts", str(p)
    raise UserError(f"data path '{path}' does not exist; prepare it with `python -m data_prep ...` "
                    "(a cuts_<split>.jsonl.gz file or a Shar dir)")


def _cut_files(path: Path) -> list[Path]:
    """The cut metadata of a cuts file or a Shar dir (its ``cuts.*.jsonl*`` shards; the audio is not opened)."""
    if path.is_dir():
        files = sorted(path.glob("cuts.*.jsonl*"))
        if not files:
            raise UserError(f"data path '{path}' is a directory without Lhotse Shar cuts (cuts.000000.jsonl.gz ...)")
        return files
    return [path]


def weighted_inputs(spec) -> list[tuple[str, str, float]]:
    """``data.train`` as (kind, path, weight) per input: a path (weight 1) or a list ``[[path, weight], ...]``."""
    if isinstance(spec, str):
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


def _inputs(spec) -> list[tuple[Path, float]]:
    return [(Path(path), weight) for _, path, weight in weighted_inputs(spec)]


@lru_cache(maxsize=8)
def _survey(spec_json: str, min_s: float, max_s: float, allow_empty_text: bool) -> Survey:
    from lhotse import CutSet

    out = Survey()
    durations = []
    for path, weight in _inputs(json.loads(spec_json)):
        style = TextStyle()
        out.styles.append((style, weight))
        for cuts_file in _cut_files(path):
            for cut in CutSet.from_jsonl_lazy(cuts_file):
                check_safe(cut, f"data.train {path}")
                out.cuts += 1
                duration = float(cut.duration)
                if duration < min_s:
                    out.skipped.setdefault("shorter_than_min_duration", []).append((str(path), cut.id, duration))
                    continue
                if duration > max_s:
                    out.skipped.setdefault("longer_than_max_duration", []).append((str(path), cut.id, duration))
                    continue
                text = " ".join((s.text or "").strip() for s in cut.supervisions).strip()
                if not allow_empty_text and not text:
                    out.empty_text.append((str(path), cut.id))
                style.add(text)
                durations.append(duration)
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
    out = _survey(json.dumps(spec), min_s, max_s, bool(data_cfg.allow_empty_text))
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
