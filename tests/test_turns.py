"""Turn-taking: the endpointing rules (exact, on scripted emissions), the runner's segments on multi-turn speech
(each turn decoded as if alone after a decoder reset, within the carried encoder context), a session that never
pauses cut at the maximum segment length, evaluate.py's turn scores, and appending a token to a trained model
without changing a single output before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import DEMO_RECIPE, seeded, value_of


def _rules(**kwargs):
    from streamtune.streaming.endpoint import EndpointRules

    return EndpointRules(**kwargs)


# ----- the rules, on emissions a test chooses (frames of 80 ms) ----------------------------------------------------

def _feed(turns, emissions: dict[int, list[int]], frames: int, per_step: int = 2):
    """Step ``turns`` ``per_step`` frames at a time; ``emissions``: frame -> tokens. Returns the closed segments."""
    closed = []
    for start in range(0, frames, per_step):
        new = [(t, f) for f in range(start, start + per_step) for t in emissions.get(f, [])]
        seg = turns.advance([t for t, _ in new], [f for _, f in new], start + per_step, (start + per_step) * 0.08)
        if seg is not None:
            closed.append(seg)
    return closed


def test_a_pause_shorter_than_the_rule_does_not_end_the_turn():
    from streamtune.streaming.endpoint import Turns

    rules = _rules(trailing_silence_s=0.8, leading_silence_s=2.4, max_segment_s=20.0)
    # Tokens at frames 0..4, then 9 silent frames (0.72 s < 0.8 s), tokens at 14..16, then silence.
    turns = Turns(rules, 0.08)
    closed = _feed(turns, {**{f: [5] for f in range(5)}, **{f: [6] for f in range(14, 17)}}, 40)
    assert len(closed) == 1 and closed[0].reason == "silence"
    assert closed[0].tokens == [5] * 5 + [6] * 3
    # 10 silent frames after the last token (frame 16) = 0.8 s: decided at the end of the step holding frame 26.
    assert closed[0].end_s == pytest.approx(28 * 0.08) and closed[0].speech_end_s == pytest.approx(17 * 0.08)
    # Exactly the rule's length of silence mid-turn ends it there.
    turns = Turns(rules, 0.08)
    closed = _feed(turns, {**{f: [5] for f in range(5)}, **{f: [6] for f in range(16, 18)}}, 40)
    assert [s.tokens for s in closed] == [[5] * 5, [6] * 2]


def test_nothing_decoded_restarts_silently_and_eou_ends_a_turn_without_its_token():
    from streamtune.streaming.endpoint import Turns

    rules = _rules(method="eou", trailing_silence_s=None, leading_silence_s=0.96, max_segment_s=4.8)
    turns = Turns(rules, 0.08, eou=99)
    # 34 silent frames: the segment restarts (no final) after every 12 (0.96 s); then a turn ended by <EOU>.
    closed = _feed(turns, {34: [7], 36: [8], 40: [99]}, 60)
    assert len(closed) == 1 and closed[0].reason == "eou" and closed[0].tokens == [7, 8]
    assert closed[0].start_s == pytest.approx(24 * 0.08)
    assert closed[0].end_s == pytest.approx(42 * 0.08)
    # Without a silence rule and without <EOU>, a turn still ends at max_segment_s (60 frames).
    turns = Turns(rules, 0.08, eou=99)
    closed = _feed(turns, {f: [7] for f in range(0, 200, 3)}, 200)
    assert [s.reason for s in closed] == ["max_length"] * 3
    assert [round((s.end_s - s.start_s) / 0.08) for s in closed] == [60] * 3


@pytest.mark.parametrize("kwargs, needle", [
    ({"trailing_silence_s": 25.0}, "not below endpoint.max_segment_s"),
    ({"leading_silence_s": 30.0, "max_segment_s": 20.0}, "could never end a segment"),
    ({"trailing_silence_s": -1}, "a number of seconds above 0"),
    ({"max_segment_s": None}, "needs a maximum length"),
    ({"method": "vad"}, "choose one of none, rules, eou"),
])
def test_contradicting_endpoint_settings_are_one_clear_error(kwargs, needle):
    from streamtune.errors import UserError

    with pytest.raises(UserError, match=needle):
        _rules(**kwargs)


def test_eou_on_a_model_without_the_token_is_a_clear_error(words_model):
    from streamtune.errors import UserError

    with pytest.raises(UserError, match=r"has no '<EOU>' piece; append it \(model.add_tokens"):
        _rules(method="eou").token_id(words_model.tokenizer)


def test_a_misspelt_endpoint_key_is_refused():
    from streamtune.config.loading import load_config
    from streamtune.errors import UserError

    with pytest.raises(UserError, match="trailing_silence"):
        load_config(DEMO_RECIPE, ["endpoint.trailing_silense_s=0.5"])


# ----- multi-turn speech through the runner ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sessions(words_overrides, tmp_path_factory) -> Path:
    """Six sessions of 2-3 turns from the ten-word test set (within-turn pauses in half the turns)."""
    from streamtune.data.turns import TurnPlan, prepare_turns

    return prepare_turns(value_of(words_overrides, "data.test"), tmp_path_factory.mktemp("turns"), sessions=6,
                         seed=seeded(3), plan=TurnPlan(turns=(2, 3)))


def test_turn_sessions_carry_exact_turn_boundaries(sessions):
    """Between turns there is nothing but silence; a turn starts and ends on speech; its within-turn pause lies
    inside it and is silence; the texts are the source utterances'."""
    import gzip

    from streamtune.data.reading import load_utterances

    utts = load_utterances(sessions)
    with gzip.open(sessions, "rt") as f:
        cuts = [json.loads(line) for line in f]
    for utt, cut in zip(utts, cuts):
        audio, rate = utt.audio, 16000
        edges = [0.0] + [x for a, e, _ in utt.turns for x in (a, e)] + [utt.duration_s]
        for k in range(0, len(edges), 2):  # the silences: before, between and after the turns
            assert not audio[round(edges[k] * rate): round(edges[k + 1] * rate)].any(), (utt.id, k)
        for (start, end, text), sup in zip(utt.turns, cut["supervisions"]):
            speech = audio[round(start * rate): round(end * rate)]
            assert speech[0] != 0 and speech[-1] != 0 and text
            for a, b in sup["custom"]["pauses"]:
                assert start < a < b < end and not audio[round(a * rate): round(b * rate)].any()


