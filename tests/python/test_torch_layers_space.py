"""Where assocmem's hopfield-layers modules take the association (assocmem._layers.HopfieldCore._reassociates):
against the stored patterns themselves where that costs fewer operations and is exact algebra (the keys and
values linear in them), against the projected keys and values otherwise. The results of both are checked
against hopfield-layers' equations in test_torch_layers.py (every test there runs in both spaces)."""
import pytest
import torch

from assocmem.torch import Hopfield, HopfieldCore, HopfieldEncoderLayer, HopfieldLayer, HopfieldPooling


@pytest.fixture
def spaces(monkeypatch):
    """Counts of associations taken in the input space and in the projected space, per module call."""
    calls = {"input": 0, "projected": 0}
    inputs, projected = HopfieldCore._output_in_input_space, HopfieldCore._attend

    def count(name, f):
        def wrapped(*a, **k):
            calls[name] += 1
            return f(*a, **k)
        return wrapped
    monkeypatch.setattr(HopfieldCore, "_output_in_input_space", count("input", inputs))
    monkeypatch.setattr(HopfieldCore, "_attend", staticmethod(count("projected", projected)))

    def run(module, *args, mode=None):
        monkeypatch.setattr(HopfieldCore, "_reassociation", mode)
        calls.update(input=0, projected=0)
        module(*args)
        return "input" if calls["input"] and not calls["projected"] else (
            "projected" if calls["projected"] and not calls["input"] else f"mixed {calls}")
    return run


def randn(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))


def test_many_stored_patterns_few_queries_take_the_input_space(spaces):
    stored, state = randn(2, 1000, 64), randn(2, 16, 64)
    assert spaces(Hopfield(input_size=64), (stored, state, stored)) == "input"
    assert spaces(Hopfield(input_size=64, num_heads=4), (stored, state, stored)) == "input"
    assert spaces(HopfieldPooling(input_size=64), stored) == "input"
    core = HopfieldCore(embed_dim=64)  # sequence first; the output alone (need_weights=False)
    assert spaces(lambda *a: core(*a, need_weights=False), state.transpose(0, 1), stored.transpose(0, 1),
                  stored.transpose(0, 1)) == "input"
    assert spaces(core, state.transpose(0, 1), stored.transpose(0, 1), stored.transpose(0, 1)) == "projected"
    # with update steps: every update in the input space too
    assert spaces(Hopfield(input_size=64, update_steps_max=2, update_steps_eps=1e-30), (stored, state, stored)) == "input"


def test_self_association_with_many_heads_and_few_stored_patterns_keep_the_projections(spaces):
    # 4 heads of 16 over 200 tokens: 4 x 200 queries x 64 inputs per stored pattern cost more than projecting.
    x = randn(2, 200, 64)
    assert spaces(HopfieldEncoderLayer(Hopfield(input_size=64, num_heads=4), dim_feedforward=32), x) == "projected"
    # 30 patterns shared by the batch: projecting them once is cheaper than 64-wide scores for every query
    assert spaces(HopfieldLayer(input_size=64, quantity=30), randn(2, 16, 64)) == "projected"


@pytest.mark.parametrize("kwargs", [dict(add_zero_association=True),
                                    dict(normalize_hopfield_space=True, normalize_hopfield_space_affine=True),
                                    dict(stored_pattern_size=64, pattern_projection_size=64,
                                         pattern_projection_as_connected=True),
                                    dict(stored_pattern_as_static=True, hidden_size=64)])
def test_what_is_not_linear_in_the_stored_patterns_keeps_the_projections_even_when_forced(spaces, kwargs):
    stored, state = randn(2, 1000, 64), randn(2, 16, 64)
    assert spaces(Hopfield(input_size=64, **kwargs), (stored, state, stored), mode=True) == "projected"


def test_forcing_selects_the_space_and_both_agree(spaces):
    torch.manual_seed(0)
    m = Hopfield(input_size=16, num_heads=2, update_steps_max=1, update_steps_eps=1e-30)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape) * 0.3)
    stored, state = randn(3, 50, 16), randn(3, 5, 16)
    assert spaces(m, (stored, state, stored), mode=False) == "projected"
    assert spaces(m, (stored, state, stored), mode=True) == "input"
    m64 = m.double()
    outs = []
    for mode in (False, True):
        HopfieldCore._reassociation = mode
        try:
            outs.append(m64((stored.double(), state.double(), stored.double())))
        finally:
            HopfieldCore._reassociation = None
    torch.testing.assert_close(outs[0], outs[1], atol=1e-12, rtol=1e-10)  # the same algebra, rounding apart


