from streamtune.metrics import corpus_errors, normalise, word_errors


def test_word_errors_counts_each_kind():
    e = word_errors("the red lamp is on", "the lamp is off now")
    assert (e.substitutions, e.deletions, e.insertions, e.ref_words) == (1, 1, 1, 5)
    assert e.wer == 3 / 5


def test_normalisation_ignores_case_and_punctuation():
    assert normalise("Turn ON the Lamp, please!") == "turn on the lamp please"
    assert word_errors("Turn on the lamp.", "turn on the lamp").errors == 0


def test_corpus_wer_weights_by_words():
    total, per = corpus_errors(["a b c d", "e"], ["a b c d", "x"])
    assert total.wer == 1 / 5 and [p.errors for p in per] == [0, 1]
    assert word_errors("", "").wer == 0.0 and word_errors("", "extra").wer == 1.0
