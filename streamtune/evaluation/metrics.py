"""Error rates: the headline WER (Open ASR leaderboard normalisation), PnC WER and CER.

* ``wer``: both sides through the Whisper English normaliser (``whisper_normalizer``
  package, the port of OpenAI's ``EnglishTextNormalizer`` that the Open ASR
  leaderboard scores with): lower case, no punctuation, spelled-out numbers
  as digits, British -> American spelling, contractions expanded.
* ``wer_pnc``: case- and punctuation-sensitive: the texts are only Unicode-NFC'd
  and split on whitespace, so ``Hello,`` vs ``hello`` is one substitution.
* ``cer``: characters (spaces included) of the Whisper-normalised texts.

Alignment is kaldialign's compiled minimum-edit alignment (declared dependency), with the matched pairs
(:func:`align`) for callers that need to know which word matched which.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from streamtune.data.text import normalise_text


@lru_cache(maxsize=1)
def _whisper_normaliser():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalise(text: str) -> str:
    """The headline form: the Whisper English normaliser, then single spaces."""
    return " ".join(_whisper_normaliser()(normalise_text(text)).split())


def normalise_pnc(text: str) -> str:
    """Case- and punctuation-sensitive form: NFC and single spaces only."""
    return normalise_text(text)


@dataclass
class ErrorCounts:
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    ref_words: int = 0  # reference length (words, or characters for CER)

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        return self.errors / self.ref_words if self.ref_words else float(self.errors > 0)

    def __iadd__(self, other: ErrorCounts) -> ErrorCounts:
        self.substitutions += other.substitutions
        self.deletions += other.deletions
        self.insertions += other.insertions
        self.ref_words += other.ref_words
        return self


def _as_ids(ref: Sequence, hyp: Sequence) -> tuple[list[int], list[int]]:
    """Both sides as small ints, so that no symbol can collide with the aligner's epsilon (-1)."""
    vocab: dict = {}
    return [vocab.setdefault(x, len(vocab)) for x in ref], [vocab.setdefault(x, len(vocab)) for x in hyp]


def align(ref: Sequence, hyp: Sequence) -> list[tuple[str, int | None, int | None]]:
    """Minimum-edit alignment as ``(op, ref_index, hyp_index)`` with op in ``= S D I`` (kaldialign, compiled)."""
    import kaldialign

    if not ref or not hyp:  # kaldialign wants something to align; the answer is plain
        return [("D", i, None) for i in range(len(ref))] + [("I", None, j) for j in range(len(hyp))]
    ref_ids, hyp_ids = _as_ids(ref, hyp)
    ops, i, j = [], 0, 0
    for r, h in kaldialign.align(ref_ids, hyp_ids, -1):
        if r == -1:
            ops.append(("I", None, j))
            j += 1
        elif h == -1:
            ops.append(("D", i, None))
            i += 1
        else:
            ops.append(("=" if r == h else "S", i, j))
            i, j = i + 1, j + 1
    return ops


def edit_counts(ref: Sequence, hyp: Sequence) -> ErrorCounts:
    """Substitutions, deletions and insertions of a minimum-edit alignment (kaldialign, compiled)."""
    import kaldialign

    if not ref or not hyp:
        return ErrorCounts(deletions=len(ref), insertions=len(hyp), ref_words=len(ref))
    ref_ids, hyp_ids = _as_ids(ref, hyp)
    d = kaldialign.edit_distance(ref_ids, hyp_ids)
    return ErrorCounts(substitutions=d["sub"], deletions=d["del"], insertions=d["ins"], ref_words=len(ref))


def word_errors(ref: str, hyp: str) -> ErrorCounts:
    """Headline word errors (Whisper-normalised texts)."""
    return edit_counts(normalise(ref).split(), normalise(hyp).split())


@dataclass
class Scores:
    """Errors of one utterance (or a sum of utterances) under the three measures."""

    words: ErrorCounts
    pnc: ErrorCounts
    chars: ErrorCounts

    def __iadd__(self, other: Scores) -> Scores:
        self.words += other.words
        self.pnc += other.pnc
        self.chars += other.chars
        return self

    @classmethod
    def zero(cls) -> Scores:
        return cls(ErrorCounts(), ErrorCounts(), ErrorCounts())


def score(ref: str, hyp: str) -> Scores:
    ref_n, hyp_n = normalise(ref), normalise(hyp)
    return Scores(
        words=edit_counts(ref_n.split(), hyp_n.split()),
        pnc=edit_counts(normalise_pnc(ref).split(), normalise_pnc(hyp).split()),
        chars=edit_counts(ref_n, hyp_n),
    )


def corpus_scores(refs: list[str], hyps: list[str]) -> tuple[Scores, list[Scores]]:
    total = Scores.zero()
    per_utt = []
    for ref, hyp in zip(refs, hyps, strict=True):
        s = score(ref, hyp)
        per_utt.append(s)
        total += s
    return total, per_utt


def corpus_errors(refs: list[str], hyps: list[str]) -> tuple[ErrorCounts, list[ErrorCounts]]:
    """Headline word errors only (training-time validation uses this)."""
    total = ErrorCounts()
    per_utt = [word_errors(ref, hyp) for ref, hyp in zip(refs, hyps, strict=True)]
    for e in per_utt:
        total += e
    return total, per_utt
