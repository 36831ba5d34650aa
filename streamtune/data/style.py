"""Transcript style: capitals, punctuation, digits or spelled numbers.

The base model writes punctuation and capitals. Fine-tuning it on lower-case, unpunctuated transcripts teaches
it to stop, silently: the loss goes down and the WER on normalised text looks fine. ``data_prep`` reports the
style of what it prepared; ``train.py`` compares the training data's style with what the start point's
tokenizer can write (:func:`style_guard`) and stops before a run dir exists when they disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Sentence punctuation (apostrophes are part of words in lower-case data too).
PUNCTUATION = frozenset(".,?!;:")
_DIGIT = re.compile(r"\d")
_NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million "
    "billion".split())
# Below this share of training utterances with capitals (or punctuation), the data "does not write" them.
MIN_SHARE = 0.1


@dataclass
class TextStyle:
    """Counts of utterances with capitals, punctuation, digits and spelled numbers."""

    utterances: int = 0
    capitals: int = 0
    punctuation: int = 0
    digits: int = 0
    spelled_numbers: int = 0

    def add(self, text: str) -> None:
        self.utterances += 1
        self.capitals += any(c.isupper() for c in text)
        self.punctuation += any(c in PUNCTUATION for c in text)
        self.digits += bool(_DIGIT.search(text))
        self.spelled_numbers += any(w.strip(".,?!;:'\"").lower() in _NUMBER_WORDS for w in text.split())

    def remove(self, text: str) -> None:
        """Undo :meth:`add` of the same text."""
        self.utterances -= 1
        self.capitals -= any(c.isupper() for c in text)
        self.punctuation -= any(c in PUNCTUATION for c in text)
        self.digits -= bool(_DIGIT.search(text))
        self.spelled_numbers -= any(w.strip(".,?!;:'\"").lower() in _NUMBER_WORDS for w in text.split())

    def counts(self) -> dict:
        return {key: getattr(self, key) for key in ("utterances", "capitals", "punctuation", "digits",
                                                    "spelled_numbers")}

    def __iadd__(self, other: TextStyle) -> TextStyle:
        for key in ("utterances", "capitals", "punctuation", "digits", "spelled_numbers"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        return self

    def share(self, key: str) -> float:
        return getattr(self, key) / self.utterances if self.utterances else 0.0

    def as_dict(self) -> dict:
        """The report's ``style`` block: shares of utterances (0..1)."""
        return {"utterances": self.utterances, "with_capitals": round(self.share("capitals"), 4),
                "with_punctuation": round(self.share("punctuation"), 4), "with_digits": round(self.share("digits"), 4),
                "with_spelled_numbers": round(self.share("spelled_numbers"), 4)}

    def describe(self) -> str:
        return (f"{100 * self.share('capitals'):.0f}% of utterances with capitals, "
                f"{100 * self.share('punctuation'):.0f}% with punctuation, {100 * self.share('digits'):.0f}% with "
                f"digits, {100 * self.share('spelled_numbers'):.0f}% with spelled numbers")


def weighted_shares(styles: list[tuple[TextStyle, float]]) -> dict[str, float]:
    """Shares over a weighted mix (``data.train=[[path, weight], ...]``): what a batch holds on average."""
    total = sum(w for s, w in styles if s.utterances)
    keys = ("capitals", "punctuation", "digits", "spelled_numbers")
    if not total:
        return dict.fromkeys(keys, 0.0)
    return {k: sum(w * s.share(k) for s, w in styles if s.utterances) / total for k in keys}


@dataclass(frozen=True)
class TokenizerStyle:
    capitals: bool
    punctuation: bool
    digits: bool

    @classmethod
    def of(cls, pieces: list[str]) -> TokenizerStyle:
        text = "".join(p.replace("\u2581", "") for p in pieces if not (p.startswith("<") and p.endswith(">")))
        return cls(capitals=any(c.isupper() for c in text), punctuation=any(c in PUNCTUATION for c in text),
                   digits=bool(_DIGIT.search(text)))


def style_guard(data: dict[str, float], tokenizer: TokenizerStyle, start_point: str) -> tuple[str | None, list[str]]:
    """(error or None, warnings) for training data of style ``data`` (:func:`weighted_shares`) from a start point
    whose tokenizer writes ``tokenizer``."""
    lost = [what for what, can in (("capitals", tokenizer.capitals), ("punctuation", tokenizer.punctuation))
            if can and data[what] < MIN_SHARE]
    warnings = []
    if tokenizer.digits and data["digits"] < MIN_SHARE <= data["spelled_numbers"]:
        warnings.append(f"the start point can write digits but {100 * data['spelled_numbers']:.0f}% of data.train "
                        f"transcripts spell numbers out and {100 * data['digits']:.0f}% have digits: the model "
                        "will learn to spell them")
    if not lost:
        return None, warnings
    shares = ", ".join(f"{100 * data[w]:.1f}% with {w}" for w in lost)
    error = (f"the start point {start_point} writes {' and '.join(lost)}, but data.train does not ({shares}): "
             f"fine-tuning would teach it to stop writing them. If that is what you want, set "
             f"data.allow_style_change=true; to keep them, mix in data that has them, e.g. "
             f"data.train='[[yours,0.8],[pnc_cuts,0.2]]' (recipes/nemotron/replay_mix.yaml)")
    return error, warnings


def tokenizer_pieces(source: str) -> list[str]:
    """The pieces of a SentencePiece tokenizer: a ``tokenizer.model`` file, a tokenizer dir, or a ``.nemo``
    archive (read from the archive without restoring the model)."""
    import tarfile
    from pathlib import Path

    import sentencepiece as spm

    path = Path(source)
    if path.is_dir():
        path = path / "tokenizer.model"
    if path.suffix == ".nemo":
        with tarfile.open(path) as tar:
            member = next((m for m in tar.getmembers() if m.isfile() and m.name.endswith("tokenizer.model")), None)
            if member is None:
                return []
            proto = tar.extractfile(member).read()
        sp = spm.SentencePieceProcessor(model_proto=proto)
    elif path.is_file():
        sp = spm.SentencePieceProcessor(model_file=str(path))
    else:
        return []
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
