"""End of turn, decided once for every streaming path (the runner behind evaluate.py, the live streams behind the
server): a stream is a session of segments; after every decoder step the rules below may close the current segment.

Methods:

* ``rules`` -- on the RNN-T's blank emissions, as sherpa-onnx's endpointing does (its rules 1-3): a segment ends
  once ``trailing_silence_s`` of encoder frames have passed without a token after something was decoded, or once it
  reaches ``max_segment_s``; a segment in which nothing was decoded for ``leading_silence_s`` restarts silently (no
  final: there was no turn).
* ``eou`` -- on the model's ``<EOU>`` token (a model fine-tuned to mark the end of a turn, see
  ``recipes/nemotron/eou.yaml``): the segment ends at the step that emitted it; the token is not part of the text.
  The silence rules still apply where set (a fallback when the token never comes; ``trailing_silence_s: null``
  leaves the token alone to decide), and ``max_segment_s`` always does: no segment runs unbounded.
* ``none`` -- one segment per stream, closed when the stream ends.

Silence is measured in encoder frames from the frame of the last token (NeMo's hypothesis timestamps), and decided
at the end of a step: a segment's end is known when the chunk that shows it has been decoded. At an endpoint the
caller resets the decoder (its hypothesis and prediction-net state: the next segment decodes as if alone) and
carries the encoder's caches on (the audio context is the conversation's; ``reset_encoder`` starts them afresh
too, and ``bench/endpointing.py`` measures both). Every token a step emitted belongs to the segment that step
closes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from streamtune.errors import UserError

METHODS = ("none", "rules", "eou")
EOU = "<EOU>"


@dataclass(frozen=True)
class EndpointRules:
    """When a segment ends (see the module doc). Times in seconds of audio; ``None`` turns a silence rule off."""

    method: str = "rules"
    # After something was decoded: this much audio without a token ends the turn. 0.8 s lets a speaker pause
    # within a turn (commas, breaths: 0.2-0.6 s in the generated turns) and answers well within a second after
    # the turn (BENCHMARKS.md, "Endpointing"); sherpa-onnx's default is 1.2 s.
    trailing_silence_s: float | None = 0.8
    # Nothing decoded for this long: the segment restarts (no final). sherpa-onnx's 2.4 s.
    leading_silence_s: float | None = 2.4
    # A segment is closed at this length whatever the rules say (sherpa-onnx: 20 s).
    max_segment_s: float = 20.0
    eou_token: str = EOU
    # At an endpoint, also start the encoder's attention and convolution caches afresh (the subsampling's few mel
    # frames of look-back are kept). Off: the conversation's audio context carries on (bench/endpointing.py
    # measures both).
    reset_encoder: bool = False

    def __post_init__(self):
        if self.method not in METHODS:
            raise UserError(f"endpoint.method '{self.method}': choose one of {', '.join(METHODS)}")
        for key in ("trailing_silence_s", "leading_silence_s", "max_segment_s"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise UserError(f"endpoint.{key} is {value!r}: a number of seconds above 0"
                                + (" (or null to turn the rule off)" if key != "max_segment_s" else ""))
        if self.max_segment_s is None:
            raise UserError("endpoint.max_segment_s is null: every segment needs a maximum length")
        for key in ("trailing_silence_s", "leading_silence_s"):
            value = getattr(self, key)
            if value is not None and value >= self.max_segment_s:
                raise UserError(f"endpoint.{key} {value:g} s is not below endpoint.max_segment_s "
                                f"{self.max_segment_s:g} s: the rule could never end a segment")
        if self.method == "eou" and not self.eou_token:
            raise UserError("endpoint.method eou needs endpoint.eou_token (the model's end-of-turn token)")

    @classmethod
    def from_config(cls, cfg) -> EndpointRules:
        """From a recipe's ``endpoint`` section (or any mapping with its keys)."""
        keys = ("method", "trailing_silence_s", "leading_silence_s", "max_segment_s", "eou_token", "reset_encoder")
        return cls(**{k: cfg[k] for k in keys if k in cfg})

    def token_id(self, tokenizer) -> int | None:
        """The end-of-turn token's id: required under ``eou`` (a clear error when the model has none); under the
        other methods the id when the model has the token (it is left out of the text), else None."""
        eou = eou_id(tokenizer, self.eou_token)
        if eou is None and self.method == "eou":
            raise UserError(f"endpoint.method eou: the model's tokenizer has no '{self.eou_token}' piece; append it "
                            f"(model.add_tokens=['{self.eou_token}']) and fine-tune for turns "
                            "(recipes/nemotron/eou.yaml), or use endpoint.method=rules")
        return eou


def default_rules(tokenizer) -> EndpointRules:
    """What a server uses unless told otherwise: the ``<EOU>`` token when the model has it (with the silence rule
    at twice its default as a fallback, for the turn whose token never comes), else the rules."""
    if eou_id(tokenizer) is not None:
        return EndpointRules(method="eou", trailing_silence_s=2 * EndpointRules.trailing_silence_s)
    return EndpointRules()


def describe(rules: EndpointRules) -> str:
    """One line: the method and the rules in force."""
    if rules.method == "none":
        return "none (one segment per stream, ended by the client)"
    parts = [f"<EOU> token '{rules.eou_token}'"] if rules.method == "eou" else []
    if rules.trailing_silence_s is not None:
        parts.append(f"{rules.trailing_silence_s:g} s of silence after speech")
    if rules.leading_silence_s is not None:
        parts.append(f"restart after {rules.leading_silence_s:g} s with nothing decoded")
    parts.append(f"at most {rules.max_segment_s:g} s per segment")
    return f"{rules.method} ({', '.join(parts)})"


