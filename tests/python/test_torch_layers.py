"""assocmem.torch.Hopfield / HopfieldPooling / HopfieldLayer against hopfield-layers' documented semantics:
state_dict names and shapes (a checkpoint laid out as hopfield-layers saves it loads strictly), outputs and
gradients equal to an independent torch implementation of its equations (projections sliced from
in_proj_weight as [W_q | W_k | W_v], layer norms, heads, scaling, update steps, masks, the zero
association), errors for what is not supported, and a HopfieldPooling that learns a small task."""
import copy
import math

import pytest
import torch
import torch.nn.functional as Fn

from assocmem.torch import (Hopfield, HopfieldCore, HopfieldDecoderLayer, HopfieldEncoderLayer, HopfieldLayer,
                            HopfieldPooling)


@pytest.fixture(autouse=True, params=["projected", "input space"])
def association_space(request):
    """Every test runs twice: with the stored patterns projected to keys and values (hopfield-layers' order)
    and with the association taken against the stored patterns themselves (HopfieldCore._reassociation,
    used wherever it applies); either must give the equations' results."""
    saved = HopfieldCore._reassociation
    HopfieldCore._reassociation = request.param == "input space"
    yield request.param
    HopfieldCore._reassociation = saved


# ---- an independent implementation of hopfield-layers' equations (materialised association matrix) ----------
def projections(core, state, stored, proj):
    """W_q x + b_q, W_k y + b_k, W_v z + b_v by hopfield-layers' parameter layout (batch first)."""
    H = core.num_heads
    hop = core.virtual_hopfield_dim
    b = core.in_proj_bias
    if core.in_proj_weight is not None:
        W = core.in_proj_weight
        pieces, start = [], 0
        for static, x, size in ((core.query_as_static, state, hop), (core.key_as_static, stored, hop),
                                (core.value_as_static, proj, hop)):
            if static:
                pieces.append(torch.cat([x] * H, dim=-1))
            else:
                pieces.append(x @ W[start:start + size].T + (0 if b is None else b[start:start + size]))
                start += size
        return pieces
    start = 0
    if core.query_as_static:
        q = torch.cat([state] * H, dim=-1)
    else:
        q = state @ core.q_proj_weight.T + (0 if b is None else b[:hop])
        start = hop
    v = proj
    if core.key_as_static:
        k = torch.cat([stored] * H, dim=-1)
    else:
        k = stored @ core.k_proj_weight.T + (0 if b is None else b[start:start + hop])
        if core.value_as_connected:
            v = proj @ core.k_proj_weight.T + (0 if b is None else b[start:start + hop])
        start += hop
    v = v @ core.v_proj_weight.T + (0 if b is None else b[start:])
    return q, k, v


def reference(m, stored, state, proj, kpm=None, am=None, steps=0, batch_first=True, bias=None):
    """hopfield-layers' Hopfield.forward with a fixed number of update steps (no eps stop)."""
    if not batch_first:
        stored, state, proj = (t.transpose(0, 1) for t in (stored, state, proj))
    def ln(norm, x):
        return x if norm is None else Fn.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    stored, state, proj = ln(m.norm_stored_pattern, stored), ln(m.norm_state_pattern, state), ln(
        m.norm_pattern_projection, proj)
    core = m.association_core
    q, k, v = projections(core, state, stored, proj)
    N, L, S, H = state.shape[0], state.shape[1], stored.shape[1], core.num_heads
    q = q.reshape(N, L, H, -1).transpose(1, 2)
    k = k.reshape(N, S, H, -1).transpose(1, 2)
    v = v.reshape(N, S, H, -1).transpose(1, 2)
    if core.normalize_pattern:
        q = Fn.layer_norm(q, (q.shape[-1],), core.p_norm_weight, core.p_norm_bias, 1e-5)
        k = Fn.layer_norm(k, (k.shape[-1],), core.p_norm_weight, core.p_norm_bias, 1e-5)
    blocked = torch.zeros(N, H, L, S, dtype=torch.bool)
    if kpm is not None:
        blocked |= kpm[:, None, None, :]
    if am is not None:
        blocked |= am if am.dim() == 2 else am.reshape(N, H, L, S)
    add = 0
    if bias is not None:  # an additive float association mask, (L, S) or (N * H, L, S)
        add = bias if bias.dim() == 2 else bias.reshape(N, H, L, S)
    if core.add_zero_attn:
        k = torch.cat([k, k.new_zeros(N, H, 1, k.shape[-1])], dim=2)
        v = torch.cat([v, v.new_zeros(N, H, 1, v.shape[-1])], dim=2)
        blocked = Fn.pad(blocked, (0, 1))
        if bias is not None:
            add = Fn.pad(add, (0, 1))
    beta = m.scaling
    beta = beta.view(1, H, 1, 1) if isinstance(beta, torch.Tensor) else beta
    for _ in range(steps + 1):
        xi = torch.softmax((beta * q @ k.transpose(-1, -2) + add).masked_fill(blocked, float("-inf")), dim=-1)
        q = xi @ k
    out = (xi @ v).transpose(1, 2).reshape(N, L, -1)
    if core.out_proj is not None:
        out = core.out_proj(out)
    if not batch_first:
        out = out.transpose(0, 1)
    if m.association_activation is not None:
        out = m.association_activation(out)
    return out


