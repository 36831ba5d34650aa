"""The RNN-T joint's hidden layer fused on CPU for training: ``relu(f + g)`` with dropout in one pass each way.

NeMo's joint computes ``Linear(Dropout(ReLU(f[:, :, None] + g[:, None])))`` over ``[B, T, U+1, H]``. On real-length
speech that tensor dominates a CPU step (BENCHMARKS.md, "Training on real-length speech"): the broadcast sum, the
ReLU and the dropout each make a full-size pass, and torch's CPU dropout draws its mask one serial random number
per element, the larger part of the joint's time on a long batch. Here one compiled pass (split over torch's
thread count) computes the hidden layer and a 1-byte mask, and one pass back gives both gradients (sums over ``u``
and over ``t``, float64 accumulators). The BENCHMARKS.md section times a long batch's step part by part, with
NeMo's joint and with this one.

The dropout is exact inverted dropout: each element is kept with probability ``1 - p`` (to 2^-53: the top 53 bits
of a SplitMix64 hash of the element's index, as torch's own ``bernoulli_`` compares a 53-bit double) and scaled by
``1 / (1 - p)``. The hash's seed is one draw from torch's default generator per call, so ``torch.manual_seed`` and
a restored RNG state (exact resume) give the same masks; the stream differs from ``torch.nn.Dropout``'s.

:func:`use_fast_joint` installs it on a model's joint (the instance only: nothing is saved in a ``.nemo``, whose
config still names NeMo's ``RNNTJoint``). It applies in training mode on float32 CPU tensors with a ``relu`` joint
and no adapters or label masking; anything else (GPU, evaluation, other activations) runs NeMo's code unchanged.
"""

from __future__ import annotations

import types
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0


