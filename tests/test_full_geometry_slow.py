"""Streaming parity on the target's full geometry: 24 layers, d_model 1024, 128 mels (random weights; slow)."""

from __future__ import annotations

import pytest
import torch

from streamtune.data import load_utterances
from streamtune.models import chunk_modes
from streamtune.streaming import StreamingRunner

# nemotron-speech-streaming-en-0.6b's encoder, decoder and joint sizes (see NEMO_NOTES.md).
FULL_GEOMETRY = [
    "model.encoder.n_layers=24",
    "model.encoder.d_model=1024",
    "model.encoder.n_heads=8",
    "model.encoder.subsampling_conv_channels=256",
    "model.preprocessor.features=128",
    "model.model_defaults.pred_hidden=640",
    "model.model_defaults.joint_hidden=640",
    "model.decoder.prednet.pred_rnn_layers=2",
]


@pytest.mark.slow
def test_full_size_encoder_streams_like_offline(tiny_overrides, corpus):
    from streamtune.config import load_config
    from streamtune.models import build_model
    from tests.conftest import DEMO_RECIPE, TINY_MODEL

    overrides = [o for o in tiny_overrides if o not in TINY_MODEL] + FULL_GEOMETRY
    torch.manual_seed(0)
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
    zero_filled = StreamingRunner(model, batch_size=3, zero_fill_pre_cache=True).streaming(mode, feats, keep_encoded=True)
    offline = runner.offline(mode, feats, keep_encoded=True)
    diff = max(float((a - b).abs().max()) for a, b in zip(offline.encoded, zero_filled.encoded))
    print(f"{mode} with NeMo's zero-filled look-back: encoder max abs diff {diff:.2e}")
    assert diff > 1e-4
