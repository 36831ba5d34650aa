"""streamtune.ops.rnnt_loss.rnnt_loss against NeMo's own RNN-T losses: same values and gradients, edge cases, wiring."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from streamtune.ops.rnnt_loss import rnnt_loss

# (B, T, U, V): ragged batches, single frames, empty targets, one-symbol vocabularies, U > T.
SHAPES = [
    (1, 1, 0, 2), (1, 1, 1, 2), (2, 1, 3, 5), (3, 2, 0, 4), (4, 5, 0, 4), (3, 7, 4, 6), (5, 9, 6, 11),
    (2, 3, 8, 7), (6, 12, 5, 9), (1, 20, 10, 13), (8, 6, 3, 3), (4, 15, 15, 17), (2, 25, 4, 33),
    (3, 4, 12, 5), (7, 10, 7, 8), (2, 30, 12, 6), (5, 2, 2, 129), (3, 16, 9, 65), (1, 40, 20, 10),
    (6, 8, 1, 12), (2, 11, 11, 2), (4, 1, 5, 9),
]


def _random_batch(shape, seed: int, dtype=torch.float64):
    batch, frames, labels, vocab = shape
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(batch, frames, labels + 1, vocab, generator=gen, dtype=dtype)
    logit_lengths = torch.randint(1, frames + 1, (batch,), generator=gen)
    target_lengths = torch.randint(0, labels + 1, (batch,), generator=gen)
    logit_lengths[0], target_lengths[0] = frames, labels  # the longest sets the padded shape, as in a real batch
    blank = vocab - 1 if seed % 2 else 0  # NeMo puts blank last; the loss must not care
    targets = torch.randint(0, vocab - 1, (batch, labels), generator=gen)
    if blank == 0:
        targets += 1  # labels are every id but the blank
    for b in range(batch):  # padding holds arbitrary ids, as NeMo's collate leaves them
        targets[b, int(target_lengths[b]):] = torch.randint(0, vocab, (labels - int(target_lengths[b]),), generator=gen)
    return logits, targets, logit_lengths, target_lengths, blank


def _grad(fn, logits):
    x = logits.clone().requires_grad_(True)
    losses = fn(x)
    weights = torch.linspace(0.5, 1.5, losses.numel(), dtype=losses.dtype)  # distinct per-utterance output grads
    (losses * weights).sum().backward()
    return losses.detach(), x.grad


def _nemo_pytorch(logits, targets, logit_lengths, target_lengths, blank):
    """NeMo's ``pytorch`` loss in float64 (it builds its alpha table with the default dtype)."""
    from nemo.collections.asr.losses.rnnt_pytorch import RNNTLossPytorch

    loss = RNNTLossPytorch(blank=blank, reduction=None)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return _grad(lambda x: loss(acts=x, labels=targets, act_lens=logit_lengths, label_lens=target_lengths), logits)
    finally:
        torch.set_default_dtype(previous)


def _close(ours, theirs, what: str, shape) -> None:
    rel = ((ours - theirs).abs() / theirs.abs().clamp_min(1e-12)).max().item()
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-9), f"{what} differs for {shape}: max rel {rel:.2e}"


@pytest.mark.parametrize("seed,shape", list(enumerate(SHAPES)))
def test_equals_nemo_pytorch_loss_and_gradient(seed, shape):
    logits, targets, t_len, u_len, blank = _random_batch(shape, seed)
    ref_loss, ref_grad = _nemo_pytorch(logits, targets[:, : shape[2]], t_len, u_len, blank)
    loss, grad = _grad(lambda x: rnnt_loss(x, targets, t_len, u_len, blank), logits)
    _close(loss, ref_loss, "loss", shape)
    _close(grad, ref_grad, "gradient", shape)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    # Padding (frames past T_b, nodes past U_b) gets exactly zero gradient.
    for b in range(shape[0]):
        assert not grad[b, int(t_len[b]):].any() and not grad[b, :, int(u_len[b]) + 1:].any()


@pytest.mark.parametrize("fastemit_lambda", [0.0, 0.001, 0.01, 0.5])
@pytest.mark.parametrize("shape", [(3, 6, 4, 7), (2, 9, 0, 5), (4, 12, 7, 11), (1, 1, 3, 4)])
def test_fastemit_equals_nemo_numba(shape, fastemit_lambda):
    """FastEmit as NeMo's warprnnt_numba defines it: loss (1 + lambda) x NLL, label edges' gradient (1 + lambda) x."""
    from nemo.collections.asr.parts.numba.rnnt_loss.rnnt_pytorch import RNNTLossNumba

    logits, targets, t_len, u_len, blank = _random_batch(shape, 3)
    numba_loss = RNNTLossNumba(blank=blank, reduction=None, fastemit_lambda=fastemit_lambda)
    ref_loss, ref_grad = _grad(lambda x: numba_loss(x, targets[:, : shape[2]], t_len, u_len).double(), logits)
    loss, grad = _grad(lambda x: rnnt_loss(x, targets, t_len, u_len, blank, fastemit_lambda), logits)
    _close(loss, ref_loss, "loss", shape)  # NeMo's numba returns its costs in float32: 1e-6 relative still holds
    _close(grad, ref_grad, "gradient", shape)


