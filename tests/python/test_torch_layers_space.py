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
    inputs, projected = HopfieldCore._attend_inputs, HopfieldCore._attend

    def count(name, f):
        def wrapped(*a, **k):
            calls[name] += 1
            return f(*a, **k)
        return staticmethod(wrapped)
    monkeypatch.setattr(HopfieldCore, "_attend_inputs", count("input", inputs))
    monkeypatch.setattr(HopfieldCore, "_attend", count("projected", projected))

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
