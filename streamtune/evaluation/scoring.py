"""Decoding and scoring: every model x test set x chunk mode x decode (streaming / offline).

* :func:`evaluate_models` is what ``evaluate.py`` runs: each model loaded in turn, every test set decoded in
  every chunk mode both ways (:func:`evaluate_model`), and the per-step latency sweep
  (``streamtune.evaluation.latency``);
* :func:`evaluate_model` streams a test set batch by batch and scores WER (Whisper-normalised, the headline),
  PnC WER and CER per test set and over all of them (:mod:`streamtune.evaluation.metrics`), writing every
  hypothesis;
* :class:`EmissionDelays` measures, where the references carry word timings, how long after a word ends its
  first and last token come out of the stream.

Comparison and gates are in ``streamtune.evaluation.gates``; what is written and printed, in
``streamtune.evaluation.reports``. Words and their timings come from ``streamtune.streaming.words``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

from streamtune.data.reading import Utterance, load_utterances, utterance_batches
from streamtune.data.text import normalise_text
from streamtune.errors import UserError
from streamtune.evaluation.metrics import Scores, align, corpus_scores
from streamtune.evaluation.stats import percentile
from streamtune.model.chunks import ChunkMode
from streamtune.streaming.runner import DecodeResult, StreamingRunner
from streamtune.streaming.words import hypothesis_words, word_timings

DECODES = ("streaming", "offline")
ALL = "all"  # the test-set name of the pooled scores


@dataclass
class ModelSpec:
    label: str
    path: str
    role: str  # "baseline" | "candidate"


@dataclass
class ModeResult:
    """Scores of one model on one test set (or ``all``) in one chunk mode and decode."""

    model: str
    test_set: str
    chunk_ms: int
    att_context: list[int]
    decode: str  # "streaming" | "offline"
    decoding: str  # the search: "greedy", "beam4", "greedy+boost3", ... (streamtune.streaming.decoding)
    wer: float  # fractions; Whisper-normalised words
    wer_pnc: float  # case and punctuation kept
    cer: float  # characters of the Whisper-normalised text
    errors: int
    ref_words: int
    substitutions: int
    deletions: int
    insertions: int
    pnc_errors: int
    pnc_ref_words: int
    char_errors: int
    ref_chars: int
    utts: int
    audio_s: float
    decode_s: float
    rtfx: float  # seconds of audio decoded per second of compute
    streams: int  # utterances decoded together (concurrent streams when streaming)
    step_ms_p50: float | None  # streaming: wall time of one step for all streams of the batch
    step_ms_p95: float | None


def _result(model: str, test_set: str, mode: ChunkMode, decode: str, decoding: str, total: Scores, utts: int,
            audio_s: float, decode_s: float, streams: int, step_s: list[float]) -> ModeResult:
    return ModeResult(
        model=model, test_set=test_set, chunk_ms=mode.chunk_ms, att_context=mode.att_context, decode=decode,
        decoding=decoding,
        wer=total.words.wer, wer_pnc=total.pnc.wer, cer=total.chars.wer,
        errors=total.words.errors, ref_words=total.words.ref_words, substitutions=total.words.substitutions,
        deletions=total.words.deletions, insertions=total.words.insertions,
        pnc_errors=total.pnc.errors, pnc_ref_words=total.pnc.ref_words,
        char_errors=total.chars.errors, ref_chars=total.chars.ref_words,
        utts=utts, audio_s=audio_s, decode_s=decode_s, rtfx=audio_s / decode_s if decode_s > 0 else float("inf"),
        streams=streams,
        step_ms_p50=None if not step_s else 1000 * percentile(step_s, 50),
        step_ms_p95=None if not step_s else 1000 * percentile(step_s, 95),
    )


# ----- emission delay ---------------------------------------------------------------------------------
def _match_form(word: str) -> str:
    return normalise_text(word, lowercase=True, strip_punctuation=True)


class EmissionDelays:
    """First- and final-token emission delay relative to the reference word's end, over aligned words,
    accumulated batch by batch.

    A reference word counts when the alignment pairs it with a hypothesis word (correct or substituted);
    its delay is (audio time at the end of the chunk that emitted the token) - (word end). Needs word
    timings in the references (Lhotse ``word`` alignments).
    """

    def __init__(self):
        self.first: list[float] = []
        self.final: list[float] = []
        self.matched = self.timed = 0

    def add(self, tokenizer, utts: list[Utterance], out: DecodeResult) -> None:
        for utt, toks, emits in zip(utts, out.tokens, out.emit_s or []):
            if not utt.words:
                continue
            self.timed += 1
            hyp = hypothesis_words(tokenizer, toks, emits)
            ops = align([_match_form(w) for w, _, _ in utt.words], [_match_form(w) for w, _, _ in hyp])
            for op, i, j in ops:
                if op in ("=", "S"):
                    end = utt.words[i][2]
                    self.first.append(hyp[j][1] - end)
                    self.final.append(hyp[j][2] - end)
                    self.matched += op == "="

    def summary(self) -> dict | None:
        """Percentiles over every aligned word; None when no utterance had word timings."""
        if not self.timed:
            return None
        first, final = self.first, self.final
        return {
            "utts_with_timings": self.timed,
            "aligned_words": len(first),
            "correct_words": self.matched,
            "first_token_ms_p50": None if not first else 1000 * percentile(first, 50),
            "first_token_ms_p95": None if not first else 1000 * percentile(first, 95),
            "final_token_ms_p50": None if not final else 1000 * percentile(final, 50),
            "final_token_ms_p95": None if not final else 1000 * percentile(final, 95),
        }


def emission_delays(tokenizer, utts: list[Utterance], out: DecodeResult) -> dict | None:
    """:class:`EmissionDelays` of one decoding pass."""
    acc = EmissionDelays()
    acc.add(tokenizer, utts, out)
    return acc.summary()


# ----- decoding and scoring ---------------------------------------------------------------------------
@dataclass
class TestSetSource:
    name: str
    cuts: Path  # a cuts file or Shar dir


@dataclass
class _Tally:
    """Scores and timings of one model on one test set (or ``all``) in one chunk mode and decode."""

    scores: Scores = field(default_factory=Scores.zero)
    utts: int = 0
    audio_us: int = 0
    decode_s: float = 0.0
    step_s: list[float] = field(default_factory=list)

    @property
    def audio_s(self) -> float:
        return self.audio_us / 1e6

    def add(self, total: Scores, batch: list[Utterance], decode_s: float, step_s: list[float]) -> None:
        self.scores += total
        self.utts += len(batch)
        self.audio_us += audio_us(batch)
        self.decode_s += decode_s
        self.step_s += step_s


def audio_us(batch: list[Utterance]) -> int:
    """The batch's audio in whole microseconds: summed as integers, a test set's total does not depend on the
    order its batches come in (float sums do, in the last digit, and the order follows the batch size)."""
    return sum(round(u.duration_s * 1e6) for u in batch)


def _hyp_row(label: str, test_set: str, utt: Utterance, mode: ChunkMode, decode: str, decoding: str, hyp: str,
             tokens: list[int], words: list[dict], sc: Scores, words_error: str | None) -> str:
    row = {
        "model": label, "test_set": test_set, "id": utt.id, "chunk_ms": mode.chunk_ms, "decode": decode,
        "decoding": decoding, "ref": utt.text, "hyp": hyp, "tokens": tokens, "words": words,
        "errors": sc.words.errors, "ref_words": sc.words.ref_words, "substitutions": sc.words.substitutions,
        "deletions": sc.words.deletions, "insertions": sc.words.insertions, "pnc_errors": sc.pnc.errors,
        "char_errors": sc.chars.errors}
    if words_error:
        row["words_error"] = words_error
    return json.dumps(row) + "\n"


def _words_of(tokenizer, out: DecodeResult, k: int, tokens: list[int], frame_s: float) -> tuple[list[dict], str | None]:
    """Hypothesis ``k``'s per-word extras (times, confidence), or none and why: an extra that fails for one
    hypothesis is counted and named, never the end of the evaluation (its scores do not depend on it)."""
    try:
        return word_timings(tokenizer, tokens, out.frames[k] if out.frames else [], frame_s,
                            out.emit_s[k] if out.emit_s else None,
                            out.token_confidence[k] if out.token_confidence else None), None
    except Exception as err:  # noqa: BLE001 - whatever an extra raises, the hypothesis and its scores stand
        return [], f"{type(err).__name__}: {err}"


class Manifests:
    """``--output-manifest``: one NeMo manifest (JSON lines with ``pred_text``) per model, test set, chunk mode and
    decode, as NeMo's Speech Data Explorer and other NeMo tools read them."""

    def __init__(self, out_dir: Path | None):
        self.out_dir = out_dir
        self.files: dict[str, TextIO] = {}

    def write(self, label: str, test_set: str, mode: ChunkMode, decode: str, utt: Utterance, hyp: str) -> None:
        if self.out_dir is None:
            return
        name = f"{label}_{test_set}_{mode.chunk_ms}ms_{decode}.json".replace("/", "-")
        if name not in self.files:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.files[name] = open(self.out_dir / name, "w")
        row = {"audio_filepath": utt.source, "offset": utt.offset_s, "duration": round(utt.duration_s, 4),
               "text": utt.text, "pred_text": hyp, "id": utt.id}
        self.files[name].write(json.dumps(row) + "\n")

    def close(self) -> list[Path]:
        for f in self.files.values():
            f.close()
        return [self.out_dir / n for n in self.files] if self.out_dir else []


