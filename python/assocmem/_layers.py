"""Hopfield layers with hopfield-layers' semantics (Ramsauer et al. 2020, github.com/ml-jku/hopfield-layers),
their association computed by assocmem's fused kernels (assocmem.torch.hopfield_retrieve).

    from hflayers import Hopfield, HopfieldPooling, HopfieldLayer          # before
    from assocmem.torch import Hopfield, HopfieldPooling, HopfieldLayer    # after
    (also HopfieldCore, and hflayers.transformer's HopfieldEncoderLayer, HopfieldDecoderLayer)

Same constructor arguments and defaults (layer norms of stored, state and projected patterns on), same
forward signatures, same parameter names, shapes and initialisation, so hopfield-layers' state_dicts load
unchanged. The association of each head is model B (eq. 16 of Krotov & Hopfield 2021, beta = scaling):
update_steps_max updates of the state xi <- softmax(beta xi K^T) K in the Hopfield space, then
softmax(beta xi K^T) V, forward and backward fused tile by tile, so the (queries x stored patterns)
association matrix is never formed. Every (batch element, head) of a layer call is one element of one
batched fused call (assocmem._functional._attention_batch, the elements split over the threads): one node in
the autograd graph per association, one more per update step (the heads still iterating together), no
Python loop over the batch or the heads. Where the keys and values are linear in the stored patterns and
projections (no Hopfield-space norm, zero association or connected values) and it costs fewer operations
(many stored patterns, few queries: pooling, retrieval from large memories), the association is taken
against those patterns themselves with the queries beta_h xi W_kh, and the result mapped by W_vh
(HopfieldCore._reassociates): the (stored patterns x heads) keys and values and their gradients are never
formed. It is the same function (the keys' bias shifts each query's scores alike; the rows of the softmax
sum to one), equal up to rounding. There, without update steps, the whole module - the three layer norms,
the query, key, value and output projections and the fused association - is one autograd node
(assocmem._functional._ProjectedAttention, its backward pass written out), so that a call's fixed cost is
one node's rather than that of the ~70 nodes of PyTorch's small operations. What differs (also in the
README, "Porting from hopfield-layers"):

- update_steps_eps compares successive states (||xi_new - xi||, max over the batch, per head) instead of
  successive association matrices, which are never formed. update_steps_max=None iterates until that
  test passes, at most 1000 updates (RuntimeWarning past that).
- dropout (on the association weights before the values, in training; identity in eval) is drawn inside
  the fused kernel by a counter-based generator seeded from torch's default generator: reproducible with
  torch.manual_seed and repeated exactly in the backward pass, but not the same draw as torch's dropout.
- A float association_mask is added to the scaled scores inside the fused kernels, as hopfield-layers adds
  it (entries finite or -inf; differentiable). A query left with no stored pattern raises ValueError
  (hopfield-layers returns NaN).
- concat_bias_pattern creates bias_k / bias_v as hopfield-layers does, and, as there, they are not used.
- HopfieldCore(need_weights=True) returns the head-averaged association before dropout (hopfield-layers:
  after); the matrices are computed apart from the fused output.
- A static pattern with num_heads > 1 is used by every head of its own batch element.
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import Optional, Tuple, Union

import torch as _torch
from torch import Tensor, nn

from . import _whole
from ._functional import _Projections, _association_batch, _attention_batch, _projected_attention

__all__ = ["Hopfield", "HopfieldPooling", "HopfieldLayer", "HopfieldCore", "HopfieldEncoderLayer", "HopfieldDecoderLayer"]

_UNBOUNDED_STEPS = 1000  # update_steps_max=None: iterate to the eps test, at most this many updates


class HopfieldCore(nn.Module):
    """hopfield-layers' HopfieldCore, the association of Hopfield: projections W_q, W_k, W_v (in_proj_weight or
    q/k/v_proj_weight), in_proj_bias, out_proj, optional Hopfield-space layer norm (p_norm_weight,
    p_norm_bias) and bias_k / bias_v, with its names, shapes, initialisation and forward (sequence first,
    as torch.nn.MultiheadAttention); the association fused (eq. 16, batched over batch x heads)."""

    def __init__(self, embed_dim=None, num_heads=1, dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False,
                 kdim=None, vdim=None, head_dim=None, pattern_dim=None, out_dim=None, disable_out_projection=False,
                 key_as_static=False, query_as_static=False, value_as_static=False, value_as_connected=False,
                 normalize_pattern=False, normalize_pattern_affine=False, normalize_pattern_eps=1e-5):
        super().__init__()
        for name, flag in (("stored_pattern_as_static", key_as_static), ("state_pattern_as_static", query_as_static),
                           ("pattern_projection_as_static", value_as_static)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        if not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"num_heads must be an int >= 1, got {num_heads!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.key_as_static, self.query_as_static, self.value_as_static = key_as_static, query_as_static, value_as_static
        self.value_as_connected = value_as_connected
        self.normalize_pattern, self.normalize_pattern_affine = normalize_pattern, normalize_pattern_affine
        self.normalize_pattern_eps = normalize_pattern_eps
        self.disable_out_projection = disable_out_projection
        self.static_execution = all((key_as_static, query_as_static, value_as_static, not value_as_connected,
                                     not normalize_pattern, not normalize_pattern_affine, disable_out_projection))
        if self.static_execution:
            embed_dim, kdim, vdim = None, None, None
        if embed_dim is None and not self.static_execution:
            raise ValueError("input_size is required unless every pattern is static and the output projection is "
                             "disabled")
        num_non_static = 3 - (key_as_static + query_as_static + value_as_static)
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = all((self.kdim == embed_dim, self.vdim == embed_dim, pattern_dim is None,
                                        not value_as_connected))
        if value_as_connected and self.kdim != self.vdim:
            raise ValueError(f"pattern_projection_as_connected needs stored and projected patterns of one size, got "
                             f"{self.kdim} and {self.vdim}")
        self.num_heads, self.dropout = num_heads, dropout
        self.head_dim, self.pattern_dim = None, pattern_dim
        self.virtual_hopfield_dim = self.virtual_pattern_dim = None
        if not self.static_execution:
            if head_dim is None:
                if embed_dim % num_heads:
                    raise ValueError(f"input_size {embed_dim} must be divisible by num_heads {num_heads} "
                                     "(or give hidden_size)")
                self.head_dim = embed_dim // num_heads
            else:
                if head_dim <= 0:
                    raise ValueError(f"hidden_size must be > 0, got {head_dim}")
                self.head_dim = head_dim
            if self.pattern_dim is None:
                self.pattern_dim = self.head_dim
            self.virtual_hopfield_dim = num_heads * self.head_dim
            self.virtual_pattern_dim = num_heads * self.pattern_dim
        self.out_dim = embed_dim if out_dim is None else out_dim
        if not disable_out_projection and not (self.out_dim and self.out_dim > 0):
            raise ValueError(f"output_size must be > 0, got {self.out_dim}")
        if normalize_pattern_affine and not normalize_pattern:
            raise ValueError("normalize_hopfield_space_affine needs normalize_hopfield_space")

        if normalize_pattern_affine:
            self.p_norm_weight = nn.Parameter(_torch.empty(self.head_dim))
            self.p_norm_bias = nn.Parameter(_torch.empty(self.head_dim))
        else:
            self.register_parameter("p_norm_weight", None)
            self.register_parameter("p_norm_bias", None)
        hop, pat = self.virtual_hopfield_dim, self.virtual_pattern_dim
        if not self._qkv_same_embed_dim:
            self.q_proj_weight = None if query_as_static else nn.Parameter(_torch.empty(hop, embed_dim))
            self.k_proj_weight = None if key_as_static else nn.Parameter(_torch.empty(hop, self.kdim))
            self.v_proj_weight = None if value_as_static else nn.Parameter(_torch.empty(
                pat, hop if (value_as_connected and not key_as_static) else self.vdim))
            self.register_parameter("in_proj_weight", None)
        else:
            self.register_parameter("in_proj_weight", None)
            if num_non_static > 0:
                rows = (not query_as_static) * hop + (not key_as_static) * hop + (not value_as_static) * pat
                self.in_proj_weight = nn.Parameter(_torch.empty(rows, embed_dim))
            for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                self.register_parameter(name, None)
        if bias and num_non_static > 0:
            self.in_proj_bias = nn.Parameter(_torch.empty((not query_as_static) * hop + (not key_as_static) * hop + pat))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = None if disable_out_projection else nn.Linear(pat if pat else self.vdim, self.out_dim, bias=bias)
        self.bias_k = self.bias_v = None
        if add_bias_kv:
            if not key_as_static:
                self.bias_k = nn.Parameter(_torch.empty(1, 1, hop))
            if not value_as_static:
                self.bias_v = nn.Parameter(_torch.empty(1, 1, hop))
            if self.bias_k is None and self.bias_v is None:
                raise ValueError("concat_bias_pattern needs a stored pattern or pattern projection that is not static")
        self.add_zero_attn = add_zero_attn
        self.reset_parameters()

    def reset_parameters(self):
        """hopfield-layers' initialisation: projections N(0, 0.02^2), biases 0, norms 1 and 0."""
        if self.p_norm_weight is not None:
            nn.init.ones_(self.p_norm_weight)
            nn.init.zeros_(self.p_norm_bias)
        for w in (self.in_proj_weight, self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
            if w is not None:
                nn.init.normal_(w, mean=0.0, std=0.02)
        if self.in_proj_bias is not None:
            nn.init.constant_(self.in_proj_bias, 0.0)
        if self.out_proj is not None:
            nn.init.normal_(self.out_proj.weight, mean=0.0, std=0.02)
            if self.out_proj.bias is not None:
                nn.init.constant_(self.out_proj.bias, 0.0)
        for b in (self.bias_k, self.bias_v):
            if b is not None:
                nn.init.normal_(b, mean=0.0, std=0.02)

    # -- projections into the Hopfield space ---------------------------------------------------------------
    def _linear_specs(self):
        """(weight, bias) of the query, key and value projections, None for a static pattern, each a (tensor,
        first row, end row) (rows None: the whole tensor) of hopfield-layers' layout: rows [W_q | W_k | W_v] of
        in_proj_weight (the projected ones) or separate weights; the bias [b_q | b_k | b_v] over the projected
        query and key and the values."""
        hop = self.virtual_hopfield_dim
        b = self.in_proj_bias
        statics = (self.query_as_static, self.key_as_static, self.value_as_static)
        maps, start = [], 0
        if self._qkv_same_embed_dim:
            for static, size in zip(statics, (hop, hop, self.virtual_pattern_dim)):
                if static:
                    maps.append(None)
                    continue
                maps.append(((self.in_proj_weight, start, start + size), None if b is None else (b, start, start + size)))
                start += size
            return maps
        for static, w, size in zip(statics, (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight),
                                   (hop, hop, None)):
            if static:
                maps.append(None)
                continue
            end = None if b is None else (b.shape[0] if size is None else start + size)
            maps.append(((w, None, None), None if b is None else (b, start, end)))
            start += size or 0
        return maps

    def _linear_maps(self):
        """_linear_specs as tensors (the rows sliced)."""
        def part(spec):
            return None if spec is None else (spec[0] if spec[1] is None else spec[0][spec[1]:spec[2]])
        return [None if m is None else (part(m[0]), part(m[1])) for m in self._linear_specs()]

    def _project(self, query, key, value):
        """(q, k, v) in the Hopfield space, batch first: q (N, L, H*hd), k (Nk, S, H*hd), v (Nk, S, H*pd);
        a static pattern is used as is for every head."""
        H = self.num_heads
        mq, mk, mv = self._linear_maps()

        def lin(x, m):
            return nn.functional.linear(x, *m)
        q = query.repeat(1, 1, H) if mq is None else lin(query, mq)
        k = key.repeat(1, 1, H) if mk is None else lin(key, mk)
        v = value
        if self.value_as_connected and mk is not None:
            v = lin(v, mk)  # the values projected from the keys
        if mv is not None:
            v = lin(v, mv)
        elif self._qkv_same_embed_dim or not (self.value_as_connected or self.key_as_static):
            v = v.repeat(1, 1, H)
        return q, k, v

    def _heads(self, query, key, value):
        """Projected, optionally normalised patterns split into heads: q (N, H, L, hd), k (Nk, H, S, hd),
        v (Nk, H, S, pd), with the zero association appended when asked."""
        q, k, v = self._project(query, key, value)
        H = self.num_heads
        q = q.reshape(q.shape[0], q.shape[1], H, -1).transpose(1, 2)
        k = k.reshape(k.shape[0], k.shape[1], H, -1).transpose(1, 2)
        v = v.reshape(v.shape[0], v.shape[1], H, -1).transpose(1, 2)
        if self.normalize_pattern:
            def norm(x):
                return nn.functional.layer_norm(x, (x.shape[-1],), self.p_norm_weight, self.p_norm_bias,
                                                self.normalize_pattern_eps)
            q, k = norm(q), norm(k)
        if self.add_zero_attn:
            k = _torch.cat([k, k.new_zeros(k.shape[0], H, 1, k.shape[3])], dim=2)
            v = _torch.cat([v, v.new_zeros(v.shape[0], H, 1, v.shape[3])], dim=2)
        return q, k, v


    # -- the association: eq. (16) iterated per head, then with the values, fused ---------------------------
    def associate(self, state, stored, proj, stored_pattern_padding_mask, association_mask, scaling, steps, eps,
                  what="output", norms=None):
        """Batch-first patterns: state (N, L, ·), stored (Nk, S, ·), proj (Nk, S, ·), Nk = 1 for memories shared
        by the batch; scaling, steps, eps per head. what = "output" (N, L, out_dim), "association" (the softmax
        matrices, (N, H, L, S), no dropout) or "projection" (N, H, S, pd); or a tuple of these names: a tuple
        of the results, from one projection and one iteration. norms: None (the patterns are normalised
        already) or the layer norms (modules or None) of the stored patterns and of the projections, and
        optionally of the state patterns, applied here - inside the fused node where the output is taken in the
        input space (_fused_norms, _output_in_input_space)."""
        fused = state_norm = None
        in_inputs = (what in ("output", ("output",)) and min(state.shape[:2]) > 0 and stored.shape[0] > 0
                     and self._reassociates(state, stored, proj, steps))
        if norms is not None:
            if len(norms) > 2 and norms[2] is not None:  # the state patterns' norm: in the fused node if it can be
                state_norm = _fused_norm(norms[2], state) if in_inputs else None
                if state_norm is None:
                    state = norms[2](state)
            norms = norms[:2]
            if in_inputs:
                fused = _fused_norms(norms, stored, proj)
            if fused is None:
                stored, proj = (x if m is None else m(x) for m, x in zip(norms, (stored, proj)))
        if state.shape[0] == 0 or state.shape[1] == 0 or stored.shape[0] == 0:
            # An empty batch or sequence (issue 23: a reshape error): the results of one element and one
            # query, emptied to the asked shapes (the parameters stay in the graph, with zero gradients).
            N, L = state.shape[0], state.shape[1]
            one = state.new_zeros(1, max(L, 1), state.shape[2])
            sk = stored if stored.shape[0] else stored.new_zeros(1, *stored.shape[1:])
            pk = proj if proj.shape[0] else proj.new_zeros(1, *proj.shape[1:])
            full = self.associate(one, sk[:1], pk[:1], None, None, scaling, steps, eps,
                                  what=what if isinstance(what, tuple) else (what,))
            cut = {"output": lambda t: t[:N, :L], "association": lambda t: t[:N, :, :L], "projection": lambda t: t[:N]}
            names = what if isinstance(what, tuple) else (what,)
            res = tuple(cut[w](t.expand(max(N, 1), *t.shape[1:])) for w, t in zip(names, full))
            return res if isinstance(what, tuple) else res[0]
        if in_inputs:
            out = self._output_in_input_space(state, stored, proj, stored_pattern_padding_mask, association_mask,
                                              scaling, steps, eps, fused, state_norm)
            return out if what == "output" else (out,)
        q, k, v = self._heads(state, stored, proj)
        N, H, L, S = q.shape[0], q.shape[1], q.shape[2], stored.shape[1]
        mask = self._masks(N, H, L, S, stored_pattern_padding_mask, association_mask)
        states = self._states(q, lambda x, heads: self._attend(x, k, None, mask, heads, scaling), steps, eps)

        def association():
            return self._attend(_torch.stack(states, dim=1), k, None, mask, list(range(H)), scaling, weights=True)

        def projection():
            return v.expand(N, *v.shape[1:]) if k.shape[0] == 1 and N > 1 else v

        def output():
            out = self._attend(_torch.stack(states, dim=1), k, v, mask, list(range(H)), scaling,
                               self.dropout if self.training else 0.0)  # (N, H, L, pd)
            out = out.transpose(1, 2).reshape(N, L, -1)  # the heads side by side, as hopfield-layers concatenates
            return out if self.out_proj is None else self.out_proj(out)
        make = {"output": output, "association": association, "projection": projection}
        if isinstance(what, str):
            return make[what]()
        return tuple(make[w]() for w in what)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None,
                scaling: Optional[Union[float, Tensor]] = None, update_steps_max: Optional[Union[int, Tensor]] = 0,
                update_steps_eps: Union[float, Tensor] = 1e-4, return_raw_associations: bool = False,
                return_pattern_projections: bool = False):
        """hopfield-layers' HopfieldCore.forward (sequence first): query (L, N, E), key (S, N, kdim), value
        (S, N, vdim); key_padding_mask (N, S); attn_mask (L, S) or (N * heads, L, S), bool or additive float;
        scaling None = 1 (no scaling, as there), a float or one per head. Returns (output (L, N, out_dim),
        the association matrix averaged over the heads (N, L, S) if need_weights, the raw associations
        (N, H, L, S) if asked, the projected patterns (N, H, S, pd) if asked), all from one projection and
        one iteration. The matrices are computed beside the fused output (without dropout)."""
        for name, t in (("query", query), ("key", key), ("value", value)):
            if not isinstance(t, Tensor) or t.dim() != 3:
                raise ValueError(f"{name} must be a 3-d tensor (length, batch, features), got "
                                 f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
        _check_dtypes(self, (("query", query), ("key", key), ("value", value)))
        H = self.num_heads
        args = (query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1), key_padding_mask, attn_mask,
                _scaling_per_head(1.0 if scaling is None else scaling, H), _steps_per_head(update_steps_max, H),
                _eps_per_head(update_steps_eps, H))
        wanted = ("output",) + (("association",) if need_weights or return_raw_associations else ()) + (
            ("projection",) if return_pattern_projections else ())
        got = dict(zip(wanted, self.associate(*args, what=wanted)))  # one projection and iteration for all
        return (got["output"].transpose(0, 1), got["association"].mean(dim=1) if need_weights else None,
                got.get("association") if return_raw_associations else None, got.get("projection"))

    # -- the association without projected stored patterns ------------------------------------------------
    # Keys and values are linear in the stored patterns and projections: K_h = Y W_kh^T + 1 b_kh^T, V_h =
    # Z W_vh^T + 1 b_vh^T. So beta xi K_h^T = (beta xi W_kh) Y^T + (beta xi . b_kh) 1^T, whose last term
    # shifts every score of a query alike and leaves the softmax P unchanged, and since the rows of P sum to
    # one, P V_h = (P Z) W_vh^T + b_vh (and P K_h = (P Y) W_kh^T + b_kh for the updates). The fused
    # association then runs against Y and Z themselves: the (stored patterns x heads) projections are never
    # formed, nor their gradients; the heads of a batch element share its stored patterns as one element
    # of the batched call. Exact but for rounding; chosen where it costs fewer operations (_reassociates).
    _reassociation: Optional[bool] = None  # None: where it pays; False: never; True: wherever it applies

    def _reassociates(self, state, stored, proj, steps):
        """Whether the output is computed in the input space (above): the keys projected linearly, the values
        projected or static, not connected, no Hopfield-space layer norm or zero association (neither is
        linear in the stored patterns), float32 / float64; and, unless forced, fewer multiply-adds."""
        if self._reassociation is False:
            return False
        static_values = self.value_as_static  # no value projection (a static pattern: _linear_maps' None)
        if (self.key_as_static or self.value_as_connected or self.normalize_pattern or self.add_zero_attn
                or stored.dtype not in (_torch.float32, _torch.float64)):
            return False
        if self._reassociation:
            return True
        N, L, Nk, S, H = state.shape[0], state.shape[1], stored.shape[0], stored.shape[1], self.num_heads
        hd, dk = self.head_dim, stored.shape[2]
        pd, dv = (proj.shape[2], proj.shape[2]) if static_values else (self.pattern_dim, proj.shape[2])
        updates = sum(1 if s is None else s for s in steps)  # None: at least one update; more cannot be known
        # Per head and query: scores and weighted sum over S stored patterns, in the space they are taken in.
        projected = Nk * S * H * (dk * hd + (0 if static_values else dv * pd)) + N * L * S * (H * (hd + pd) + 2 * updates * hd)
        inputs = N * L * S * (H * (dk + dv) + 2 * updates * dk) + N * L * H * (hd * dk + (0 if static_values else pd * dv))
        return inputs < projected

    def _output_in_input_space(self, state, stored, proj, stored_pattern_padding_mask, association_mask, scaling,
                               steps, eps, norms=None, state_norm=None):
        """associate(..., what="output") computed against the stored patterns and projections themselves (norms:
        None, or the (weight, bias, eps) or None of their layer norms, applied inside the fused kernel;
        state_norm: None or the state patterns' layer norm as (weight, bias, eps), still to be applied). Without
        updates the whole association, from the state's norm to the output projection, is one autograd node
        (_ProjectedAttention); each update of eq. (16) is one, and the final association."""
        kn, vn = (None, None) if norms is None else norms
        H = self.num_heads
        N, L, S = state.shape[0], state.shape[1], stored.shape[1]
        mask = self._masks(N, H, L, S, stored_pattern_padding_mask, association_mask)
        dropout = self.dropout if self.training else 0.0
        every = list(range(H))
        if all(s == 0 for s in steps):
            p, ws = self._projections(None, (kn, vn), state_norm, final=True)
            m, bias = (self._per_query(t, every, N, H, L, S, stored.shape[0]) for t in mask or (None, None))
            return _projected_attention(p, state, stored, proj, _betas(scaling, 1, stored.dtype), m, bias, dropout,
                                        project=True, concat=True, ws=ws)
        if state_norm is not None:
            state = nn.functional.layer_norm(state, (state.shape[-1],), *state_norm)
        mq = self._linear_maps()[0]
        q = state.repeat(1, 1, H) if mq is None else nn.functional.linear(state, *mq)
        q = q.reshape(N, L, H, -1).transpose(1, 2)  # (N, H, L, hd)
        states = self._states(q, lambda x, heads: self._attend_inputs(x, heads, stored, None, mask, scaling,
                                                                      norms=(kn, None)), steps, eps)
        return self._attend_inputs(_torch.stack(states, dim=1), every, stored, proj, mask, scaling, dropout, (kn, vn),
                                   final=True)

    def _projections(self, heads, norms, state_norm=None, final=False):
        """(_Projections, its tensors) of the association against the stored patterns for the given heads (None:
        every head): final=True the output (the value projection, the output projection, and the state's
        norm and query projection), final=False an update of eq. (16) (the keys' map as the values')."""
        ws, index = [], {}

        def spec(s):  # (tensor, r0, r1) -> (index in ws, r0, r1), each tensor once
            if s is None:
                return None
            if id(s[0]) not in index:
                index[id(s[0])] = len(ws)
                ws.append(s[0])
            return (index[id(s[0])],) + tuple(s[1:])

        def norm(n):  # (weight, bias, eps) -> (eps, weight spec, bias spec)
            return None if n is None else (n[2], None if n[0] is None else spec((n[0], None, None)),
                                           None if n[1] is None else spec((n[1], None, None)))
        mq, mk, mv = self._linear_specs()
        kn, vn = norms
        if not final:
            return _Projections(self.num_heads, heads, wk=spec(mk[0]), wv=spec(mk[0]), bv=spec(mk[1]), kn=norm(kn)), ws
        op = self.out_proj
        return _Projections(self.num_heads, heads, sn=norm(state_norm),
                            wq=None if mq is None else spec(mq[0]), bq=None if mq is None else spec(mq[1]),
                            wk=spec(mk[0]), wv=None if mv is None else spec(mv[0]), bv=None if mv is None else spec(mv[1]),
                            wo=None if op is None else spec((op.weight, None, None)),
                            bo=None if op is None or op.bias is None else spec((op.bias, None, None)),
                            kn=norm(kn), vn=norm(vn)), ws

    def _attend_inputs(self, states, heads, stored, proj, mask, scaling, dropout=0.0, norms=(None, None), final=False):
        """softmax(beta_h xi K_h^T) V_h for the given heads, with K_h = stored W_kh^T + b_kh and V_h = proj
        W_vh^T + b_vh (proj None: the stored patterns and V_h = K_h, an update of eq. 16), in one autograd node
        (_ProjectedAttention) and one batched fused call against stored (Nk, S, dk) and proj (Nk, S, dv): each
        batch element is one element of the call with the queries beta_h xi W_kh of all the given heads (Nk =
        1 with N > 1: one element, every query). states (N, A, L, hd). norms: the layer norms ((weight, bias,
        eps) or None) of the stored patterns and the projections, fused into the call. Returns (N, A, L, hd)
        for an update, the output (N, L, out_dim) with final=True."""
        N, A, L, S = states.shape[0], states.shape[1], states.shape[2], stored.shape[1]
        every = heads == list(range(self.num_heads))
        p, ws = self._projections(None if every else heads, norms, final=final)
        m, bias = (self._per_query(t, heads, N, A, L, S, stored.shape[0]) for t in mask or (None, None))
        return _projected_attention(p, states, stored, proj, _betas([scaling[h] for h in heads], 1, states.dtype), m,
                                    bias, dropout, project=False, concat=final, ws=ws)

    @staticmethod
    def _per_query(t, heads, N, A, L, S, E):
        """A mask or bias (N or 1, H or 1, L or 1, S) as the call against E elements of stored patterns takes it,
        for the A heads taken: (E, queries, S), or (E, S) where one row serves every head and query."""
        if t is None:
            return None
        t = t if t.shape[1] == 1 or heads == list(range(t.shape[1])) else t[:, heads]
        if E == N and t.shape[0] == N and t.shape[1] == 1 and t.shape[2] == 1:
            return t.reshape(N, S)  # one row per element serves every head and query
        t = t.expand(N, A, L, S)
        return t.reshape(N, A * L, S) if E == N else t.reshape(1, N * A * L, S)

    def _masks(self, N, H, L, S, stored_pattern_padding_mask, association_mask):
        """(bool mask, additive bias), each None or broadcastable to (N, H, L, S) - of shape (N or 1, H or 1,
        L or 1, S): True leaves a memory out; the bias (a float association_mask with values other than 0 and
        -inf, hopfield-layers' additive mask) is added to the scaled scores."""
        kpm = _bool_mask(stored_pattern_padding_mask, "stored_pattern_padding_mask")
        am = _bool_mask(association_mask, "association_mask", additive=True)
        zero = self.add_zero_attn
        if kpm is not None:
            if tuple(kpm.shape) != (N, S):
                raise ValueError(f"stored_pattern_padding_mask must have shape (batch, stored patterns) = ({N}, {S}), "
                                 f"got {tuple(kpm.shape)}")
            full = kpm.all(dim=1)
            if full.any() and not zero:  # named here, not as an element of the flattened (batch x heads) call
                raise ValueError(f"stored_pattern_padding_mask: batch element {int(full.nonzero()[0, 0])} pads every "
                                 "stored pattern; a state pattern needs at least one (or add_zero_association=True)")
            if zero:
                kpm = nn.functional.pad(kpm, (0, 1))
        if am is not None:
            if am.dim() == 2 and tuple(am.shape) != (L, S):
                raise ValueError(f"a 2-d association_mask must have shape (state patterns, stored patterns) = ({L}, "
                                 f"{S}), got {tuple(am.shape)}")
            if am.dim() == 3 and tuple(am.shape) != (N * H, L, S):
                raise ValueError(f"a 3-d association_mask must have shape (batch * heads, state patterns, stored "
                                 f"patterns) = ({N * H}, {L}, {S}), got {tuple(am.shape)}")
            if am.dim() not in (2, 3):
                raise ValueError(f"association_mask must be 2-d or 3-d, got {am.dim()}-d")
            if zero:
                am = nn.functional.pad(am, (0, 1))  # the zero association: not masked, bias 0
            am = am[None, None] if am.dim() == 2 else am.reshape(N, H, L, am.shape[-1])
        bias = am if am is not None and am.is_floating_point() else None
        m = am if bias is None else None
        if kpm is not None:
            m = kpm[:, None, None, :] if m is None else m | kpm[:, None, None, :]
        return None if m is None and bias is None else (m, bias)

    def _states(self, q, update, steps, eps):
        """The iterated states of eq. (16) per head: a list over heads of (N, L, hd) tensors, each head updated
        in lockstep over the batch until its update_steps_max updates or a change <= its update_steps_eps
        (max over the batch). The heads still iterating are updated together: one batched call per update,
        update(states (N, A, L, hd), heads) = softmax(beta_h xi K_h^T) K_h for those A heads."""
        H = q.shape[1]
        state = [q[:, h] for h in range(H)]
        limit = [_UNBOUNDED_STEPS if steps[h] is None else steps[h] for h in range(H)]
        done = [0] * H
        active = [h for h in range(H) if limit[h] > 0]
        while active:
            new = update(_torch.stack([state[h] for h in active], dim=1), active)
            change = (new - _torch.stack([state[h] for h in active], dim=1)).detach().flatten(2).norm(dim=2).amax(0)
            still = []
            for i, h in enumerate(active):
                state[h] = new[:, i]
                done[h] += 1
                if change[i].item() <= eps[h]:
                    continue
                if done[h] == limit[h]:
                    if steps[h] is None:
                        warnings.warn(f"Hopfield: head {h} did not converge within {limit[h]} updates "
                                      f"(update_steps_eps {eps[h]:g})", RuntimeWarning)
                    continue
                still.append(h)
            active = still
        return state

    @staticmethod
    def _attend(states, keys, values, mask, heads, scaling, dropout=0.0, weights=False):
        """softmax(beta_h state keys_h^T) values_h (values None: the keys) for the given heads of every batch
        element, in one batched fused call (assocmem.torch's batched attention: one graph node).
        states (N, A, L, hd) for A = len(heads); keys (Nk, H, S, hd), values (Nk, H, S, pd); Nk = 1 with
        N > 1: memories shared by the batch (one element per head, its queries those of every batch
        element). dropout: on the association weights (the final association in training). Returns (N, A, L, pd);
        with weights=True the association matrices softmax(beta_h state keys_h^T + bias) themselves (N, A, L, S),
        no dropout, from the same kernels (_association_batch)."""
        N, A, L = states.shape[0], states.shape[1], states.shape[2]
        if heads == list(range(keys.shape[1])):  # every head: no copy
            k, v = keys, values
        else:
            idx = _torch.tensor(heads)
            k = keys.index_select(1, idx)
            v = None if values is None else values.index_select(1, idx)
        S = k.shape[2]
        betas = _betas([scaling[h] for h in heads], 1, k.dtype)
        m, bias = mask if mask is not None else (None, None)

        def per_head(t):  # (N or 1, H or 1, L or 1, S) -> (N, A, L or 1, S)
            t = t if t.shape[1] == 1 or len(heads) == t.shape[1] else t[:, heads]
            return t.expand(N, A, t.shape[2], S)
        m = None if m is None else per_head(m)
        bias = None if bias is None else per_head(bias)
        def call(q, k, v, betas, m, bias):
            if weights:
                return _association_batch(q, k, betas, m, bias=bias)
            return _attention_batch(q, k, v, betas, m, dropout=dropout, bias=bias)
        if k.shape[0] == 1 and N > 1:
            q = states.transpose(0, 1).reshape(A, N * L, -1)
            m, bias = (None if t is None else t.expand(N, A, L, S).transpose(0, 1).reshape(A, N * L, S) for t in (m, bias))
            out = call(q, k[0], None if v is None else v[0], betas, m, bias)
            return out.reshape(A, N, L, -1).transpose(0, 1)
        E = N * A
        m, bias = (None if t is None else (t.reshape(E, S) if t.shape[2] == 1 else t.reshape(E, L, S)) for t in (m, bias))
        out = call(states.reshape(E, L, -1), k.reshape(E, S, -1), None if v is None else v.reshape(E, S, -1),
                   betas.repeat(N), m, bias)
        return out.reshape(N, A, L, -1)


