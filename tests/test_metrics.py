from streamtune.evaluation.metrics import corpus_errors, normalise, word_errors


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


def test_headline_wer_uses_the_whisper_english_normaliser():
    # Open ASR leaderboard normalisation: spelling, numbers, contractions, titles, fillers.
    assert normalise("The colour is twenty-five percent, isn't it?") == normalise("the color is 25% is not it")
    assert word_errors("Mr. Smith met Doctor Jones.", "mister smith met doctor jones").errors == 0
    assert word_errors("uh I think so", "I think so").errors == 0


def test_pnc_wer_and_cer():
    from streamtune.evaluation.metrics import score

    s = score("Hello, world.", "hello world")
    assert s.words.errors == 0  # headline: case and punctuation ignored
    assert (s.pnc.errors, s.pnc.ref_words) == (2, 2)  # "Hello," vs "hello" and "world." vs "world"
    s = score("red lamp", "red lamb")
    assert (s.chars.errors, s.chars.ref_words) == (1, 8) and s.words.errors == 1


def test_alignment_ops_reconstruct_both_sides():
    import random

    from streamtune.evaluation.metrics import align, edit_counts

    rng = random.Random(0)
    for _ in range(200):
        ref = [rng.choice("abcd") for _ in range(rng.randint(0, 8))]
        hyp = [rng.choice("abcd") for _ in range(rng.randint(0, 8))]
        ops = align(ref, hyp)
        assert [ref[i] for op, i, _ in ops if op != "I"] == ref
        assert [hyp[j] for op, _, j in ops if op != "D"] == hyp
        assert all(ref[i] == hyp[j] for op, i, j in ops if op == "=")
        # The cost is the true edit distance (checked against a plain recursive definition on short inputs).
        assert edit_counts(ref, hyp).errors == _distance(tuple(ref), tuple(hyp))


def _distance(a, b, memo=None):
    memo = {} if memo is None else memo
    if not a or not b:
        return len(a) + len(b)
    if (a, b) not in memo:
        memo[a, b] = min(_distance(a[1:], b[1:], memo) + (a[0] != b[0]), _distance(a[1:], b, memo) + 1,
                         _distance(a, b[1:], memo) + 1)
    return memo[a, b]