def test_logits_or_log_probs_give_the_same_result():
    """NeMo's joint log-softmaxes on CPU and not on GPU: the loss normalises itself, so both inputs agree."""
    logits, targets, t_len, u_len, blank = _random_batch((3, 8, 5, 9), 1)
    a, ga = _grad(lambda x: rnnt_loss(x, targets, t_len, u_len, blank), logits)
    b, gb = _grad(lambda x: rnnt_loss(x.log_softmax(-1), targets, t_len, u_len, blank), logits)
    assert torch.allclose(a, b, rtol=1e-12) and torch.allclose(ga, gb, rtol=1e-9, atol=1e-12)


def test_float32_and_bfloat16_inputs():
    logits, targets, t_len, u_len, blank = _random_batch((4, 30, 12, 33), 5)
    exact = rnnt_loss(logits, targets, t_len, u_len, blank)
    single = rnnt_loss(logits.float(), targets, t_len, u_len, blank)
    assert single.dtype == torch.float32 and torch.allclose(single.double(), exact, rtol=1e-5)
    x = logits.bfloat16().requires_grad_(True)
    half = rnnt_loss(x, targets, t_len, u_len, blank)
    half.sum().backward()
    assert half.dtype == torch.float32 and torch.isfinite(half).all() and x.grad.dtype == torch.bfloat16


def test_long_utterances_stay_finite():
    """40 s of audio (500 frames), 200 labels, a confident model: float64 lattice, no underflow to -inf or NaN."""
    gen = torch.Generator().manual_seed(0)
    logits = 8 * torch.randn(2, 500, 201, 17, generator=gen)
    targets = torch.randint(0, 16, (2, 200), generator=gen)
    x = logits.requires_grad_(True)
    loss = rnnt_loss(x, targets, torch.tensor([500, 420]), torch.tensor([200, 150]), blank=16)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and (loss > 0).all() and torch.isfinite(x.grad).all()


def test_bad_shapes_and_lengths_are_clear_errors():
    logits, targets, t_len, u_len, blank = _random_batch((3, 6, 4, 7), 0)
    no_frames = t_len.clone()
    no_frames[1] = 0
    with pytest.raises(ValueError, match=r"batch items \[1\] have no encoder frames"):
        rnnt_loss(logits, targets, no_frames, u_len, blank)
    with pytest.raises(ValueError, match="exceed"):
        rnnt_loss(logits, targets, t_len + 10, u_len, blank)
    with pytest.raises(ValueError, match=r"\[B, T, U\+1, V\]"):
        rnnt_loss(logits[0], targets, t_len, u_len, blank)
    with pytest.raises(ValueError, match="blank 7"):
        rnnt_loss(logits, targets, t_len, u_len, 7)


def test_registered_by_name_in_nemo_and_errors_on_unknown_kwargs():
    from nemo.collections.asr.losses.rnnt import RNNTLoss

    from streamtune.ops.rnnt_loss import register

    register()
    register()  # idempotent
    logits, targets, t_len, u_len, blank = _random_batch((3, 6, 4, 7), 1)
    loss = RNNTLoss(num_classes=blank, loss_name="streamtune", loss_kwargs={"fastemit_lambda": 0.01},
                    reduction="mean_batch")
    value = loss(log_probs=logits, targets=targets, input_lengths=t_len, target_lengths=u_len)
    expected = rnnt_loss(logits, targets, t_len, u_len, blank, 0.01).mean()
    assert torch.allclose(value.double(), expected.double(), rtol=1e-6)
    assert RNNTLoss(num_classes=blank, loss_name="pytorch")._loss.__class__.__name__ == "RNNTLossPytorch"
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['fastemit_lamda'\]"):
        RNNTLoss(num_classes=blank, loss_name="streamtune", loss_kwargs={"fastemit_lamda": 0.01})


@pytest.mark.e2e
def test_portable_config_restores_in_plain_nemo(tmp_path, corpus):
    """A .nemo trained with loss_name streamtune restores in a process where streamtune never ran (a fresh Python
    with NeMo: the second tier)."""
    from bench.geometry import TINY
    from streamtune.config.loading import load_config
    from streamtune.model.build import build_model, save_model
    from tests.helpers import DEMO_RECIPE

    cfg = load_config(DEMO_RECIPE, [*TINY, f"model.tokenizer_dir={corpus / 'tokenizer'}", "data.dev=null",
                                     f"data.train={corpus / 'cuts_train.jsonl.gz'}", "model.loss.loss_name=streamtune",
                                     "+model.loss.streamtune_kwargs.fastemit_lambda=0.004"])
    model = build_model(cfg, log=lambda _: None)
    assert type(model.loss._loss).__name__ == "StreamtuneRNNTLoss" and model.loss._loss.fastemit_lambda == 0.004
    path = save_model(model, tmp_path / "final.nemo")
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file left behind"
    code = ("from nemo.collections.asr.models import ASRModel; import sys; "
            "m = ASRModel.restore_from(sys.argv[1], map_location='cpu'); "
            "print(m.cfg.loss.loss_name, type(m.loss._loss).__name__, m.loss._loss.fastemit_lambda)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-3:] == ["default", "RNNTLossNumba", "0.004"]