def _fused_norm(m, x):
    """A layer norm as the fused code takes it, (weight, bias, eps); None where m is not a plain LayerNorm over
    x's last dimension with eps > 0 in x's dtype (it is then applied in torch)."""
    if (type(m) is not nn.LayerNorm or tuple(m.normalized_shape) != (x.shape[-1],) or not m.eps > 0
            or (m.weight is not None and m.weight.dtype != x.dtype)):
        return None
    return (m.weight, m.bias, float(m.eps))


def _fused_norms(norms, stored, proj):
    """The layer norms of the stored patterns and the projections as the fused kernel takes them: a pair of
    (weight, bias, eps) or None each (no norm); None where one of them cannot be fused (_fused_norm)."""
    out = tuple(None if m is None else _fused_norm(m, x) for m, x in zip(norms, (stored, proj)))
    return None if any(o is None and m is not None for o, m in zip(out, norms)) else out


def _check_dtypes(module, named):
    """The patterns are floating point and of the module's parameters' dtype (a float64 input to a float32
    module otherwise fails deep inside torch with "expected scalar type", naming no argument)."""
    param = next(module.parameters(), None)
    for name, t in named:
        if not t.is_floating_point():
            raise TypeError(f"the {name} must be a floating-point tensor, got {t.dtype}")
        if param is not None and t.dtype != param.dtype:
            raise TypeError(f"the {name} is {t.dtype} but the module's parameters are {param.dtype}: convert the "
                            f"module (.to({t.dtype})) or the input (.to({param.dtype}))")