@pytest.mark.parametrize("plan, needle", [
    ({"pause_s": (0.2, 2.0)}, "must be shorter than the pause between turns"),
    ({"gap_s": (3.0, 1.0)}, "is not a range"),
    ({"append_token": "<E O U>"}, "is not a token"),
])
def test_turn_plans_that_cannot_work_are_refused(plan, needle):
    from streamtune.data.turns import TurnPlan
    from streamtune.errors import UserError

    with pytest.raises(UserError, match=needle):
        TurnPlan(**plan).check()


def test_each_turn_decodes_as_if_alone_after_the_decoder_reset(words_model, sessions):
    """After an endpoint the decoder starts afresh and the encoder goes on: a segment's tokens are exactly what a
    fresh greedy search gives over the streamed encoder output from the segment's start (every mode)."""
    from streamtune.data.reading import load_utterances
    from streamtune.model.chunks import chunk_modes
    from streamtune.streaming.chunking import decoder_step, hypothesis_tokens
    from streamtune.streaming.runner import StreamingRunner

    runner = StreamingRunner(words_model, batch_size=4)
    utts = load_utterances(sessions)
    feats = [runner.features(u.audio) for u in utts]
    several = 0
    for mode in chunk_modes(words_model):
        plain = runner.streaming(mode, feats, keep_encoded=True)
        out = runner.streaming(mode, feats, keep_encoded=True, endpoint=_rules())
        for k, segments in enumerate(out.segments):
            assert torch.equal(out.encoded[k], plain.encoded[k]), "endpointing leaves the encoder alone"
            assert [s.index for s in segments] == list(range(len(segments))) and segments[-1].reason == "end"
            assert all(a.end_s <= b.start_s + 1e-6 for a, b in zip(segments, segments[1:]))
            for seg in segments:
                first = round(seg.start_s / runner.frame_s())
                if first >= len(out.encoded[k]):  # closed by the stream's end at its last frame: nothing after
                    assert not seg.tokens
                    continue
                encoded = out.encoded[k][first:].T.unsqueeze(0)
                hyp = decoder_step(words_model, encoded, torch.tensor([encoded.shape[2]]), None)[0]
                fresh = hypothesis_tokens(hyp)
                # The segment holds the tokens of the frames up to its end; the fresh search runs on to the end.
                assert fresh[:len(seg.tokens)] == seg.tokens, (utts[k].id, mode.chunk_ms, seg.index)
                assert all(first <= f for f in seg.frames)
            several += sum(1 for s in segments if s.tokens) >= 2
    # Any model that writes words ends a turn in 1.5-3 s of silence: some session has two finals or more.
    assert several, "no session was cut into turns"


