"""The functional layer of assocmem.torch: differentiable model B and model C retrieval and energies on
the fused C++ kernels (the autograd Functions and the batched attention call that the hopfield-layers
modules in assocmem._layers build on). Import from assocmem.torch; see its docstring.

Dependencies point one way: _functional (kernels, autograd) <- _layers (modules) <- torch (the face).
"""
from __future__ import annotations

import numpy as _np
import torch as _torch

from . import _DEFAULT_BETA, _core, _mask_values, _whole, _worker_pool_chosen

__all__ = ["hopfield_retrieve", "hopfield_energy", "spherical_retrieve", "spherical_energy", "empty_cache",
           "memory_reserved"]

# Keyed by the memories' storage dtype; bfloat16 memories are widened tile by tile, computed in float32.
_STORAGE = {_torch.float32: "f32", _torch.float64: "f64", _torch.bfloat16: "bf16"}
_COMPUTE = {_torch.float32: _torch.float32, _torch.float64: _torch.float64, _torch.bfloat16: _torch.float32}
_FORWARD = {t: getattr(_core, "attention_forward_" + s) for t, s in _STORAGE.items()}
_LSE_BACKWARD = {t: getattr(_core, "log_sum_exp_backward_" + s) for t, s in _STORAGE.items()}
_FORWARD_BATCH = {t: getattr(_core, "attention_forward_batch_" + s) for t, s in _STORAGE.items()}
_BACKWARD_BATCH = {t: getattr(_core, "attention_backward_batch_" + s) for t, s in _STORAGE.items()}
_WEIGHTS_BATCH = {_torch.float32: _core.attention_weights_batch_f32, _torch.float64: _core.attention_weights_batch_f64}
_WEIGHTS_BACKWARD_BATCH = {_torch.float32: _core.attention_weights_backward_batch_f32,
                           _torch.float64: _core.attention_weights_backward_batch_f64}
_SPH_STEP = {t: getattr(_core, "spherical_step_" + s) for t, s in _STORAGE.items()}
_SPH_STEP_BACKWARD = {t: getattr(_core, "spherical_step_backward_" + s) for t, s in _STORAGE.items()}
_FIXED_POINT = {t: getattr(_core, "attention_fixed_point_" + s) for t, s in _STORAGE.items()}

# PyTorch on OpenMP (its parallel backend here): its idle threads spin for milliseconds after each of its
# parallel regions, so assocmem's own worker threads would share the cores with them; in OpenMP's team the
# same threads run assocmem's chunks (assocmem.set_worker_pool; a pool set before is kept).
if not _worker_pool_chosen and "openmp" in _core._worker_pools() and "parallel backend: OpenMP" in _torch.__config__.parallel_info():
    _core._set_worker_pool("openmp")


def _np_view(t):
    """A numpy view of a CPU tensor's data (a copy only when the tensor is not contiguous); bfloat16 as
    its raw uint16 bits."""
    t = t.detach().contiguous()
    if t.dtype == _torch.bfloat16:
        return t.view(_torch.int16).numpy().view(_np.uint16)
    return t.numpy()


def _norm_args(eps, weight, bias):
    """The binding's (eps, weight, bias) of a layer norm of the memories' rows: eps None for none."""
    if eps is None:
        return None, None, None
    return eps, None if weight is None else _np_view(weight), None if bias is None else _np_view(bias)


class _AttentionBatch(_torch.autograd.Function):
    """softmax(betas[e] q[e] k[e]^T) v[e] for every element e of a batch of independent attentions (the
    batch x heads of a layer, each with its own memories): q (E, n, d), k (E, K, d), v (E, K, dv) or None
    (v = k); betas (E,) tensor; mask uint8 (E, 1 or n, K) or None. One node in the graph for the whole
    batch; forward and backward each one call into C++ (attention_forward_batch), the elements split
    over the threads. With layer norms of the memories (kn_eps / vn_eps not None: k and v are then the raw
    rows, normalised tile by tile inside the kernel with the weights kn_w, kn_b / vn_w, vn_b shared by the
    elements), neither the normalised rows nor their gradients are ever stored: the backward pass writes the
    raw rows' gradients directly (one buffer when v is k), the memory's gradient being the floor of the
    layer's extra memory."""

    @staticmethod
    def forward(ctx, q, k, v, betas, mask, threads, dropout=0.0, seed=0, bias=None, kn_eps=None, kn_w=None, kn_b=None,
                vn_eps=None, vn_w=None, vn_b=None):
        out, lse = _batch_forward(q, k, v, betas, mask, threads, dropout, seed, bias,
                                  (kn_eps, kn_w, kn_b), (vn_eps, vn_w, vn_b))
        ctx.save_for_backward(q, k, k if v is None else v, betas, out, lse, bias, kn_w, kn_b, vn_w, vn_b)
        ctx.mask, ctx.threads, ctx.auto, ctx.dropout = mask, threads, v is None, (dropout, seed)
        ctx.eps = (kn_eps, vn_eps)
        return out

    @staticmethod
    def backward(ctx, dout):
        _first_order_only()
        q, k, v, betas, out, lse, bias, kn_w, kn_b, vn_w, vn_b = ctx.saved_tensors
        dq, dk, dv, dbeta, dbias, dkw, dkb, dvw, dvb = _batch_backward(
            q, k, None if ctx.auto else v, betas, ctx.mask, ctx.threads, out, lse, dout, ctx.dropout, bias,
            (ctx.eps[0], kn_w, kn_b), (ctx.eps[1], vn_w, vn_b))
        grads_v = (None, None) if ctx.auto else (dvw, dvb)
        return (dq, dk, dv, dbeta, None, None, None, None, dbias, None, dkw, dkb, None, *grads_v)


