"""The joint's fused CPU hidden layer (streamtune/ops/joint.py) against NeMo's own RNNTJoint."""

from __future__ import annotations

import math

import pytest
import torch

from streamtune.ops.joint import use_fast_joint


def _joint(dropout: float, activation: str = "relu", seed: int = 0):
    from nemo.collections.asr.modules import RNNTJoint

    torch.manual_seed(seed)
    joint = RNNTJoint(jointnet={"encoder_hidden": 24, "pred_hidden": 20, "joint_hidden": 32,
                                "activation": activation, "dropout": dropout}, num_classes=11)
    return joint.train()


def _inputs(batch=3, frames=17, nodes=6, seed=1):
    generator = torch.Generator().manual_seed(seed)
    encoder = torch.randn(batch, 24, frames, generator=generator, requires_grad=True)  # NeMo's [B, D, T]
    decoder = torch.randn(batch, 20, nodes, generator=generator, requires_grad=True)
    return encoder, decoder


def _fused(out: torch.Tensor) -> bool:
    """Whether the fused pass is in ``out``'s autograd graph (not NeMo's fallback)."""
    stack, seen = [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "ReluDropoutSum" in type(node).__name__:
            return True
        stack.extend(n for n, _ in node.next_functions)
    return False


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to float32 summation order: gradients sum thousands of terms, in another order here."""
    return float((a - b).abs().max()) <= 1e-5 * max(1.0, float(b.abs().max()))


def _grads(out, joint, encoder, decoder, grad_seed=2):
    """Gradients of ``out`` (against a fixed random output gradient) for the inputs and every joint parameter."""
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed))
    return torch.autograd.grad(out, [encoder, decoder, *joint.parameters()], grad)


def _run(joint, encoder, decoder):
    out = joint(encoder_outputs=encoder, decoder_outputs=decoder)
    return out, _grads(out, joint, encoder, decoder)


def test_without_dropout_equals_nemos_joint_in_value_and_every_gradient():
    nemo, ours = _joint(0.0), _joint(0.0)
    assert use_fast_joint(ours)
    encoder, decoder = _inputs()
    out_a, grads_a = _run(nemo, encoder, decoder)
    out_b, grads_b = _run(ours, encoder, decoder)
    assert _fused(out_b) and not _fused(out_a)
    assert torch.allclose(out_a, out_b, rtol=0, atol=1e-6)  # log-softmaxed on CPU in both (NeMo's rule)
    assert len(grads_a) == len(grads_b) == 2 + 6  # inputs, then enc / pred projections and output layer
    for a, b in zip(grads_a, grads_b):
        assert _close(a, b), (a - b).abs().max()


def test_dropout_is_inverted_dropout_drawn_from_torchs_generator():
    p = 0.3
    joint = _joint(p)
    assert use_fast_joint(joint)
    encoder, decoder = _inputs(batch=4, frames=60, nodes=25)
    f = joint.project_encoder(encoder.transpose(1, 2)).detach()
    g = joint.project_prednet(decoder.transpose(1, 2)).detach()
    seen = {}

    def capture(module, inputs, output):
        seen["hidden"] = inputs[0].detach()  # the output layer's input: dropout(relu(f + g))

    handle = joint.joint_net[-1].register_forward_hook(capture)
    torch.manual_seed(7)
    out_1, grads_1 = _run(joint, encoder, decoder)
    hidden = seen["hidden"]
    torch.manual_seed(7)
    out_2, _ = _run(joint, encoder, decoder)
    out_3, _ = _run(joint, encoder, decoder)

    def hidden_with(threads: int) -> torch.Tensor:  # 2: two halves on the pool's threads; 1: one pass
        torch.set_num_threads(threads)
        torch.manual_seed(7)
        _run(joint, encoder, decoder)
        return seen["hidden"]

    threads = torch.get_num_threads()
    try:
        two, one = hidden_with(2), hidden_with(1)
    finally:
        torch.set_num_threads(threads)
    handle.remove()
    assert torch.equal(two, hidden) and torch.equal(one, hidden), "the mask does not depend on the thread count"
    assert _fused(out_1)
    assert torch.equal(out_1, out_2), "torch.manual_seed (and so a restored RNG state) gives the same mask"
    assert not torch.equal(out_2, out_3), "each call draws a new mask"

    z = f[:, :, None] + g[:, None]
    kept = hidden != 0
    assert torch.allclose(hidden[kept], z[kept] / (1 - p), rtol=1e-6, atol=1e-7)
    assert bool((z[kept] > 0).all()), "only positive (relu) elements survive"
    positive = int((z > 0).sum())
    rate = int(kept.sum()) / positive
    sigma = math.sqrt(p * (1 - p) / positive)
    assert abs(rate - (1 - p)) < 5 * sigma, f"kept {rate:.4f} of {positive}, expected {1 - p} +- {5 * sigma:.4f}"

    # Gradients: those of relu(f + g) * mask / (1 - p) with the mask the forward drew.
    encoder_2, decoder_2 = encoder.detach().clone().requires_grad_(), decoder.detach().clone().requires_grad_()
    f2 = joint.project_encoder(encoder_2.transpose(1, 2))
    g2 = joint.project_prednet(decoder_2.transpose(1, 2))
    reference_hidden = torch.relu(f2[:, :, None] + g2[:, None]) * kept / (1 - p)
    reference = joint.joint_net[-1](reference_hidden).log_softmax(-1)
    grads_ref = _grads(reference, joint, encoder_2, decoder_2)
    for a, b in zip(grads_1, grads_ref):
        assert _close(a, b), (a - b).abs().max()


@pytest.mark.parametrize("case", ["eval", "tanh"])
def test_anything_else_runs_nemos_code_unchanged(case):
    nemo = _joint(0.2, activation="tanh" if case == "tanh" else "relu")
    ours = _joint(0.2, activation="tanh" if case == "tanh" else "relu")
    installed = use_fast_joint(ours)
    assert installed == (case != "tanh"), "a tanh joint is left alone"
    if case == "eval":
        nemo.eval(), ours.eval()
    encoder, decoder = _inputs()
    torch.manual_seed(3)
    out_a = nemo(encoder_outputs=encoder, decoder_outputs=decoder)
    torch.manual_seed(3)
    out_b = ours(encoder_outputs=encoder, decoder_outputs=decoder)
    assert torch.equal(out_a, out_b) and not _fused(out_b)


def test_training_models_get_it_and_saved_models_do_not(tiny_overrides, tmp_path):
    from streamtune.config.loading import load_config
    from streamtune.model.build import build_model, load_model, save_model
    from streamtune.ops.joint import _joint_after_projection
    from tests.helpers import DEMO_RECIPE

    model = build_model(load_config(DEMO_RECIPE, tiny_overrides), log=lambda _: None)
    assert model.joint.joint_after_projection.__func__ is _joint_after_projection
    path = save_model(model, tmp_path / "m.nemo")
    restored = load_model(path)
    assert "joint_after_projection" not in vars(restored.joint), "nothing of it is saved: plain NeMo restores"
    assert restored.cfg.joint._target_.endswith("RNNTJoint")
