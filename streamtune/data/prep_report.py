"""What a data_prep run reports: counts (``kept + rejected == read``), reasons, hours, a fixed-bin duration
histogram and the character set, as ``report_<run>.json``, ``report_<run>.md`` and ``durations_<run>.png``
(``<run>``: the split, or the splits of a ratio split joined with ``+``)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamtune.data.style import TextStyle


@dataclass
class Report:
    """Counts and a fixed-bin duration histogram: memory does not grow with the number of items."""

    max_duration_s: float = 40.0
    read: int = 0
    kept: int = 0
    rejected: int = 0
    kept_s: float = 0.0
    reasons: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    chars: Counter = field(default_factory=Counter)
    per_split: Counter = field(default_factory=Counter)
    hist: np.ndarray | None = None
    style: TextStyle = field(default_factory=TextStyle)  # of the kept transcripts

    def __post_init__(self):
        self.edges = np.linspace(0.0, max(self.max_duration_s, 1.0), 21)
        self.hist = np.zeros(20, dtype=np.int64)

    def _bin(self, seconds: float) -> int:
        return min(19, max(0, int(np.searchsorted(self.edges, seconds, side="right")) - 1))

    def add_duration(self, seconds: float) -> None:
        self.hist[self._bin(seconds)] += 1

    def keep(self, split: str, seconds: float, text: str, notes=()) -> None:
        """Count one kept item."""
        self.per_split[split] += 1
        self.kept += 1
        self.kept_s += seconds
        self.add_duration(seconds)
        self.notes.update(notes)
        self.chars.update(text)
        self.style.add(text)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        self.reasons[reason] += 1

    def unkeep(self, split: str, seconds: float, text: str, notes, reason: str) -> None:
        """A kept item turns out to be rejected after all (an id kept by an earlier shard): undo :meth:`keep`."""
        self.per_split[split] -= 1
        self.kept -= 1
        self.kept_s -= seconds
        self.hist[self._bin(seconds)] -= 1
        self.notes.subtract(notes)
        self.chars.subtract(text)
        self.style.remove(text)
        self.reject(reason)
        for counter in (self.per_split, self.notes, self.chars):
            for key in [k for k, v in counter.items() if v <= 0]:
                del counter[key]

    def state(self) -> dict:
        """Everything the report counts, exactly (:meth:`from_state` and ``+=`` rebuild and add reports)."""
        return {"max_duration_s": self.max_duration_s, "read": self.read, "kept": self.kept,
                "rejected": self.rejected, "kept_s": self.kept_s, "reasons": dict(self.reasons),
                "notes": dict(self.notes), "chars": dict(self.chars), "per_split": dict(self.per_split),
                "hist": self.hist.tolist(), "style": self.style.counts()}

    @classmethod
    def from_state(cls, state: dict) -> Report:
        report = cls(max_duration_s=state["max_duration_s"])
        report += state
        return report

    def __iadd__(self, other: Report | dict) -> Report:
        state = other.state() if isinstance(other, Report) else other
        self.read += state["read"]
        self.kept += state["kept"]
        self.rejected += state["rejected"]
        self.kept_s += state["kept_s"]
        for name in ("reasons", "notes", "chars", "per_split"):
            getattr(self, name).update(state[name])
        self.hist += np.asarray(state["hist"], dtype=np.int64)
        self.style += TextStyle(**state["style"])
        return self

    def as_dict(self) -> dict:
        return {
            "read": self.read, "kept": self.kept, "rejected": self.rejected,
            "kept_hours": self.kept_s / 3600, "kept_per_split": dict(self.per_split),
            "rejected_reasons": dict(self.reasons), "notes": dict(self.notes),
            "duration_histogram": {"counts": self.hist.tolist(), "edges_s": [round(e, 3) for e in self.edges]},
            "charset": "".join(sorted(self.chars)),
            "style": self.style.as_dict(),
        }

    def write(self, out_dir: Path, run: str) -> dict:
        """``report_<run>.json``, ``report_<run>.md`` and ``durations_<run>.png``."""
        payload = self.as_dict()
        (out_dir / f"report_{run}.json").write_text(json.dumps(payload, indent=2) + "\n")
        (out_dir / f"report_{run}.md").write_text(_report_md(payload, run))
        _histogram_png(payload["duration_histogram"], out_dir / f"durations_{run}.png")
        return payload


def _histogram_png(hist: dict, path: Path, width: int = 640, height: int = 320) -> None:
    """A bar chart of kept durations, drawn with Pillow (no plotting stack needed)."""
    from PIL import Image, ImageDraw

    counts, edges = hist["counts"], hist["edges_s"]
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, bottom, top = 50, height - 40, 20
    peak = max(counts) or 1
    bar_w = (width - left - 20) / len(counts)
    for i, c in enumerate(counts):
        x0 = left + i * bar_w
        y0 = bottom - (bottom - top) * c / peak
        draw.rectangle([x0 + 1, y0, x0 + bar_w - 1, bottom], fill=(70, 110, 180))
    draw.line([left, bottom, width - 20, bottom], fill="black")
    draw.line([left, top, left, bottom], fill="black")
    for i in range(0, len(edges), 5):
        draw.text((left + i * bar_w - 8, bottom + 6), f"{edges[i]:g}s", fill="black")
    draw.text((4, top - 4), str(peak), fill="black")
    draw.text((width // 2 - 60, height - 18), "utterance duration", fill="black")
    image.save(path)


def _report_md(payload: dict, split: str) -> str:
    lines = [f"# Data report ({split})", "",
             f"Read {payload['read']}, kept {payload['kept']} ({payload['kept_hours']:.3f} h), "
             f"rejected {payload['rejected']}.", ""]
    if payload["rejected_reasons"]:
        lines += ["| rejected because | items |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(payload["rejected_reasons"].items())] + [""]
    if payload["notes"]:
        lines += ["Notes: " + ", ".join(f"{k} x{v}" for k, v in payload["notes"].items()), ""]
    lines += [f"Characters: `{payload['charset']}`", ""]
    style = payload["style"]
    lines += [f"Transcript style: {100 * style['with_capitals']:.0f}% of utterances with capitals, "
              f"{100 * style['with_punctuation']:.0f}% with punctuation, {100 * style['with_digits']:.0f}% with "
              f"digits, {100 * style['with_spelled_numbers']:.0f}% with spelled numbers (train.py compares this "
              "with what the start point writes).", ""]
    return "\n".join(lines)