def test_a_session_that_never_pauses_is_cut_at_the_maximum_segment_length(words_run, sessions):
    """The blank never wins (tokens at every frame): no silence rule can fire, and the turn is cut at
    max_segment_s, in the runner and in the live streams alike."""
    from streamtune.data.reading import load_utterances
    from streamtune.model.build import load_model
    from streamtune.model.chunks import chunk_modes
    from streamtune.streaming.live import LiveStreams
    from streamtune.streaming.runner import StreamingRunner

    chatty = load_model(words_run / "final.nemo")
    with torch.no_grad():
        chatty.joint.joint_net[-1].bias[chatty.decoder.blank_idx] -= 1e4
    rules = _rules(trailing_silence_s=0.5, leading_silence_s=0.5, max_segment_s=1.2)
    mode = chunk_modes(chatty)[2]
    utt = max(load_utterances(sessions), key=lambda u: u.duration_s)
    runner = StreamingRunner(chatty, batch_size=1)
    segments = runner.streaming(mode, [runner.features(utt.audio)], endpoint=rules).segments[0]
    chunk_s = mode.chunk_ms / 1000
    assert len(segments) >= utt.duration_s // (1.2 + chunk_s)
    for seg in segments[:-1]:
        assert seg.reason == "max_length" and 1.2 <= seg.end_s - seg.start_s < 1.2 + chunk_s + 1e-6
    live = LiveStreams(chatty, mode, endpoint=rules)
    live.open("s")
    live.feed("s", utt.audio)
    live.end("s")
    finals = []
    while not finals or not finals[-1].last:
        finals += [u for u in live.step() if u.final]
    assert [(f.segment, f.tokens, f.end_s, f.reason) for f in finals] == \
        [(s.index, s.tokens, s.end_s, s.reason) for s in segments]


def test_the_onnx_decoder_cuts_the_same_turns(bundle, sessions):
    """Our ONNX Runtime decoder over the bundle's encoders, with the same rules, closes the same segments with the
    same tokens at the same times as PyTorch streaming fed as an exported encoder is ("export" feeding)."""
    from streamtune.data.reading import load_utterances
    from streamtune.export.onnx_decoder import OrtStreamingDecoder
    from streamtune.model.build import load_model
    from streamtune.model.chunks import chunk_modes
    from streamtune.streaming.endpoint import Turns
    from streamtune.streaming.runner import StreamingRunner

    model = load_model(bundle / "model.nemo")
    runner = StreamingRunner(model, batch_size=4, feeding="export")
    feats = [runner.features(u.audio) for u in load_utterances(sessions)]
    rules = _rules()
    for mode in [m for m in chunk_modes(model) if m.chunk_ms in (160, 560)]:
        expected = runner.streaming(mode, feats, endpoint=rules).segments
        decoder = OrtStreamingDecoder(bundle / "onnx" / f"{mode.chunk_ms}ms")
        for f, want in zip(feats, expected):
            got = []
            decoder.decode(f.numpy(), turns=Turns(rules, runner.frame_s()), segments=got,
                           silence_frames=runner.silence_frames(), hop_s=runner.hop_samples() / 16000)
            assert [(s.index, s.tokens, s.reason, s.end_s) for s in got] == \
                [(s.index, s.tokens, s.reason, s.end_s) for s in want], mode.chunk_ms