def eou_id(tokenizer, piece: str = EOU) -> int | None:
    """The id of ``piece`` in a NeMo SentencePiece tokenizer, None when it has no such piece."""
    spm = getattr(tokenizer, "tokenizer", None)
    if spm is None or not hasattr(spm, "piece_to_id"):
        return None
    idx = int(spm.piece_to_id(piece))
    return idx if idx != spm.unk_id() and spm.id_to_piece(idx) == piece else None


@dataclass
class Segment:
    """A closed segment of a stream: its tokens (without ``<EOU>``), when each token was available (audio seconds
    at the end of the chunk that emitted it) and its encoder frame (from the stream's start), where the segment
    started, when it was closed (the audio time of the end of the chunk that decided it) and why: ``silence``,
    ``eou``, ``max_length``, ``forced`` (the client), ``end`` (the stream ended)."""

    index: int
    tokens: list[int]
    emit_s: list[float]
    frames: list[int]
    start_s: float
    end_s: float
    reason: str
    # The end of the last token's encoder frame (None for an empty segment): where the speech ended, as the
    # decoder saw it.
    speech_end_s: float | None = None


@dataclass
class Turns:
    """One stream's segments: feed it what every decoder step emitted; it says when the current segment ends.

    ``frame_s`` is the audio per encoder frame; ``eou`` the end-of-turn token's id (:meth:`EndpointRules.token_id`).
    """

    rules: EndpointRules
    frame_s: float
    eou: int | None = None
    index: int = 0
    start_frame: int = 0
    tokens: list[int] = field(default_factory=list)
    emit_s: list[float] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    saw_eou: bool = False
    decoded: int = 0  # encoder frames of the stream decoded so far
    hyp_start: int = 0  # the frame the current hypothesis started at (its timestamps count from it)
    seen: int = 0  # tokens of the current hypothesis taken in

    def step(self, hyp_tokens: list[int], hyp_stamps: list[int], step_frames: int, at_s: float) -> Segment | None:
        """A decoder step decoded ``step_frames`` more frames into the stream's current hypothesis, which now holds
        ``hyp_tokens`` with their timestamps; the audio up to ``at_s`` seconds has been decoded. Returns the
        segment this step closes, if it does: the caller then starts the decoder afresh (a None hypothesis)."""
        if len(hyp_stamps) != len(hyp_tokens):
            raise RuntimeError(f"the decoder gave {len(hyp_stamps)} timestamps for {len(hyp_tokens)} tokens")
        self.decoded += step_frames
        new = hyp_tokens[self.seen:]
        frames = [self.hyp_start + t for t in hyp_stamps[self.seen:]]
        self.seen = len(hyp_tokens)
        return self.advance(new, frames, self.decoded, at_s)

    @property
    def silence_frames(self) -> tuple[int | None, int | None, int]:
        """(trailing, leading, maximum) in encoder frames: at least the rule's seconds."""
        r = self.rules
        frames = lambda s: None if s is None else max(1, math.ceil(s / self.frame_s - 1e-6))  # noqa: E731
        return frames(r.trailing_silence_s), frames(r.leading_silence_s), frames(r.max_segment_s)

    def advance(self, new_tokens: list[int], new_frames: list[int], frames_now: int, at_s: float) -> Segment | None:
        """A decoder step emitted ``new_tokens`` at encoder frames ``new_frames`` (counted from the stream's start);
        the stream has ``frames_now`` encoder frames decoded, the audio up to ``at_s`` seconds. Returns the segment
        this step closes, if it does (the caller then resets the decoder); a silent restart returns None and moves
        the segment's start."""
        self.decoded = frames_now
        for token, frame in zip(new_tokens, new_frames):
            if token == self.eou:  # never part of the text; it ends the turn under the eou method
                self.saw_eou = self.rules.method == "eou"
                continue
            self.tokens.append(token)
            self.emit_s.append(at_s)
            self.frames.append(frame)
        if self.rules.method == "none":
            return None
        trailing, leading, longest = self.silence_frames
        length = frames_now - self.start_frame
        if self.saw_eou:
            return self.close(at_s, "eou")
        if self.tokens:
            if trailing is not None and frames_now - (self.frames[-1] + 1) >= trailing:
                return self.close(at_s, "silence")
            if length >= longest:
                return self.close(at_s, "max_length")
        elif (leading is not None and length >= leading) or length >= longest:
            self.start_frame = frames_now  # nothing was said: no turn, the segment starts again
            return None
        return None

    def close(self, at_s: float, reason: str) -> Segment:
        """Close the current segment (at an endpoint, a forced end, or the stream's end: ``at_s`` seconds of audio
        decoded) and start the next at the frames decoded so far."""
        frames_now = self.decoded
        speech_end = round((self.frames[-1] + 1) * self.frame_s, 4) if self.frames else None
        segment = Segment(self.index, self.tokens, self.emit_s, self.frames, round(self.start_frame * self.frame_s, 4),
                          round(at_s, 4), reason, speech_end)
        self.index += 1
        self.start_frame = frames_now
        self.hyp_start, self.seen = frames_now, 0  # the caller starts the decoder afresh
        self.tokens, self.emit_s, self.frames, self.saw_eou = [], [], [], False
        return segment
