"""Multi-turn recordings for endpointing, made from any prepared single-utterance cuts (``python -m data_prep
turns``): a session is a few turns separated by pauses of drawn length; a turn is one utterance, and some turns
have a short within-turn pause (a hesitation mid-sentence: silence put into the quietest gap between words in the
middle of the utterance, so the speech around it does not sound finished). Every utterance's silence is trimmed
(1 % of its peak), so a turn's reference end is where its speech ends. Each session is one recording with one
supervision per turn (start, duration, text; times to the microsecond, so a boundary names its sample), as
``evaluate.py`` reads multi-turn test sets; the within-turn pauses are kept in the supervision's ``custom``.
Deterministic from the seed; the source cuts are only read.

Training data for an end-of-turn token is the same thing with one turn per recording, a drawn stretch of silence
after it (the post-padding the model learns to end the turn in) and the token appended to the text
(``--turns 1 1 --tail-s 0.5 2.0 --append-token '<EOU>'``): new cuts and audio beside the user's corpus, which is
left as it is (mix it back in as plain data: ``data.train: [[eou, 0.9], [plain, 0.1]]``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamtune.data.reading import SAMPLE_RATE, load_utterances
from streamtune.errors import UserError


@dataclass(frozen=True)
class TurnPlan:
    """How sessions are drawn (seconds): turns per session, the pause between turns, the within-turn pause and how
    often a turn has one, the silence before the first turn and after the last."""

    turns: tuple[int, int] = (2, 4)
    gap_s: tuple[float, float] = (1.5, 3.0)
    pause_s: tuple[float, float] = (0.2, 0.5)
    pause_prob: float = 0.5
    lead_s: tuple[float, float] = (0.3, 1.0)
    tail_s: tuple[float, float] = (3.0, 3.0)
    append_token: str | None = None  # appended to every turn's text (no space): "Yes.<EOU>"

    def check(self) -> None:
        for name in ("turns", "gap_s", "pause_s", "lead_s", "tail_s"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise UserError(f"turns: --{name.replace('_', '-')} {low} {high} is not a range 0 < low <= high")
        if self.pause_s[1] >= self.gap_s[0]:
            raise UserError(f"turns: the within-turn pause (up to {self.pause_s[1]:g} s) must be shorter than the "
                            f"pause between turns (from {self.gap_s[0]:g} s), or the two cannot be told apart")
        if not 0 <= self.pause_prob <= 1:
            raise UserError(f"turns: --pause-prob {self.pause_prob} is not a share in [0, 1]")
        if self.append_token is not None and (not self.append_token or any(c.isspace() for c in self.append_token)):
            raise UserError(f"turns: --append-token {self.append_token!r} is not a token (no spaces)")


def trim(audio: np.ndarray, floor: float = 0.01) -> np.ndarray:
    """``audio`` without the silence before and after it (samples under ``floor`` x its peak)."""
    peak = float(np.abs(audio).max()) if len(audio) else 0.0
    loud = np.flatnonzero(np.abs(audio) > floor * peak) if peak > 0 else []
    return audio[loud[0]: loud[-1] + 1] if len(loud) else audio[:0]


def quiet_point(speech: np.ndarray, window: int = 480) -> int:
    """The sample at the centre of the quietest ``window`` (30 ms) between 30 % and 70 % of ``speech``: a gap
    between words, where a speaker could hesitate."""
    lo, hi = int(0.3 * len(speech)), int(0.7 * len(speech))
    if hi - lo <= window:
        return len(speech) // 2
    energy = np.convolve(speech[lo:hi] ** 2, np.ones(window, dtype=np.float32), mode="valid")
    return lo + int(np.argmin(energy)) + window // 2


def prepare_turns(cuts: str | Path, out_dir: str | Path, sessions: int, seed: int = 0, plan: TurnPlan = TurnPlan(),
                  id_prefix: str = "turns") -> Path:
    """Write ``sessions`` multi-turn recordings built from the utterances of ``cuts`` into ``out_dir``
    (``audio/<id>.wav``, ``cuts_turns.jsonl.gz``); returns the cuts file. Utterances with a ``[tag]`` (a sound,
    not speech) are not used: a turn ends where its speech ends."""
    import soundfile as sf
    from lhotse import CutSet, Recording, SupervisionSegment
    from lhotse.cut import MonoCut

    plan.check()
    if sessions < 1:
        raise UserError("turns: --sessions must be at least 1")
    pool = [u for u in load_utterances(cuts) if "[" not in u.text and u.text.strip()]
    if len(pool) < plan.turns[1]:
        raise UserError(f"turns: {cuts} has {len(pool)} usable utterances (text, no [tags]); at least "
                        f"{plan.turns[1]} are needed")
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    order = list(range(len(pool)))
    rng.shuffle(order)
    taken = 0

    def next_utterance():
        nonlocal taken
        utt = pool[order[taken % len(order)]]
        taken += 1
        return utt

    def silence(seconds: float) -> np.ndarray:
        return np.zeros(int(round(seconds * SAMPLE_RATE)), dtype=np.float32)

    made = []
    for k in range(sessions):
        sid = f"{id_prefix}-{k:05d}"
        pieces, at = [silence(rng.uniform(*plan.lead_s))], 0
        at = len(pieces[0])
        sups = []
        for t in range(rng.randint(*plan.turns)):
            if t:
                pieces.append(silence(rng.uniform(*plan.gap_s)))
                at += len(pieces[-1])
            utt = next_utterance()
            speech, start, pauses = trim(utt.audio), at, []
            if rng.random() < plan.pause_prob:
                cut_at = quiet_point(speech)
                pause = silence(rng.uniform(*plan.pause_s))
                begins = (at + cut_at) / SAMPLE_RATE
                pauses.append([round(begins, 6), round(begins + len(pause) / SAMPLE_RATE, 6)])
                speech = np.concatenate([speech[:cut_at], pause, speech[cut_at:]])
            pieces.append(speech)
            at += len(speech)
            sups.append(SupervisionSegment(
                id=f"{sid}-t{t}", recording_id=sid, start=round(start / SAMPLE_RATE, 6),
                duration=round((at - start) / SAMPLE_RATE, 6), text=utt.text + (plan.append_token or ""),
                language="en", custom={"pauses": pauses, "source": utt.id}))
        pieces.append(silence(rng.uniform(*plan.tail_s)))
        path = out_dir / "audio" / f"{sid}.wav"
        sf.write(path, np.concatenate(pieces), SAMPLE_RATE, subtype="PCM_16")
        rec = Recording.from_file(path, recording_id=sid)
        made.append(MonoCut(id=sid, start=0.0, duration=rec.duration, channel=0, recording=rec, supervisions=sups))
    out = out_dir / "cuts_turns.jsonl.gz"
    CutSet.from_cuts(made).to_file(out)
    turns = sum(len(c.supervisions) for c in made)
    print(f"wrote {sessions} sessions ({turns} turns, {sum(c.duration for c in made) / 60:.1f} min) to {out}")
    return out