def _scaling_per_head(scaling, H):
    if isinstance(scaling, Tensor):
        if scaling.dim() != 1 or scaling.shape[0] != H:
            raise ValueError(f"scaling as a tensor needs one entry per head ({H}), got shape {tuple(scaling.shape)}")
        return [scaling[h] for h in range(H)]
    if not isinstance(scaling, (int, float)) or not scaling > 0 or not math.isfinite(scaling):
        raise ValueError(f"scaling must be a finite number > 0 or a tensor of one per head, got {scaling!r}")
    return [float(scaling)] * H


def _steps_per_head(update_steps_max, H):
    if update_steps_max is None:
        return [None] * H
    if isinstance(update_steps_max, Tensor):
        if update_steps_max.dim() != 1 or update_steps_max.shape[0] != H:
            raise ValueError(f"update_steps_max as a tensor needs one entry per head ({H}), got shape "
                             f"{tuple(update_steps_max.shape)}")
        if update_steps_max.is_floating_point():
            raise TypeError(f"update_steps_max as a tensor must hold integers, got {update_steps_max.dtype}")
        return [None if int(s) < 0 else _whole(int(s), "update_steps_max", 0) for s in update_steps_max]
    if isinstance(update_steps_max, bool) or not isinstance(update_steps_max, int):
        raise TypeError(f"update_steps_max must be an int, a tensor of one per head or None, got "
                        f"{type(update_steps_max).__name__}")
    return [None if update_steps_max < 0 else _whole(update_steps_max, "update_steps_max", 0)] * H


