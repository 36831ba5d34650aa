"""Decoding users expect: beam search and word boosting (NeMo's), word times and confidence in hyps.jsonl, NeMo
manifests, significance of deltas, training curves, evaluate.py without a recipe; sherpa-onnx hotwords and the
card's front matter in the exported bundle.

What the code guarantees is asserted exactly (beam of one = greedy, no word before its audio, times ordered and
inside the utterance, scores from the written hypotheses); what trained weights decide (where a word ends against
the reference) as a share with a tolerance that holds for any model the ten-word recipe trains.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TENWORDS, seeded, value_of


def _plain(word: str) -> str:
    from streamtune.data.text import normalise_text

    return normalise_text(word, lowercase=True, strip_punctuation=True)


@pytest.fixture(scope="module")
def tenwords(words_model, words_overrides):
    """The ten-word model and its test set (utterances, features)."""
    from streamtune.data.reading import load_utterances

    cuts = value_of(words_overrides, "data.test")
    return words_model, load_utterances(cuts), Path(cuts)


def _runner(model, decoding=None):
    from streamtune.streaming.runner import StreamingRunner

    return StreamingRunner(model, batch_size=4, decoding=decoding)


def test_beam_of_one_equals_greedy_token_for_token(tenwords):
    from streamtune.model.chunks import chunk_modes
    from streamtune.streaming.decoding import Decoding

    model, utts, _ = tenwords
    greedy = _runner(model, Decoding("greedy"))
    feats = [greedy.features(u.audio) for u in utts]
    expected = {m.chunk_ms: (greedy.offline(m, feats).tokens, greedy.streaming(m, feats).tokens)
                for m in chunk_modes(model)}
    beam = _runner(model, Decoding("beam", beam_size=1))
    assert not beam.carries, "NeMo's beam search cannot continue across chunks: it runs at the end"
    for mode in chunk_modes(model):
        offline, streaming = expected[mode.chunk_ms]
        assert beam.offline(mode, feats).tokens == offline, mode
        assert beam.streaming(mode, feats).tokens == streaming, mode
    wide = _runner(model, Decoding("beam", beam_size=4))
    mode = chunk_modes(model)[0]
    assert wide.streaming(mode, feats).tokens == wide.offline(mode, feats).tokens, \
        "streaming beam = beam over the streamed encoder output = offline beam (encoder parity)"
    _runner(model, Decoding("greedy"))  # leave the shared model as the other tests expect


def test_boosting_a_missed_word_makes_it_appear(tenwords):
    """A word the model does not write in an utterance appears there once it is boosted (real decodes)."""
    from streamtune.model.chunks import chunk_modes
    from streamtune.streaming.decoding import Decoding

    model, utts, _ = tenwords
    plain = _runner(model, Decoding("greedy"))
    feats = [plain.features(u.audio) for u in utts]
    mode = chunk_modes(model)[0]
    before = [{_plain(w) for w in text.split()} for text in plain.streaming(mode, feats).texts]
    # A word some reference has that the model missed there; for a model perfect on its test set, a word some
    # references lack. Boosting matches as written: the lower-case form the tokenizer spells mid-sentence.
    missed = [(w, k) for k, u in enumerate(utts) for w in map(_plain, u.text.split()) if w and w not in before[k]]
    if missed:
        word, targets = missed[0][0], [missed[0][1]]
    else:
        word = next(w for w in TENWORDS if any(w not in before[k] for k in range(len(utts))))
        targets = [k for k in range(len(utts)) if word not in before[k]]
    boosted = _runner(model, Decoding("greedy", boost=(word,), boost_alpha=8.0, boost_score=8.0))
    after = boosted.streaming(mode, feats).texts
    assert any(word in {_plain(w) for w in after[k].split()} for k in targets), (word, [after[k] for k in targets])
    assert boosted.offline(mode, feats).texts == after, "boosting acts the same streaming and offline"
    _runner(model, Decoding("greedy"))


@pytest.fixture(scope="module")
def timed_tenwords(tmp_path_factory) -> Path:
    """Ten-word sentences spoken word by word, with every word's start and end."""
    from streamtune.data.synthetic import prepare_synthetic

    root = tmp_path_factory.mktemp("timed_tenwords")
    prepare_synthetic(root, num_train=0, num_dev=0, num_test=6, seed=seeded(5), min_words=2, max_words=4,
                      words=TENWORDS, voices=["en-us"], id_prefix="timedten", word_timings=True)
    return root / "cuts_test.jsonl.gz"


# Of the correctly recognised words, the share whose times must overlap their spoken interval (see below).
NEAR_SHARE = 0.9


