"""An exact RNN-T loss that is fast on CPU (and correct on GPU), registered with NeMo as ``loss_name: streamtune``.

NeMo's CPU RNN-T losses walk the (t, u) lattice in Python: ``pytorch`` with one autograd node per cell (each
backward node materialises a full-size zero gradient), ``warprnnt_numba`` with 0-d tensor operations per cell.
Both are unusable beyond a few seconds of audio (docs/rnnt_loss.md; BENCHMARKS.md, "RNN-T loss on CPU"). This module
computes the same function in three vectorised passes:

1. **Normalisation**: from the joint's output ``[B, T, U+1, V]`` only two numbers per lattice node are needed,
   the log-probability of blank and of the next label. One log-softmax per utterance (a temporary of one
   utterance's size, so peak memory stays near the input's) gives both.
2. **Forward-backward** in float64 over the small ``[B, T, U+1]`` node tensors. Within one frame ``t`` the
   label moves make alpha a log-cumulative-sum along ``u``::

       alpha[t, u] = Y[t, u] + logcumsumexp_{k<=u}( alpha[t-1, k] + blank[t-1, k] - Y[t, k] )

   with ``Y[t, u]`` the sum of the first ``u`` label log-probabilities at frame ``t`` (and mirrored for beta),
   so the loop runs over frames only, each step a few whole-row tensor operations. Float64 keeps the
   differences of large cumulative sums exact to ~1e-13.
3. **Gradient**, analytically: with ``P_blank`` and ``P_label`` the posterior of each lattice edge,
   ``d loss / d logits = softmax(logits) * (P_blank + P_label) - P_blank * 1[v=blank] - P_label * 1[v=label]``.
   One softmax pass per utterance writes the gradient in place; nothing else of full size is allocated.

FastEmit (Yu et al. 2021) follows NeMo's ``warprnnt_numba`` exactly: the loss value is ``(1 + lambda)`` times
the negative log-likelihood, and the label edges' posteriors are scaled by ``(1 + lambda)`` in the gradient.

Use :func:`rnnt_loss` directly, or select it in a recipe with ``model.loss.loss_name: streamtune`` (and
``model.loss.streamtune_kwargs.fastemit_lambda``) after :func:`register` has run (streamtune's model loading
calls it).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

LOSS_NAME = "streamtune"


def _check(logits: torch.Tensor, targets: torch.Tensor, logit_lengths: torch.Tensor,
           target_lengths: torch.Tensor, blank: int) -> None:
    if logits.dim() != 4:
        raise ValueError(f"rnnt_loss: logits must be [B, T, U+1, V], got shape {tuple(logits.shape)}")
    batch, frames, nodes, vocab = logits.shape
    if targets.dim() != 2 or targets.shape[0] != batch or targets.shape[1] < nodes - 1:
        raise ValueError(f"rnnt_loss: targets must be [B, >= U] = [{batch}, >= {nodes - 1}], "
                         f"got {tuple(targets.shape)}")
    if not 0 <= blank < vocab:
        raise ValueError(f"rnnt_loss: blank {blank} is outside the vocabulary of {vocab}")
    if logit_lengths.shape != (batch,) or target_lengths.shape != (batch,):
        raise ValueError("rnnt_loss: logit_lengths and target_lengths must be [B]")
    short = (logit_lengths < 1).nonzero().flatten().tolist()
    if short:
        raise ValueError(f"rnnt_loss: batch items {short} have no encoder frames (logit length < 1): the audio is "
                         "shorter than one encoder frame; raise data.min_duration_s")
    if int(logit_lengths.max()) > frames or int(target_lengths.max()) > nodes - 1 or int(target_lengths.min()) < 0:
        raise ValueError(f"rnnt_loss: lengths exceed the logits' shape {tuple(logits.shape)}")


# Elements of the joint output handled per step of the full-size passes: in+out (8 MB in float32) stay in cache.
CHUNK_ELEMENTS = 1 << 20


def _chunks(logit_lengths: torch.Tensor, target_lengths: torch.Tensor, vocab: int):
    """``(b, t0, t1, nodes_b)`` blocks covering each utterance's own lattice, padding skipped."""
    for b, (n_t, n_u) in enumerate(zip(logit_lengths.tolist(), target_lengths.tolist())):
        nodes = n_u + 1
        step = max(1, CHUNK_ELEMENTS // (nodes * vocab))
        for t0 in range(0, n_t, step):
            yield b, t0, min(n_t, t0 + step), nodes


def _edge_log_probs(logits: torch.Tensor, labels: torch.Tensor, logit_lengths: torch.Tensor,
                    target_lengths: torch.Tensor, blank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blank ``[B, T, U+1]`` and next-label ``[B, T, U]`` log-probabilities (float64; 0 outside each lattice)."""
    batch, frames, nodes, vocab = logits.shape
    blank_lp = torch.zeros(batch, frames, nodes, dtype=torch.float64, device=logits.device)
    label_lp = torch.zeros(batch, frames, max(nodes - 1, 0), dtype=torch.float64, device=logits.device)
    buffer = logits.new_empty(min(logits.numel(), CHUNK_ELEMENTS + nodes * vocab))
    for b, t0, t1, n in _chunks(logit_lengths, target_lengths, vocab):
        x = logits[b, t0:t1, :n]
        lsm = buffer[: x.numel()].view(x.shape)
        # torch 2.13: aten's private _log_softmax.out writes into a reused buffer (no full-size temporary).
        torch.ops.aten._log_softmax.out(x, -1, False, out=lsm)
        blank_lp[b, t0:t1, :n] = lsm[..., blank]
        if n > 1:
            index = labels[b, : n - 1].view(1, -1, 1).expand(t1 - t0, -1, 1)
            label_lp[b, t0:t1, : n - 1] = lsm[:, : n - 1].gather(-1, index).squeeze(-1)
    return blank_lp, label_lp


@numba.njit(cache=True, nogil=True)
def _log_add(a: float, b: float) -> float:
    if a == -np.inf:
        return b
    if b == -np.inf:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


@numba.njit(cache=True, nogil=True)
def _lattice(blank, label, frames, labels, alpha, beta, log_like):  # pragma: no cover - compiled
    """alpha / beta of every utterance over its own (T_b, U_b + 1) lattice; other nodes stay -inf."""
    for b in range(blank.shape[0]):
        n_t, n_u = frames[b], labels[b]
        alpha[b, 0, 0] = 0.0
        for u in range(1, n_u + 1):
            alpha[b, 0, u] = alpha[b, 0, u - 1] + label[b, 0, u - 1]
        for t in range(1, n_t):
            alpha[b, t, 0] = alpha[b, t - 1, 0] + blank[b, t - 1, 0]
            for u in range(1, n_u + 1):
                alpha[b, t, u] = _log_add(alpha[b, t - 1, u] + blank[b, t - 1, u],
                                          alpha[b, t, u - 1] + label[b, t, u - 1])
        last = n_t - 1
        beta[b, last, n_u] = blank[b, last, n_u]
        for u in range(n_u - 1, -1, -1):
            beta[b, last, u] = beta[b, last, u + 1] + label[b, last, u]
        for t in range(last - 1, -1, -1):
            beta[b, t, n_u] = beta[b, t + 1, n_u] + blank[b, t, n_u]
            for u in range(n_u - 1, -1, -1):
                beta[b, t, u] = _log_add(beta[b, t + 1, u] + blank[b, t, u], beta[b, t, u + 1] + label[b, t, u])
        log_like[b] = beta[b, 0, 0]


@numba.njit(cache=True, nogil=True)
def _posteriors(blank, label, frames, labels, alpha, beta, log_like, scale, label_scale,
                p_blank, p_label):  # pragma: no cover - compiled
    """Posterior of every blank and label edge, times the utterance's output gradient (label edges also times
    1 + FastEmit lambda). Zero outside each lattice."""
    for b in range(blank.shape[0]):
        n_t, n_u = frames[b], labels[b]
        for t in range(n_t):
            for u in range(n_u + 1):
                after = 0.0 if (t == n_t - 1 and u == n_u) else (beta[b, t + 1, u] if t < n_t - 1 else -np.inf)
                p_blank[b, t, u] = scale[b] * math.exp(alpha[b, t, u] + blank[b, t, u] + after - log_like[b])
                if u < n_u:
                    p_label[b, t, u] = label_scale[b] * math.exp(
                        alpha[b, t, u] + label[b, t, u] + beta[b, t, u + 1] - log_like[b])


def _forward_backward(blank_lp: torch.Tensor, label_lp: torch.Tensor, logit_lengths: torch.Tensor,
                      target_lengths: torch.Tensor):
    """alpha, beta ``[B, T, U+1]`` and log P(y|x) ``[B]``, float64 numpy (computed on the CPU whatever the device)."""
    blank = blank_lp.detach().to("cpu", torch.float64).numpy()
    label = label_lp.detach().to("cpu", torch.float64).numpy()
    frames = logit_lengths.cpu().numpy()
    labels = target_lengths.cpu().numpy()
    alpha = np.full(blank.shape, -np.inf)
    beta = np.full(blank.shape, -np.inf)
    log_like = np.empty(blank.shape[0])
    _lattice(blank, label, frames, labels, alpha, beta, log_like)
    return blank, label, frames, labels, alpha, beta, log_like


class _RNNTLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, logit_lengths, target_lengths, blank, fastemit_lambda):
        logits = logits.contiguous()
        labels = targets[:, : logits.shape[2] - 1].clamp(0, logits.shape[-1] - 1)  # padding may hold any id
        blank_lp, label_lp = _edge_log_probs(logits, labels, logit_lengths, target_lengths, blank)
        ctx.lattice = _forward_backward(blank_lp, label_lp, logit_lengths, target_lengths)
        ctx.save_for_backward(logits, labels, logit_lengths, target_lengths)
        ctx.blank, ctx.fastemit_lambda = blank, fastemit_lambda
        log_like = torch.from_numpy(ctx.lattice[-1]).to(logits.device)
        return (-(1.0 + fastemit_lambda) * log_like).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        logits, labels, logit_lengths, target_lengths = ctx.saved_tensors
        blank_lp, label_lp, frames, lengths, alpha, beta, log_like = ctx.lattice
        del ctx.lattice
        scale = grad_out.detach().to("cpu", torch.float64).numpy()
        p_blank = np.zeros(blank_lp.shape)
        p_label = np.zeros(label_lp.shape)
        _posteriors(blank_lp, label_lp, frames, lengths, alpha, beta, log_like, scale,
                    scale * (1.0 + ctx.fastemit_lambda), p_blank, p_label)
        occupancy = p_blank.copy()
        occupancy[:, :, :-1] += p_label  # every path through a node leaves it by one of its two edges

        def as_tensor(a):
            return torch.from_numpy(a).to(logits.device, logits.dtype)

        occupancy, p_blank, p_label = as_tensor(occupancy).unsqueeze(-1), as_tensor(p_blank), as_tensor(-p_label)
        grad = torch.empty_like(logits)
        nodes, vocab = logits.shape[2], logits.shape[3]
        for b, (n_t, n_u) in enumerate(zip(logit_lengths.tolist(), target_lengths.tolist())):
            grad[b, n_t:] = 0
            grad[b, :n_t, n_u + 1:] = 0
        for b, t0, t1, n in _chunks(logit_lengths, target_lengths, vocab):
            g = grad[b, t0:t1, :n]
            if n == nodes:  # contiguous: aten's private _softmax.out (torch 2.13) writes it in place, no temporary
                torch.ops.aten._softmax.out(logits[b, t0:t1], -1, False, out=g)
            else:
                g.copy_(torch.softmax(logits[b, t0:t1, :n], -1))
            g.mul_(occupancy[b, t0:t1, :n])
            g[..., ctx.blank] -= p_blank[b, t0:t1, :n]
            if n > 1:
                index = labels[b, : n - 1].view(1, -1, 1).expand(t1 - t0, -1, 1)
                g[:, : n - 1].scatter_add_(-1, index, p_label[b, t0:t1, : n - 1].unsqueeze(-1))
        return grad, None, None, None, None, None


def rnnt_loss(logits: torch.Tensor, targets: torch.Tensor, logit_lengths: torch.Tensor, target_lengths: torch.Tensor,
              blank: int, fastemit_lambda: float = 0.0) -> torch.Tensor:
    """Per-utterance RNN-T negative log-likelihood ``[B]`` (times ``1 + fastemit_lambda``).

    ``logits``: the joint's output ``[B, T, U+1, V]``, unnormalised or log-softmaxed (the loss normalises, so both
    give the same result); ``targets`` ``[B, >=U]`` (padding may hold any id); ``logit_lengths`` (frames, >= 1)
    and ``target_lengths`` ``[B]``. Half-precision logits are computed in float32; the lattice in float64.
    """
    logit_lengths = logit_lengths.to(device=logits.device, dtype=torch.long)
    target_lengths = target_lengths.to(device=logits.device, dtype=torch.long)
    targets = targets.to(device=logits.device, dtype=torch.long)
    _check(logits, targets, logit_lengths, target_lengths, blank)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return _RNNTLoss.apply(logits, targets, logit_lengths, target_lengths, blank, float(fastemit_lambda))


class StreamtuneRNNTLoss(torch.nn.Module):
    """:func:`rnnt_loss` in the shape NeMo's ``RNNTLoss`` wrapper calls its inner losses (``reduction`` set by it)."""

    KWARGS = ("fastemit_lambda",)

    def __init__(self, blank: int, reduction: str | None = None, fastemit_lambda: float = 0.0):
        super().__init__()
        if fastemit_lambda < 0:
            raise ValueError(f"model.loss.{LOSS_NAME}_kwargs.fastemit_lambda must be >= 0, got {fastemit_lambda}")
        self.blank = blank
        self.reduction = reduction
        self.fastemit_lambda = float(fastemit_lambda)

    def forward(self, acts, labels, act_lens, label_lens):
        losses = rnnt_loss(acts, labels, act_lens, label_lens, self.blank, self.fastemit_lambda)
        if self.reduction in (None, "none"):
            return losses
        if self.reduction == "sum":
            return losses.sum()
        return losses.mean()


