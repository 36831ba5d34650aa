"""Streaming parity on the target's full geometry: 24 layers, d_model 1024, 128 mels (random weights; slow)."""

from __future__ import annotations

import pytest
import torch

from streamtune.data.reading import load_utterances
from streamtune.model.chunks import chunk_modes
from streamtune.streaming.runner import StreamingRunner
from tests.helpers import DEMO_RECIPE, seeded


@pytest.mark.slow
def test_full_size_encoder_streams_like_offline(tiny_overrides, corpus):
    from bench.geometry import FULL, TINY
    from streamtune.config.loading import load_config
    from streamtune.model.build import build_model

    overrides = [o for o in tiny_overrides if o not in TINY] + FULL
    torch.manual_seed(seeded(0))
    model = build_model(load_config(DEMO_RECIPE, overrides)).eval()
    assert sum(p.numel() for p in model.encoder.parameters()) > 500e6
    runner = StreamingRunner(model, batch_size=3)
    feats = [runner.features(u.audio) for u in load_utterances(corpus / "cuts_test.jsonl.gz", max_utts=3)]
    for mode in chunk_modes(model):
        offline = runner.offline(mode, feats, keep_encoded=True)
        streaming = runner.streaming(mode, feats, keep_encoded=True)
        diff = max(float((a - b).abs().max()) for a, b in zip(offline.encoded, streaming.encoded))
        print(f"{mode}: encoder max abs diff {diff:.2e}")
        assert streaming.tokens == offline.tokens, mode
        assert diff < 1e-4, f"{mode}: {diff:.2e}"
    # For the record: NeMo's zero-filled look-back at 80 ms on this geometry.
    mode = next(m for m in chunk_modes(model) if m.chunk_ms == 80)
    zero_filled = StreamingRunner(model, batch_size=3, zero_fill_pre_cache=True).streaming(mode, feats,
                                                                                           keep_encoded=True)
    offline = runner.offline(mode, feats, keep_encoded=True)
    diff = max(float((a - b).abs().max()) for a, b in zip(offline.encoded, zero_filled.encoded))
    print(f"{mode} with NeMo's zero-filled look-back: encoder max abs diff {diff:.2e}")
    assert diff > 1e-4
