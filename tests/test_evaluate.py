"""evaluate.py end to end on tiny models: every model x test set x chunk mode, reports, gates, batch invariance, and
a hypothesis that once lost a whole evaluation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import DEMO_RECIPE, script_model, seeded, tokenizer_from_texts

FAST = ["eval.latency_streams=[1]", "eval.latency_audio_s=1"]


def _save_model(tiny_overrides, path: Path, blank_bias: float = 0.0, word_piece: bool = False) -> Path:
    """An untrained model; ``blank_bias`` +1e4: the blank wins every frame (never a token); -1e4: it never wins
    (max_symbols tokens at every frame); ``word_piece``: one word-starting piece wins every time as well."""
    from streamtune.config.loading import load_config
    from streamtune.model.build import build_model

    torch.manual_seed(seeded(0))
    model = build_model(load_config(DEMO_RECIPE, tiny_overrides)).eval()
    with torch.no_grad():
        bias = model.joint.joint_net[-1].bias
        bias[model.decoder.blank_idx] += blank_bias
        if word_piece:
            pieces = [model.tokenizer.ids_to_tokens([i])[0] for i in range(model.tokenizer.vocab_size)]
            bias[next(i for i, p in enumerate(pieces) if p.startswith("▁") and p[1:].isalpha())] += 1e4
    model.save_to(str(path))
    return path


@pytest.fixture(scope="module")
def blank_nemo(tiny_overrides, tmp_path_factory) -> Path:
    """Never emits a token: WER exactly 100 % (all deletions)."""
    return _save_model(tiny_overrides, tmp_path_factory.mktemp("models") / "blank.nemo", blank_bias=1e4)


@pytest.fixture(scope="module")
def chatty_nemo(tiny_overrides, tmp_path_factory) -> Path:
    """Untrained and the blank never wins: max_symbols tokens at every frame whatever the seed, chosen by the
    random weights (an untrained model's own output may be nearly all blanks, depending on the seed)."""
    return _save_model(tiny_overrides, tmp_path_factory.mktemp("models") / "chatty.nemo", blank_bias=-1e4)


@pytest.fixture(scope="module")
def inserting_nemo(tiny_overrides, tmp_path_factory) -> Path:
    """Writes one word max_symbols times at every frame: WER far above 100 % on any utterance of a few words."""
    return _save_model(tiny_overrides, tmp_path_factory.mktemp("models") / "inserting.nemo", blank_bias=-1e4,
                       word_piece=True)


def _evaluate(*args: str) -> int:
    from streamtune.stages import evaluate

    return evaluate.main(["--config", str(DEMO_RECIPE), *args])


def _schema():
    from streamtune.evaluation.reports import SCHEMA_PATH

    return json.loads(SCHEMA_PATH.read_text())


def _other_format_sets(corpus: Path, root: Path) -> tuple[Path, Path]:
    """The test audio as a NeMo manifest (plus one missing file) and as a folder with .txt transcripts."""
    from lhotse import CutSet

    cuts = list(CutSet.from_file(corpus / "cuts_test.jsonl.gz"))[:3]
    manifest = root / "manifest.json"
    with open(manifest, "w") as f:
        for c in cuts:
            f.write(json.dumps({"audio_filepath": c.recording.sources[0].source, "duration": c.duration,
                                "text": c.supervisions[0].text}) + "\n")
        f.write(json.dumps({"audio_filepath": str(root / "gone.wav"), "duration": 1.0, "text": "gone"}) + "\n")
    folder = root / "recordings"
    folder.mkdir()
    for c in cuts[:2]:
        shutil.copy(c.recording.sources[0].source, folder / f"{c.id}.wav")
        (folder / f"{c.id}.txt").write_text(c.supervisions[0].text)
    return manifest, folder


def test_every_model_test_set_and_chunk_mode_reported(trained_run, chatty_nemo, corpus, timed_corpus, tiny_overrides,
                                                      tmp_path):
    import jsonschema
    from PIL import Image

    from streamtune.evaluation.reports import PLOT_DPI, STEP_PLOT_SIZE, WER_PLOT_SIZE

    manifest, folder = _other_format_sets(corpus, tmp_path)
    out = tmp_path / "eval"
    rc = _evaluate("--model", f"tuned={trained_run / 'final.nemo'}", "--model", f"random={chatty_nemo}",
                   "--cuts", str(corpus / "cuts_test.jsonl.gz"), "--cuts",
                   f"timed={timed_corpus / 'cuts_test.jsonl.gz'}",
                   "--cuts", f"manifest={manifest}", "--cuts", str(folder), "--out", str(out), *tiny_overrides)
    assert rc == 0
    payload = json.loads((out / "results.json").read_text())
    jsonschema.validate(payload, _schema())

    sets = {t["name"]: t for t in payload["test_sets"]}
    assert list(sets) == ["cuts_test", "timed", "manifest", "recordings"]
    assert [sets[n]["kind"] for n in sets] == ["cuts", "cuts", "nemo-manifest", "folder"]
    assert sets["manifest"]["rejected"] == 1 and sets["manifest"]["utts"] == 3, "the missing file is counted, not lost"
    assert sets["timed"]["word_timings"] and not sets["cuts_test"]["word_timings"]

    results = payload["results"]
    got = {(r["model"], r["test_set"], r["chunk_ms"], r["decode"]) for r in results}
    assert got == {(m, t, c, d) for m in ("tuned", "random") for t in [*sets, "all"]
                   for c in (1120, 560, 160, 80) for d in ("streaming", "offline")}
    by = {(r["model"], r["test_set"], r["chunk_ms"], r["decode"]): r for r in results}
    for (m, t, c, d), r in by.items():
        # Cache-aware streaming reproduces offline decoding in every mode (see test_streaming.py): same WER.
        if d == "streaming":
            assert r["errors"] == by[m, t, c, "offline"]["errors"] and r["cer"] == by[m, t, c, "offline"]["cer"]
        if t == "all":  # pooled counts are the sums of the per-set counts
            for key in ("errors", "ref_words", "pnc_errors", "char_errors", "utts"):
                assert r[key] == sum(by[m, s, c, d][key] for s in sets), key
    assert all(e["equal"] for e in payload["streaming_equals_offline"])
    assert by["random", "cuts_test", 560, "streaming"]["wer"] > 0.5, "an untrained model must score badly"

    # Emission delay only where the references carry word timings; the chatty model writes words to align.
    delays = {(e["model"], e["test_set"], e["chunk_ms"]): e for e in payload["emission_delay"]}
    assert set(delays) == {(m, "timed", c) for m in ("tuned", "random") for c in (1120, 560, 160, 80)}
    assert all(delays["random", "timed", c]["aligned_words"] > 0 for c in (1120, 560, 160, 80))

    lat = payload["latency"]
    assert {(x["model"], x["chunk_ms"], x["streams"]) for x in lat} == {
        (m, c, n) for m in ("tuned", "random") for c in (1120, 560, 160, 80) for n in (1, 2)}
    assert all(x["algorithmic_latency_ms"] == x["chunk_ms"] and x["steps"] > 0 and x["step_ms_p95"] > 0 for x in lat)

    n_utts = sum(t["utts"] for t in payload["test_sets"])
    rows = [json.loads(line) for line in open(out / "hyps.jsonl")]
    assert len(rows) == 2 * n_utts * 4 * 2
    assert {"model", "test_set", "id", "ref", "hyp", "errors", "pnc_errors", "char_errors"} <= set(rows[0])

    width, height = (round(v * PLOT_DPI) for v in WER_PLOT_SIZE)
    assert Image.open(out / "wer_vs_chunk.png").size == (width * len(sets), height)
    assert Image.open(out / "step_compute_vs_streams.png").size == tuple(round(v * PLOT_DPI) for v in STEP_PLOT_SIZE)
    for png in ("wer_vs_chunk.png", "step_compute_vs_streams.png"):
        pixels = np.asarray(Image.open(out / png).convert("L"))
        assert pixels.min() < 100 and pixels.std() > 10, f"{png} is blank"
    md = (out / "results.md").read_text()
    assert "| 80 ms |" in md and "Emission delay" in md and "PASSED" in md


def test_schema_check_can_fail(tmp_path):
    import jsonschema

    schema = _schema()
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"schema_version": 2}, schema)
    good_row = {"model": "m", "test_set": "t", "chunk_ms": 80, "att_context": [70, 0], "decode": "streaming",
                "wer": 0.1}
    with pytest.raises(jsonschema.ValidationError):  # a result row missing its counts
        jsonschema.validate(good_row, schema["properties"]["results"]["items"])


