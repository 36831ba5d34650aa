"""Cache-aware streaming reproduces offline decoding in every chunk mode, 80 ms included."""

from __future__ import annotations

import pytest
import torch

from streamtune.data.reading import load_utterances
from streamtune.model.chunks import chunk_modes
from streamtune.streaming.runner import StreamingRunner
from tests.helpers import DEMO_RECIPE, seeded


@pytest.fixture(scope="module")
def random_model(tiny_overrides):
    """An untrained tiny model whose blank never wins: max_symbols tokens at every frame, chosen by the random
    weights from the encoder's output, so token parity is a real check whatever the seed (an untrained model's
    own output may be nearly all blanks)."""
    from streamtune.config.loading import load_config
    from streamtune.model.build import build_model

    cfg = load_config(DEMO_RECIPE, tiny_overrides)
    torch.manual_seed(seeded(0))
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.joint.joint_net[-1].bias[model.decoder.blank_idx] -= 1e4
    return model


@pytest.fixture(scope="module")
def feats(random_model, corpus):
    runner = StreamingRunner(random_model)
    return [runner.features(u.audio) for u in load_utterances(corpus / "cuts_test.jsonl.gz")]


def _max_diff(a, b):
    assert all(x.shape == y.shape for x, y in zip(a, b))
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


@pytest.mark.parametrize("chunk_ms", [1120, 560, 160, 80])
def test_streaming_equals_offline(random_model, feats, chunk_ms):
    mode = next(m for m in chunk_modes(random_model) if m.chunk_ms == chunk_ms)
    runner = StreamingRunner(random_model, batch_size=3)
    offline = runner.offline(mode, feats, keep_encoded=True)
    streaming = runner.streaming(mode, feats, keep_encoded=True)
    assert sum(len(t) for t in offline.tokens) > 10, "the check needs hypotheses with tokens in them"
    assert streaming.tokens == offline.tokens
    diff = _max_diff(offline.encoded, streaming.encoded)
    assert diff < 1e-4, f"encoder outputs differ by {diff:.3e} at {chunk_ms} ms"


def test_nemo_zero_filled_pre_cache_is_what_breaks_80ms(random_model, feats):
    """NeMo's buffer zero-fills the subsampling look-back; at 80 ms that changes the encoder output."""
    mode = next(m for m in chunk_modes(random_model) if m.chunk_ms == 80)
    offline = StreamingRunner(random_model).offline(mode, feats, keep_encoded=True)
    zero_filled = StreamingRunner(random_model, zero_fill_pre_cache=True).streaming(mode, feats, keep_encoded=True)
    assert _max_diff(offline.encoded, zero_filled.encoded) > 1e-3
    wide = next(m for m in chunk_modes(random_model) if m.chunk_ms == 160)  # first chunk >= 9 frames: no zeros used
    offline = StreamingRunner(random_model).offline(wide, feats, keep_encoded=True)
    zero_filled = StreamingRunner(random_model, zero_fill_pre_cache=True).streaming(wide, feats, keep_encoded=True)
    assert _max_diff(offline.encoded, zero_filled.encoded) < 1e-4


@pytest.mark.parametrize("chunk_ms", [160, 80])
def test_results_do_not_depend_on_batch_size(random_model, feats, chunk_ms):
    """Utterances of different lengths as 1, 3 or 8 concurrent streams: same tokens, same emission times."""
    mode = next(m for m in chunk_modes(random_model) if m.chunk_ms == chunk_ms)
    assert len({f.shape[1] for f in feats}) > 3, "the check needs streams that end at different steps"
    runs = [StreamingRunner(random_model, batch_size=bs).streaming(mode, feats) for bs in (1, 3, 8)]
    assert runs[0].tokens == runs[1].tokens == runs[2].tokens
    assert runs[0].emit_s == runs[1].emit_s == runs[2].emit_s
    assert [len(e) for e in runs[0].emit_s] == [len(t) for t in runs[0].tokens]
    assert runs[2].step_streams[0] == 8 and len(runs[2].step_times) == len(runs[2].step_streams)


@pytest.mark.parametrize("target", ["EncDecHybridRNNTCTCBPEModel", "EncDecRNNTBPEModel"])
def test_both_model_classes_load_and_stream_with_their_rnnt_head(tiny_overrides, corpus, tmp_path, target):
    """The target model is EncDecRNNTBPEModel, and EncDecHybridRNNTCTCBPEModel in some ports (the demo trains a
    hybrid): load_model and the runner handle both, streaming giving offline's tokens."""
    from omegaconf import open_dict

    from streamtune.config.loading import load_config
    from streamtune.model.build import load_model
    from streamtune.model.nemo_config import model_class, nemo_model_config

    model_cfg = nemo_model_config(load_config(DEMO_RECIPE, tiny_overrides))
    if target == "EncDecRNNTBPEModel":
        with open_dict(model_cfg):
            del model_cfg["aux_ctc"]
    torch.manual_seed(seeded(0))
    path = tmp_path / "model.nemo"
    model_class(f"nemo.collections.asr.models.{target}")(cfg=model_cfg).save_to(str(path))
    model = load_model(path)
    assert type(model).__name__ == target and getattr(model, "cur_decoder", "rnnt") == "rnnt"
    runner = StreamingRunner(model, batch_size=4)
    feats = [runner.features(u.audio) for u in load_utterances(corpus / "cuts_test.jsonl.gz")]
    mode = next(m for m in chunk_modes(model) if m.chunk_ms == 80)
    offline, streaming = runner.offline(mode, feats, keep_encoded=True), runner.streaming(mode, feats,
                                                                                          keep_encoded=True)
    assert streaming.tokens == offline.tokens and sum(map(len, offline.tokens)) > 0
    assert _max_diff(offline.encoded, streaming.encoded) < 1e-4


def test_the_runner_and_the_live_streams_share_one_streaming_rule():
    """Windows, drops, the encoder and decoder steps and token extraction are streaming.chunking's, in both the
    runner and the live streams (the same function objects), and neither writes the rule again; the server's
    exactness tests (test_serve) show their tokens equal."""
    import inspect

    from streamtune.streaming import chunking, endpoint, live, runner

    shared = ("ChunkGeometry", "encoder_step", "decoder_step", "hypothesis_tokens", "hypothesis_stamps", "sample_rate")
    for name in shared:
        assert getattr(runner, name) is getattr(chunking, name) is getattr(live, name), name
    assert runner.Turns is endpoint.Turns is live.Turns  # and one endpointing rule
    for module in (runner, live):
        source = inspect.getsource(module)
        for rewritten in ("cache_aware_stream_step(", "rnnt_decoder_predictions_tensor(", "pre_encode_cache_size",
                          "chunk_size[", "y_sequence.tolist", "_sample_rate"):
            assert rewritten not in source, f"{module.__name__} writes {rewritten!r} itself"