def test_hyps_carry_word_times_confidence_and_manifests(words_run, timed_tenwords, tmp_path):
    from streamtune.data.reading import load_utterances
    from streamtune.stages import evaluate

    out = tmp_path / "eval"
    assert evaluate.main(["--model", str(words_run / "final.nemo"), "--cuts", f"timed={timed_tenwords}",
                          "--out", str(out), "--output-manifest", "eval.latency_streams=[1]",
                          "eval.latency_audio_s=1"]) == 0, "no recipe needed"
    rows = [json.loads(line) for line in open(out / "hyps.jsonl")]
    refs = {u.id: u for u in load_utterances(timed_tenwords)}
    near = total = 0
    for row in rows:
        assert row["decoding"] == "greedy" and "words_error" not in row
        words, duration = row["words"], refs[row["id"]].duration_s
        # Guaranteed by the code for any model: one entry per written word, in order, inside the utterance.
        assert [w["word"] for w in words] == row["hyp"].split()
        starts = [w["start"] for w in words]
        assert starts == sorted(starts) and all(w["start"] < w["end"] for w in words)
        # The encoder has a frame or two past the audio's end (its causal subsampling rounds up): 0.16 s at most.
        assert all(0 <= w["start"] and w["end"] <= duration + 0.17 for w in words)
        assert all(0.0 <= w["confidence"] <= 1.0 for w in words)
        if row["decode"] == "streaming":
            # Encoder frame f (80 ms each, NeMo's timestamp convention: the word ends at (f + 1) * 80 ms) needs the
            # feature frames up to 8 f + 1 (10 ms each): no word is emitted before that audio has arrived, or
            # before the audio's end for the frames past it.
            audio_end = int(duration * 100) / 100  # whole 10 ms feature frames
            early = [w for w in words if w["emitted"] < min((w["end"] - 0.08) + 0.01, audio_end) - 1e-6]
            assert not early, f"a word emitted before the audio its frames need: {early} ({row['chunk_ms']} ms)"
        # Decided by the trained weights, over the correctly recognised utterances: a word's [start, end] overlaps
        # the span it was spoken in, widened by a chunk and two encoder frames either side. A model may emit a
        # word from its first sounds (with ten words to tell apart, early) or put its punctuation in the pause
        # after it (late); times in the wrong unit, or shifted by whole chunks, would miss.
        ref_words = refs[row["id"]].words
        if [_plain(w["word"]) for w in words] == [_plain(w) for w, _, _ in ref_words]:
            slack = row["chunk_ms"] / 1000 + 0.16
            for hyp_w, (_, start, end) in zip(words, ref_words):
                total += 1
                near += hyp_w["start"] <= end + slack and hyp_w["end"] >= start - slack
    assert total >= 8, f"precondition: {total} correctly recognised words to time (the model learnt its words)"
    assert near >= NEAR_SHARE * total, f"{near} of {total} words timed within their spoken span (+- one chunk)"
    manifests = sorted((out / "manifests").glob("*.json"))
    assert len(manifests) == 8  # 4 chunk modes x streaming/offline
    line = json.loads(open(manifests[0]).readline())
    assert {"audio_filepath", "duration", "text", "pred_text", "offset"} <= set(line)
    assert Path(line["audio_filepath"]).is_file()


def test_beam_search_through_evaluate_on_written_text(words_run, tenwords, tmp_path):
    """evaluate.py with NeMo's beam search on the model that writes capitals and punctuation: every mode scored,
    streaming giving offline's tokens (the beam runs over the streamed encoder output), scores from its texts."""
    from streamtune.evaluation.metrics import corpus_errors
    from streamtune.stages import evaluate

    _, utts, cuts = tenwords
    out = tmp_path / "beam"
    assert evaluate.main(["--model", str(words_run / "final.nemo"), "--cuts", f"test={cuts}", "--out", str(out),
                          "eval.decoding=beam", "eval.beam_size=4", "eval.latency_streams=[1]",
                          "eval.latency_audio_s=1"]) == 0
    payload = json.loads((out / "results.json").read_text())
    assert {r["decoding"] for r in payload["results"]} == {"beam4"}
    assert {r["chunk_ms"] for r in payload["results"]} == {1120, 560, 160, 80}
    assert all(e["equal"] for e in payload["streaming_equals_offline"])
    rows = [json.loads(line) for line in open(out / "hyps.jsonl")]
    refs = {u.id: u.text for u in utts}
    for r in payload["results"]:
        mine = [x for x in rows if x["chunk_ms"] == r["chunk_ms"] and x["decode"] == r["decode"]]
        errors = corpus_errors([refs[x["id"]] for x in mine], [x["hyp"] for x in mine])[0]
        assert (errors.errors, errors.ref_words) == (r["errors"], r["ref_words"])


