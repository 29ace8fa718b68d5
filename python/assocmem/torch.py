"""assocmem.torch: differentiable Hopfield retrieval for PyTorch (CPU), fused forward and backward.

    out = hopfield_retrieve(queries, keys, values=None, beta=1.0, mask=None, steps=1)

is model B's retrieval (eq. 16) with attention's keys and values: steps - 1 updates of eq. (16) on the
keys, q <- softmax(beta q K^T) K, then out = softmax(beta q K^T) V (values=None: V = K), as
hopfield-layers iterates its state pattern before the association with the values. Gradients flow to
queries, keys, values and beta (a float, or a tensor that requires grad); for steps > 1 they are
backpropagated through every step.

Forward and backward run in C++ (assocmem/attention.hpp) tile by tile over the memories, recomputing the
scores in the backward pass from the saved log-sum-exp (the FlashAttention scheme), so the
(queries x memories) score matrix is never stored: the extra memory is O(queries x d + memories x d) for
the gradients themselves, not O(queries x memories). float32 and float64 tensors (float64: gradient
checks); contiguous CPU tensors are used without copies. mask: bool (K,) shared by all queries or
(..., K) per query; True leaves a memory out, exactly as if deleted (torch's key_padding_mask and
hopfield-layers' stored_pattern_padding_mask use the same sense).

Not here yet (issue 12): the Hopfield / HopfieldPooling / HopfieldLayer modules, bfloat16 storage,
implicit differentiation at the fixed point, model C and the energies as functions.
"""
from __future__ import annotations

import numpy as _np
import torch as _torch

from . import _core

__all__ = ["hopfield_retrieve"]

_FORWARD = {_torch.float32: _core.attention_forward_f32, _torch.float64: _core.attention_forward_f64}
_BACKWARD = {_torch.float32: _core.attention_backward_f32, _torch.float64: _core.attention_backward_f64}


def _np_view(t):
    """A numpy view of a CPU tensor's data (a copy only when the tensor is not contiguous)."""
    return t.detach().contiguous().numpy()


class _AttentionStep(_torch.autograd.Function):
    """softmax(beta q k^T) v for q (n, d), k (K, d), v (K, dv); beta a 0-d tensor."""

    @staticmethod
    def forward(ctx, q, k, v, beta, mask, threads):
        out, lse = _FORWARD[q.dtype](_np_view(q), _np_view(k), _np_view(v), float(beta), mask, threads)
        out, lse = _torch.from_numpy(out), _torch.from_numpy(lse)
        ctx.save_for_backward(q, k, v, beta, out, lse)
        ctx.mask, ctx.threads = mask, threads
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, beta, out, lse = ctx.saved_tensors
        dq, dk, dv, dbeta = _BACKWARD[q.dtype](_np_view(q), _np_view(k), _np_view(v), float(beta), ctx.mask,
                                               ctx.threads, out.numpy(), lse.numpy(), _np_view(dout))
        return (_torch.from_numpy(dq), _torch.from_numpy(dk), _torch.from_numpy(dv),
                _torch.tensor(dbeta, dtype=beta.dtype), None, None)


def _check(name, t, dtype=None):
    if not isinstance(t, _torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} is on {t.device}; assocmem.torch runs on CPU tensors (move it with .cpu())")
    if t.dtype not in _FORWARD:
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} is {t.dtype} but the queries are {dtype}")


def hopfield_retrieve(queries, keys, values=None, *, beta=1.0, mask=None, steps=1, threads=0):
    """Model B's retrieval with keys and values, differentiable (see the module docstring).

    queries (..., d), keys (K, d), values (K, dv) or None; returns (..., dv). beta: a positive float or a
    0-d tensor (its gradient is computed when it requires grad). steps >= 1. threads: 0 = all."""
    _check("queries", queries)
    dtype = queries.dtype
    _check("keys", keys, dtype)
    if values is not None:
        _check("values", values, dtype)
    if queries.dim() < 1 or keys.dim() != 2 or queries.shape[-1] != keys.shape[1]:
        raise ValueError(f"queries (..., d) and keys (K, d) must share d: got {tuple(queries.shape)} and "
                         f"{tuple(keys.shape)}")
    if values is not None and (values.dim() != 2 or values.shape[0] != keys.shape[0]):
        raise ValueError(f"values must be (K, dv) with K = {keys.shape[0]}, got {tuple(values.shape)}")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps}")
    batch_shape, K = queries.shape[:-1], keys.shape[0]
    m = None
    if mask is not None:
        mk = _np.asarray(mask.cpu().numpy() if isinstance(mask, _torch.Tensor) else mask)
        if mk.shape == (K,):
            m = _np.ascontiguousarray(mk.reshape(1, K), dtype=_np.uint8)
        elif mk.shape == tuple(batch_shape) + (K,):
            m = _np.ascontiguousarray(mk.reshape(-1, K), dtype=_np.uint8)
        else:
            raise ValueError(f"mask must have shape ({K},) or {tuple(batch_shape) + (K,)}, got {mk.shape}")
    b = beta if isinstance(beta, _torch.Tensor) else _torch.tensor(float(beta), dtype=dtype)
    if b.dim() != 0:
        raise ValueError(f"beta must be a scalar, got shape {tuple(b.shape)}")
    b = b.to(dtype)
    q = queries.reshape(-1, queries.shape[-1])
    for _ in range(int(steps) - 1):
        q = _AttentionStep.apply(q, keys, keys, b, m, threads)  # eq. (16) on the keys
    out = _AttentionStep.apply(q, keys, keys if values is None else values, b, m, threads)
    return out.reshape(*batch_shape, out.shape[-1])