def _batch_forward(q, k, v, betas, mask, threads, dropout, seed, bias, key_norm, value_norm):
    """The C++ batched fused forward (attention_forward_batch) on tensors: (out, lse). key_norm / value_norm:
    (eps, weight, bias), eps None for no norm; v None: v = k with the keys' norm."""
    if v is None:
        value_norm = key_norm
    kn = _np_view(k)
    bn = _np.ascontiguousarray(betas.detach().to(_torch.float64).numpy())
    out, lse = _FORWARD_BATCH[k.dtype](_np_view(q), kn, kn if v is None else _np_view(v), bn, mask, threads,
                                       dropout, seed, None if bias is None else _np_view(bias),
                                       *_norm_args(*key_norm), *_norm_args(*value_norm))
    return _torch.from_numpy(out), _torch.from_numpy(lse)


def _batch_backward(q, k, v, betas, mask, threads, out, lse, dout, dropout, bias, key_norm, value_norm):
    """The C++ batched fused backward (attention_backward_batch) on tensors: the gradients (dq, dk, dv or None,
    dbetas, dbias or None, then the keys' and the values' norm weight and bias, each None where that parameter
    is None; summed over the batch) from the forward's out and lse; dropout = (rate, seed) of the forward."""
    if v is None:
        value_norm = key_norm
    kn = _np_view(k)
    bn = _np.ascontiguousarray(betas.detach().to(_torch.float64).numpy())
    dq, dk, dv, dbeta, dbias, dkw, dkb, dvw, dvb = _BACKWARD_BATCH[k.dtype](
        _np_view(q), kn, kn if v is None else _np_view(v), bn, mask, threads, out.numpy(), lse.numpy(),
        _np_view(dout), *dropout, None if bias is None else _np_view(bias), *_norm_args(*key_norm),
        *_norm_args(*value_norm))

    def summed(g, like):  # a norm parameter's gradient: per element, summed over the batch
        return None if g is None or like is None else _torch.from_numpy(g).sum(0).to(like.dtype)
    return (_torch.from_numpy(dq), _torch.from_numpy(dk).to(k.dtype),
            None if dv is None else _torch.from_numpy(dv).to(v.dtype), _torch.from_numpy(dbeta).to(betas.dtype),
            None if dbias is None else _torch.from_numpy(dbias), summed(dkw, key_norm[1]), summed(dkb, key_norm[2]),
            None if v is None else summed(dvw, value_norm[1]), None if v is None else summed(dvb, value_norm[2]))


class _AttentionWeights(_torch.autograd.Function):
    """The association matrices softmax(betas[e] q[e] k[e]^T + bias[e]) (E, n, K) of a batch (masked memories
    0): one C++ call forward (attention_weights_batch, the fused forward's kernels and softmax) and one
    backward, for the layers' need_weights."""

    @staticmethod
    def forward(ctx, q, k, betas, mask, threads, bias=None):
        bn = _np.ascontiguousarray(betas.detach().to(_torch.float64).numpy())
        P = _torch.from_numpy(_WEIGHTS_BATCH[k.dtype](_np_view(q), _np_view(k), bn, mask, threads,
                                                      None if bias is None else _np_view(bias)))
        ctx.save_for_backward(q, k, betas, P, bias)
        ctx.mask, ctx.threads = mask, threads
        return P

    @staticmethod
    def backward(ctx, dP):
        _first_order_only()
        q, k, betas, P, bias = ctx.saved_tensors
        bn = _np.ascontiguousarray(betas.detach().to(_torch.float64).numpy())
        dq, dk, dbeta, dbias = _WEIGHTS_BACKWARD_BATCH[k.dtype](
            _np_view(q), _np_view(k), bn, ctx.mask, ctx.threads, P.numpy(), _np_view(dP.to(P.dtype)),
            None if bias is None else _np_view(bias))
        return (_torch.from_numpy(dq), _torch.from_numpy(dk), _torch.from_numpy(dbeta).to(betas.dtype), None, None,
                None if dbias is None else _torch.from_numpy(dbias))