def endpoint_methods(model, endpoint_cfg) -> dict:
    """The endpointing compared on multi-turn sets: the rules as configured, and the model's ``<EOU>`` token
    alone (no silence rule; the maximum segment length still applies) when its vocabulary has it."""
    from streamtune.streaming.endpoint import EndpointRules, eou_id

    rules = EndpointRules.from_config({**endpoint_cfg, "method": "rules"})
    methods = {"rules": rules}
    if eou_id(model.tokenizer, rules.eou_token) is not None:
        methods["eou"] = EndpointRules(method="eou", trailing_silence_s=None, leading_silence_s=rules.leading_silence_s,
                                       max_segment_s=rules.max_segment_s, eou_token=rules.eou_token)
    return methods


def evaluate_model(runner: StreamingRunner, label: str, sets: list[TestSetSource], modes: list[ChunkMode],
                   decodes: list[str], hyps: TextIO, decoding: str = "greedy", manifests: Manifests | None = None,
                   endpoint_cfg=None) -> tuple[list[ModeResult], list[dict], list[dict], dict, list[dict]]:
    """Decode every set in every mode and decode, streaming the test sets batch by batch.

    Audio is read per batch (``runner.batch_size`` utterances, sorted by duration within a window), turned into
    features and dropped; every hypothesis is written to ``hyps`` (JSON lines) as it is scored. Memory does not
    grow with the number of utterances. Returns (results, streaming-vs-offline entries, emission-delay rows,
    per-set statistics ``{name: {"utts", "audio_s", "word_timings", "word_extras_failed"}}``, turn-taking rows).

    Multi-turn recordings (``python -m data_prep turns``) are also streamed with endpointing, each method of
    :func:`endpoint_methods` (``endpoint_cfg``: the recipe's ``endpoint`` section), and scored per turn
    (:mod:`streamtune.evaluation.turns`).
    """
    from streamtune.evaluation.turns import TurnTally
    bad = [d for d in decodes if d not in DECODES]
    if bad:
        raise UserError(f"eval.decodes has {bad}; choose from {list(DECODES)}")
    from streamtune.progress import progress

    keys = [(mode, decode) for mode in modes for decode in decodes]
    pooled = {key: _Tally() for key in keys}
    results, equal, emissions, stats, turn_rows = [], [], [], {}, []
    tokenizer, frame_s = runner.model.tokenizer, runner.frame_s()
    methods = endpoint_methods(runner.model, endpoint_cfg or {}) if "streaming" in decodes and runner.carries else {}
    miss_window = float((endpoint_cfg or {}).get("miss_window_s", 2.0))
    for ts in sets:
        tallies = {key: _Tally() for key in keys}
        delays = {mode.chunk_ms: EmissionDelays() for mode in modes}
        differing = {mode.chunk_ms: 0 for mode in modes}
        turn_tallies: dict[tuple[int, str], TurnTally] = {}
        stat = stats[ts.name] = {"utts": 0, "audio_s": 0.0, "word_timings": True, "word_extras_failed": 0}
        set_us = 0
        batches = progress(utterance_batches(ts.cuts, runner.batch_size), f"[{label}] {ts.name}", unit="batch")
        for batch in batches:
            feats = [runner.features(u.audio) for u in batch]
            for u in batch:
                u.audio = None  # the features are all decoding needs
            stat["utts"] += len(batch)
            set_us += audio_us(batch)
            stat["audio_s"] = set_us / 1e6
            stat["word_timings"] &= all(u.words for u in batch)
            for mode in modes:
                tokens = {}
                for decode in decodes:
                    started = time.perf_counter()
                    out = getattr(runner, decode)(mode, feats)
                    elapsed = time.perf_counter() - started
                    tokens[decode] = out.tokens
                    total, per_utt = corpus_scores([u.text for u in batch], out.texts)
                    tallies[mode, decode].add(total, batch, elapsed, out.step_times)
                    pooled[mode, decode].add(total, batch, elapsed, out.step_times)
                    for k, (utt, hyp, toks, sc) in enumerate(zip(batch, out.texts, out.tokens, per_utt)):
                        words, words_error = _words_of(tokenizer, out, k, toks, frame_s)
                        stat["word_extras_failed"] += words_error is not None
                        hyps.write(_hyp_row(label, ts.name, utt, mode, decode, decoding, hyp, toks, words, sc,
                                            words_error))
                        if manifests is not None:
                            manifests.write(label, ts.name, mode, decode, utt, hyp)
                    if decode == "streaming":
                        delays[mode.chunk_ms].add(runner.model.tokenizer, batch, out)
                if "streaming" in tokens and "offline" in tokens:
                    differing[mode.chunk_ms] += sum(a != b for a, b in zip(tokens["streaming"], tokens["offline"]))
                sessions = [k for k, u in enumerate(batch) if u.turns]
                for method, rules in methods.items() if sessions else ():
                    out = runner.streaming(mode, [feats[k] for k in sessions], endpoint=rules)
                    tally = turn_tallies.setdefault((mode.chunk_ms, method), TurnTally())
                    tally.step_s += out.step_times
                    for k, segments in zip(sessions, out.segments):
                        finals = [(seg.end_s, tokenizer.ids_to_text(seg.tokens)) for seg in segments if seg.tokens]
                        tally.add(batch[k].turns, finals, miss_window)
        for (mode, decode), tally in tallies.items():
            results.append(_result(label, ts.name, mode, decode, decoding, tally.scores, tally.utts, tally.audio_s,
                                   tally.decode_s, runner.batch_size, tally.step_s))
        for mode in modes:
            if "streaming" in decodes and "offline" in decodes:
                equal.append({"model": label, "test_set": ts.name, "chunk_ms": mode.chunk_ms, "utts": stat["utts"],
                              "differing_utts": differing[mode.chunk_ms], "equal": differing[mode.chunk_ms] == 0})
            summary = delays[mode.chunk_ms].summary()
            if summary is not None:
                emissions.append({"model": label, "test_set": ts.name, "chunk_ms": mode.chunk_ms, **summary})
            for method, rules in methods.items():
                if (mode.chunk_ms, method) in turn_tallies:
                    turn_rows.append({"model": label, "test_set": ts.name, "chunk_ms": mode.chunk_ms, "method": method,
                                      "rules": asdict(rules), "miss_window_s": miss_window,
                                      **turn_tallies[mode.chunk_ms, method].summary()})
    if len(sets) > 1:
        for (mode, decode), tally in pooled.items():
            results.append(_result(label, ALL, mode, decode, decoding, tally.scores, tally.utts, tally.audio_s,
                                   tally.decode_s, runner.batch_size, tally.step_s))
    return results, equal, emissions, stats, turn_rows