def _eps_per_head(update_steps_eps, H):
    if isinstance(update_steps_eps, Tensor):
        if update_steps_eps.dim() != 1 or update_steps_eps.shape[0] != H or (update_steps_eps <= 0).any():
            raise ValueError(f"update_steps_eps as a tensor needs one positive entry per head ({H})")
        return [float(e) for e in update_steps_eps]
    if not update_steps_eps > 0:
        raise ValueError(f"update_steps_eps must be > 0, got {update_steps_eps!r}")
    return [float(update_steps_eps)] * H


def _bool_mask(mask, name, additive=False):
    """A bool mask (True = left out) from a bool, uint8 or float mask; with additive=True a float mask with
    entries other than 0 and -inf is returned as it is (an additive bias of the scores)."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype == _torch.bool:
        return mask
    if mask.dtype == _torch.uint8:
        if ((mask != 0) & (mask != 1)).any():
            raise ValueError(f"{name}: a uint8 mask holds 0 and 1 only (1 leaves a memory out), got "
                             f"{int(mask[(mask != 0) & (mask != 1)][0])}")
        return mask != 0
    if mask.is_floating_point():
        blocked = _torch.isneginf(mask)
        if ((mask == 0) | blocked).all():
            return blocked
        if not additive:
            raise ValueError(f"{name} must be a bool mask (or 0 / -inf floats), got other float values")
        if _torch.isnan(mask).any() or _torch.isposinf(mask).any():
            raise ValueError(f"{name}: an additive float mask must be finite or -inf, got NaN or +inf")
        return mask
    raise TypeError(f"{name} must be bool, uint8 or float, got {mask.dtype}")


class _Forwarded:
    """A read-only attribute returning self.<owner>.<name> (name: the attribute's own unless given): the
    properties hopfield-layers' modules forward from a submodule, written once. Setting one raises
    AttributeError, as for hopfield-layers' properties."""

    def __init__(self, owner, name=None):
        self.owner, self.name = owner, name

    def __set_name__(self, cls, attribute):
        self.attribute = attribute
        self.name = self.name or attribute

    def __get__(self, obj, cls=None):
        return self if obj is None else getattr(getattr(obj, self.owner), self.name)

    def __set__(self, obj, value):
        raise AttributeError(f"{self.attribute} is read-only (it is self.{self.owner}.{self.name})")


class Hopfield(nn.Module):
    """hopfield-layers' Hopfield module (same arguments, defaults, forward and state_dict), its association
    fused (assocmem.torch.hopfield_retrieve). See the module docstring for what differs.

    forward(input, stored_pattern_padding_mask=None, association_mask=None): input is one tensor (used as
    stored pattern, state pattern and pattern projection) or a tuple (stored pattern Y, state pattern R,
    pattern projection), each 3-d, (batch, length, size) with batch_first. Per head h the stored patterns
    are projected to keys K = Y W_K, the state patterns to queries Q = R W_Q and the projections to values
    V; Q is updated update_steps_max times by Q <- softmax(scaling_h Q K^T) K (eq. 16, beta = scaling_h),
    then softmax(scaling_h Q K^T) V is concatenated over the heads and projected to output_size.

    Parameters (all keyword, hopfield-layers' names and defaults):
        input_size: size of the state pattern (and of the stored pattern and projection unless given apart);
            None only when every pattern is static and disable_out_projection (static execution).
        hidden_size: size of the association (Hopfield) space per head, i.e. of the keys and queries;
            default input_size // num_heads.
        output_size: size of the output projection; default input_size.
        pattern_size: size of the values (the patterns selected) per head; default hidden_size.
        num_heads: number of association heads, each with its own projections into the Hopfield space.
        scaling: beta of each head: a number, or a 1-d tensor of one per head (head h uses scaling[h]; see the
            module docstring for how this differs from hopfield-layers). Default 1 / sqrt(hidden_size) (1.0
            in static execution). Must be finite and > 0.
        update_steps_max: updates of the queries before the final association: 0 (default) is one
            attention step, an int n >= 1 gives n updates first, None (or a negative int) iterates until
            update_steps_eps is met (at most 1000 updates); or a 1-d integer tensor of one per head.
        update_steps_eps: an update stops once ||Q_new - Q|| <= eps (max over the batch, per head); a number
            or a tensor of one per head.
        normalize_stored_pattern, normalize_state_pattern, normalize_pattern_projection: a LayerNorm over the
            stored patterns / state patterns / projections before the association (default on);
            ``*_affine``: with a learned elementwise scale and shift (default on; needs the norm on);
            ``*_eps``: the LayerNorm's epsilon (1e-5).
        normalize_hopfield_space (+ _affine, _eps): a LayerNorm of keys and queries inside the Hopfield
            space, per head (default off).
        stored_pattern_as_static, state_pattern_as_static, pattern_projection_as_static: use that input as
            given (no learned projection; its size must then match the Hopfield space or the pattern size).
        pattern_projection_as_connected: project the values from the projected stored patterns (the keys)
            rather than from the pattern projection input.
        stored_pattern_size, pattern_projection_size: sizes of those inputs when they differ from input_size.
        batch_first: inputs and output are (batch, length, size) when True (default), else (length, batch,
            size). Must be a bool.
        association_activation: name of a torch function (e.g. "tanh") applied to the output; None: none.
        dropout: probability of dropping each association weight before the values, in training only
            (drawn inside the fused kernel, reproducible with torch.manual_seed; not torch's draw).
        input_bias: biases in the input projections (default on).
        concat_bias_pattern: creates bias_k / bias_v as hopfield-layers does (unused there and here).
        add_zero_association: append a zero stored pattern and a zero projection to each batch element.
        disable_out_projection: return the concatenated heads without the output projection.

    stored_pattern_padding_mask (batch, stored patterns): True (or 1) leaves that stored pattern out.
    association_mask (state patterns, stored patterns), or with batch and head dimensions: bool (True masks)
    or float (added to the scaled scores; finite or -inf). A state pattern left with no stored pattern
    raises ValueError.
    """

    def __init__(self, input_size: Optional[int] = None, hidden_size: Optional[int] = None,
                 output_size: Optional[int] = None, pattern_size: Optional[int] = None, num_heads: int = 1,
                 scaling: Optional[Union[float, Tensor]] = None,
                 update_steps_max: Optional[Union[int, Tensor]] = 0, update_steps_eps: Union[float, Tensor] = 1e-4,
                 normalize_stored_pattern: bool = True, normalize_stored_pattern_affine: bool = True,
                 normalize_stored_pattern_eps: float = 1e-5, normalize_state_pattern: bool = True,
                 normalize_state_pattern_affine: bool = True, normalize_state_pattern_eps: float = 1e-5,
                 normalize_pattern_projection: bool = True, normalize_pattern_projection_affine: bool = True,
                 normalize_pattern_projection_eps: float = 1e-5, normalize_hopfield_space: bool = False,
                 normalize_hopfield_space_affine: bool = False, normalize_hopfield_space_eps: float = 1e-5,
                 stored_pattern_as_static: bool = False, state_pattern_as_static: bool = False,
                 pattern_projection_as_static: bool = False, pattern_projection_as_connected: bool = False,
                 stored_pattern_size: Optional[int] = None, pattern_projection_size: Optional[int] = None,
                 batch_first: bool = True, association_activation: Optional[str] = None, dropout: float = 0.0,
                 input_bias: bool = True, concat_bias_pattern: bool = False, add_zero_association: bool = False,
                 disable_out_projection: bool = False):
        super().__init__()
        if not isinstance(batch_first, bool):
            raise TypeError(f"batch_first must be a bool, got {type(batch_first).__name__}")
        self.association_core = HopfieldCore(
            embed_dim=input_size, num_heads=num_heads, dropout=dropout, bias=input_bias,
            add_bias_kv=concat_bias_pattern, add_zero_attn=add_zero_association, kdim=stored_pattern_size,
            vdim=pattern_projection_size, head_dim=hidden_size, pattern_dim=pattern_size, out_dim=output_size,
            disable_out_projection=disable_out_projection, key_as_static=stored_pattern_as_static,
            query_as_static=state_pattern_as_static, value_as_static=pattern_projection_as_static,
            value_as_connected=pattern_projection_as_connected, normalize_pattern=normalize_hopfield_space,
            normalize_pattern_affine=normalize_hopfield_space_affine,
            normalize_pattern_eps=normalize_hopfield_space_eps)
        self.association_activation = None
        if association_activation is not None:
            fn = getattr(_torch, association_activation, None) if isinstance(association_activation, str) else None
            if fn is None:
                raise ValueError(f"association_activation must name a torch function, got {association_activation!r}")
            self.association_activation = fn

        def norm(on, affine, eps, size, what):
            if affine and not on:
                raise ValueError(f"normalize_{what}_affine needs normalize_{what}")
            if not on:
                return None
            if size is None:
                raise ValueError(f"normalize_{what} needs the pattern's size (input_size or the {what} size)")
            return nn.LayerNorm(size, elementwise_affine=affine, eps=eps)
        self.norm_stored_pattern = norm(normalize_stored_pattern, normalize_stored_pattern_affine,
                                        normalize_stored_pattern_eps,
                                        input_size if stored_pattern_size is None else stored_pattern_size,
                                        "stored_pattern")
        self.norm_state_pattern = norm(normalize_state_pattern, normalize_state_pattern_affine,
                                       normalize_state_pattern_eps, input_size, "state_pattern")
        self.norm_pattern_projection = norm(normalize_pattern_projection, normalize_pattern_projection_affine,
                                            normalize_pattern_projection_eps,
                                            input_size if pattern_projection_size is None else pattern_projection_size,
                                            "pattern_projection")
        core = self.association_core
        if scaling is None:
            scaling = 1.0 if core.static_execution else 1.0 / math.sqrt(core.head_dim)
        _scaling_per_head(scaling, num_heads)
        _steps_per_head(update_steps_max, num_heads)
        _eps_per_head(update_steps_eps, num_heads)
        self.__scaling, self.__batch_first = scaling, batch_first
        self.__update_steps_max, self.__update_steps_eps = update_steps_max, update_steps_eps
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in (self.association_core, self.norm_stored_pattern, self.norm_state_pattern,
                       self.norm_pattern_projection):
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()

    # -- the association ---------------------------------------------------------------------------------
    def _inputs(self, data, shared_memories=False):
        """(stored, state, projection), batch first, none of them layer-normed yet (the norms are applied by
        the association: HopfieldCore.associate's norms); with shared_memories the stored patterns and
        projections have batch size 1 and serve every batch element."""
        if isinstance(data, Tensor):
            stored, state, proj = data, data, data
        elif isinstance(data, tuple) and len(data) == 3:
            stored, state, proj = data
        else:
            raise TypeError("input must be one tensor (stored pattern, state pattern and pattern projection at once) "
                            "or a tuple (stored pattern, state pattern, pattern projection)")
        for name, t in (("stored pattern", stored), ("state pattern", state), ("pattern projection", proj)):
            if not isinstance(t, Tensor) or t.dim() != 3:
                raise ValueError(f"the {name} must be a 3-d tensor "
                                 f"({'(batch, length, size)' if self.batch_first else '(length, batch, size)'}), got "
                                 f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
        _check_dtypes(self, (("stored pattern", stored), ("state pattern", state), ("pattern projection", proj)))
        if not self.batch_first:
            stored, state, proj = (t.transpose(0, 1) for t in (stored, state, proj))
        if stored.shape[:2] != proj.shape[:2]:
            raise ValueError(f"stored pattern and pattern projection must have the same batch and length, got "
                             f"{tuple(stored.shape)} and {tuple(proj.shape)}")
        if not shared_memories and stored.shape[0] != state.shape[0]:
            raise ValueError(f"stored and state patterns must have the same batch size, got {stored.shape[0]} and "
                             f"{state.shape[0]}")

        return stored, state, proj

    def _associate(self, data, stored_pattern_padding_mask=None, association_mask=None, shared_memories=False,
                   what="output"):
        stored, state, proj = self._inputs(data, shared_memories)
        H = self.association_core.num_heads
        return self.association_core.associate(
            state, stored, proj, stored_pattern_padding_mask, association_mask, _scaling_per_head(self.__scaling, H),
            _steps_per_head(self.__update_steps_max, H), _eps_per_head(self.__update_steps_eps, H), what,
            (self.norm_stored_pattern, self.norm_pattern_projection, self.norm_state_pattern))

    def forward(self, input: Union[Tensor, Tuple[Tensor, Tensor, Tensor]],
                stored_pattern_padding_mask: Optional[Tensor] = None,
                association_mask: Optional[Tensor] = None) -> Tensor:
        return self._forward(input, stored_pattern_padding_mask, association_mask, False)

    def _forward(self, input, stored_pattern_padding_mask, association_mask, shared_memories):
        out = self._associate(input, stored_pattern_padding_mask, association_mask, shared_memories)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if self.association_activation is not None:
            out = self.association_activation(out)
        return out

    def get_association_matrix(self, input, stored_pattern_padding_mask=None, association_mask=None) -> Tensor:
        """The association (softmax) matrix (batch, heads, state patterns, stored patterns) at the final states;
        formed explicitly, since it is what is asked for."""
        with _torch.no_grad():
            return self._associate(input, stored_pattern_padding_mask, association_mask, what="association")

    def get_projected_pattern_matrix(self, input, stored_pattern_padding_mask=None, association_mask=None) -> Tensor:
        """The projected patterns (batch, heads, stored patterns, pattern size)."""
        with _torch.no_grad():
            return self._associate(input, stored_pattern_padding_mask, association_mask, what="projection")

    @property
    def batch_first(self) -> bool:
        return self.__batch_first

    @property
    def scaling(self):
        return self.__scaling.clone() if isinstance(self.__scaling, Tensor) else self.__scaling

    stored_pattern_dim = _Forwarded("association_core", "kdim")
    state_pattern_dim = _Forwarded("association_core", "embed_dim")
    pattern_projection_dim = _Forwarded("association_core", "vdim")
    @property
    def input_size(self):
        return self.state_pattern_dim

    hidden_size = _Forwarded("association_core", "head_dim")
    output_size = _Forwarded("association_core", "out_dim")
    pattern_size = _Forwarded("association_core", "pattern_dim")
    @property
    def update_steps_max(self):
        s = self.__update_steps_max
        return s.clone() if isinstance(s, Tensor) else s

    @property
    def update_steps_eps(self):
        e = self.__update_steps_eps
        return e.clone() if isinstance(e, Tensor) else e

    stored_pattern_as_static = _Forwarded("association_core", "key_as_static")
    state_pattern_as_static = _Forwarded("association_core", "query_as_static")
    pattern_projection_as_static = _Forwarded("association_core", "value_as_static")
    @property
    def normalize_stored_pattern(self) -> bool:
        return self.norm_stored_pattern is not None

    @property
    def normalize_stored_pattern_affine(self) -> bool:
        return self.normalize_stored_pattern and self.norm_stored_pattern.elementwise_affine

    @property
    def normalize_state_pattern(self) -> bool:
        return self.norm_state_pattern is not None

    @property
    def normalize_state_pattern_affine(self) -> bool:
        return self.normalize_state_pattern and self.norm_state_pattern.elementwise_affine

    @property
    def normalize_pattern_projection(self) -> bool:
        return self.norm_pattern_projection is not None

    @property
    def normalize_pattern_projection_affine(self) -> bool:
        return self.normalize_pattern_projection and self.norm_pattern_projection.elementwise_affine

    normalize_hopfield_space = _Forwarded("association_core", "normalize_pattern")
    normalize_hopfield_space_affine = _Forwarded("association_core", "normalize_pattern_affine")

def _betas(scaling, N, dtype):
    """Inverse temperatures of N x len(scaling) batch elements (element n A + i: scaling[i]), a tensor
    (differentiable where a head's scaling is a tensor)."""
    t = _torch.float64 if dtype == _torch.float64 else _torch.float32
    return _torch.stack([s.to(t) if isinstance(s, Tensor) else _torch.tensor(float(s), dtype=t) for s in scaling]).repeat(N)


_HOPFIELD_ARGS = ("hidden_size", "output_size", "pattern_size", "num_heads", "scaling", "update_steps_max",
                  "update_steps_eps", "normalize_stored_pattern", "normalize_stored_pattern_affine",
                  "normalize_state_pattern", "normalize_state_pattern_affine", "normalize_pattern_projection",
                  "normalize_pattern_projection_affine", "normalize_hopfield_space", "normalize_hopfield_space_affine",
                  "stored_pattern_as_static", "state_pattern_as_static", "pattern_projection_as_static",
                  "pattern_projection_as_connected", "stored_pattern_size", "pattern_projection_size", "batch_first",
                  "association_activation", "dropout", "input_bias", "concat_bias_pattern", "add_zero_association",
                  "disable_out_projection")


class _Wrapper(nn.Module):
    """What HopfieldPooling and HopfieldLayer share: a Hopfield module (self.hopfield) and its properties."""

    _quantity: int
    hopfield: Hopfield

    def _make_hopfield(self, input_size, kwargs):
        self.hopfield = Hopfield(input_size=input_size, **{a: kwargs[a] for a in _HOPFIELD_ARGS})

    def _batch(self, x):
        if not isinstance(x, Tensor) or x.dim() != 3:
            raise ValueError(f"input must be a 3-d tensor, got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        return x.shape[0 if self.batch_first else 1]

    def _expand(self, w, batch):
        return w.expand(batch, self.quantity, w.shape[2]) if self.batch_first else w.expand(self.quantity, batch,
                                                                                            w.shape[2])

    @property
    def quantity(self) -> int:
        return self._quantity

    # The Hopfield module's read-only properties, as hopfield-layers' wrappers forward them.
    batch_first = _Forwarded("hopfield")
    scaling = _Forwarded("hopfield")
    stored_pattern_dim = _Forwarded("hopfield")
    state_pattern_dim = _Forwarded("hopfield")
    pattern_projection_dim = _Forwarded("hopfield")
    input_size = _Forwarded("hopfield")
    hidden_size = _Forwarded("hopfield")
    output_size = _Forwarded("hopfield")
    pattern_size = _Forwarded("hopfield")
    update_steps_max = _Forwarded("hopfield")
    update_steps_eps = _Forwarded("hopfield")
    stored_pattern_as_static = _Forwarded("hopfield")
    state_pattern_as_static = _Forwarded("hopfield")
    pattern_projection_as_static = _Forwarded("hopfield")
    normalize_stored_pattern = _Forwarded("hopfield")
    normalize_stored_pattern_affine = _Forwarded("hopfield")
    normalize_state_pattern = _Forwarded("hopfield")
    normalize_state_pattern_affine = _Forwarded("hopfield")
    normalize_pattern_projection = _Forwarded("hopfield")
    normalize_pattern_projection_affine = _Forwarded("hopfield")


class HopfieldPooling(_Wrapper):
    """hopfield-layers' HopfieldPooling: a learned state pattern (pooling_weights, `quantity` of them) queries
    the input as stored patterns; output (batch, quantity * size)."""

    def __init__(self, input_size: int, hidden_size: Optional[int] = None, output_size: Optional[int] = None,
                 pattern_size: Optional[int] = None, num_heads: int = 1, scaling: Optional[Union[float, Tensor]] = None,
                 update_steps_max: Optional[Union[int, Tensor]] = 0, update_steps_eps: Union[float, Tensor] = 1e-4,
                 normalize_stored_pattern: bool = True, normalize_stored_pattern_affine: bool = True,
                 normalize_state_pattern: bool = True, normalize_state_pattern_affine: bool = True,
                 normalize_pattern_projection: bool = True, normalize_pattern_projection_affine: bool = True,
                 normalize_hopfield_space: bool = False, normalize_hopfield_space_affine: bool = False,
                 stored_pattern_as_static: bool = False, state_pattern_as_static: bool = False,
                 pattern_projection_as_static: bool = False, pattern_projection_as_connected: bool = False,
                 stored_pattern_size: Optional[int] = None, pattern_projection_size: Optional[int] = None,
                 batch_first: bool = True, association_activation: Optional[str] = None, dropout: float = 0.0,
                 input_bias: bool = True, concat_bias_pattern: bool = False, add_zero_association: bool = False,
                 disable_out_projection: bool = False, quantity: int = 1, trainable: bool = True):
        super().__init__()
        self._make_hopfield(input_size, locals())
        self._quantity = quantity
        size = self.hopfield.hidden_size if state_pattern_as_static else self.hopfield.input_size
        self.pooling_weights = nn.Parameter(_torch.empty(
            *((1, quantity) if batch_first else (quantity, 1)), input_size if size is None else size),
            requires_grad=trainable)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.hopfield.reset_parameters()
        nn.init.normal_(self.pooling_weights, mean=0.0, std=0.02)

    def _prepare_input(self, input):
        if isinstance(input, Tensor):
            stored, proj = input, input
        elif isinstance(input, tuple) and len(input) == 2:
            stored, proj = input
        else:
            raise TypeError("input must be one tensor (stored pattern and pattern projection at once) or a tuple "
                            "(stored pattern, pattern projection)")
        return stored, self._expand(self.pooling_weights, self._batch(stored)), proj

    def forward(self, input: Union[Tensor, Tuple[Tensor, Tensor]], stored_pattern_padding_mask: Optional[Tensor] = None,
                association_mask: Optional[Tensor] = None) -> Tensor:
        return self.hopfield(self._prepare_input(input), stored_pattern_padding_mask,
                             association_mask).flatten(start_dim=1)

    def get_association_matrix(self, input, stored_pattern_padding_mask=None, association_mask=None) -> Tensor:
        return self.hopfield.get_association_matrix(self._prepare_input(input), stored_pattern_padding_mask,
                                                    association_mask)

    def get_projected_pattern_matrix(self, input, stored_pattern_padding_mask=None, association_mask=None) -> Tensor:
        return self.hopfield.get_projected_pattern_matrix(self._prepare_input(input), stored_pattern_padding_mask,
                                                          association_mask)


class HopfieldLayer(_Wrapper):
    """hopfield-layers' HopfieldLayer: learned stored patterns (lookup_weights, `quantity` of them; separate
    target_weights as pattern projections with lookup_weights_as_separated) queried by the input. The stored
    patterns are shared by the batch, so each head is one element of the batched call, its queries those of
    every batch element."""

    def __init__(self, input_size: int, hidden_size: Optional[int] = None, output_size: Optional[int] = None,
                 pattern_size: Optional[int] = None, num_heads: int = 1, scaling: Optional[Union[float, Tensor]] = None,
                 update_steps_max: Optional[Union[int, Tensor]] = 0, update_steps_eps: Union[float, Tensor] = 1e-4,
                 lookup_weights_as_separated: bool = False, lookup_targets_as_trainable: bool = True,
                 normalize_stored_pattern: bool = True, normalize_stored_pattern_affine: bool = True,
                 normalize_state_pattern: bool = True, normalize_state_pattern_affine: bool = True,
                 normalize_pattern_projection: bool = True, normalize_pattern_projection_affine: bool = True,
                 normalize_hopfield_space: bool = False, normalize_hopfield_space_affine: bool = False,
                 stored_pattern_as_static: bool = False, state_pattern_as_static: bool = False,
                 pattern_projection_as_static: bool = False, pattern_projection_as_connected: bool = False,
                 stored_pattern_size: Optional[int] = None, pattern_projection_size: Optional[int] = None,
                 batch_first: bool = True, association_activation: Optional[str] = None, dropout: float = 0.0,
                 input_bias: bool = True, concat_bias_pattern: bool = False, add_zero_association: bool = False,
                 disable_out_projection: bool = False, quantity: int = 1, trainable: bool = True):
        super().__init__()
        self._make_hopfield(input_size, locals())
        self._quantity = quantity
        size = self.hopfield.hidden_size if stored_pattern_as_static else self.hopfield.stored_pattern_dim
        shape = (1, quantity) if batch_first else (quantity, 1)
        self.lookup_weights = nn.Parameter(_torch.empty(*shape, input_size if size is None else size),
                                           requires_grad=trainable)
        if lookup_weights_as_separated:
            target = self.lookup_weights.shape[2] if pattern_projection_size is None else pattern_projection_size
            self.target_weights = nn.Parameter(_torch.empty(*shape, target), requires_grad=lookup_targets_as_trainable)
        else:
            self.register_parameter("target_weights", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.hopfield.reset_parameters()
        nn.init.normal_(self.lookup_weights, mean=0.0, std=0.02)
        if self.target_weights is not None:
            nn.init.normal_(self.target_weights, mean=0.0, std=0.02)

    def _prepare_input(self, input, shared=True):
        batch = self._batch(input)
        stored = self.lookup_weights if shared else self._expand(self.lookup_weights, batch)
        proj = stored if self.target_weights is None else (
            self.target_weights if shared else self._expand(self.target_weights, batch))
        return stored, input, proj

    def forward(self, input: Tensor, stored_pattern_padding_mask: Optional[Tensor] = None,
                association_mask: Optional[Tensor] = None) -> Tensor:
        # The lookup patterns are passed once (batch 1), not expanded: per head, all queries of the batch.
        return self.hopfield._forward(self._prepare_input(input), stored_pattern_padding_mask, association_mask, True)

    def get_association_matrix(self, input, stored_pattern_padding_mask=None, association_mask=None) -> Tensor:
        return self.hopfield.get_association_matrix(self._prepare_input(input, shared=False),
                                                    stored_pattern_padding_mask, association_mask)

    def get_projected_pattern_matrix(self, input, stored_pattern_padding_mask=None, association_mask=None) -> Tensor:
        return self.hopfield.get_projected_pattern_matrix(self._prepare_input(input, shared=False),
                                                          stored_pattern_padding_mask, association_mask)


class _TransformerLayer(nn.Module):
    """What hopfield-layers' encoder and decoder layers share: the activation by name and the feed-forward
    block, x -> norm_output(x + dropout_output(linear_output(dropout_residual(activation(linear_residual(x))))))."""

    def _setup(self, dim, dim_feedforward, dropout, activation):
        self.activation_residual = getattr(_torch, activation, None) if isinstance(activation, str) else None
        if self.activation_residual is None:
            raise ValueError(f"activation must name a torch function (e.g. 'relu'), got {activation!r}")
        self.linear_residual = nn.Linear(dim, dim_feedforward)
        self.dropout_residual = nn.Dropout(dropout)
        self.linear_output = nn.Linear(dim_feedforward, dim)
        self.norm_output = nn.LayerNorm(dim)
        self.dropout_output = nn.Dropout(dropout)

    def _feed_forward(self, x: Tensor) -> Tensor:
        inner = self.activation_residual(self.linear_residual(x))
        return self.norm_output(x + self.dropout_output(self.linear_output(self.dropout_residual(inner))))

    @property
    def output_size(self) -> int:
        return self.linear_output.out_features


def _hopfield(name, h):
    if not isinstance(h, Hopfield):
        raise TypeError(f"{name} must be an assocmem.torch.Hopfield, got {type(h).__name__}")
    return copy.deepcopy(h)


class HopfieldEncoderLayer(_TransformerLayer):
    """hopfield-layers' HopfieldEncoderLayer: a transformer encoder layer around a Hopfield association (self
    association of src), with hopfield-layers' submodule names: src + dropout(association) -> norm_residual,
    then the feed-forward block -> norm_output."""

    def __init__(self, hopfield_association: Hopfield, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu"):
        super().__init__()
        self.hopfield_association = _hopfield("hopfield_association", hopfield_association)
        dim = self.hopfield_association.state_pattern_dim
        self._setup(dim, dim_feedforward, dropout, activation)
        self.norm_residual = nn.LayerNorm(dim)
        self.dropout_hopfield_association = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in (self.hopfield_association, self.linear_residual, self.linear_output, self.norm_residual,
                       self.norm_output):
            module.reset_parameters()

    def forward(self, src: Tensor, src_mask: Optional[Tensor] = None,
                src_key_padding_mask: Optional[Tensor] = None) -> Tensor:
        associated = self.hopfield_association(src, stored_pattern_padding_mask=src_key_padding_mask,
                                               association_mask=src_mask)
        return self._feed_forward(self.norm_residual(src + self.dropout_hopfield_association(associated)))

    def get_association_matrix(self, input: Union[Tensor, Tuple[Tensor, Tensor, Tensor]]) -> Tensor:
        return self.hopfield_association.get_association_matrix(input)

    batch_first = _Forwarded("hopfield_association")
    input_size = _Forwarded("hopfield_association")


class HopfieldDecoderLayer(_TransformerLayer):
    """hopfield-layers' HopfieldDecoderLayer: self association of tgt, then cross association with memory
    (stored patterns and projections memory, state tgt), then the feed-forward block; its submodule names
    (hopfield_association_self, hopfield_association_cross, norm_residual_self, norm_residual_cross, ...)."""

    def __init__(self, hopfield_association_self: Hopfield, hopfield_association_cross: Hopfield,
                 dim_feedforward: int = 2048, dropout: float = 0.1, activation: str = "relu"):
        super().__init__()
        self.hopfield_association_self = _hopfield("hopfield_association_self", hopfield_association_self)
        self.hopfield_association_cross = _hopfield("hopfield_association_cross", hopfield_association_cross)
        dim = self.hopfield_association_self.state_pattern_dim
        self._setup(dim, dim_feedforward, dropout, activation)
        self.norm_residual_self = nn.LayerNorm(dim)
        self.norm_residual_cross = nn.LayerNorm(dim)
        self.dropout_hopfield_association_self = nn.Dropout(dropout)
        self.dropout_hopfield_association_cross = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in (self.hopfield_association_self, self.hopfield_association_cross, self.linear_residual,
                       self.linear_output, self.norm_residual_self, self.norm_residual_cross, self.norm_output):
            module.reset_parameters()

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Optional[Tensor] = None,
                memory_mask: Optional[Tensor] = None, tgt_key_padding_mask: Optional[Tensor] = None,
                memory_key_padding_mask: Optional[Tensor] = None) -> Tensor:
        associated = self.hopfield_association_self(tgt, stored_pattern_padding_mask=tgt_key_padding_mask,
                                                    association_mask=tgt_mask)
        tgt = self.norm_residual_self(tgt + self.dropout_hopfield_association_self(associated))
        associated = self.hopfield_association_cross((memory, tgt, memory),
                                                     stored_pattern_padding_mask=memory_key_padding_mask,
                                                     association_mask=memory_mask)
        tgt = self.norm_residual_cross(tgt + self.dropout_hopfield_association_cross(associated))
        return self._feed_forward(tgt)

    def get_association_matrix_self(self, input: Union[Tensor, Tuple[Tensor, Tensor, Tensor]]) -> Tensor:
        return self.hopfield_association_self.get_association_matrix(input)

    def get_association_matrix_cross(self, input: Union[Tensor, Tuple[Tensor, Tensor, Tensor]]) -> Tensor:
        return self.hopfield_association_cross.get_association_matrix(input)

    batch_first = _Forwarded("hopfield_association_self")
    input_size = _Forwarded("hopfield_association_self")