def _first_order_only():
    """The fused kernels give first derivatives; a backward run with create_graph=True (double backward,
    Hessian-vector products) would need the derivative of the backward itself (issue 23: it failed with
    "Can't call numpy() on Tensor that requires grad")."""
    if _torch.is_grad_enabled():
        raise RuntimeError("assocmem.torch: the fused attention is differentiable once; second derivatives "
                           "(create_graph=True, double backward) are not supported - use plain torch ops there")


def _attention_step(q, k, v, beta, mask, threads):
    """softmax(beta q k^T) v for q (n, d), k (K, d), v (K, dv) or None (v = k); beta a 0-d tensor; mask uint8
    (1 or n, K) or None: a batch of one element."""
    out = _AttentionBatch.apply(q.unsqueeze(0), k.unsqueeze(0), None if v is None else v.unsqueeze(0),
                                beta.reshape(1), None if mask is None else mask.reshape(1, *mask.shape), threads)
    return out[0]


def _attention_batch(q, k, v, betas, mask=None, threads=0, dropout=0.0, bias=None, key_norm=None, value_norm=None):
    """The batched fused attention for the layers (checked shapes; see _AttentionBatch): q (E, n, d) in the
    memories' compute dtype, k (E, K, d), v (E, K, dv) or None, betas (E,) tensor, mask a bool tensor
    (E, K) or (E, n, K) or None (True leaves a memory out). dropout in [0, 1): on the association weights
    (each kept with probability 1 - dropout and scaled by 1 / (1 - dropout)), the draw seeded from torch's
    default generator (torch.manual_seed reproduces it) and repeated exactly in the backward pass.
    bias: a float tensor (E, K) or (E, n, K) added to the scaled scores, softmax(beta q k^T + bias) (entries
    finite or -inf; differentiable). key_norm, value_norm: None or (weight, bias, eps) of a layer norm
    (torch.nn.functional.layer_norm over the last dimension; weight and bias None or 1-D tensors, eps > 0)
    applied to every key / value row inside the kernel (v None: the keys' norm), differentiable in the
    weights, biases and raw rows. Returns (E, n, dv)."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    q, m, bias, compute = _batch_inputs(q, k, v, betas, mask, bias)
    norms = []
    for name, norm, width in (("key_norm", key_norm, k.shape[2]), ("value_norm", None if v is None else value_norm,
                                                                   None if v is None else v.shape[2])):
        if norm is None:
            norms += [None, None, None]
            continue
        weight, nbias, eps = norm
        if not float(eps) > 0:
            raise ValueError(f"batched attention: {name} eps must be > 0, got {eps}")
        for part, t in (("weight", weight), ("bias", nbias)):
            if t is not None and (not isinstance(t, _torch.Tensor) or t.shape != (width,) or t.dtype != compute):
                raise ValueError(f"batched attention: {name} {part} must be a {compute} tensor of shape ({width},)")
        norms += [float(eps), None if weight is None else weight.contiguous(), None if nbias is None else nbias.contiguous()]
    seed = int(_torch.randint(0, 2**62, (1,)).item()) if dropout > 0 else 0
    return _AttentionBatch.apply(q.contiguous(), k.contiguous(), None if v is None else v.contiguous(),
                                 betas.to(compute), m, threads, float(dropout), seed, bias, *norms)


class _Projections:
    """Where _ProjectedAttention finds its linear maps and layer norms among its parameter tensors: each map a
    (tensor index, first row, end row) spec (rows None: the whole tensor) or None, each norm (eps, weight spec,
    bias spec) or None. H: the number of heads; heads: the heads taken (a list; None: every head). wq None: the
    state itself is every head's query (a static state pattern)."""
    __slots__ = ("H", "heads", "sn", "wq", "bq", "wk", "wv", "bv", "wo", "bo", "kn", "vn")

    def __init__(self, H, heads=None, sn=None, wq=None, bq=None, wk=None, wv=None, bv=None, wo=None, bo=None,
                 kn=None, vn=None):
        self.H, self.heads = H, heads
        self.sn, self.wq, self.bq, self.wk, self.wv, self.bv, self.wo, self.bo = sn, wq, bq, wk, wv, bv, wo, bo
        self.kn, self.vn = kn, vn


def _part(ws, spec):
    """The tensor (or rows of it) a _Projections spec names; None for None."""
    if spec is None:
        return None
    i, r0, r1 = spec
    return ws[i] if r0 is None else ws[i][r0:r1]


def _norm(ws, n):
    """A _Projections norm (eps, weight spec, bias spec) as _batch_forward takes it: (eps, weight, bias)."""
    return (None, None, None) if n is None else (n[0], _part(ws, n[1]), _part(ws, n[2]))


def _per_head(w, H, heads):
    """(H * a, b) rows of a per-head map as (A, a, b) for the heads taken; (H * a,) biases as (A, a)."""
    w = w.reshape(H, -1, *w.shape[1:])
    return w if heads is None else w.index_select(0, _torch.tensor(heads))