def test_results_identical_at_batch_sizes_1_and_8(chatty_nemo, corpus, timed_corpus, tiny_overrides, tmp_path):
    """NeMo's cache-aware script changes WER with the batch size (NVIDIA-NeMo/Speech#12840); ours must not: every
    row of hyps.jsonl, every score and every emission delay the same one stream at a time as eight together, at
    the longest and the shortest chunk (the runner itself at 1, 3 and 8: tests/test_streaming.py). Scores
    included: a test set's audio seconds once differed in the last digit (a float sum in batch order)."""
    outputs = {}
    for bs in (1, 8):
        out = tmp_path / f"bs{bs}"
        assert _evaluate("--model", str(chatty_nemo), "--cuts", str(corpus / "cuts_test.jsonl.gz"),
                         "--cuts", str(timed_corpus / "cuts_test.jsonl.gz"), "--out", str(out), *tiny_overrides,
                         *FAST, f"eval.batch_size={bs}", "eval.chunk_ms=[1120,80]") == 0
        payload = json.loads((out / "results.json").read_text())
        # Rows are written as batches finish (their order follows the batching); their content must not change.
        rows = sorted((json.loads(line) for line in open(out / "hyps.jsonl")),
                      key=lambda r: (r["model"], r["test_set"], r["id"], r["chunk_ms"], r["decode"]))
        scores = [{k: v for k, v in r.items() if k not in ("decode_s", "rtfx", "streams", "step_ms_p50",
                                                              "step_ms_p95")} for r in payload["results"]]
        outputs[bs] = (rows, scores, payload["emission_delay"], payload["test_sets"])
    assert sum(len(r["tokens"]) for r in outputs[1][0]) > 50, "the check needs hypotheses with tokens"
    assert outputs[1] == outputs[8]


