"""Word error rate: plain Levenshtein alignment over words, no dependencies."""

from __future__ import annotations

from dataclasses import dataclass

from streamtune.text import normalise_text


def normalise(text: str) -> str:
    """Case- and punctuation-insensitive form used for the headline WER."""
    return normalise_text(text, lowercase=True, strip_punctuation=True)


@dataclass
class ErrorCounts:
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    ref_words: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        return self.errors / self.ref_words if self.ref_words else float(self.errors > 0)

    def __iadd__(self, other: "ErrorCounts") -> "ErrorCounts":
        self.substitutions += other.substitutions
        self.deletions += other.deletions
        self.insertions += other.insertions
        self.ref_words += other.ref_words
        return self


def word_errors(ref: str, hyp: str) -> ErrorCounts:
    """Minimum-edit alignment of two word sequences (after :func:`normalise`)."""
    r, h = normalise(ref).split(), normalise(hyp).split()
    # dp[j] = (cost, subs, dels, ins) aligning r[:i] with h[:j]
    prev = [(j, 0, 0, j) for j in range(len(h) + 1)]
    for i in range(1, len(r) + 1):
        cur = [(i, 0, i, 0)]
        for j in range(1, len(h) + 1):
            if r[i - 1] == h[j - 1]:
                best = prev[j - 1]
            else:
                s, d, n = prev[j - 1], prev[j], cur[j - 1]
                best = min(
                    (s[0] + 1, s[1] + 1, s[2], s[3]),
                    (d[0] + 1, d[1], d[2] + 1, d[3]),
                    (n[0] + 1, n[1], n[2], n[3] + 1),
                )
            cur.append(best)
        prev = cur
    _, subs, dels, ins = prev[-1]
    return ErrorCounts(subs, dels, ins, len(r))


def corpus_errors(refs: list[str], hyps: list[str]) -> tuple[ErrorCounts, list[ErrorCounts]]:
    total = ErrorCounts()
    per_utt = []
    for ref, hyp in zip(refs, hyps, strict=True):
        e = word_errors(ref, hyp)
        per_utt.append(e)
        total += e
    return total, per_utt