def _heads_mm(x, w):
    """x_h w_h per head as one product per head over the batch's rows: x (N, A, L, a), w (A, a, b) -> (N, A, L,
    b) (torch.matmul's broadcast would run N * A small products)."""
    N, A, L = x.shape[0], x.shape[1], x.shape[2]
    if A == 1:
        return (x.reshape(N * L, -1) @ w[0]).view(N, 1, L, -1)
    return _torch.bmm(x.transpose(0, 1).reshape(A, N * L, -1), w).view(A, N, L, -1).transpose(0, 1)


def _head_sums(a, b):
    """sum over the batch and the rows of a_h^T b_h per head: a (N, A, L, x), b (N, A, L, y) -> (A, x, y)."""
    A = a.shape[1]
    if A == 1:
        return (a.reshape(-1, a.shape[3]).t() @ b.reshape(-1, b.shape[3])).unsqueeze(0)
    return _torch.bmm(a.transpose(0, 1).reshape(A, -1, a.shape[3]).transpose(1, 2),
                      b.transpose(0, 1).reshape(A, -1, b.shape[3]))


class _ProjectedAttention(_torch.autograd.Function):
    """A hopfield-layers association taken against the stored patterns Y and projections Z themselves (the
    reassociation of _layers.HopfieldCore): for each head h taken, with keys K_h = n_k(Y) W_kh^T + b_kh and
    values V_h = n_v(Z) W_vh^T + b_vh (n_k, n_v layer norms or none),
        softmax(beta_h xi_h K_h^T) V_h = softmax((beta_h xi_h W_kh) n_k(Y)^T) n_v(Z) W_vh^T + b_vh,
    since b_kh shifts all of a query's scores alike and a softmax row sums to one (eq. 16's update is the
    same with V_h = K_h). The states xi_h are given (state (N, A, L, hd), project=False) or projected here
    from the state pattern (state (N, L, din), project=True): xi = n_s(state) W_q^T + b_q split into heads.
    With concat=True the heads' outputs are set side by side (N, L, A * pd) and mapped by the output
    projection (W_o, b_o) where there is one; else (N, A, L, pd). The memories' layer norms run inside the
    fused kernel (_batch_forward); everything else is a few products in torch, forward and backward, in ONE
    autograd node: a layer's fixed cost per call is then one node's, not the dozens of PyTorch's small ops
    (issue 22: time per batch element flat in the batch size). Inputs: p (_Projections), state, stored (E, S,
    dk), proj (E, S, dv) or None (the stored patterns), betas (A,) tensor, mask (uint8 numpy per element) and
    bias (per element, or None), threads, (dropout rate, seed), project, concat, then the parameter tensors
    that p's specs index (their gradients summed over every use)."""

    @staticmethod
    def forward(ctx, p, state, stored, proj, betas, mask, bias, threads, dropout, project, concat, *ws):
        x, ln = state, None
        if project:
            if p.sn is not None:
                x, mean, rstd = _torch.native_layer_norm(state, [state.shape[-1]], _part(ws, p.sn[1]),
                                                         _part(ws, p.sn[2]), p.sn[0])
                ln = (mean, rstd)
            N, L = x.shape[0], x.shape[1]
            if p.wq is None:  # a static state pattern: the same for every head
                q = x.unsqueeze(1).expand(N, p.H, L, x.shape[2])
            else:
                q = _torch.nn.functional.linear(x, _part(ws, p.wq), _part(ws, p.bq)).view(N, L, p.H, -1).transpose(1, 2)
        else:
            q = state
        N, A, L = q.shape[0], q.shape[1], q.shape[2]
        wk = _per_head(_part(ws, p.wk), p.H, p.heads)  # (A, hd, dk)
        Q = _heads_mm(q, wk * betas.view(A, 1, 1))  # (N, A, L, dk): beta_h xi_h W_kh
        E, dk = stored.shape[0], stored.shape[2]
        queries = Q.reshape(E, -1, dk)  # per element its heads' queries (E = 1: the memories serve every element)
        ones = _torch.ones(E, dtype=Q.dtype)
        out, lse = _batch_forward(queries, stored, proj, ones, mask, threads, *dropout, bias, _norm(ws, p.kn),
                                  _norm(ws, p.vn))
        O = out.view(N, A, L, -1)
        res = O
        if p.wv is not None:
            res = _heads_mm(O, _per_head(_part(ws, p.wv), p.H, p.heads).transpose(1, 2))
            if p.bv is not None:
                res = res + _per_head(_part(ws, p.bv), p.H, p.heads).view(1, A, 1, -1)
        cat = None
        if concat:
            cat = res = res.transpose(1, 2).reshape(N, L, -1)  # the heads side by side, as hopfield-layers'
            if p.wo is not None:
                res = _torch.nn.functional.linear(cat, _part(ws, p.wo), _part(ws, p.bo))
        ctx.save_for_backward(state, stored, proj, betas, bias, *ws)
        ctx.p, ctx.mask, ctx.threads, ctx.dropout, ctx.project, ctx.concat = p, mask, threads, dropout, project, concat
        ctx.inner = (x, ln, q, queries, out, lse, cat)
        return res

    @staticmethod
    def backward(ctx, dres):
        _first_order_only()
        p = ctx.p
        state, stored, proj, betas, bias, *ws = ctx.saved_tensors
        x, ln, q, queries, out, lse, cat = ctx.inner
        need = ctx.needs_input_grad
        grads = [None] * len(ws)

        def add(spec, g):  # a map's gradient into its tensor's (a slice of it, or several uses summed)
            if spec is None or g is None or not need[11 + spec[0]]:
                return
            i, r0, r1 = spec
            if r0 is None:
                grads[i] = g if grads[i] is None else grads[i] + g
                return
            if grads[i] is None:
                grads[i] = _torch.zeros_like(ws[i])
            grads[i][r0:r1] += g.reshape(r1 - r0, *ws[i].shape[1:])

        def add_heads(spec, g):  # (A, ...) per-head gradients into the (H * ., ...) rows of the heads taken
            if p.heads is not None:
                g = g.new_zeros(p.H, *g.shape[1:]).index_add_(0, _torch.tensor(p.heads), g)
            add(spec, g.reshape(-1, *g.shape[2:]))

        N, A, L = q.shape[0], q.shape[1], q.shape[2]
        d = dres.contiguous()
        if ctx.concat:
            if p.wo is not None:
                add(p.wo, d.reshape(-1, d.shape[2]).t() @ cat.reshape(-1, cat.shape[2]))
                add(p.bo, d.sum((0, 1)))
                d = d @ _part(ws, p.wo)
            d = d.view(N, L, A, -1).transpose(1, 2)  # (N, A, L, pd)
        O = out.view(N, A, L, -1)
        if p.wv is not None:
            add_heads(p.wv, _head_sums(d, O))
            if p.bv is not None:
                add_heads(p.bv, d.sum((0, 2)))
            d = _heads_mm(d, _per_head(_part(ws, p.wv), p.H, p.heads))  # (N, A, L, dv)
        E = stored.shape[0]
        dq_, dstored, dproj, _, dbias, dkw, dkb, dvw, dvb = _batch_backward(
            queries, stored, proj, _torch.ones(E, dtype=queries.dtype), ctx.mask, ctx.threads, out, lse,
            d.reshape(E, -1, out.shape[2]), ctx.dropout, bias, _norm(ws, p.kn), _norm(ws, p.vn))
        for spec, g in ((p.kn, (dkw, dkb)), (p.vn, (dvw, dvb))):
            if spec is not None:
                add(spec[1], g[0])
                add(spec[2], g[1])
        dQ = dq_.view(N, A, L, -1)
        wk = _per_head(_part(ws, p.wk), p.H, p.heads)
        dbetas = (dQ * _heads_mm(q, wk)).sum((0, 2, 3)) if need[4] else None  # Q = beta_h (xi_h W_kh)
        add_heads(p.wk, _head_sums(q, dQ) * betas.view(A, 1, 1))
        dq = _heads_mm(dQ, (wk * betas.view(A, 1, 1)).transpose(1, 2))  # (N, A, L, hd)
        dstate = dq
        if ctx.project:
            if p.wq is None:
                dx = dq.sum(1)
            else:
                dqf = dq.transpose(1, 2).reshape(N, L, -1)
                add(p.wq, dqf.reshape(-1, dqf.shape[2]).t() @ x.reshape(-1, x.shape[2]))
                add(p.bq, dqf.sum((0, 1)))
                dx = dqf @ _part(ws, p.wq)
            dstate = dx
            if p.sn is not None:
                w, b = _part(ws, p.sn[1]), _part(ws, p.sn[2])
                dstate, dw, db = _torch.ops.aten.native_layer_norm_backward(
                    dx, state, [state.shape[-1]], *ln, w, b, [need[1], w is not None, b is not None])
                add(p.sn[1], dw)
                add(p.sn[2], db)
        return (None, dstate if need[1] else None, dstored if need[2] else None, dproj if need[3] else None, dbetas,
                None, dbias if need[6] else None, None, None, None, None, *grads)