def test_gates_exit_nonzero_when_crossed(trained_run, inserting_nemo, blank_nemo, corpus, tiny_overrides, tmp_path):
    cuts = str(corpus / "cuts_test.jsonl.gz")
    quick = [*tiny_overrides, *FAST, "eval.chunk_ms=[560]", "eval.decodes=[streaming]"]
    # --max-wer: the 6-step model is far above 1 % WER; nowhere near 10000 %.
    assert _evaluate("--model", str(trained_run / "final.nemo"), "--cuts", cuts, "--out", str(tmp_path / "a"),
                     *quick, "--max-wer", "1") == 1
    assert _evaluate("--model", str(trained_run / "final.nemo"), "--cuts", cuts, "--out", str(tmp_path / "b"),
                     *quick, "--max-wer", "10000") == 0
    assert _evaluate("--model", str(trained_run / "final.nemo"), "--cuts", cuts, "--out", str(tmp_path / "c"),
                     *quick, "eval.max_wer=1") == 1  # the recipe's gate works too

    # --max-regression: the never-emitting model scores exactly 100 % (all deletions); the inserting one more.
    out = tmp_path / "regress"
    assert _evaluate("--baseline", "--model", f"base={blank_nemo}", "--model", f"tuned={inserting_nemo}",
                     "--cuts", cuts, "--out", str(out), *quick, "--max-regression", "5") == 1
    payload = json.loads((out / "results.json").read_text())
    (delta,) = payload["comparison"]["deltas"]
    assert delta["baseline_wer"] == 1.0 and delta["wer"] > 1.05, "precondition: a real regression of > 5 points"
    assert delta["regression"] and not payload["gates"]["passed"]
    assert "tuned on cuts_test at 560 ms" in payload["gates"]["failures"][0]
    assert "REGRESSION" in (out / "results.md").read_text()
    # The other way round it is an improvement: the gate passes even at zero tolerance, no max-wer on the baseline.
    out = tmp_path / "improve"
    assert _evaluate("--baseline", "--model", f"base={inserting_nemo}", "--model", f"tuned={blank_nemo}",
                     "--cuts", cuts, "--out", str(out), *quick, "--max-regression", "0", "--max-wer", "100") == 0
    (delta,) = json.loads((out / "results.json").read_text())["comparison"]["deltas"]
    assert delta["delta_points"] < -5 and not delta["regression"]