def test_evaluate_scores_turns_for_every_mode(words_run, sessions, words_overrides, tmp_path):
    """evaluate.py on a multi-turn set: per chunk mode a turn-taking row whose counts add up, in results.json
    (schema-valid) and results.md."""
    from streamtune.stages import evaluate

    out = tmp_path / "eval"
    assert evaluate.main(["--config", str(DEMO_RECIPE), "--model", str(words_run / "final.nemo"), "--cuts",
                          str(sessions), "--out", str(out), "eval.latency_streams=[1]", "eval.latency_audio_s=1",
                          "eval.decodes=[streaming]"]) == 0
    payload = json.loads((out / "results.json").read_text())
    rows = payload["turn_taking"]
    assert sorted(r["chunk_ms"] for r in rows) == sorted(payload["settings"]["chunk_ms"])
    assert {r["method"] for r in rows} == {"rules"}  # the model has no <EOU>
    turns = sum(len(json.loads(line)["supervisions"]) for line in _lines(sessions))
    for r in rows:
        assert r["turns"] == turns and r["sessions"] == 6
        assert 0 <= r["early_cutoff_rate"] <= 1 and 0 <= r["miss_rate"] <= 1
        answered = round(turns * (1 - r["miss_rate"]))
        assert (r["latency_s"]["p50"] is None) == (answered == 0)
        if answered:
            assert 0 <= r["latency_s"]["p50"] <= r["latency_s"]["p90"] <= r["latency_s"]["p95"] <= r["miss_window_s"]
            assert r["latency_with_compute_s"]["p50"] >= r["latency_s"]["p50"]
    assert "## Turn-taking" in (out / "results.md").read_text()


def _lines(cuts: Path) -> list[str]:
    import gzip

    with gzip.open(cuts, "rt") as f:
        return [line for line in f if line.strip()]


# ----- appending a token -------------------------------------------------------------------------------------------

def test_an_appended_token_changes_nothing_before_training(words_run, words_overrides, tmp_path):
    """model.add_tokens=['<EOU>']: every piece keeps its id, and before any training step the extended model gives
    exactly the base model's tokens (so its WER) in every mode, streaming and offline; tokens.txt carries the new
    token; the vocabulary's new piece is matched whole in a transcript."""
    from streamtune.data.reading import load_utterances
    from streamtune.export.onnx_export import write_tokens
    from streamtune.model.build import load_model
    from streamtune.model.chunks import chunk_modes
    from streamtune.model.vocabulary import add_tokens
    from streamtune.streaming.runner import StreamingRunner

    base = load_model(words_run / "final.nemo")
    extended = load_model(words_run / "final.nemo")
    line = add_tokens(extended, ["<EOU>"])
    vocab = base.tokenizer.vocab_size
    assert f"<EOU>={vocab}" in line and "unchanged before training" in line
    assert extended.tokenizer.vocab_size == vocab + 1 and extended.decoder.blank_idx == vocab + 1
    assert [extended.tokenizer.ids_to_tokens([i])[0] for i in range(vocab)] == \
        [base.tokenizer.ids_to_tokens([i])[0] for i in range(vocab)]
    assert extended.tokenizer.text_to_ids("red door.<EOU>")[-1] == vocab
    utts = load_utterances(value_of(words_overrides, "data.test"))
    runs = {}
    for name, model in (("base", base), ("extended", extended)):
        runner = StreamingRunner(model.eval(), batch_size=4)
        feats = [runner.features(u.audio) for u in utts]
        runs[name] = [(getattr(runner, decode)(mode, feats).tokens, mode.chunk_ms, decode)
                      for mode in chunk_modes(model) for decode in ("streaming", "offline")]
    assert runs["extended"] == runs["base"]
    assert any(t for tokens, _, _ in runs["base"] for t in tokens), "the base model writes something"
    some = next(t for tokens, _, _ in runs["base"] for t in tokens if t)
    runner = StreamingRunner(extended)
    assert runner.texts([some + [vocab]]) == runner.texts([some]), "<EOU> is not text"
    tokens_txt = write_tokens(extended, tmp_path / "tokens.txt").read_text().splitlines()
    assert tokens_txt[vocab] == f"<EOU> {vocab}" and tokens_txt[vocab + 1] == f"<blk> {vocab + 1}"


