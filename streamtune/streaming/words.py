"""Words from a hypothesis's tokens: grouped by SentencePiece's word marker, with their emission times and word
timings. Shared by scoring (``streamtune.evaluation.scoring``) and the live streams (``streamtune.streaming.live``).
"""

from __future__ import annotations


def word_groups(tokenizer, tokens: list[int]) -> list[tuple[str, list[int]]]:
    """SentencePiece tokens grouped into words: ``(word, indices of its tokens)``."""
    pieces = tokenizer.ids_to_tokens(tokens) if tokens else []
    groups: list[list[int]] = []
    for k, piece in enumerate(pieces):
        if piece.startswith("▁") or not groups:
            groups.append([])
        groups[-1].append(k)
    words = []
    for g in groups:
        text = tokenizer.ids_to_text([tokens[k] for k in g]).strip()
        if text:
            words.append((text, g))
    return words


def hypothesis_words(tokenizer, tokens: list[int], emit_s: list[float]) -> list[tuple[str, float, float]]:
    """Words with ``(word, first token's emission, last token's emission)``."""
    return [(text, emit_s[g[0]], emit_s[g[-1]]) for text, g in word_groups(tokenizer, tokens)]


def word_timings(tokenizer, tokens: list[int], frames: list[int], frame_s: float, emit_s: list[float] | None = None,
                 token_confidence: list[float] | None = None) -> list[dict]:
    """Per word (:func:`word_groups`): ``start`` / ``end`` in audio seconds (its first token's encoder frame to the
    end of its last token's frame), ``emitted`` (streaming: the audio time at the end of the chunk that emitted its
    last token), and ``confidence``, that of its least confident token (NeMo's token confidence, when the decoding
    computed it). Raises ValueError when the per-token lists do not match the tokens."""
    groups = word_groups(tokenizer, tokens)
    for name, values in (("token confidences", token_confidence), ("emission times", emit_s)):
        if values is not None and len(values) != len(tokens):
            raise ValueError(f"{len(values)} {name} for {len(tokens)} tokens")
    rows = []
    for text, g in groups:
        row = {"word": text}
        if len(frames) == len(tokens):
            row["start"] = round(frames[g[0]] * frame_s, 3)
            row["end"] = round((frames[g[-1]] + 1) * frame_s, 3)
        if emit_s:
            row["emitted"] = round(emit_s[g[-1]], 3)
        if token_confidence is not None:
            row["confidence"] = round(min(token_confidence[k] for k in g), 4)
        rows.append(row)
    return rows
