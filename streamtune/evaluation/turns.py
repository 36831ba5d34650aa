"""Turn-taking scores of a multi-turn test set (``python -m data_prep turns``): how soon each turn's final arrives
after the turn's speech ended, how often a turn is cut before it ended, how often no final comes, and the WER of
the segmented transcript.

Per reference turn ``k`` (speech from ``s_k`` to ``e_k``) and the finals of the stream (non-empty segments; the
time of a final is ``end_s``, the audio time of the end of the chunk that closed it):

* a final at ``s_k < t < e_k`` cuts turn ``k`` early (its speaker had not finished);
* the first final at ``e_k <= t <= min(e_k + miss_window_s, s_{k+1})`` answers turn ``k``: its latency is ``t - e_k``
  of audio (the earliest the final could be sent); "with compute" adds the median wall time of a decoding step of
  the run (what the server adds before it can send it);
* a turn without such a final is missed.

The segmented transcript (the finals' texts in order) is scored against the turns' texts joined, as every other
WER here (headline and PnC).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streamtune.evaluation.metrics import Scores, score


@dataclass
class TurnTally:
    """Turn-taking counts of one (model, test set, chunk mode, endpointing method), summed over sessions."""

    sessions: int = 0
    turns: int = 0
    early: int = 0
    missed: int = 0
    finals: int = 0
    latencies_s: list[float] = field(default_factory=list)
    scores: Scores = field(default_factory=Scores.zero)
    step_s: list[float] = field(default_factory=list)

    def add(self, turns: list[tuple[float, float, str]], finals: list[tuple[float, str]], miss_window_s: float,
            step_s: list[float] = ()) -> None:
        """One session: its reference ``turns`` (start, end, text) and its ``finals`` (time, text), in order."""
        self.sessions += 1
        self.turns += len(turns)
        self.finals += len(finals)
        self.step_s += list(step_s)
        for k, (start, end, _) in enumerate(turns):
            if any(start < t < end for t, _ in finals):
                self.early += 1
            until = min(end + miss_window_s, turns[k + 1][0] if k + 1 < len(turns) else float("inf"))
            answer = next((t for t, _ in finals if end <= t <= until), None)
            if answer is None:
                self.missed += 1
            else:
                self.latencies_s.append(answer - end)
        self.scores += score(" ".join(text for _, _, text in turns), " ".join(text for _, text in finals))

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_s, dtype=float)
        compute = float(np.median(self.step_s)) if self.step_s else 0.0
        pct = lambda q, extra=0.0: round(float(np.percentile(lat, q)) + extra, 4) if len(lat) else None  # noqa: E731
        return {
            "sessions": self.sessions, "turns": self.turns, "finals": self.finals,
            "latency_s": {"p50": pct(50), "p90": pct(90), "p95": pct(95)},
            "latency_with_compute_s": {"p50": pct(50, compute), "p90": pct(90, compute), "p95": pct(95, compute)},
            "median_step_s": round(compute, 5),
            "early_cutoff_rate": round(self.early / self.turns, 4) if self.turns else None,
            "miss_rate": round(self.missed / self.turns, 4) if self.turns else None,
            "wer": round(self.scores.words.wer, 5), "wer_pnc": round(self.scores.pnc.wer, 5),
            "ref_words": self.scores.words.ref_words,
        }