@pytest.mark.parametrize("tokens, needle", [
    (["<EOU>", "<EOU>"], "names a token twice"),
    (["red"], "the tokenizer writes 'red' already"),
    (["a b"], "is not a token"),
])
def test_appending_a_token_the_tokenizer_has_or_writes_is_refused(words_run, tokens, needle):
    from streamtune.errors import UserError
    from streamtune.model.build import load_model
    from streamtune.model.vocabulary import add_tokens

    model = load_model(words_run / "final.nemo")
    with pytest.raises(UserError, match=needle):
        add_tokens(model, tokens)


def test_appending_a_token_twice_is_refused(words_run):
    from streamtune.errors import UserError
    from streamtune.model.build import load_model
    from streamtune.model.vocabulary import add_tokens

    model = load_model(words_run / "final.nemo")
    add_tokens(model, ["<EOU>"])
    with pytest.raises(UserError, match=r"'<EOU>' is already in the tokenizer \(id"):
        add_tokens(model, ["<EOU>"])


def test_the_eou_recipe_trains_a_model_that_has_the_token(finetune, base_nemo, corpus, tmp_path):
    """recipes/nemotron/eou.yaml from a start point, on <EOU> turns made by data_prep plus plain replay: the run
    reports the appended token, and its final.nemo has it (id after every old piece) and restores in plain NeMo."""
    from nemo.collections.asr.models import ASRModel

    from streamtune.data.turns import TurnPlan, prepare_turns
    from streamtune.streaming.endpoint import eou_id

    eou = prepare_turns(corpus / "cuts_train.jsonl.gz", tmp_path / "eou", sessions=12, seed=seeded(4),
                        plan=TurnPlan(turns=(1, 1), tail_s=(0.3, 0.6), append_token="<EOU>"))
    run = finetune("eou.yaml", base_nemo, tmp_path / "run", f"data.train=[[{eou}, 0.9], "
                   f"[{corpus / 'cuts_train.jsonl.gz'}, 0.1]]", "trainer.max_steps=2", "trainer.val_check_interval=2")
    setup = (run / "model_setup.txt").read_text()
    assert "model.add_tokens ['<EOU>']: vocabulary 96 -> 97 pieces (ids <EOU>=96" in setup, setup
    model = ASRModel.restore_from(str(run / "final.nemo"), map_location="cpu")
    assert eou_id(model.tokenizer) == 96 and model.decoder.blank_idx == 97


@pytest.mark.e2e
@pytest.mark.parametrize("flags, needle", [
    (["--endpoint", "eou"], "has no '<EOU>' piece"),
    (["--trailing-silence-s", "30"], "is not below endpoint.max_segment_s 20 s"),
])
def test_serve_refuses_endpointing_it_cannot_do_in_one_line(bundle, flags, needle):
    from tests.helpers import one_line_error, run_entry

    proc = run_entry("-m", "export", "serve", "--bundle", str(bundle), "--max-streams", "1", *flags, timeout=300)
    one_line_error(proc.returncode, proc.stderr, needle)
