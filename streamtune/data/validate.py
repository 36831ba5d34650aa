"""Validation: every input item is either kept (as a cut) or rejected with a reason. Nothing vanishes.

A source yields :class:`Item` (a cut to check) or :class:`Rejected` (an input
that could not even become a cut: a malformed JSON line, a non-UTF-8 line).
:func:`write_validated` checks the cuts, writes ``cuts_<split>.jsonl.gz``,
``rejected_<split>.jsonl`` and ``report_<split>.json`` (one run's splits joined
with ``+`` when it splits by ratio), streaming, so memory stays flat whatever
the input length; ``kept + rejected == read`` always.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lhotse.utils import fastcopy

from streamtune.data.prep_report import Report
from streamtune.data.reading import unsafe_source
from streamtune.data.text import normalise_text
from streamtune.errors import UserError

TARGET_RATE = 16000


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


def check_item(item: Item, cfg: ValidationConfig):
    """Validate one cut: returns (kept cut, None, notes, the decoded samples of its span or None when audio is not
    checked) or (None, rejection, [], None)."""
    cut = item.cut
    notes: list[str] = []
    samples = None

    def reject(reason: str, detail: str):
        return None, Rejected(cut.id, reason, f"{item.origin}: {detail}"), [], None

    unsafe = unsafe_source(cut)
    if unsafe:  # before anything reads the audio: Lhotse would run or fetch what the data names
        return reject("unsafe_source", unsafe)
    raw = " ".join(s.text or "" for s in cut.supervisions)
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        return reject("invalid_text", "the transcript is not valid Unicode (a lone surrogate)")

    # Case and punctuation are kept unless asked: the target model predicts both.
    text = normalise_text(raw, cfg.lowercase, cfg.strip_punctuation)
    if not text:
        return reject("empty_text", "the transcript is empty or whitespace; fix the transcript or drop the item")
    if cfg.alphabet is not None:
        outside = sorted({c for c in text if c not in cfg.alphabet})
        if outside:
            return reject("out_of_alphabet", f"characters {''.join(outside)!r} are not in the tokenizer's alphabet; "
                          "normalise the text (--lowercase / --strip-punctuation) or use another tokenizer")
    for sup in cut.supervisions:
        sup.text = text
    source = cut.recording.sources[0] if getattr(cut, "has_recording", False) else None
    if cfg.check_audio and source is not None and source.type == "file" and not Path(source.source).exists():
        # Before the duration check: a missing file without a declared duration would read as 0 s.
        return reject("missing_audio", f"audio file {source.source} does not exist")
    if not (cfg.min_duration_s <= cut.duration <= cfg.max_duration_s):
        return reject("duration_out_of_bounds",
                      f"duration {cut.duration:.3f} s is outside [{cfg.min_duration_s}, {cfg.max_duration_s}] s")
    if cfg.check_audio:
        rec = cut.recording
        try:
            samples, rec = _decode(cut)
        except Exception as err:  # decoders raise many kinds
            return reject("undecodable_audio", f"audio could not be decoded ({type(err).__name__}: {err})")
        cut = fastcopy(cut, recording=rec)
        if len(rec.channel_ids) > 1:
            return reject("multichannel_audio", f"{len(rec.channel_ids)} channels at {rec.sampling_rate} Hz; "
                          "convert to mono before preparing (which channel to keep is yours to say)")
        if rec.num_samples == 0:
            return reject("empty_audio", "audio has no samples")
        if cut.start + cut.duration > rec.duration + cfg.duration_tolerance_s:
            return reject("duration_mismatch", f"declared {cut.start:.3f}+{cut.duration:.3f} s but the file holds "
                          f"{rec.duration:.3f} s (truncated file, or wrong duration/offset in the manifest)")
        if samples.size == 0:
            return reject("empty_audio", "the declared span of the audio has no samples")
        if not np.isfinite(samples).all():
            return reject("nonfinite_samples", "audio contains NaN or inf samples")
        if float(np.abs(samples).max()) < cfg.silence_peak:
            return reject("silent_audio", "audio is silent (all samples ~0)")
        real_s = samples.shape[-1] / rec.sampling_rate
        if abs(real_s - cut.duration) > cfg.duration_tolerance_s:
            return reject("duration_mismatch", f"declared {cut.duration:.3f} s but the audio holds {real_s:.3f} s")
        if real_s < cut.duration:  # within the tolerance: the cut ends where its audio does (Lhotse's own
            # tolerance when loading is smaller than ours)
            cut = fastcopy(cut, duration=real_s, supervisions=[
                fastcopy(s, duration=min(s.duration, real_s - s.start)) for s in cut.supervisions])
        if rec.sampling_rate != TARGET_RATE:
            notes.append(f"resampled_{rec.sampling_rate}hz")
            cut = cut.resample(TARGET_RATE)  # lazy: applied when the audio is loaded
    return cut, None, notes, samples


def _decode(cut):
    """(samples of the cut's span, the Recording as the file really is) with one read of the file.

    Plain files and in-memory audio (a tar member, a parquet cell, Shar audio) go straight through soundfile:
    the header and the samples come from the same open file, so nothing is read twice and the recording's rate,
    channels and length are the decoded truth, whatever a manifest declared. Files of formats this libsndfile
    lacks go through Lhotse's other backends.
    """
    import soundfile as sf
    from lhotse import Recording
    from lhotse.audio import AudioSource

    rec = cut.recording
    source = rec.sources[0]
    if source.type in ("file", "memory") and len(rec.sources) == 1 and not rec.transforms:
        try:
            with sf.SoundFile(source.source if source.type == "file" else io.BytesIO(source.source)) as f:
                rate, channels, frames = f.samplerate, f.channels, f.frames
                start = min(frames, round(cut.start * rate))
                f.seek(start)
                want = round(cut.duration * rate) if cut.duration > 0 else frames - start
                samples = f.read(min(want, frames - start), dtype="float32", always_2d=True).T
        except sf.LibsndfileError as err:
            if source.type == "memory":  # bytes: nothing else to try (the message names no object address)
                raise ValueError(f"libsndfile cannot read these bytes ({err.error_string})") from None
            # e.g. a format this libsndfile does not read: let Lhotse try its other backends
        else:
            real = Recording(id=rec.id, sources=[AudioSource(type=source.type, channels=list(range(channels)),
                                                             source=source.source)],
                             sampling_rate=rate, num_samples=frames, duration=frames / rate)
            return samples, real
    if source.type == "file" and len(rec.sources) == 1:
        # The header as Lhotse's backends read it (a manifest's declared values may be placeholders); the
        # recording's own transforms (e.g. a resampling) are kept.
        rec = fastcopy(Recording.from_file(source.source, recording_id=rec.id), transforms=rec.transforms)
    return fastcopy(cut, recording=rec).load_audio(), rec


class IdSet:
    """Seen cut ids in constant memory per id: 64-bit hashes in a numpy open-addressing table.

    A Python set of strings grows by ~100 bytes per id; this by 16. Two different ids collide with
    probability ~n^2 / 2^65 (3e-8 for a million ids).
    """

    def __init__(self, capacity: int = 1 << 16):
        self.table = np.zeros(capacity, dtype=np.uint64)
        self.size = 0

    @staticmethod
    def _hash(key: str) -> int:
        h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
        return h or 1  # 0 marks an empty slot

    def add(self, key: str) -> bool:
        """Insert ``key``; returns False when it was already there."""
        if 2 * (self.size + 1) > len(self.table):
            old = self.table[self.table != 0]
            self.table = np.zeros(len(self.table) * 2, dtype=np.uint64)
            for h in old.tolist():
                self._insert(h)
        inserted = self._insert(self._hash(key))
        self.size += inserted
        return inserted

    def _insert(self, h: int) -> bool:
        mask = len(self.table) - 1
        slot = h & mask
        while True:
            current = int(self.table[slot])
            if current == 0:
                self.table[slot] = h
                return True
            if current == h:
                return False
            slot = (slot + 1) & mask


def split_by_ratio(ratios: dict[str, float], key: str = "id", seed: int = 0):
    """A deterministic splitter: the same id (or speaker) always lands in the same split, whatever the order."""
    total = sum(ratios.values())
    bounds, acc = [], 0.0
    for name, r in ratios.items():
        acc += r / total
        bounds.append((acc, name))

    def splitter(cut) -> str:
        value = cut.id if key == "id" else (getattr(cut.supervisions[0], key, None) or cut.custom.get(key, "")
                                             if cut.supervisions else "")
        u = int.from_bytes(hashlib.blake2b(f"{seed}:{value}".encode(), digest_size=8).digest(), "little") / 2**64
        return next(name for bound, name in bounds if u < bound or bound == bounds[-1][0])

    return splitter


class Validation:
    """The loop every source goes through: check each item (``num_jobs`` threads, results in input order),
    reject a repeated id, count everything into :attr:`report` (``kept + rejected == read``).

    :meth:`run` yields ``(split, kept cut, samples)`` for a kept item (``samples``: the decoded span, with
    ``with_audio``) and the :class:`Rejected` for every other one.
    """

    def __init__(self, cfg: ValidationConfig, splits: list[str], splitter=None, keep_notes: bool = False):
        self.cfg, self.splits, self.splitter = cfg, splits, splitter
        self.report = Report(max_duration_s=cfg.max_duration_s)
        self.seen = IdSet()
        # With keep_notes (one shard at a time: bounded), kept id -> notes for the items that have any.
        self.keep_notes, self.notes = keep_notes, {}

    def _check(self, item):
        if not isinstance(item, Item):
            return item.item, None, item, [], None
        try:
            return (item.origin, *check_item(item, self.cfg))
        except Exception as err:  # a cut malformed in a way no check names: rejected, never a crash mid-file
            return item.origin, None, Rejected(getattr(item.cut, "id", item.origin), "malformed_item",
                                               f"{item.origin}: {type(err).__name__}: {str(err)[:200]}"), [], None

    def run(self, items: Iterable[Item | Rejected], num_jobs: int = 1, with_audio: bool = False) -> Iterator:
        from contextlib import ExitStack

        report = self.report
        with ExitStack() as stack:
            if num_jobs > 1:
                from concurrent.futures import ThreadPoolExecutor

                pool = stack.enter_context(ThreadPoolExecutor(num_jobs))
                results = _ordered_map(pool, self._check, items, window=8 * num_jobs)
            else:
                results = map(self._check, items)
            for origin, kept, rej, notes, samples in results:
                report.read += 1
                if kept is not None and not self.seen.add(kept.id):
                    kept, rej, notes = None, Rejected(kept.id, "duplicate_id",
                                                      f"{origin}: id {kept.id} was already kept"), []
                if rej is not None:
                    report.reject(rej.reason)
                    yield rej
                    continue
                name = self.splitter(kept) if self.splitter else self.splits[0]
                text = " ".join(sup.text for sup in kept.supervisions)
                report.keep(name, kept.duration, text, notes)
                if notes and self.keep_notes:
                    self.notes[kept.id] = list(notes)
                yield name, kept, samples if with_audio else None
        assert report.kept + report.rejected == report.read

    def summary(self, out_dir: Path) -> str:
        report = self.report
        return (f"read {report.read}, kept {report.kept} ({report.kept_s / 3600:.3f} h: {dict(report.per_split)}), "
                f"rejected {report.rejected}" + (f": {dict(report.reasons)}" if report.reasons else "") +
                f" -> {out_dir}")


def rejection_line(rej: Rejected) -> str:
    return json.dumps({"item": rej.item, "reason": rej.reason, "detail": rej.detail}) + "\n"


def write_validated(items: Iterable[Item | Rejected], out_dir: str | Path, split: str | list[str],
                    cfg: ValidationConfig, splitter=None, num_jobs: int = 1) -> Report:
    """Validate ``items`` as they stream in and write the kept cuts, the rejections and the report.

    ``split`` names the one cuts file written, or (with ``splitter``) the list of splits it may return.
    ``num_jobs`` threads decode and check audio in parallel (results stay in input order).
    """
    from contextlib import ExitStack

    from lhotse import CutSet

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = [split] if isinstance(split, str) else list(split)
    validation = Validation(cfg, splits, splitter)
    report = validation.report
    paths = {name: out_dir / f"cuts_{name}.jsonl.gz" for name in splits}
    tmp = {name: p.with_name(p.name + ".tmp.jsonl.gz") for name, p in paths.items()}
    run = run_name(splits)  # reports are per run, so that preparing another split never overwrites them
    tmp_rejected = out_dir / f"rejected_{run}.jsonl.tmp"

    with ExitStack() as stack:
        writers = {name: stack.enter_context(CutSet.open_writer(path)) for name, path in tmp.items()}
        rejected = stack.enter_context(open(tmp_rejected, "w"))
        for result in _progress(validation.run(items, num_jobs)):
            if isinstance(result, Rejected):
                rejected.write(rejection_line(result))
            else:
                writers[result[0]].write(result[1])
    for name in splits:
        tmp[name].replace(paths[name])
    tmp_rejected.replace(out_dir / f"rejected_{run}.jsonl")
    report.write(out_dir, run)
    print(validation.summary(out_dir))
    print(f"transcript style: {report.style.describe()}")
    if report.kept == 0:
        raise UserError(f"nothing valid remains of {report.read} items; see {out_dir / f'rejected_{run}.jsonl'} "
                        "for why")
    return report


def run_name(splits: list[str]) -> str:
    """What a run's reports are named after: its split, or its splits joined (``train+dev+test``)."""
    return "+".join(splits)


def _ordered_map(pool, fn, items, window: int):
    """Like ``pool.map`` but pulls at most ``window`` items ahead, so a huge input is never read into memory."""
    from collections import deque

    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _progress(items: Iterable) -> Iterator:
    from tqdm import tqdm

    return iter(tqdm(items, desc="validating", unit="item", mininterval=5, disable=None))