@numba.njit(cache=True, nogil=True)
def _forward_rows(f, g, seed, threshold, scale, out, keep, r0, r1):  # pragma: no cover - compiled
    """Rows ``r = b * T + t`` in ``[r0, r1)``: ``out = relu(f + g) * keep * scale`` and the mask ``keep``.

    Branch-free over ``h`` (contiguous slices) so that the compiler vectorises it, hash included."""
    frames, nodes, hidden = f.shape[1], g.shape[1], f.shape[2]
    golden = np.uint64(0x9E3779B97F4A7C15)
    m1 = np.uint64(0xBF58476D1CE4E5B9)
    m2 = np.uint64(0x94D049BB133111EB)
    s30, s27, s31, s11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
    for r in range(r0, r1):
        f_row = f[r // frames, r % frames]
        for u in range(nodes):
            base = (r * nodes + u) * hidden
            g_row = g[r // frames, u]
            o = out[base:base + hidden]
            k = keep[base:base + hidden]
            first = np.uint64(base + 1)
            for h in range(hidden):
                z = f_row[h] + g_row[h]
                x = seed + (first + np.uint64(h)) * golden  # SplitMix64 of (seed, element index)
                x = (x ^ (x >> s30)) * m1
                x = (x ^ (x >> s27)) * m2
                x = x ^ (x >> s31)
                kept = (z > 0) & ((x >> s11) >= threshold)
                k[h] = kept
                o[h] = z * scale * np.float32(kept)


@numba.njit(cache=True, nogil=True)
def _backward_rows(grad, keep, scale, grad_f, grad_g, r0, r1):  # pragma: no cover - compiled
    """Rows in ``[r0, r1)``: ``grad_f[b, t] = scale * sum_u grad * keep``; this call's share of ``grad_g``
    (unscaled, float64)."""
    frames, nodes, hidden = grad_f.shape[1], grad_g.shape[1], grad_f.shape[2]
    acc = np.empty(hidden)
    for r in range(r0, r1):
        acc[:] = 0.0
        for u in range(nodes):
            base = (r * nodes + u) * hidden
            gr = grad[base:base + hidden]
            k = keep[base:base + hidden]
            out_g = grad_g[r // frames, u]
            for h in range(hidden):
                v = gr[h] * np.float32(k[h])
                acc[h] += v
                out_g[h] += v
        out_f = grad_f[r // frames, r % frames]
        for h in range(hidden):
            out_f[h] = acc[h] * scale


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE
    if _POOL is None or _POOL_SIZE != workers:
        if _POOL is not None:
            _POOL.shutdown(wait=False)
        _POOL, _POOL_SIZE = ThreadPoolExecutor(workers, thread_name_prefix="streamtune-joint"), workers
    return _POOL


# Below this many elements one thread does the pass: handing work to the pool costs more than it saves (the
# greedy decode NeMo runs on the training batch calls the joint once per frame, on a few hundred elements).
PARALLEL_MIN_ELEMENTS = 1 << 16


def _spans(rows: int, elements: int) -> list[tuple[int, int]]:
    """``torch.get_num_threads()`` contiguous row ranges (the compiled passes release the GIL); one for small work."""
    parts = max(1, min(torch.get_num_threads(), rows)) if elements >= PARALLEL_MIN_ELEMENTS else 1
    edges = np.linspace(0, rows, parts + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _run(kernel, calls: list[tuple]) -> None:
    """``kernel(*args)`` for each argument tuple, on the pool's threads when there are several."""
    if len(calls) == 1:
        kernel(*calls[0])
        return
    for future in [_pool(len(calls)).submit(kernel, *args) for args in calls]:
        future.result()


class _ReluDropoutSum(torch.autograd.Function):
    """``dropout(relu(f[:, :, None] + g[:, None]), p)`` for ``f [B, T, H]``, ``g [B, U, H]`` (float32, CPU)."""

    @staticmethod
    def forward(ctx, f, g, p):
        f, g = f.contiguous(), g.contiguous()
        batch, frames, hidden = f.shape
        nodes = g.shape[1]
        threshold = 0
        seed = 0
        if p > 0:
            threshold = min(round(p * 2**53), 2**53)
            seed = int(torch.empty((), dtype=torch.int64).random_()) & (2**64 - 1)  # torch's generator: resumable
        scale = 1.0 / (1.0 - p) if p < 1 else 0.0
        out = f.new_empty(batch, frames, nodes, hidden)
        keep = torch.empty(out.shape, dtype=torch.bool)
        args = (f.detach().numpy(), g.detach().numpy(), np.uint64(seed), np.uint64(threshold), np.float32(scale),
                out.view(-1).numpy(), keep.view(-1).numpy())
        _run(_forward_rows, [(*args, a, b) for a, b in _spans(batch * frames, out.numel())])
        ctx.save_for_backward(keep)
        ctx.scale, ctx.shapes = scale, (f.shape, g.shape)
        return out

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        f_shape, g_shape = ctx.shapes
        grad = grad.contiguous()
        grad_f = grad.new_empty(f_shape)
        spans = _spans(f_shape[0] * f_shape[1], grad.numel())
        partial = np.zeros((len(spans), *g_shape))  # float64: each thread's share of the sum over t
        args = (grad.view(-1).numpy(), keep.view(-1).numpy(), ctx.scale, grad_f.numpy())
        _run(_backward_rows, [(*args, partial[i], a, b) for i, (a, b) in enumerate(spans)])
        grad_g = torch.from_numpy(partial.sum(0) * ctx.scale).to(grad.dtype)
        return grad_f, grad_g, None


def _fusable_layers(joint) -> list | None:
    """The joint net's ``[ReLU, Dropout?, Linear]`` (``activation: relu``), or None for any other layout."""
    net = getattr(joint, "joint_net", None)
    if not isinstance(net, torch.nn.Sequential):
        return None
    layers = list(net)
    ok = (len(layers) in (2, 3) and isinstance(layers[0], torch.nn.ReLU) and isinstance(layers[-1], torch.nn.Linear)
          and (len(layers) == 2 or type(layers[1]) is torch.nn.Dropout))
    return layers if ok else None


def _fused_call_layers(joint, f: torch.Tensor, g: torch.Tensor) -> list | None:
    """The joint net's layers when :func:`use_fast_joint`'s pass computes this call; None when NeMo's code does."""
    if not (joint.training and f.device.type == "cpu" and f.dtype == torch.float32 and g.dtype == torch.float32
            and f.dim() == 3 and g.dim() == 3 and f.shape[0] == g.shape[0] and f.shape[2] == g.shape[2]
            and not getattr(joint, "masking_prob", 0) > 0
            and not (hasattr(joint, "is_adapter_available") and joint.is_adapter_available())):
        return None
    return _fusable_layers(joint)


def _joint_after_projection(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """NeMo's ``RNNTJoint.joint_after_projection`` with the hidden layer fused (same result, same normalisation)."""
    layers = _fused_call_layers(self, f, g)
    if layers is None:
        return type(self).joint_after_projection(self, f, g)
    p = float(layers[1].p) if len(layers) == 3 else 0.0
    hidden = _ReluDropoutSum.apply(f, g, p)
    res = layers[-1](hidden)  # the module itself, as NeMo calls it (its hooks run)
    del hidden
    # NeMo's rule: log_softmax None means "on CPU only"; True always (we only run on CPU).
    if self.log_softmax is None or self.log_softmax:
        res = (res / self.temperature if self.temperature != 1.0 else res).log_softmax(dim=-1)
    return res


def use_fast_joint(joint) -> bool:
    """Install the fused hidden layer on this joint module (NeMo's ``RNNTJoint``; the instance only). Returns
    whether its layout allows it (``joint_net = [ReLU, Dropout?, Linear]``, i.e. ``activation: relu``)."""
    if _fusable_layers(joint) is None or not hasattr(joint, "joint_after_projection"):
        return False
    # NeMo 3.0.0 has no hook for the joint's computation: its public method is replaced on this instance only.
    joint.joint_after_projection = types.MethodType(_joint_after_projection, joint)
    return True