@dataclass
class Evaluation:
    """Everything :func:`evaluate_models` measured, for ``streamtune.evaluation.reports.build_payload``."""

    results: list[ModeResult] = field(default_factory=list)
    streaming_equals_offline: list[dict] = field(default_factory=list)
    emission_delay: list[dict] = field(default_factory=list)
    latency: list[dict] = field(default_factory=list)
    chunk_ms: list[int] = field(default_factory=list)
    test_sets: dict = field(default_factory=dict)  # name -> {"utts", "audio_s", "word_timings", "word_extras_failed"}
    turn_taking: list[dict] = field(default_factory=list)  # multi-turn sets: streamtune.evaluation.turns rows


def evaluate_models(specs: list[ModelSpec], sets: list[TestSetSource], eval_cfg, hyps: TextIO,
                    device: str = "cpu", manifests: Manifests | None = None, endpoint_cfg=None) -> Evaluation:
    """Each model in turn (loaded, decoded, dropped): every set, chunk mode and decode, and the latency sweep
    on slices of the first set's first utterances."""
    from streamtune.evaluation.latency import algorithmic_latency, step_latency
    from streamtune.model.build import load_model
    from streamtune.model.chunks import select_modes
    from streamtune.streaming.decoding import decoding_from_config

    out = Evaluation()
    decodes = list(eval_cfg.decodes)
    decoding = decoding_from_config(eval_cfg)
    latency_utts = load_utterances(sets[0].cuts, max_audio_s=2 * float(eval_cfg.latency_audio_s))
    for spec in specs:
        model = load_model(spec.path, device=device)
        modes = select_modes(model, list(eval_cfg.chunk_ms))
        out.chunk_ms += [m.chunk_ms for m in modes if m.chunk_ms not in out.chunk_ms]
        runner = StreamingRunner(model, batch_size=eval_cfg.batch_size, device=device, decoding=decoding)
        print(f"[{spec.label}] decoding {len(sets)} test set(s) x {len(modes)} chunk modes x {decodes} "
              f"({decoding.label})", flush=True)
        results, equal, emissions, stats, turn_rows = evaluate_model(runner, spec.label, sets, modes, decodes, hyps,
                                                                     decoding.label, manifests, endpoint_cfg)
        out.turn_taking += turn_rows
        for name, stat in stats.items():  # the same sets for every model; failures add up over the models
            failed = out.test_sets.get(name, {}).get("word_extras_failed", 0)
            out.test_sets[name] = {**stat, "word_extras_failed": failed + stat["word_extras_failed"]}
        out.results += results
        out.streaming_equals_offline += equal
        out.emission_delay += emissions
        if "streaming" in decodes:
            from streamtune.progress import progress

            for mode in progress(modes, f"[{spec.label}] step latency", unit="mode"):
                for row in step_latency(model, mode, latency_utts, list(eval_cfg.latency_streams),
                                        float(eval_cfg.latency_audio_s), device):
                    out.latency.append({"model": spec.label, **algorithmic_latency(mode), **row})
        del model, runner
    return out
