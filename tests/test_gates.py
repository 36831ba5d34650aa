"""Gates that compare two decoders' WER decide on the evidence: the paired bootstrap over utterances that
evaluate.py uses for regressions (streamtune.evaluation.gates.margin_verdict)."""

from __future__ import annotations

import numpy as np

from streamtune.evaluation.gates import margin_verdict, verdict_line

MARGIN = 2.0  # WER points, export.sherpa_max_wer_delta's default


def _small_set(seed: int = 0):
    """20 utterances of 2-5 words (~70 words: one word is ~1.4 points), a decoder's errors on them."""
    rng = np.random.default_rng(seed)
    words = rng.integers(2, 6, size=20)
    return words, rng.binomial(words, 0.1)


def test_two_more_words_wrong_on_a_small_set_is_inconclusive_not_a_failure():
    words, ours = _small_set()
    theirs = ours.copy()
    theirs[[3, 11]] += 1  # two words more, ~2.9 points on this set: over the margin, but not significantly
    v = margin_verdict(ours, theirs, words, MARGIN)
    assert v["delta_points"] > MARGIN and v["verdict"] == "inconclusive", v
    assert v["ci95_points"][0] <= MARGIN < v["ci95_points"][1]
    assert v["words_to_settle"] > v["words"], "more evidence than this set would settle it"
    assert "INCONCLUSIVE" in verdict_line("160 ms sherpa-onnx vs ours", v) and "words would settle it" in \
        verdict_line("x", v)


def test_a_broken_decoder_fails_and_a_clean_one_passes():
    words, ours = _small_set(1)
    broken = np.minimum(words, ours + 2)  # two more errors in (nearly) every utterance
    v = margin_verdict(ours, broken, words, MARGIN)
    assert v["verdict"] == "fail" and v["ci95_points"][0] > MARGIN, v
    v = margin_verdict(ours, ours, words, MARGIN)
    assert v["verdict"] == "pass" and v["delta_points"] == 0 and v["words_to_settle"] is None
    better = np.maximum(0, ours - 1)
    assert margin_verdict(ours, better, words, MARGIN)["verdict"] == "pass", "better than ours is no failure"


def test_the_same_difference_on_more_evidence_is_decided():
    """What was inconclusive on 20 utterances is decided on 400 of the same kind: the interval narrows."""
    words, ours = _small_set(2)
    theirs = ours.copy()
    theirs[[1, 9]] += 1
    small = margin_verdict(ours, theirs, words, MARGIN)
    big = margin_verdict(np.tile(ours, 20), np.tile(theirs, 20), np.tile(words, 20), MARGIN)
    assert small["verdict"] == "inconclusive" and big["verdict"] in ("fail", "pass")
    assert big["ci95_points"][1] - big["ci95_points"][0] < small["ci95_points"][1] - small["ci95_points"][0]