def register() -> None:
    """Make ``model.loss.loss_name: streamtune`` resolvable by NeMo's ``RNNTLoss`` (idempotent).

    NeMo (3.0.0) resolves loss names through ``RNNT_LOSS_RESOLVER`` and an if/elif chain in ``resolve_rnnt_loss``
    and has no registration hook; we add our entry to the first and answer for our name in front of the second
    (both public names, patched in place). Other names go to NeMo unchanged.
    """
    from nemo.collections.asr.losses import rnnt as nemo_rnnt

    if LOSS_NAME in nemo_rnnt.RNNT_LOSS_RESOLVER:
        return
    nemo_rnnt.RNNT_LOSS_RESOLVER[LOSS_NAME] = nemo_rnnt.RNNTLossConfig(
        loss_name=LOSS_NAME, lib_name="torch", min_version="0.0", is_available=True,
        installation_msg="streamtune.ops.rnnt_loss (pip install streamtune)", force_float32=True)
    nemo_resolve = nemo_rnnt.resolve_rnnt_loss

    def resolve_rnnt_loss(loss_name: str, blank_idx: int, loss_kwargs: dict = None):
        if loss_name != LOSS_NAME:
            return nemo_resolve(loss_name, blank_idx, loss_kwargs)
        from omegaconf import OmegaConf

        kwargs = dict(OmegaConf.to_container(loss_kwargs, resolve=True) if OmegaConf.is_config(loss_kwargs)
                      else loss_kwargs or {})
        unknown = sorted(set(kwargs) - set(StreamtuneRNNTLoss.KWARGS))
        if unknown:
            raise ValueError(f"model.loss.{LOSS_NAME}_kwargs: unknown key(s) {unknown}; "
                             f"it takes {list(StreamtuneRNNTLoss.KWARGS)}")
        return StreamtuneRNNTLoss(blank=blank_idx, **kwargs)

    resolve_rnnt_loss.__doc__ = nemo_resolve.__doc__
    nemo_rnnt.resolve_rnnt_loss = resolve_rnnt_loss


def portable_loss_config(loss_cfg) -> dict | None:
    """The model's ``loss`` section as plain NeMo can read it: ``streamtune`` becomes NeMo's default loss
    (``warprnnt_numba``, the same function) with the same FastEmit lambda. Other configs are returned as they are.

    A ``.nemo`` is restored by whoever receives it, usually without streamtune installed.
    """
    from omegaconf import OmegaConf

    if loss_cfg is None:
        return None
    loss = OmegaConf.to_container(loss_cfg, resolve=True) if OmegaConf.is_config(loss_cfg) else dict(loss_cfg)
    if loss.get("loss_name") != LOSS_NAME:
        return loss
    ours = loss.pop(f"{LOSS_NAME}_kwargs", None) or {}
    numba_kwargs = dict(loss.get("warprnnt_numba_kwargs") or {})
    numba_kwargs["fastemit_lambda"] = float(ours.get("fastemit_lambda", 0.0))
    loss.update(loss_name="default", warprnnt_numba_kwargs=numba_kwargs)
    return loss
