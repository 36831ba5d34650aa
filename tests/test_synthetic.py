"""The generated corpus: deterministic, disjoint splits, 16 kHz mono cuts, transcripts written as the target model
writes them."""

from __future__ import annotations

import re

import numpy as np
import soundfile as sf
from lhotse import CutSet

from streamtune.data.synthetic import plan_corpus
from tests.helpers import seeded


def _spoken(text: str) -> str:
    from streamtune.data.text import normalise_text

    return normalise_text(text.replace("[noise]", ""), lowercase=True, strip_punctuation=True)


def test_plan_is_deterministic_and_splits_are_disjoint():
    counts = {"train": 200, "dev": 20, "test": 20}
    a, b = plan_corpus(counts, seed=3), plan_corpus(counts, seed=3)
    assert a == b
    assert plan_corpus(counts, seed=4) != a
    spoken = {split: {_spoken(u.text) for u in a if u.split == split} for split in counts}
    assert not spoken["train"] & spoken["test"] and not spoken["train"] & spoken["dev"] and \
        not spoken["dev"] & spoken["test"]
    assert len({u.voice for u in a}) > 3 and len({u.rate_wpm for u in a}) > 1


def test_written_style_writes_what_the_target_model_writes():
    """Capitals, end punctuation, commas, digits, apostrophes, hyphens and [noise] tags, each in a share of a
    3,000-sentence plan; the plain style is lower-case words; both speak the same sentences from the same seed."""
    from streamtune.data.synthetic import WORDS, WRITTEN_WORDS

    plan = plan_corpus({"train": 3000}, seed=seeded(0), words=WORDS + WRITTEN_WORDS)
    texts = [u.text for u in plan]
    marks = {"capital": r"^(\[noise\] )?[A-Z0-9]", "end": r"[.?!]( \[noise\])?$", "question": r"\?", "comma": ",",
             "digit": r"\d", "apostrophe": "'", "hyphen": r"\w-\w", "tag": r"\[noise\]", "name": r"\b(Anna|Tom)\b"}
    shares = {k: sum(bool(re.search(p, t)) for t in texts) / len(texts) for k, p in marks.items()}
    assert shares["capital"] == shares["end"] == 1.0, shares
    assert all(0.01 < shares[k] < 0.6 for k in marks if k not in ("capital", "end")), shares
    plain = plan_corpus({"train": 3000}, seed=seeded(0), style="plain")
    assert all(re.fullmatch(r"[a-z]+( [a-z]+)*", u.text) for u in plain)
    digits = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
    written = plan_corpus({"train": 3000}, seed=seeded(0))
    assert [_spoken(u.text).replace("'s ", " ").replace("'s", "") for u in written] == \
        [" ".join(digits.get(w, w) for w in u.text.split()) for u in plain]


def test_a_noise_tag_is_a_burst_of_noise_in_the_audio():
    from streamtune.data.synthetic import SAMPLE_RATE, Utterance, synthesize

    def loud_in_first(audio: np.ndarray, seconds: float) -> float:
        return float(np.abs(audio[: int(seconds * SAMPLE_RATE)]).max())

    plain = synthesize(Utterance("u1", "test", "Red lamp.", "en-us", 160, 50, "written"))
    tagged = synthesize(Utterance("u1", "test", "[noise] Red lamp.", "en-us", 160, 50, "written"))
    assert len(tagged) == len(plain) + int(0.4 * SAMPLE_RATE)
    assert loud_in_first(plain, 0.1) == 0.0 and loud_in_first(tagged[int(0.1 * SAMPLE_RATE):], 0.3) > 0.05
    assert np.array_equal(tagged[int(0.4 * SAMPLE_RATE):], plain), "the speech itself unchanged"


def test_corpus_cuts_are_16k_mono_with_matching_durations(corpus):
    for split in ("train", "dev", "test"):
        cuts = CutSet.from_file(corpus / f"cuts_{split}.jsonl.gz")
        for cut in cuts:
            info = sf.info(cut.recording.sources[0].source)
            assert info.samplerate == 16000 and info.channels == 1
            assert abs(info.duration - cut.duration) < 1e-3
            assert cut.supervisions[0].text.strip()
            assert cut.custom["voice"]
    assert len(CutSet.from_file(corpus / "cuts_train.jsonl.gz")) == 48


def test_rerun_skips_finished_corpus(corpus, capsys):
    from streamtune.data.synthetic import prepare_synthetic

    prepare_synthetic(corpus, num_train=48, num_dev=6, num_test=8, seed=seeded(7), min_words=2, max_words=4)
    assert "up to date" in capsys.readouterr().out


def test_tokenizer_dir_has_what_nemo_needs(corpus):
    tok = corpus / "tokenizer"
    assert (tok / "tokenizer.model").exists() and (tok / "vocab.txt").exists()