def randomise(module, seed=0):
    """Parameters away from their initial values (norm weights != 1, biases != 0), so that every one matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.3) + (1.0 if p.dim() == 1 else 0))


def compare(m, inputs, ref_inputs, forward_kwargs=None, ref_kwargs=None, atol=2e-5):
    """The module's output and gradients (inputs and parameters) against ref_inputs(m, inputs): in float32
    within float32 tolerances, then the same module in float64 within 1e-9 (the same formula, not only a
    close one)."""
    compare_in(m, inputs, ref_inputs, forward_kwargs, ref_kwargs, atol, 1e-4)
    m64 = copy.deepcopy(m).double()
    compare_in(m64, [t.double() for t in inputs], ref_inputs, forward_kwargs, ref_kwargs, 1e-10, 1e-9)


def compare_in(m, inputs, ref_inputs, forward_kwargs, ref_kwargs, atol, grad_rtol):
    forward_kwargs, ref_kwargs = forward_kwargs or {}, ref_kwargs or {}
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = m(leaves[0] if len(leaves) == 1 else tuple(leaves), **forward_kwargs)
    g = torch.Generator().manual_seed(7)
    w = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad((out * w).sum(), leaves + list(m.parameters()), allow_unused=True)
    leaves2 = [t.detach().clone().requires_grad_(True) for t in inputs]
    ref = ref_inputs(m, leaves2, **ref_kwargs)
    grads2 = torch.autograd.grad((ref * w).sum(), leaves2 + list(m.parameters()), allow_unused=True)
    torch.testing.assert_close(out, ref, atol=atol, rtol=max(atol, 1e-9) * 5)
    names = [f"input {i}" for i in range(len(leaves))] + [n for n, _ in m.named_parameters()]
    # Tolerance on the scale of the gradients: at a saturated softmax the fused backward's
    # P o (dP - rowsum(dO o O)) cancels to a few ulps of dP where the exact gradient is ~0.
    scale = max(b.abs().max().item() for b in grads2 if b is not None)
    for name, a, b in zip(names, grads, grads2):
        if b is None:
            assert a is None or torch.count_nonzero(a) == 0, name
            continue
        torch.testing.assert_close(a, b, atol=grad_rtol * max(1.0, scale), rtol=grad_rtol * 10,
                                   msg=lambda s: f"gradient of {name}: {s}")


def data(N=3, L=4, S=20, E=8, Ek=None, Ev=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, S, Ek or E, generator=g), torch.randn(N, L, E, generator=g),
            torch.randn(N, S, Ev or E, generator=g))


CONFIGS = {
    "defaults": dict(input_size=8),
    "heads": dict(input_size=8, num_heads=2),
    "hidden and pattern size": dict(input_size=8, hidden_size=5, pattern_size=3, num_heads=2, output_size=6),
    "steps 1": dict(input_size=8, update_steps_max=1, update_steps_eps=1e-30),
    "steps 4, 2 heads": dict(input_size=8, num_heads=2, update_steps_max=4, update_steps_eps=1e-30),
    "large beta": dict(input_size=8, scaling=20.0, update_steps_max=2, update_steps_eps=1e-30),
    "small beta": dict(input_size=8, scaling=0.05),
    "beta per head": dict(input_size=8, num_heads=2, scaling=torch.tensor([0.3, 3.0])),
    "no layer norms": dict(input_size=8, normalize_stored_pattern=False, normalize_stored_pattern_affine=False,
                           normalize_state_pattern=False, normalize_state_pattern_affine=False,
                           normalize_pattern_projection=False, normalize_pattern_projection_affine=False),
    "hopfield space norm": dict(input_size=8, num_heads=2, normalize_hopfield_space=True,
                                normalize_hopfield_space_affine=True),
    "zero association": dict(input_size=8, add_zero_association=True),
    "no bias": dict(input_size=8, input_bias=False),
    "no out projection": dict(input_size=8, num_heads=2, disable_out_projection=True),
    "activation": dict(input_size=8, association_activation="tanh"),
    "stored and projection sizes": dict(input_size=8, stored_pattern_size=6, pattern_projection_size=5),
    "connected": dict(input_size=8, stored_pattern_size=6, pattern_projection_size=6,
                      pattern_projection_as_connected=True),
    "static state": dict(input_size=8, hidden_size=8, state_pattern_as_static=True),
    "static stored and projection": dict(input_size=8, stored_pattern_as_static=True,
                                         pattern_projection_as_static=True, stored_pattern_size=8,
                                         pattern_projection_size=8),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_hopfield_equals_hopfield_layers_equations(name):
    cfg = dict(CONFIGS[name])
    steps = cfg.get("update_steps_max", 0)
    m = Hopfield(**cfg)
    randomise(m)
    c = m.association_core
    stored, state, proj = data(Ek=c.kdim, Ev=c.vdim)
    compare(m, (stored, state, proj), lambda m, t: reference(m, *t, steps=steps))


@pytest.mark.parametrize("mask_kind", ["padding", "association 2-d", "association 3-d", "both", "float -inf",
                                       "additive 2-d", "additive 3-d and padding"])
def test_masks_equal_hopfield_layers_equations(mask_kind):
    m = Hopfield(input_size=8, num_heads=2, update_steps_max=2, update_steps_eps=1e-30, add_zero_association=False)
    randomise(m, 3)
    stored, state, proj = data()
    N, L, S, H = 3, 4, 20, 2
    g = torch.Generator().manual_seed(5)
    kpm = torch.rand(N, S, generator=g) < 0.3 if mask_kind in ("padding", "both") else None
    am = None
    if mask_kind in ("association 2-d", "both", "float -inf"):
        am = torch.rand(L, S, generator=g) < 0.4
    elif mask_kind == "association 3-d":
        am = torch.rand(N * H, L, S, generator=g) < 0.4
    given = am
    if mask_kind == "float -inf":
        given = torch.zeros(L, S).masked_fill(am, float("-inf"))
    if mask_kind.startswith("additive"):  # hopfield-layers adds a float mask to the scaled scores
        if "padding" in mask_kind:
            kpm = torch.rand(N, S, generator=g) < 0.3
        shape = (L, S) if "2-d" in mask_kind else (N * H, L, S)
        given = (torch.randn(*shape, generator=g) * 2).masked_fill(torch.rand(*shape, generator=g) < 0.2, float("-inf"))
        compare(m, (stored, state, proj), lambda m, t: reference(m, *t, kpm=kpm, bias=given, steps=2),
                forward_kwargs=dict(stored_pattern_padding_mask=kpm, association_mask=given))
        return
    compare(m, (stored, state, proj), lambda m, t: reference(m, *t, kpm=kpm, am=am, steps=2),
            forward_kwargs=dict(stored_pattern_padding_mask=kpm, association_mask=given))


NO_NORMS = dict(normalize_stored_pattern=False, normalize_stored_pattern_affine=False, normalize_state_pattern=False,
                normalize_state_pattern_affine=False, normalize_pattern_projection=False,
                normalize_pattern_projection_affine=False)


@pytest.mark.parametrize("heads,scaling,steps", [(1, None, 0), (2, 0.7, 2), (2, torch.tensor([0.5, 2.0]), 0)])
def test_hopfield_core_forward_is_hopfield_layers_core(heads, scaling, steps):
    """HopfieldCore(query, key, value) (sequence first, scaling None = 1, as hopfield-layers' core): the output,
    the head-averaged and raw association matrices and the projected patterns, against the equations."""
    core = HopfieldCore(embed_dim=8, num_heads=heads)
    randomise(core, 4)
    m = Hopfield(input_size=8, num_heads=heads, scaling=1.0 if scaling is None else scaling, update_steps_max=steps,
                 update_steps_eps=1e-30, **NO_NORMS)
    m.association_core.load_state_dict(core.state_dict())
    stored, state, proj = data()
    kpm = torch.rand(3, 20, generator=torch.Generator().manual_seed(1)) < 0.2
    out, w, xi, v = core(state.transpose(0, 1), stored.transpose(0, 1), proj.transpose(0, 1), key_padding_mask=kpm,
                         scaling=scaling, update_steps_max=steps, update_steps_eps=1e-30, return_raw_associations=True,
                         return_pattern_projections=True)
    ref = reference(m, stored, state, proj, kpm=kpm, steps=steps)
    torch.testing.assert_close(out.transpose(0, 1), ref, atol=2e-5, rtol=1e-4)
    A = m.get_association_matrix((stored, state, proj), stored_pattern_padding_mask=kpm)
    torch.testing.assert_close(xi, A)
    torch.testing.assert_close(w, A.mean(dim=1))
    torch.testing.assert_close(v, m.get_projected_pattern_matrix((stored, state, proj)))
    alone = core(state.transpose(0, 1), stored.transpose(0, 1), proj.transpose(0, 1), key_padding_mask=kpm,
                 need_weights=False, scaling=scaling, update_steps_max=steps, update_steps_eps=1e-30)
    assert alone[1:] == (None, None, None)
    torch.testing.assert_close(alone[0].transpose(0, 1), ref, atol=2e-5, rtol=1e-4)  # the output alone


class _Call(torch.nn.Module):
    """A module called with a tuple of inputs (for compare())."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, args):
        return self.inner(*args)


def test_encoder_and_decoder_layers_are_hopfield_layers_equations():
    """HopfieldEncoderLayer and HopfieldDecoderLayer (eval: dropout off): outputs and gradients against their
    documented composition with the association from the independent equations; state_dict names."""
    torch.manual_seed(0)
    enc = HopfieldEncoderLayer(Hopfield(input_size=8, num_heads=2), dim_feedforward=16).eval()
    randomise(enc, 6)
    src = data()[1]

    def ff(layer, x):
        return layer.norm_output(x + layer.linear_output(torch.relu(layer.linear_residual(x))))

    def ref_enc(m, t):
        x = t[0]
        return ff(m, m.norm_residual(x + reference(m.hopfield_association, x, x, x)))
    compare(enc, (src,), ref_enc)
    names = {n for n, _ in enc.named_parameters()}
    assert {"linear_residual.weight", "linear_output.bias", "norm_residual.weight", "norm_output.bias",
            "hopfield_association.association_core.in_proj_weight"} <= names
    dec = HopfieldDecoderLayer(Hopfield(input_size=8, num_heads=2), Hopfield(input_size=8, num_heads=2),
                               dim_feedforward=16).eval()
    randomise(dec, 7)
    memory = data(S=6)[0]

    def ref_dec(m, t):
        tgt, mem = t
        x = m.inner.norm_residual_self(tgt + reference(m.inner.hopfield_association_self, tgt, tgt, tgt))
        x = m.inner.norm_residual_cross(x + reference(m.inner.hopfield_association_cross, mem, x, mem))
        return ff(m.inner, x)
    compare(_Call(dec), (src, memory), ref_dec)
    names = {n for n, _ in dec.named_parameters()}
    assert {"norm_residual_self.weight", "norm_residual_cross.bias", "hopfield_association_cross.association_core.in_proj_weight",
            "hopfield_association_self.association_core.out_proj.weight"} <= names
    with pytest.raises(ValueError, match="activation"):
        HopfieldEncoderLayer(Hopfield(input_size=8), activation="no_such_function")
    with pytest.raises(TypeError, match="hopfield_association"):
        HopfieldEncoderLayer(torch.nn.Linear(8, 8))


def test_a_small_encoder_model_trains():
    """A HopfieldEncoderLayer + a linear read-out learns whether a marker token occurs in a sequence of 8
    random tokens (held-out accuracy >= 0.9 after 150 Adam steps; chance is 0.5)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(16, 8, generator=g)

    def batch(n):
        idx = torch.randint(1, 16, (n, 8), generator=g)
        y = torch.rand(n, generator=g) < 0.5
        pos = torch.randint(0, 8, (n,), generator=g)
        idx[y, pos[y]] = 0  # token 0 is the marker
        return tokens[idx], y.float()
    model = torch.nn.ModuleDict(dict(enc=HopfieldEncoderLayer(Hopfield(input_size=8, num_heads=2), dim_feedforward=32,
                                                               dropout=0.0), out=torch.nn.Linear(8, 1)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def predict(x):
        return model["out"](model["enc"](x).mean(dim=1)).squeeze(-1)
    for _ in range(150):
        x, y = batch(64)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(predict(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = batch(1000)
    with torch.no_grad():
        acc = ((predict(x) > 0).float() == y).float().mean().item()
    assert acc >= 0.9, acc


def graph_nodes(t):
    """The names of the autograd graph's nodes behind t, with repetitions."""
    seen, stack, names = set(), [t.grad_fn], []
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        names.append(type(f).__name__)
        stack.extend(nf for nf, _ in f.next_functions)
    return names


def fused_nodes(nodes):
    """How many of the graph's nodes are fused associations (_AttentionBatch, _ProjectedAttention)."""
    return sum("AttentionBatch" in n or "ProjectedAttention" in n for n in nodes)


@pytest.mark.parametrize("N", [1, 4, 16])
def test_one_fused_node_per_layer_call(N, association_space):
    """The association of every (batch element, head) is one batched call: one node in the graph for any
    batch size and number of heads (no Python loop over the batch or the heads); with update steps one more
    per update (the heads still iterating updated together), also with memories shared by the batch. In the
    input space without updates the whole module - the three layer norms, the projections, the association,
    the output projection - is that one node (issue 22: a call's fixed cost one node's)."""
    m = Hopfield(input_size=8, num_heads=4)
    stored, state, proj = data(N=N)
    nodes = graph_nodes(m((stored.requires_grad_(), state.requires_grad_(), proj.requires_grad_())))
    assert fused_nodes(nodes) == 1, nodes
    if association_space == "input space":
        assert set(nodes) == {"_ProjectedAttentionBackward", "AccumulateGrad"}, nodes
        assert nodes.count("AccumulateGrad") == 3 + len(list(m.parameters())), nodes
    m = Hopfield(input_size=8, num_heads=2, update_steps_max=3, update_steps_eps=1e-30)
    nodes = graph_nodes(m((stored, state, proj)))
    assert fused_nodes(nodes) == 3 + 1, nodes
    pool = HopfieldPooling(input_size=8, num_heads=2, update_steps_max=2, update_steps_eps=1e-30)
    nodes = graph_nodes(pool(stored))
    assert fused_nodes(nodes) == 2 + 1, nodes
    layer = HopfieldLayer(input_size=8, num_heads=2, quantity=7)  # memories shared by the batch
    nodes = graph_nodes(layer(state))
    assert fused_nodes(nodes) == 1, nodes


def test_batch_first_false_is_the_transposed_module():
    m = Hopfield(input_size=8, num_heads=2, batch_first=False)
    randomise(m)
    stored, state, proj = (t.transpose(0, 1).contiguous() for t in data())
    compare(m, (stored, state, proj), lambda m, t: reference(m, *t, batch_first=False))


def test_self_association_with_one_tensor():
    m = Hopfield(input_size=8)
    randomise(m)
    x = data()[1]
    compare(m, (x,), lambda m, t: reference(m, t[0], t[0], t[0]))


def test_pooling_equals_the_equations_with_its_learned_query():
    m = HopfieldPooling(input_size=8, num_heads=2, quantity=3, update_steps_max=1, update_steps_eps=1e-30)
    randomise(m, 4)
    stored = data()[0]
    compare(m, (stored,), lambda m, t: reference(m.hopfield, t[0], m.pooling_weights.expand(stored.shape[0], 3, 8),
                                                 t[0], steps=1).flatten(1))
    assert m(stored).shape == (3, 3 * 8)


def test_layer_equals_the_equations_with_its_learned_patterns():
    m = HopfieldLayer(input_size=8, num_heads=2, quantity=30, lookup_weights_as_separated=True,
                      update_steps_max=2, update_steps_eps=1e-30)
    randomise(m, 5)
    state = data()[1]
    N = state.shape[0]

    def ref(m, t):
        return reference(m.hopfield, m.lookup_weights.expand(N, 30, 8), t[0], m.target_weights.expand(N, 30, 8),
                         steps=2)
    compare(m, (state,), ref)
    kpm = torch.zeros(N, 30, dtype=torch.bool)
    for n in range(N):
        kpm[n, n::4] = True  # each batch element its own padding over the shared patterns
    compare(m, (state,), lambda m, t: reference(m.hopfield, m.lookup_weights.expand(N, 30, 8), t[0],
                                                m.target_weights.expand(N, 30, 8), kpm=kpm, steps=2),
            forward_kwargs=dict(stored_pattern_padding_mask=kpm))
    L = state.shape[1]
    am = torch.rand(N * 2, L, 30, generator=torch.Generator().manual_seed(9)) < 0.3  # per element and head
    compare(m, (state,), lambda m, t: reference(m.hopfield, m.lookup_weights.expand(N, 30, 8), t[0],
                                                m.target_weights.expand(N, 30, 8), kpm=kpm, am=am, steps=2),
            forward_kwargs=dict(stored_pattern_padding_mask=kpm, association_mask=am))


def test_state_dict_names_and_shapes_are_hopfield_layers():
    # The names and shapes hopfield-layers' modules register (hflayers/__init__.py, activation.py).
    expected = {
        "association_core.in_proj_weight": (24, 8), "association_core.in_proj_bias": (24,),
        "association_core.out_proj.weight": (8, 8), "association_core.out_proj.bias": (8,),
        "norm_stored_pattern.weight": (8,), "norm_stored_pattern.bias": (8,),
        "norm_state_pattern.weight": (8,), "norm_state_pattern.bias": (8,),
        "norm_pattern_projection.weight": (8,), "norm_pattern_projection.bias": (8,),
    }
    m = Hopfield(input_size=8, num_heads=2)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == expected
    separate = Hopfield(input_size=8, hidden_size=5, pattern_size=3, num_heads=2, output_size=6)
    assert {k: tuple(v.shape) for k, v in separate.state_dict().items() if "norm" not in k} == {
        "association_core.q_proj_weight": (10, 8), "association_core.k_proj_weight": (10, 8),
        "association_core.v_proj_weight": (6, 8), "association_core.in_proj_bias": (26,),
        "association_core.out_proj.weight": (6, 6), "association_core.out_proj.bias": (6,)}
    pooling = HopfieldPooling(input_size=8, quantity=3)
    assert tuple(pooling.state_dict()["pooling_weights"].shape) == (1, 3, 8)
    assert {k[len("hopfield."):] for k in pooling.state_dict() if k.startswith("hopfield.")} == set(expected)
    layer = HopfieldLayer(input_size=8, quantity=5, lookup_weights_as_separated=True)
    assert tuple(layer.state_dict()["lookup_weights"].shape) == (1, 5, 8)
    assert tuple(layer.state_dict()["target_weights"].shape) == (1, 5, 8)
    bias = Hopfield(input_size=8, concat_bias_pattern=True)
    assert tuple(bias.state_dict()["association_core.bias_k"].shape) == (1, 1, 8)
    # A checkpoint laid out by those names loads strictly and changes the output accordingly.
    g = torch.Generator().manual_seed(0)
    ckpt = {k: torch.randn(s, generator=g) for k, s in expected.items()}
    fresh = Hopfield(input_size=8, num_heads=2)
    fresh.load_state_dict(ckpt, strict=True)
    x = data()[1]
    torch.testing.assert_close(fresh(x), reference(fresh, x, x, x), atol=2e-5, rtol=1e-4)


def test_defaults_are_hopfield_layers():
    m = Hopfield(input_size=8, num_heads=2)
    assert m.scaling == pytest.approx(1 / math.sqrt(4))
    assert m.update_steps_max == 0 and m.update_steps_eps == 1e-4 and m.batch_first
    assert m.normalize_stored_pattern and m.normalize_state_pattern and m.normalize_pattern_projection
    assert m.normalize_stored_pattern_affine and not m.normalize_hopfield_space
    assert m.hidden_size == 4 and m.output_size == 8 and m.pattern_size == 4
    core = m.association_core
    assert torch.all(core.in_proj_bias == 0) and abs(core.in_proj_weight.std().item() - 0.02) < 0.01
    p = HopfieldPooling(input_size=8)
    assert p.quantity == 1 and p.batch_first and abs(p.pooling_weights.std().item() - 0.02) < 0.02
    static = Hopfield(stored_pattern_as_static=True, state_pattern_as_static=True, pattern_projection_as_static=True,
                      disable_out_projection=True, normalize_stored_pattern=False, normalize_stored_pattern_affine=False,
                      normalize_state_pattern=False, normalize_state_pattern_affine=False,
                      normalize_pattern_projection=False, normalize_pattern_projection_affine=False)
    assert static.scaling == 1.0 and len(list(static.parameters())) == 0
    x = data()[1]
    torch.testing.assert_close(static(x), torch.softmax(x @ x.transpose(1, 2), -1) @ x, atol=2e-5, rtol=1e-4)


def test_update_steps_eps_stops_the_iteration():
    x = data(S=40)[1]
    m = Hopfield(input_size=8, scaling=8.0, update_steps_max=None, update_steps_eps=1e-6)
    randomise(m)
    out = m(x)
    # Iterated to a fixed point: more steps change nothing beyond the tolerance.
    many = Hopfield(input_size=8, scaling=8.0, update_steps_max=200, update_steps_eps=1e-30)
    many.load_state_dict(m.state_dict())
    torch.testing.assert_close(out, many(x), atol=1e-4, rtol=1e-4)
    # A tolerance that the first update meets stops after one update.
    one = Hopfield(input_size=8, scaling=8.0, update_steps_max=50, update_steps_eps=1e9)
    one.load_state_dict(m.state_dict())
    torch.testing.assert_close(one(x), reference(one, x, x, x, steps=1), atol=2e-5, rtol=1e-4)


def test_association_matrix_and_projected_patterns():
    m = Hopfield(input_size=8, num_heads=2, disable_out_projection=True)
    randomise(m)
    stored, state, proj = data()
    A = m.get_association_matrix((stored, state, proj))
    V = m.get_projected_pattern_matrix((stored, state, proj))
    assert A.shape == (3, 2, 4, 20) and V.shape == (3, 2, 20, 4)
    torch.testing.assert_close(A.sum(-1), torch.ones(3, 2, 4))
    out = (A @ V).transpose(1, 2).reshape(3, 4, 8)
    torch.testing.assert_close(m((stored, state, proj)), out, atol=2e-5, rtol=1e-4)
    # HopfieldCore's weights (need_weights) are differentiable (the fused kernels' backward pass): gradcheck
    # in float64, raw and head-averaged.
    core = m.double().association_core
    inputs = tuple(t.double().transpose(0, 1).requires_grad_(True) for t in (stored, state))
    assert torch.autograd.gradcheck(lambda y, x: core(x, y, y, need_weights=True)[1], inputs)
    assert torch.autograd.gradcheck(lambda y, x: core(x, y, y, return_raw_associations=True)[2], inputs)


def test_dropout_in_training_only_reproducible_and_unbiased():
    """hopfield-layers' dropout on the association weights: identity in eval (a checkpoint trained with dropout
    evaluates as without); in training each weight kept or zeroed and rescaled, the draw reproducible with
    torch.manual_seed and unbiased (the mean of many draws tends to the eval output); gradients are those of
    the drawn function (checked with torch's autograd on the same draw, recovered through identity values)."""
    m = Hopfield(input_size=8, num_heads=2, dropout=0.4)
    randomise(m, 11)
    ref = Hopfield(input_size=8, num_heads=2)
    ref.load_state_dict(m.state_dict())
    stored, state, proj = data()
    m.eval()
    torch.testing.assert_close(m((stored, state, proj)), ref((stored, state, proj)), atol=0, rtol=0)
    m.train()
    torch.manual_seed(3)
    a = m((stored, state, proj))
    torch.manual_seed(3)
    b = m((stored, state, proj))
    torch.manual_seed(4)
    c = m((stored, state, proj))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Unbiased: the association alone, averaged over draws, within 5 standard errors of the undropped one.
    import assocmem._functional as at  # the batched call the modules build on
    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(2, 3, 4, generator=g), torch.randn(2, 50, 4, generator=g), torch.randn(2, 50, 5, generator=g)
    betas = torch.tensor([1.0, 2.0])
    torch.manual_seed(0)  # a fixed sequence of draws: the test is deterministic
    draws = torch.stack([at._attention_batch(q, k, v, betas, dropout=0.4) for _ in range(2000)])
    exact = at._attention_batch(q, k, v, betas)
    se = draws.std(0) / 2000 ** 0.5
    assert ((draws.mean(0) - exact).abs() <= 5 * se + 1e-6).all()  # 1e-6: the float32 sums of 2000 draws
    # The drawn weights: values = identity gives them; the gradient of the dropped association equals
    # torch's autograd of softmax(beta q k^T) o Z @ v with that Z.
    eye = torch.eye(50).expand(2, 50, 50).contiguous()
    torch.manual_seed(9)
    W = at._attention_batch(q, k, eye, betas, dropout=0.4)
    P = torch.softmax(betas.view(2, 1, 1) * q @ k.transpose(1, 2), dim=-1)
    Z = torch.where(W == 0, torch.zeros_like(W), torch.full_like(W, 1 / 0.6))
    assert 0.3 < (W == 0).float().mean().item() < 0.5
    torch.testing.assert_close(W, P * Z, atol=1e-7, rtol=1e-6)
    qs, ks, vs = (t.clone().requires_grad_(True) for t in (q, k, v))
    torch.manual_seed(9)  # the same draw: the seed is taken from torch's generator
    out = at._attention_batch(qs, ks, vs, betas, dropout=0.4)
    w = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad((out * w).sum(), (qs, ks, vs))
    qr, kr, vr = (t.clone().requires_grad_(True) for t in (q, k, v))
    outr = (torch.softmax(betas.view(2, 1, 1) * qr @ kr.transpose(1, 2), dim=-1) * Z) @ vr
    torch.testing.assert_close(out, outr, atol=1e-6, rtol=1e-5)
    for a_, r_ in zip(grads, torch.autograd.grad((outr * w).sum(), (qr, kr, vr))):
        torch.testing.assert_close(a_, r_, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(input_size=8, dropout=1.0), "dropout must be a number in \\[0, 1\\)"),
    (dict(input_size=8, dropout=-0.1), "dropout"),
    (dict(input_size=8, num_heads=3), "divisible"),
    (dict(input_size=8, scaling=-1.0), "scaling"),
    (dict(input_size=8, update_steps_eps=0.0), "update_steps_eps"),
    (dict(input_size=8, association_activation="no_such_function"), "association_activation"),
    (dict(input_size=8, normalize_stored_pattern=False), "normalize_stored_pattern_affine"),
    (dict(), "input_size"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Hopfield(**kwargs)


def test_bad_inputs_are_refused():
    m = Hopfield(input_size=8)
    stored, state, proj = data()
    with pytest.raises(ValueError, match="3-d"):
        m(state[0])
    with pytest.raises(ValueError, match="stored_pattern_padding_mask"):
        m((stored, state, proj), stored_pattern_padding_mask=torch.zeros(3, 5, dtype=torch.bool))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite or -inf"):
            m((stored, state, proj), association_mask=torch.full((4, 20), 0.5).index_fill(1, torch.tensor([3]), bad))
    with pytest.raises(ValueError, match="stored_pattern_padding_mask must be a bool mask"):
        m((stored, state, proj), stored_pattern_padding_mask=torch.full((3, 20), 0.5))
    row_out = torch.full((4, 20), 0.5)
    row_out[1] = float("-inf")  # state pattern 1 left with no stored pattern
    with pytest.raises(ValueError, match="leaves out every memory"):
        m((stored, state, proj), association_mask=row_out)
    with pytest.raises(ValueError, match="batch element 0 pads every stored pattern"):
        m((stored, state, proj), stored_pattern_padding_mask=torch.ones(3, 20, dtype=torch.bool))
    with pytest.raises(TypeError, match="tuple"):
        m([stored, state, proj])
    with pytest.raises(ValueError, match="a uint8 mask holds 0 and 1 only"):
        m((stored, state, proj), stored_pattern_padding_mask=torch.full((3, 20), 2, dtype=torch.uint8))
    for steps in (10**7, 2**40):
        with pytest.raises(ValueError, match="update_steps_max must be in"):
            Hopfield(input_size=8, update_steps_max=steps)
    # Issue 23: an empty batch gave a reshape error; get_association_matrix returned NaN where forward
    # raises; a double backward failed with "Can't call numpy()".
    assert m(torch.randn(0, 5, 8)).shape == (0, 5, 8)
    assert HopfieldPooling(input_size=8)(torch.randn(0, 5, 8)).shape == (0, 8)
    assert m.get_association_matrix(torch.randn(0, 5, 8)).shape[0] == 0
    pad = torch.zeros(3, 20, dtype=torch.bool)
    pad[1] = True
    for call in (m, m.get_association_matrix):  # the batch element named as given (was "row 0" of element 1 x heads)
        with pytest.raises(ValueError, match="batch element 1 pads every stored pattern"):
            call((stored, state, proj), stored_pattern_padding_mask=pad)
    # A dtype other than the parameters' is named (it failed inside torch with "expected scalar type").
    for call, args in ((m, ((stored.double(), state.double(), proj.double()),)), (m, ((stored, state.double(), proj),)),
                       (HopfieldCore(embed_dim=8), (state.transpose(0, 1), stored.transpose(0, 1).double(),
                                                    proj.transpose(0, 1)))):
        with pytest.raises(TypeError, match=r"is torch.float64 but the module's parameters are torch.float32"):
            call(*args)
    with pytest.raises(TypeError, match="the state pattern must be a floating-point tensor"):
        m((stored, state.long(), proj))
    x = state.double().requires_grad_()
    out = Hopfield(input_size=8).double()(x)
    with pytest.raises(RuntimeError, match="differentiable once; second derivatives"):
        torch.autograd.grad(out.sum(), x, create_graph=True)


def test_hopfield_pooling_learns_to_detect_a_motif():
    """Bags of 40 random 8-d instances; positive bags contain one noisy copy of a motif. A HopfieldPooling
    classifier (defaults of hopfield-layers) trained with Adam separates them on held-out bags."""
    torch.manual_seed(0)
    d, n_inst = 8, 40
    motif = torch.randn(d)

    def bags(count):
        x = torch.randn(count, n_inst, d)
        y = torch.rand(count) < 0.5
        idx = torch.randint(0, n_inst, (count,))
        x[y, idx[y]] = motif + 0.1 * torch.randn(int(y.sum()), d)
        return x, y.float()
    xtr, ytr = bags(256)
    xte, yte = bags(256)
    pool = HopfieldPooling(input_size=d, hidden_size=16, scaling=2.0)
    head = torch.nn.Linear(d, 1)
    opt = torch.optim.Adam(list(pool.parameters()) + list(head.parameters()), lr=0.01)
    for epoch in range(60):
        for i in range(0, 256, 32):
            loss = Fn.binary_cross_entropy_with_logits(head(pool(xtr[i:i + 32])).squeeze(-1), ytr[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = ((head(pool(xte)).squeeze(-1) > 0).float() == yte).float().mean().item()
    assert acc >= 0.95, acc


def test_every_hopfield_parameter_is_documented():
    """Issue 23: Hopfield's constructor arguments were undocumented (hopfield-layers' users read them from its
    docstrings). Every argument of Hopfield.__init__ is named in the class docstring: by its own name, or as
    the ``*_affine`` / ``*_eps`` companion of a documented normalize_* entry."""
    import inspect
    import re
    doc = Hopfield.__doc__
    params = [p for p in inspect.signature(Hopfield.__init__).parameters if p != "self"]
    assert "input_size" in params and "disable_out_projection" in params

    def named(name):
        return re.search(r"\b" + re.escape(name) + r"\b", doc) is not None
    missing = []
    for p in params:
        base = re.sub(r"_(affine|eps)$", "", p)
        companion = base != p and base.startswith("normalize_") and named(base) and (
            f"``*_{p[len(base) + 1:]}``" in doc or "(+ _affine, _eps)" in doc)
        if not named(p) and not companion:
            missing.append(p)
    assert not missing, missing


def test_forwarded_properties_read_the_submodule_and_are_read_only():
    """The properties hopfield-layers' modules forward (HopfieldPooling/HopfieldLayer from their Hopfield,
    Hopfield from its core, the encoder from its association): the submodule's values, and setting one
    raises AttributeError as a read-only property does."""
    pool = HopfieldPooling(8, hidden_size=4, num_heads=2)
    for name in ("batch_first", "input_size", "hidden_size", "stored_pattern_dim", "update_steps_max",
                 "normalize_state_pattern_affine"):
        assert getattr(pool, name) == getattr(pool.hopfield, name), name
    assert pool.hidden_size == pool.hopfield.association_core.head_dim == 4
    enc = HopfieldEncoderLayer(Hopfield(8, num_heads=2))
    assert enc.input_size == 8 and enc.batch_first == enc.hopfield_association.batch_first
    for module, name in ((pool, "hidden_size"), (pool.hopfield, "stored_pattern_dim"), (enc, "batch_first")):
        with pytest.raises(AttributeError, match="read-only"):
            setattr(module, name, 3)