def test_bad_inputs_are_one_clear_error(chatty_nemo, corpus, tiny_overrides, tmp_path, capsys):
    cuts = str(corpus / "cuts_test.jsonl.gz")
    assert _evaluate("--model", "nope.nemo", *tiny_overrides) == 2
    assert "model 'nope.nemo' does not exist" in capsys.readouterr().err
    assert _evaluate("--model", str(chatty_nemo), "--cuts", "nope.jsonl.gz", *tiny_overrides) == 2
    assert "test set 'nope.jsonl.gz' does not exist" in capsys.readouterr().err
    assert _evaluate("--model", str(chatty_nemo), "--cuts", cuts, "--max-regression", "1", *tiny_overrides) == 2
    assert "--max-regression needs a baseline" in capsys.readouterr().err
    assert _evaluate("--baseline", "--model", str(chatty_nemo), "--cuts", cuts, *tiny_overrides) == 2
    assert "at least two --model" in capsys.readouterr().err
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"hello": 1}\n')
    assert _evaluate("--model", str(chatty_nemo), "--cuts", str(bad), *tiny_overrides) == 2
    assert "neither 'audio_filepath'" in capsys.readouterr().err
    assert _evaluate("--model", str(chatty_nemo), "--cuts", cuts, "eval.mmap_threshold_mib=64", *tiny_overrides) == 2
    assert "eval.mmap_threshold_mib must be 0 (glibc's default) to 32" in capsys.readouterr().err


def test_emission_delay_is_measured_from_word_end(trained_model):
    """Hand-made emissions against known word ends: the delays are exact differences."""
    from streamtune.data.reading import Utterance
    from streamtune.evaluation.scoring import emission_delays
    from streamtune.streaming.runner import DecodeResult
    from streamtune.streaming.words import hypothesis_words

    tok = trained_model.tokenizer
    ids = [tok.text_to_ids(w) for w in ("red", "lamp", "now")]
    tokens = [t for w in ids for t in w]
    emit = []
    for w, at in zip(ids, (0.48, 0.96, 1.44)):  # every token of a word emitted by the same chunk
        emit += [at] * len(w)
    emit[len(ids[0])] = 0.64  # ... except the first token of "lamp": one chunk earlier
    words = hypothesis_words(tok, tokens, emit)
    assert [w for w, _, _ in words] == ["red", "lamp", "now"]
    utt = Utterance("u", "red lamp on", np.zeros(1), 1.5, words=[("red", 0.1, 0.4), ("lamp", 0.5, 0.9),
                                                                  ("on", 1.0, 1.3)])
    out = DecodeResult([tokens], ["red lamp now"], emit_s=[emit])
    d = emission_delays(tok, [utt], out)
    assert (d["aligned_words"], d["correct_words"]) == (3, 2)  # "now" is a substitution for "on"
    first = sorted([0.48 - 0.4, 0.64 - 0.9, 1.44 - 1.3])
    final = sorted([0.48 - 0.4, 0.96 - 0.9, 1.44 - 1.3])
    assert d["first_token_ms_p50"] == pytest.approx(1000 * first[1])
    assert d["final_token_ms_p50"] == pytest.approx(1000 * final[1])
    assert emission_delays(tok, [Utterance("v", "red", np.zeros(1), 1.0)], out) is None


# A hypothesis that made NeMo's word-confidence aggregation raise on real punctuated speech, losing the evaluation:
# the piece "▁" alone, then punctuation NeMo glues to the word before ("Wait or[.]": NeMo counts 2 words and 3
# confidences). A tokenizer trained on written text has such pieces.
CRASH_PIECES = ["▁W", "ait", "▁", "or", "▁[", ".", "]"]


