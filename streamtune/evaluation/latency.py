"""Latency of streaming: what waiting for audio costs (algorithmic), and per-step compute at N concurrent streams."""

from __future__ import annotations

import numpy as np
import torch

from streamtune.data.reading import Utterance
from streamtune.evaluation.stats import percentile
from streamtune.model.chunks import ChunkMode
from streamtune.streaming.runner import StreamingRunner


def step_latency(model, mode: ChunkMode, utts: list[Utterance], streams: list[int], audio_s: float,
                 device: str | torch.device = "cpu") -> list[dict]:
    """Per-step compute at each number of concurrent streams (every stream ``audio_s`` long, all full steps).

    The streams are different slices of the test audio laid end to end, so no two streams are identical.
    """
    rate = 16000
    pool = np.concatenate([u.audio for u in utts])
    need = int(audio_s * rate)
    while len(pool) < need * 2:
        pool = np.concatenate([pool, pool])
    warm = StreamingRunner(model, batch_size=1, device=device)
    warm.streaming(mode, [warm.features(pool[: rate])])  # first-call costs (allocations, kernels) out of the way
    rows = []
    for n in streams:
        runner = StreamingRunner(model, batch_size=n, device=device)
        offsets = np.linspace(0, len(pool) - need, n).astype(int) if n > 1 else [0]
        feats = [runner.features(pool[o: o + need]) for o in offsets]
        out = runner.streaming(mode, feats)
        full = [t for t, k in zip(out.step_times, out.step_streams) if k == n]
        p50, p95 = 1000 * percentile(full, 50), 1000 * percentile(full, 95)
        rows.append({"chunk_ms": mode.chunk_ms, "streams": n, "steps": len(full),
                     "step_ms_p50": p50, "step_ms_p95": p95,
                     "realtime": p95 <= mode.chunk_ms,  # every chunk's compute done before the next chunk arrives
                     "rtfx": n * audio_s / sum(out.step_times)})
    return rows


def algorithmic_latency(mode: ChunkMode) -> dict:
    """What waiting for audio costs, before any compute: a chunk's first frame waits for the whole chunk."""
    return {"chunk_ms": mode.chunk_ms, "att_context": mode.att_context,
            "lookahead_ms": mode.right * mode.frame_ms, "algorithmic_latency_ms": mode.chunk_ms}