def gradcheck_module(module, args, training=False):
    """torch.autograd.gradcheck in float64 of module(*args) in the input space, with respect to every input
    that requires grad and every parameter (the module's parameter slots hold gradcheck's tensors: not
    torch.nn.utils.stateless.functional_call, which changes the submodules' classes and with that the path
    taken); in training the dropout draw is the same in every evaluation (torch.manual_seed before each), so
    the function checked is a fixed one."""
    module = module.double().train(training)
    slots = [(owner, name) for owner in module.modules() for name, p in owner._parameters.items() if p is not None]
    params = tuple(p.detach().clone().requires_grad_(True) for owner, name in slots for p in [owner._parameters[name]])
    saved = [owner._parameters[name] for owner, name in slots]

    def f(*flat):
        torch.manual_seed(5)
        for (owner, name), t in zip(slots, flat[len(args):]):
            owner._parameters[name] = t
        return module(*flat[:len(args)])
    HopfieldCore._reassociation = True
    try:
        # Central differences in float64 with step 1e-6 on outputs of magnitude ~10: truncation ~1e-12 and
        # rounding ~u |f| / eps ~ 1e-9, two orders below atol 1e-7 on any CPU (the kernels' float64 paths).
        return torch.autograd.gradcheck(f, tuple(args) + params, eps=1e-6, atol=1e-7)
    finally:
        HopfieldCore._reassociation = None
        for (owner, name), p in zip(slots, saved):
            owner._parameters[name] = p


def test_the_input_space_node_gradchecks_in_float64():
    """The one node of the input space (_ProjectedAttention: the state's norm, the query, key, value and output
    projections, the memories' norms and the fused association, forward and backward by hand) against
    central differences in float64: every input and parameter, with a padding mask and an additive
    association mask, dropout in training, per-head update steps (the heads still iterating taken by themselves),
    memories shared by the batch, a static state."""
    g = torch.Generator().manual_seed(3)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)
    N, L, S = 2, 3, 7
    stored, state, proj = r(N, S, 6), r(N, L, 5), r(N, S, 4)
    pad = torch.zeros(N, S, dtype=torch.bool)
    pad[1, 2:4] = True
    m = Hopfield(input_size=5, stored_pattern_size=6, pattern_projection_size=4, hidden_size=4, num_heads=2,
                 output_size=3, dropout=0.3, scaling=torch.tensor([0.7, 1.9]))
    randomise_params(m)
    bias = r(N * 2, L, S)  # additive, differentiable
    assert gradcheck_module(Masked(m, pad), (stored, state, proj, bias), training=True)
    steps = Hopfield(input_size=5, hidden_size=3, num_heads=3, update_steps_max=torch.tensor([1, 3, 2]), update_steps_eps=1e-30)
    randomise_params(steps)
    x = r(N, S, 5)
    assert gradcheck_module(Tupled(steps), (x, state, x))
    shared = HopfieldLayer(input_size=5, hidden_size=3, quantity=6, num_heads=2)
    randomise_params(shared)
    assert gradcheck_module(shared, (state,))
    static = Hopfield(input_size=5, hidden_size=5, state_pattern_as_static=True, disable_out_projection=True,
                      input_bias=False)
    randomise_params(static)
    assert gradcheck_module(Tupled(static), (x, state, x))
    core = HopfieldCore(embed_dim=4, num_heads=2)  # a scaling per head that is itself differentiable
    randomise_params(core)
    q, kv = r(L, N, 4), r(S, N, 4)
    assert gradcheck_module(CoreOutput(core), (q, kv, kv, r(2).detach().abs().add(0.5).requires_grad_(True)))


class Tupled(torch.nn.Module):
    """A Hopfield module called with (stored, state, projection) as three arguments."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, stored, state, proj):
        return self.m((stored, state, proj))


class CoreOutput(torch.nn.Module):
    """HopfieldCore's output alone (need_weights=False), the scaling per head an argument."""

    def __init__(self, core):
        super().__init__()
        self.core = core

    def forward(self, query, key, value, scaling):
        return self.core(query, key, value, need_weights=False, scaling=scaling)[0]


class Masked(Tupled):
    """... with a fixed padding mask and an additive association mask given as the fourth argument."""

    def __init__(self, m, pad):
        super().__init__(m)
        self.pad = pad

    def forward(self, stored, state, proj, bias):
        return self.m((stored, state, proj), stored_pattern_padding_mask=self.pad, association_mask=bias)


def randomise_params(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if p.dim() == 1 else 0))