@pytest.fixture(scope="module")
def crash_nemo(tmp_path_factory, corpus) -> Path:
    """A tiny model whose greedy search writes CRASH_PIECES for any audio (tests/helpers.py: script_model)."""
    from bench.geometry import TINY
    from streamtune.config.loading import load_config
    from streamtune.model.build import build_model

    root = tmp_path_factory.mktemp("crash")
    texts = ["Please enter the message.", "Wait or [noise] call.", "Wait, or not?", "[noise] Enter it!",
             "Or wait (please)."] * 20  # SentencePiece is deterministic: these give every piece of CRASH_PIECES
    tokenizer = tokenizer_from_texts(texts, root / "tokenizer", vocab_size=40)
    model = build_model(load_config(DEMO_RECIPE, [*TINY, f"model.tokenizer_dir={tokenizer}", "data.train=null",
                                                  "data.dev=null"]), log=lambda _: None)
    assert [model.tokenizer.ids_to_tokens([model.tokenizer.tokens_to_ids([p])[0]])[0] for p in CRASH_PIECES] == \
        CRASH_PIECES, "the tokenizer has every piece"
    script_model(model.eval(), CRASH_PIECES).save_to(str(root / "crash.nemo"))
    return root / "crash.nemo"


def test_a_hypothesis_nemo_cannot_split_into_words_loses_nothing(crash_nemo, corpus, tiny_overrides, tmp_path):
    import copy

    from omegaconf import open_dict

    from streamtune.data.reading import load_utterances
    from streamtune.model.build import load_model
    from streamtune.model.chunks import chunk_modes
    from streamtune.streaming.runner import StreamingRunner

    # The crash, reproduced: NeMo's own word-confidence aggregation on this model's hypothesis.
    model = load_model(crash_nemo)
    runner = StreamingRunner(model, batch_size=2)
    feats = [runner.features(u.audio) for u in load_utterances(corpus / "cuts_test.jsonl.gz", max_utts=2)]
    mode = chunk_modes(model)[0]
    assert runner.offline(mode, feats).texts == ["Wait or [.]"] * 2
    cfg = copy.deepcopy(model.cfg.decoding)
    with open_dict(cfg):
        cfg.confidence_cfg = {"preserve_frame_confidence": True, "preserve_token_confidence": True,
                              "preserve_word_confidence": True, "exclude_blank": True, "aggregation": "min"}
    model.change_decoding_strategy(cfg, verbose=False)
    with pytest.raises(RuntimeError, match="word-level confidence aggregation"):
        runner.offline(mode, feats)

    # evaluate.py (greedy, its default) scores every utterance in every mode and writes word times and confidence.
    out = tmp_path / "eval"
    assert _evaluate("--model", str(crash_nemo), "--cuts", str(corpus / "cuts_test.jsonl.gz"), "--out", str(out),
                     *tiny_overrides, *FAST) == 0
    payload = json.loads((out / "results.json").read_text())
    (test_set,) = payload["test_sets"]
    assert test_set["utts"] == 8 and test_set["word_extras_failed"] == 0
    assert {(r["chunk_ms"], r["decode"]) for r in payload["results"]} == {
        (c, d) for c in (1120, 560, 160, 80) for d in ("streaming", "offline")}
    rows = [json.loads(line) for line in open(out / "hyps.jsonl")]
    assert len(rows) == 8 * 4 * 2 and {r["hyp"] for r in rows} == {"Wait or [.]"}
    for row in rows:
        assert [w["word"] for w in row["words"]] == ["Wait", "or", "[.]"]
        assert all(0 <= w["confidence"] <= 1 and w["start"] < w["end"] for w in row["words"])


def test_a_failing_word_extra_is_counted_for_its_hypothesis(trained_model):
    """What the evaluation does when a per-word extra fails: that hypothesis' words are left out and the error
    named; its scores stand (streamtune.evaluation.scoring._words_of)."""
    from streamtune.evaluation.scoring import _words_of
    from streamtune.streaming.runner import DecodeResult

    tokens = trained_model.tokenizer.text_to_ids("red lamp")
    good = DecodeResult([tokens], ["red lamp"], frames=[list(range(len(tokens)))],
                        token_confidence=[[0.5] * len(tokens)])
    words, error = _words_of(trained_model.tokenizer, good, 0, tokens, 0.08)
    assert error is None and [w["word"] for w in words] == ["red", "lamp"]
    short = DecodeResult([tokens], ["red lamp"], frames=[list(range(len(tokens)))], token_confidence=[[0.5]])
    words, error = _words_of(trained_model.tokenizer, short, 0, tokens, 0.08)
    assert words == [] and error == f"ValueError: 1 token confidences for {len(tokens)} tokens"
