"""Model sizes as recipe overrides (applied on the demo recipe), shared by tests and benchmarks.

``FULL``: nvidia/nemotron-speech-streaming-en-0.6b's encoder, decoder and joint sizes (24 layers, d_model 1024,
8 heads, 128 mels, 2-layer LSTM prediction net of 640, joint 640, from its .nemo's config), for measurements with random
weights. ``TINY``: the demo geometry in miniature (same class, same four chunk modes), so that the test suite trains
real models in seconds.
"""

from __future__ import annotations

FULL = [
    "model.encoder.n_layers=24",
    "model.encoder.d_model=1024",
    "model.encoder.n_heads=8",
    "model.encoder.subsampling_conv_channels=256",
    "model.preprocessor.features=128",
    "model.model_defaults.pred_hidden=640",
    "model.model_defaults.joint_hidden=640",
    "model.decoder.prednet.pred_rnn_layers=2",
]

TINY = [
    "model.encoder.n_layers=1",
    "model.encoder.d_model=32",
    "model.encoder.n_heads=2",
    "model.encoder.subsampling_conv_channels=16",
    "model.model_defaults.pred_hidden=32",
    "model.model_defaults.joint_hidden=32",
    "model.preprocessor.features=40",
]


def with_layers(overrides: list[str], layers: int) -> list[str]:
    """``overrides`` with the encoder's layer count replaced."""
    return [o for o in overrides if not o.startswith("model.encoder.n_layers=")] + [f"model.encoder.n_layers={layers}"]