def test_paired_bootstrap_interval_excludes_zero_only_for_a_real_difference():
    import kaldialign

    from streamtune.evaluation.stats import paired_bootstrap

    rng = np.random.default_rng(0)
    refs = rng.integers(5, 15, size=200)
    base = rng.binomial(refs, 0.2)
    better = rng.binomial(refs, 0.05)
    low, high, p = paired_bootstrap(base, better, refs, 2000, 0)
    assert high < 0 and p > 0.99, (low, high, p)
    low, high, p = paired_bootstrap(base, base, refs, 2000, 0)
    assert low <= 0 <= high and p == 0.0
    # The same method as kaldialign's bootstrap_wer_ci (Bisani & Ney): its probability of improvement agrees.
    ref_words = [[f"w{i}"] * 10 for i in range(60)]
    hyp_a = [r[:-(k % 3)] if k % 3 else r for k, r in enumerate(ref_words)]  # deletions in 2 of 3 utterances
    hyp_b = [r[:-1] if k % 5 == 0 else r for k, r in enumerate(ref_words)]
    ka = kaldialign.bootstrap_wer_ci(ref_words, hyp_a, hyp_b, replications=2000, seed=0)
    errs_a = [len(r) - len(h) for r, h in zip(ref_words, hyp_a)]
    errs_b = [len(r) - len(h) for r, h in zip(ref_words, hyp_b)]
    _, _, p_ours = paired_bootstrap(errs_a, errs_b, [10] * 60, 2000, 0)
    assert abs(p_ours - ka["p_s2_improv_over_s1"]) < 0.02


def test_deltas_are_significant_only_when_they_are(trained_run, words_run, tenwords, tmp_path):
    from streamtune.stages import evaluate

    _, _, cuts = tenwords
    common = ["--cuts", f"test={cuts}", "eval.latency_streams=[1]", "eval.latency_audio_s=1",
              "eval.decodes=[streaming]", "eval.chunk_ms=[560]", "eval.bootstrap_replications=2000"]
    out = tmp_path / "far"
    # A 6-step model against one that learnt its words: a large delta, significant (for any trained pair: the
    # 6-step model writes next to nothing right, the ten-word one most words).
    assert evaluate.main(["--baseline", "--model", f"base={trained_run / 'final.nemo'}",
                          "--model", f"tuned={words_run / 'final.nemo'}", "--out", str(out), *common]) == 0
    delta = json.loads((out / "results.json").read_text())["comparison"]["deltas"][0]
    assert delta["delta_points"] < -20 and delta["ci95_points"][1] < 0 and delta["significant"]
    out = tmp_path / "same"
    assert evaluate.main(["--baseline", "--model", f"a={words_run / 'final.nemo'}",
                          "--model", f"b={words_run / 'final.nemo'}", "--out", str(out), *common]) == 0
    payload = json.loads((out / "results.json").read_text())
    delta = payload["comparison"]["deltas"][0]
    assert delta["ci95_points"][0] <= 0 <= delta["ci95_points"][1] and not delta["significant"]
    assert "95 % interval" in (out / "results.md").read_text()


def test_training_curves_from_a_run_dir(trained_run):
    from PIL import Image

    from streamtune.stages import evaluate

    assert evaluate.main(["--run", str(trained_run)]) == 0
    image = np.asarray(Image.open(trained_run / "training_curves.png").convert("L"))
    assert image.std() > 10


def test_sherpa_hotwords_change_a_decode(bundle, tenwords):
    from streamtune.export.sherpa import sherpa_decode

    _, utts, _ = tenwords
    mode_dir = next(p for p in sorted((bundle / "onnx").iterdir()) if p.name.endswith("ms"))
    assert (mode_dir / "bpe.vocab").is_file()
    audios = [u.audio for u in utts]
    plain, _ = sherpa_decode(mode_dir, audios, beam=4)
    boosted, _ = sherpa_decode(mode_dir, audios, beam=4, hotwords=["door"], hotwords_score=20.0)

    def doors(texts: list[str]) -> int:
        return sum([_plain(w) for w in text.split()].count("door") for text in texts)

    assert plain != boosted and doors(boosted) > doors(plain)


def test_card_front_matter_is_hub_yaml(bundle):
    import yaml

    card = (bundle / "MODEL_CARD.md").read_text()
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "nemo" and meta["pipeline_tag"] == "automatic-speech-recognition"
    results = meta["model-index"][0]["results"]
    chunks = {int(r["metrics"][0]["name"].split(" ms")[0].split()[-1]) for r in results}
    assert chunks == {1120, 560, 160, 80}
    assert all(r["metrics"][0]["type"] == "wer" and 0 <= r["metrics"][0]["value"] <= 100 for r in results)
