"""The generated corpus: deterministic, disjoint splits, 16 kHz mono cuts."""

from __future__ import annotations

import soundfile as sf
from lhotse import CutSet

from streamtune.stages.data_prep.synthetic import plan_corpus


def test_plan_is_deterministic_and_splits_are_disjoint():
    counts = {"train": 200, "dev": 20, "test": 20}
    a, b = plan_corpus(counts, seed=3), plan_corpus(counts, seed=3)
    assert a == b
    assert plan_corpus(counts, seed=4) != a
    texts = {split: {u.text for u in a if u.split == split} for split in counts}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["dev"] and not texts["dev"] & texts["test"]
    assert len({u.voice for u in a}) > 3 and len({u.rate_wpm for u in a}) > 1


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
    from streamtune.stages.data_prep.synthetic import prepare_synthetic

    prepare_synthetic(corpus, num_train=48, num_dev=6, num_test=8, seed=7, min_words=2, max_words=4)
    assert "up to date" in capsys.readouterr().out


def test_tokenizer_dir_has_what_nemo_needs(corpus):
    tok = corpus / "tokenizer"
    assert (tok / "tokenizer.model").exists() and (tok / "vocab.txt").exists()
