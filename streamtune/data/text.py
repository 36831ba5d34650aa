"""Text normalisation shared by data preparation and scoring."""

from __future__ import annotations

import re
import unicodedata

_PUNCT = re.compile(r"[^\w\s']", re.UNICODE)


def normalise_text(text: str, lowercase: bool = False, strip_punctuation: bool = False) -> str:
    """Unicode NFC and single spaces always; case and punctuation only when asked."""
    text = unicodedata.normalize("NFC", text)
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        text = _PUNCT.sub(" ", text)
    return " ".join(text.split())