def _projected_attention(p, state, stored, proj, betas, mask=None, bias=None, dropout=0.0, project=True,
                         concat=True, ws=(), threads=0):
    """_ProjectedAttention (see there) with its masks checked: mask a bool tensor and bias a float tensor, each
    (E, S) or (E, n, S) for the E = stored.shape[0] elements of n queries each, or None. dropout in [0, 1)
    on the association weights (training), seeded from torch's generator as _attention_batch's."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    _check("stored patterns", stored, (_torch.float32, _torch.float64))
    E, S = stored.shape[0], stored.shape[1]
    N, A, L = (state.shape[0], p.H, state.shape[1]) if project else tuple(state.shape[:3])
    n = N * A * L // E  # queries per element of the call
    m, bias = _batch_masks(E, n, S, mask, bias, stored.dtype)
    seed = int(_torch.randint(0, 2**62, (1,)).item()) if dropout > 0 else 0
    return _ProjectedAttention.apply(p, state, stored.contiguous(), None if proj is None else proj.contiguous(),
                                     betas.to(stored.dtype), m, bias, threads, (float(dropout), seed), project, concat,
                                     *ws)


def _batch_inputs(q, k, v, betas, mask, bias):
    """The batched calls' checked inputs: (q in the compute dtype, mask as uint8 (E, 1|n, K) or None, bias
    (E, 1|n, K) contiguous or None, compute dtype)."""
    _check("keys", k, tuple(_STORAGE))
    if v is not None:
        _check("values", v, (k.dtype,))
    compute = _COMPUTE[k.dtype]
    q = q.to(compute)
    if q.dim() != 3 or k.dim() != 3 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(f"batched attention: queries (E, n, d) and keys (E, K, d) must share E and d, got "
                         f"{tuple(q.shape)} and {tuple(k.shape)}")
    if v is not None and (v.dim() != 3 or v.shape[:2] != k.shape[:2]):
        raise ValueError(f"batched attention: values must be (E, K, dv) = {tuple(k.shape[:2])} + (dv,), got "
                         f"{tuple(v.shape)}")
    E, n, K = q.shape[0], q.shape[1], k.shape[1]
    if betas.shape != (E,):
        raise ValueError(f"batched attention: betas must have shape ({E},), got {tuple(betas.shape)}")
    m, bias = _batch_masks(E, n, K, mask, bias, compute)
    return q, m, bias, compute


def _batch_masks(E, n, K, mask, bias, compute):
    """The batched calls' checked mask (uint8 (E, 1|n, K) numpy or None) and bias ((E, 1|n, K) contiguous in
    the compute dtype, or None) for E elements of n queries against K memories."""
    m = None
    if mask is not None:
        mk = mask.detach().cpu()
        if mk.dtype != _torch.bool:
            raise TypeError(f"batched attention: mask must be a bool tensor, got {mk.dtype}")
        if mk.shape == (E, K):
            mk = mk.reshape(E, 1, K)
        elif mk.shape != (E, n, K):
            raise ValueError(f"batched attention: mask must have shape ({E}, {K}) or ({E}, {n}, {K}), got "
                             f"{tuple(mk.shape)}")
        m = _np.ascontiguousarray(mk.numpy(), dtype=_np.uint8)
    if bias is not None:
        if not isinstance(bias, _torch.Tensor) or not bias.is_floating_point():
            raise TypeError("batched attention: bias must be a floating-point tensor")
        if bias.shape == (E, K):
            bias = bias.reshape(E, 1, K)
        elif bias.shape != (E, n, K):
            raise ValueError(f"batched attention: bias must have shape ({E}, {K}) or ({E}, {n}, {K}), got "
                             f"{tuple(bias.shape)}")
        bias = bias.to(compute).contiguous()
    return m, bias


def _association_batch(q, k, betas, mask=None, threads=0, bias=None):
    """The association matrices softmax(betas[e] q[e] k[e]^T + bias[e]) (E, n, K) of a batch, masked memories 0
    (hopfield-layers' need_weights): arguments as _attention_batch's, differentiable in q, k, betas and bias."""
    q, m, bias, compute = _batch_inputs(q, k, None, betas, mask, bias)
    if k.dtype not in _WEIGHTS_BATCH:
        raise TypeError(f"association matrices: keys must be float32 or float64, got {k.dtype}")
    return _AttentionWeights.apply(q.contiguous(), k.contiguous(), betas.to(compute), m, threads, bias)


class _LogSumExp(_torch.autograd.Function):
    """log sum_mu exp(beta q . k_mu) per query (float64), for q (n, d), k (K, d); beta a 0-d tensor."""

    @staticmethod
    def forward(ctx, q, k, beta, mask, threads):
        # The forward's log-sum-exp; its weighted values (here the keys) are not needed.
        _, lse = _FORWARD[k.dtype](_np_view(q), _np_view(k), _np_view(k), float(beta), mask, threads)
        lse = _torch.from_numpy(lse)
        ctx.save_for_backward(q, k, beta, lse)
        ctx.mask, ctx.threads = mask, threads
        return lse

    @staticmethod
    def backward(ctx, dlse):
        _first_order_only()
        q, k, beta, lse = ctx.saved_tensors
        dq, dk, dbeta = _LSE_BACKWARD[k.dtype](_np_view(q), _np_view(k), float(beta), ctx.mask, ctx.threads,
                                               lse.numpy(), _np_view(dlse.to(_torch.float64)))
        return _torch.from_numpy(dq), _torch.from_numpy(dk).to(k.dtype), _torch.tensor(dbeta, dtype=beta.dtype), None, None


class _SphericalStep(_torch.autograd.Function):
    """Model C in C++ (attention.hpp spherical_step): from raw states v (n, d) over memories k (K, d), the
    Euler step of eq. (22), v + step (F'(g k^T) k - alpha v) with g = v/|v|, and the energy at v, eq. (21),
    -sum F(g k^T). Returns (next, energy); with want_next False, next is an empty placeholder."""

    @staticmethod
    def forward(ctx, v, k, F, n, fbeta, alpha, step, mask, threads, want_next):
        nxt, energy = _SPH_STEP[k.dtype](_np_view(v), _np_view(k), F, n, fbeta, alpha, step, mask, threads, want_next)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no term in the backward
        ctx.save_for_backward(v, k)
        ctx.args = (F, n, fbeta, alpha, step, mask, threads)
        return (_torch.from_numpy(nxt) if want_next else v.new_empty(0)), _torch.from_numpy(energy)

    @staticmethod
    def backward(ctx, dnext, denergy):
        _first_order_only()
        v, k = ctx.saved_tensors
        if dnext is not None and dnext.numel() == 0:
            dnext = None
        dv, dk = _SPH_STEP_BACKWARD[k.dtype](_np_view(v), _np_view(k), *ctx.args,
                                              None if dnext is None else _np_view(dnext.to(v.dtype)),
                                              None if denergy is None else _np_view(denergy.to(_torch.float64)))
        return _torch.from_numpy(dv), _torch.from_numpy(dk).to(k.dtype), *([None] * 8)


def _check(name, t, dtypes):
    if not isinstance(t, _torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} is on {t.device}; assocmem.torch runs on CPU tensors (move it with .cpu())")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must be {' or '.join(str(d).replace('torch.', '') for d in dtypes)}, got {t.dtype}")


def _prepare(queries, keys, values, beta, mask):
    """Checked arguments: (batch shape, queries as (n, d) in the compute dtype, beta as a 0-d tensor, mask
    as uint8 (1|n, K)). Memories (keys, values) are float32, float64 or bfloat16 (computed in float32);
    queries have the compute dtype, or bfloat16 with float32/bfloat16 memories (widened)."""
    _check("keys", keys, tuple(_STORAGE))
    storage, compute = keys.dtype, _COMPUTE[keys.dtype]
    if values is not None:
        _check("values", values, (storage,))
    _check("queries", queries, (compute, _torch.bfloat16) if compute == _torch.float32 else (compute,))
    if queries.dim() < 1 or keys.dim() != 2 or queries.shape[-1] != keys.shape[1]:
        raise ValueError(f"queries (..., d) and keys (K, d) must share d: got {tuple(queries.shape)} and "
                         f"{tuple(keys.shape)}")
    if values is not None and (values.dim() != 2 or values.shape[0] != keys.shape[0]):
        raise ValueError(f"values must be (K, dv) with K = {keys.shape[0]}, got {tuple(values.shape)}")
    dtype = compute
    queries = queries.to(compute)  # differentiable: bfloat16 queries get their gradient back in bfloat16
    batch_shape, K = queries.shape[:-1], keys.shape[0]
    m = None
    if mask is not None:
        mk = _np.asarray(mask.detach().cpu().numpy() if isinstance(mask, _torch.Tensor) else mask)
        if mk.shape == (K,):
            m = _np.ascontiguousarray(_mask_values(mk).reshape(1, K))
        elif mk.shape == tuple(batch_shape) + (K,):
            m = _np.ascontiguousarray(_mask_values(mk).reshape(-1, K))
        else:
            raise ValueError(f"mask must have shape ({K},) or {tuple(batch_shape) + (K,)}, got {mk.shape}")
    b = beta if isinstance(beta, _torch.Tensor) else _torch.tensor(float(beta), dtype=dtype)
    if b.dim() != 0:
        raise ValueError(f"beta must be a scalar, got shape {tuple(b.shape)}")
    return batch_shape, queries.reshape(-1, queries.shape[-1]), b.to(dtype), m


def hopfield_retrieve(queries, keys, values=None, *, beta=_DEFAULT_BETA, mask=None, steps=1, implicit=False,
                      fixed_point_tol=1e-6, threads=0):
    """Model B's retrieval with keys and values, differentiable (see the module docstring).

    queries (..., d), keys (K, d), values (K, dv) or None; returns (..., dv). beta: a positive float or a
    0-d tensor (its gradient is computed when it requires grad). steps >= 1. threads: 0 = all.

    implicit=False backpropagates through every one of the steps - 1 updates (memory grows with steps).
    implicit=True treats the iterated state as the fixed point v* = f(v*) of eq. (16) on the keys: the
    updates run without a graph until max |v_new - v| <= fixed_point_tol (at most steps - 1 of them; a
    RuntimeWarning if not reached), and the backward pass solves the adjoint equation
    y = g + J^T y (J = df/dv at v*) by fixed-point iteration with the fused vector-Jacobian products, so
    memory does not grow with steps. The gradient then reaches the keys, the values and beta, not the
    queries: a fixed point does not depend on where the iteration started (implicit function theorem)."""
    steps = _whole(steps, "steps")
    batch_shape, q, b, m = _prepare(queries, keys, values, beta, mask)
    if not implicit:
        for _ in range(int(steps) - 1):
            q = _attention_step(q, keys, None, b, m, threads)  # eq. (16) on the keys
    elif steps > 1:
        q = _implicit_fixed_point(q, keys, b, m, threads, int(steps) - 1, float(fixed_point_tol))
    out = _attention_step(q, keys, values, b, m, threads)
    return out.reshape(*batch_shape, out.shape[-1])


def _implicit_fixed_point(q, keys, b, m, threads, max_updates, tol):
    """v* of eq. (16) on the keys, attached to the graph through one update whose incoming gradient g is
    replaced by the solution y of y = g + J^T y (deep-equilibrium style)."""
    import warnings
    # The updates and the retrievals' stopping rule (each row until max |v_new - v| <= tol) in C++.
    z, converged, change = _FIXED_POINT[keys.dtype](_np_view(q), _np_view(keys), float(b), m, threads, max_updates, tol)
    z = _torch.from_numpy(z)
    if not converged:
        warnings.warn(f"hopfield_retrieve(implicit=True): no fixed point within {max_updates} updates (last change "
                      f"{change:.3g} > fixed_point_tol {tol:g}); the implicit gradient assumes one", RuntimeWarning)
    z0 = z.detach().requires_grad_(True)
    f0 = _attention_step(z0, keys.detach(), None, b.detach(), m, threads)  # for J^T y products at v*
    state = _attention_step(z.detach(), keys, None, b, m, threads)     # = v*, with the graph to keys, beta
    if state.requires_grad:
        def adjoint(g):
            y = g
            for _ in range(1000):
                y_new = g + _torch.autograd.grad(f0, z0, y, retain_graph=True)[0]
                if (y_new - y).abs().max().item() <= 1e-12 + 1e-9 * y_new.abs().max().item():
                    return y_new
                y = y_new
            warnings.warn("hopfield_retrieve(implicit=True): the adjoint iteration did not converge in 1000 steps",
                          RuntimeWarning)
            return y
        state.register_hook(adjoint)
    return state


def hopfield_energy(states, keys, *, beta=_DEFAULT_BETA, mask=None, threads=0):
    """Model B's energy, eq. (13), of states (..., d) over the memories keys (K, d): returns (...),
    E = |v|^2 / 2 - (1/beta) log sum_mu exp(beta xi_mu . v) (masked memories left out), differentiable in
    the states, the keys and beta."""
    batch_shape, v, b, m = _prepare(states, keys, None, beta, mask)
    lse = _LogSumExp.apply(v, keys, b, m, threads).to(v.dtype)
    return (0.5 * (v * v).sum(-1) - lse / b).reshape(batch_shape)


_DEF_C = _core.retrieve_defaults("C")


def _interaction(F, n):
    return F or _DEF_C["F"], float(_DEF_C["n"] if n is None else n)


def spherical_retrieve(queries, memories, *, F=None, n=None, beta=_DEFAULT_BETA, alpha=1.0, step=None, steps=None, mask=None,
                       threads=0):
    """Model C, differentiable: `steps` Euler steps of eq. (22) from queries (..., d) (non-zero) over
    memories (K, d): v <- v + step (xi^T f(xi v/|v|) - alpha v), f = F' with F "power", "rectified" or
    "exp" (power n, gain beta). Defaults as ModelC's (the library's table). Returns (..., d)."""
    F, n = _interaction(F, n)
    step = _DEF_C["step"] if step is None else float(step)
    steps = _whole(_DEF_C["max_steps"] if steps is None else steps, "steps")
    batch_shape, v, _, m = _prepare(queries, memories, None, 1.0, mask)
    for _ in range(int(steps)):
        v, _ = _SphericalStep.apply(v, memories, F, n, float(beta), float(alpha), step, m, threads, True)  # eq. (22)
    return v.reshape(*batch_shape, v.shape[-1])


def spherical_energy(states, memories, *, F=None, n=None, beta=_DEFAULT_BETA, mask=None, threads=0):
    """Model C's energy, eq. (21): E = -sum_mu F(xi_mu . v/|v|) for states (..., d), differentiable in the
    states and the memories. Returns (...)."""
    F, n = _interaction(F, n)
    batch_shape, v, _, m = _prepare(states, memories, None, 1.0, mask)
    _, energy = _SphericalStep.apply(v, memories, F, n, float(beta), 1.0, 1.0, m, threads, False)  # eq. (21)
    return energy.to(v.dtype).reshape(batch_shape)


def empty_cache() -> int:
    """Frees the large output buffers (32 MB and more: the memories' gradients) that assocmem keeps after
    they are freed, for the next call of about the same size (at most 4 of them and 1 GiB; a fresh
    allocation of that size is zero-filled by the kernel on first touch, every call). Returns the bytes
    freed. As torch.cuda.empty_cache: nothing in use is touched."""
    return int(_core._empty_cache())


def memory_reserved() -> int:
    """The bytes of freed large output buffers kept for reuse (see empty_cache)."""
    return int(_core._cached_bytes())

