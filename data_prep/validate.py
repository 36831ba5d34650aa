"""Validation: every input item is either kept (as a cut) or rejected with a reason. Nothing vanishes.

A source yields :class:`Item` (a cut to check) or :class:`Rejected` (an input
that could not even become a cut: a malformed JSON line, a non-UTF-8 line).
:func:`write_validated` checks the cuts, writes ``cuts_<split>.jsonl.gz``,
``rejected.jsonl`` and ``report.json``, streaming, so memory stays flat
whatever the input length; ``kept + rejected == read`` always.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from streamtune.errors import UserError

TARGET_RATE = 16000
_PUNCT = re.compile(r"[^\w\s']", re.UNICODE)


@dataclass
class Rejected:
    """An input item that is not kept, with a short machine-readable reason and a readable detail."""

    item: str  # the id, or where it came from (file:line)
    reason: str
    detail: str


@dataclass
class Item:
    cut: object  # lhotse MonoCut
    origin: str  # file:line or path, for messages


@dataclass
class ValidationConfig:
    check_audio: bool = True
    min_duration_s: float = 0.1
    max_duration_s: float = 40.0
    # Declared vs decoded duration may differ by this much (container rounding).
    duration_tolerance_s: float = 0.05
    alphabet: set[str] | None = None  # characters the target tokenizer can spell
    lowercase: bool = False
    strip_punctuation: bool = False
    silence_peak: float = 1e-4  # peak |sample| below which audio counts as silent


def normalise_text(text: str, cfg: ValidationConfig) -> str:
    """NFC and whitespace always; case and punctuation only when asked (the target model predicts both)."""
    text = unicodedata.normalize("NFC", text)
    if cfg.lowercase:
        text = text.lower()
    if cfg.strip_punctuation:
        text = _PUNCT.sub(" ", text)
    return " ".join(text.split())


def tokenizer_alphabet(tokenizer_dir: str | Path) -> set[str]:
    """Every character a SentencePiece tokenizer has in some piece (space included)."""
    import sentencepiece as spm

    model = Path(tokenizer_dir) / "tokenizer.model"
    if not model.exists():
        raise UserError(f"tokenizer dir '{tokenizer_dir}' has no tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=str(model))
    chars = {" "}
    for i in range(sp.get_piece_size()):
        if not (sp.is_control(i) or sp.is_unknown(i)):
            chars.update(sp.id_to_piece(i).replace("\u2581", " "))
    return chars


def check_item(item: Item, cfg: ValidationConfig) -> tuple[object | None, Rejected | None, list[str]]:
    """Validate one cut: returns (kept cut, None, notes) or (None, rejection, [])."""
    cut = item.cut
    notes: list[str] = []

    def reject(reason: str, detail: str):
        return None, Rejected(cut.id, reason, f"{item.origin}: {detail}"), []

    text = normalise_text(" ".join(s.text or "" for s in cut.supervisions), cfg)
    if not text:
        return reject("empty_text", "the transcript is empty or whitespace; fix the transcript or drop the item")
    if cfg.alphabet is not None:
        outside = sorted({c for c in text if c not in cfg.alphabet})
        if outside:
            return reject("out_of_alphabet", f"characters {''.join(outside)!r} are not in the tokenizer's alphabet; "
                          "normalise the text (--lowercase / --strip-punctuation) or use another tokenizer")
    for sup in cut.supervisions:
        sup.text = text
    if not (cfg.min_duration_s <= cut.duration <= cfg.max_duration_s):
        return reject("duration_out_of_bounds",
                      f"duration {cut.duration:.3f} s is outside [{cfg.min_duration_s}, {cfg.max_duration_s}] s")
    if cfg.check_audio:
        rec = cut.recording
        source = rec.sources[0]
        if source.type == "file" and not Path(source.source).exists():
            return reject("missing_audio", f"audio file {source.source} does not exist")
        if len(rec.channel_ids) > 1:
            return reject("multichannel_audio", f"{len(rec.channel_ids)} channels at {rec.sampling_rate} Hz; "
                          "convert to mono before preparing (which channel to keep is yours to say)")
        if rec.num_samples == 0:
            return reject("empty_audio", "audio has no samples")
        if cut.start + cut.duration > rec.duration + cfg.duration_tolerance_s:
            return reject("duration_mismatch", f"declared {cut.start:.3f}+{cut.duration:.3f} s but the file holds "
                          f"{rec.duration:.3f} s (truncated file, or wrong duration/offset in the manifest)")
        try:
            samples = cut.load_audio()
        except Exception as err:  # decoders raise many kinds
            return reject("undecodable_audio", f"audio could not be decoded ({type(err).__name__}: {err})")
        if samples.size == 0:
            return reject("empty_audio", "audio has no samples")
        if not np.isfinite(samples).all():
            return reject("nonfinite_samples", "audio contains NaN or inf samples")
        if float(np.abs(samples).max()) < cfg.silence_peak:
            return reject("silent_audio", "audio is silent (all samples ~0)")
        real_s = samples.shape[-1] / cut.sampling_rate
        if abs(real_s - cut.duration) > cfg.duration_tolerance_s:
            return reject("duration_mismatch", f"declared {cut.duration:.3f} s but the audio holds {real_s:.3f} s")
        if rec.sampling_rate != TARGET_RATE:
            notes.append(f"resampled_{rec.sampling_rate}hz")
            cut = cut.resample(TARGET_RATE)  # lazy: applied when the audio is loaded
    return cut, None, notes


@dataclass
class Report:
    read: int = 0
    kept: int = 0
    rejected: int = 0
    kept_s: float = 0.0
    reasons: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    chars: Counter = field(default_factory=Counter)
    durations: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        hist, edges = np.histogram(self.durations, bins=10) if self.durations else ([], [])
        return {
            "read": self.read, "kept": self.kept, "rejected": self.rejected,
            "kept_hours": self.kept_s / 3600,
            "rejected_reasons": dict(self.reasons), "notes": dict(self.notes),
            "duration_histogram": {"counts": [int(c) for c in hist], "edges_s": [float(e) for e in edges]},
            "charset": "".join(sorted(self.chars)),
        }


def write_validated(items: Iterable[Item | Rejected], out_dir: str | Path, split: str, cfg: ValidationConfig) -> Report:
    """Validate ``items`` as they stream in and write the kept cuts, the rejections and the report."""
    from lhotse import CutSet

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = Report()
    seen: set[str] = set()
    cuts_path = out_dir / f"cuts_{split}.jsonl.gz"
    tmp_cuts = cuts_path.with_name(cuts_path.name + ".tmp.jsonl.gz")
    tmp_rejected = out_dir / "rejected.jsonl.tmp"
    with CutSet.open_writer(tmp_cuts) as writer, open(tmp_rejected, "w") as rejected:
        for item in _progress(items):
            report.read += 1
            if isinstance(item, Item):
                if item.cut.id in seen:
                    kept, rej, notes = None, Rejected(item.cut.id, "duplicate_id",
                                                      f"{item.origin}: id {item.cut.id} was already kept"), []
                else:
                    kept, rej, notes = check_item(item, cfg)
            else:
                kept, rej, notes = None, item, []
            if rej is not None:
                report.rejected += 1
                report.reasons[rej.reason] += 1
                rejected.write(json.dumps({"item": rej.item, "reason": rej.reason, "detail": rej.detail}) + "\n")
                continue
            seen.add(kept.id)
            writer.write(kept)
            report.kept += 1
            report.kept_s += kept.duration
            report.durations.append(round(kept.duration, 3))
            report.notes.update(notes)
            for sup in kept.supervisions:
                report.chars.update(sup.text)
    assert report.kept + report.rejected == report.read
    tmp_cuts.replace(cuts_path)
    tmp_rejected.replace(out_dir / "rejected.jsonl")
    payload = report.as_dict()
    (out_dir / "report.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out_dir / "report.md").write_text(_report_md(payload, split))
    print(f"read {report.read}, kept {report.kept} ({report.kept_s / 3600:.3f} h), rejected {report.rejected}"
          + (f": {dict(report.reasons)}" if report.reasons else "") + f" -> {cuts_path}")
    if report.kept == 0:
        raise UserError(f"nothing valid remains of {report.read} items; see {out_dir / 'rejected.jsonl'} for why")
    return report


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
    return "\n".join(lines)


def _progress(items: Iterable) -> Iterator:
    from tqdm import tqdm

    return iter(tqdm(items, desc="validating", unit="item", mininterval=5, disable=None))

