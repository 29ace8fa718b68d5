"""assocmem.torch.LayeredMemory (issue 25, item 3) against torch autograd of the naive formula: the energy
(eq. 2 for L layers), the activations and Euler steps of eq. (1) written here with torch's conv2d, matrix
products and each Lagrangian's definition, in float64, for L = 3 and 4 with dense and convolutional
synapses; gradcheck in float64; the implicit gradient against backpropagation through a long run."""
import math

import numpy as np
import pytest

import assocmem as am

torch = pytest.importorskip("torch")
import assocmem.torch as amt  # noqa: E402

F = torch.nn.functional
L = am.lagrangians

# Each Lagrangian used below, written from its definition: (value, activation) of a vector x.
NAIVE = {
    "identity": (lambda x: (x ** 2).sum(-1) / 2, lambda x: x),
    "log_cosh": (lambda x: (torch.log(torch.cosh(1.5 * x)) / 1.5).sum(-1), lambda x: torch.tanh(1.5 * x)),
    "softplus": (lambda x: F.softplus(x).sum(-1), torch.sigmoid),
    "lse": (lambda x: torch.logsumexp(2.0 * x, -1) / 2.0, lambda x: torch.softmax(2.0 * x, -1)),
}


def build(fourth, dtype=torch.float64, seed=3):
    """A three-layer (image -> conv features -> softmax memories) or four-layer network, every layer
    with a bias, weights random and scaled so that Euler steps with dt = 0.2 settle."""
    torch.manual_seed(seed)
    neurons = [amt.Neurons("image", (2, 6, 5), L.log_cosh(1.5), tau=1.0, bias=True),
               amt.Neurons("features", (3, 3, 3), L.softplus(1.0), tau=0.5, bias=True),
               amt.Neurons("memories", 7, L.log_sum_exp(2.0), tau=0.25, bias=True)]
    naive = ["log_cosh", "softplus", "lse"]
    synapses = [amt.Conv2dSynapse("image", "features", 3, stride=2, padding=1),
                amt.DenseSynapse("features", "memories", std=0.3)]
    if fourth:
        neurons.append(amt.Neurons("top", 4, L.identity(), tau=2.0, bias=True))
        naive.append("identity")
        synapses += [amt.DenseSynapse("memories", "top", std=0.3), amt.DenseSynapse("image", "top", std=0.05)]
    net = amt.LayeredMemory(neurons, synapses, dtype=dtype)
    with torch.no_grad():
        for b in net.bias.values():
            b.normal_(0, 0.2)
    return net, naive


def naive_parts(net, x):
    return [x[:, net.offsets[i]:net.offsets[i + 1]] for i in range(len(net.neurons))]


def naive_interaction(net, g, weights):
    """sum_s g^b . W_s g^a per row: the two-body term of eq. (2), with torch's conv2d for convolutions."""
    B = g[0].shape[0]
    total = 0
    for s, W in zip(net.specs, weights):
        a, b = net._index[s.source], net._index[s.target]
        if isinstance(s, amt.DenseSynapse):
            down = g[a] @ W.T
        else:
            down = F.conv2d(g[a].reshape(B, *net.neurons[a].shape), W, stride=s.stride, padding=s.padding).reshape(B, -1)
        total = total + (g[b] * down).sum(-1)
    return total


def naive_energy(net, naive, x, weights, biases):
    xs = naive_parts(net, x)
    g = [NAIVE[k][1](xa) for k, xa in zip(naive, xs)]
    e = sum((xa * ga).sum(-1) - NAIVE[k][0](xa) - (I * ga).sum(-1) for k, xa, ga, I in zip(naive, xs, g, biases))
    return e - naive_interaction(net, g, weights)


def naive_rhs(net, naive, x, weights, biases):
    """(fields - x + I) / tau with the fields = d(interaction)/dg from autograd of the naive two-body term."""
    xs = naive_parts(net, x)
    g = [NAIVE[k][1](xa) for k, xa in zip(naive, xs)]
    gl = [ga.detach().requires_grad_(True) if not ga.requires_grad else ga for ga in g]
    fields = torch.autograd.grad(naive_interaction(net, gl, weights).sum(), gl, create_graph=True)
    return torch.cat([(f - xa + I) / n.tau for f, xa, I, n in zip(fields, xs, biases, net.neurons)], -1)


def leaves(net):
    """Copies of the network's parameters as leaf tensors for the naive formula: (weights, biases)."""
    weights = [w.detach().clone().requires_grad_(True) for w in net.synapses]
    biases = [net.bias[n.name].detach().clone().requires_grad_(True) for n in net.neurons]
    return weights, biases


def ours_grads(net, out, x):
    return torch.autograd.grad(out, [x] + list(net.synapses) + [net.bias[n.name] for n in net.neurons])


def assert_close(ours, theirs, rtol):
    for a, b in zip(ours, theirs):
        scale = max(1.0, float(b.abs().max()))
        assert float((a - b).abs().max()) <= rtol * scale, (a, b)


@pytest.mark.parametrize("fourth", [False, True])
def test_energy_and_its_gradients_agree_with_autograd_of_the_naive_formula(fourth):
    net, naive = build(fourth)
    x = torch.randn(4, net.size, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, dtype=torch.float64)
    e = net.energy(x)
    weights, biases = leaves(net)
    xn = x.detach().clone().requires_grad_(True)
    en = naive_energy(net, naive, xn, weights, biases)
    # Sums of O(100) float64 terms of size O(1-10): ~1e-13 relative; 1e-10 leaves room, misses any wrong term.
    torch.testing.assert_close(e, en, rtol=1e-10, atol=1e-10)
    ours = ours_grads(net, (c * e).sum(), x)
    theirs = torch.autograd.grad((c * en).sum(), [xn] + weights + biases)
    assert_close(ours, theirs, 1e-10)


@pytest.mark.parametrize("fourth", [False, True])
def test_euler_steps_and_their_gradients_agree_with_a_naive_unroll(fourth):
    net, naive = build(fourth)
    x0 = 0.5 * torch.randn(3, net.size, dtype=torch.float64)
    x0.requires_grad_(True)
    steps, dt = 7, 0.15
    xT = net(x0, steps=steps, dt=dt)
    weights, biases = leaves(net)
    xn0 = x0.detach().clone().requires_grad_(True)
    xn = xn0
    for _ in range(steps):
        xn = xn + dt * naive_rhs(net, naive, xn, weights, biases)
    # Each step adds O(N) float64 products; after 7 steps the two differ by ~1e-14 relative.
    torch.testing.assert_close(xT, xn, rtol=1e-10, atol=1e-10)
    c = torch.randn_like(xT)
    ours = ours_grads(net, (c * xT).sum(), x0)
    theirs = torch.autograd.grad((c * xn).sum(), [xn0] + weights + biases)
    assert_close(ours, theirs, 1e-9)
    # The activations' backward is each layer's Hessian: against autograd of the naive activations.
    g = net.activations(x0)
    gn = torch.cat([NAIVE[k][1](xa) for k, xa in zip(naive, naive_parts(net, xn0))], -1)
    torch.testing.assert_close(g, gn, rtol=1e-12, atol=1e-12)
    (d_ours,) = torch.autograd.grad((c * g).sum(), x0)
    (d_theirs,) = torch.autograd.grad((c * gn).sum(), xn0)
    torch.testing.assert_close(d_ours, d_theirs, rtol=1e-11, atol=1e-11)


def test_gradcheck_in_float64():
    net, _ = build(True)
    x = (0.5 * torch.randn(2, net.size, dtype=torch.float64)).requires_grad_(True)
    params = tuple(net._params())
    assert torch.autograd.gradcheck(lambda x, *p: net.energy(x), (x,) + params, eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda x, *p: net(x, steps=4, dt=0.2), (x,) + params, eps=1e-6, atol=1e-6)


def test_implicit_gradient_is_the_limit_of_backpropagation_through_a_long_run():
    net, _ = build(False)
    x0 = 0.3 * torch.randn(2, net.size, dtype=torch.float64)
    steps, dt = 400, 0.2
    c = torch.randn(2, net.size, dtype=torch.float64)
    params = net._params()
    x_bptt = net(x0, steps=steps, dt=dt)
    with torch.no_grad():  # the run has settled: |dx/dt| at x_T is at rounding level
        x_next = net(x_bptt, steps=1, dt=dt)
    assert float((x_next - x_bptt).abs().max()) < 1e-12
    bptt = torch.autograd.grad((c * x_bptt).sum(), params)
    x_imp = net(x0, steps=steps, dt=dt, implicit=True, tol=1e-12)
    torch.testing.assert_close(x_imp, x_bptt, rtol=0, atol=0)
    implicit = torch.autograd.grad((c * x_imp).sum(), params)
    # The BPTT sum differs from the implicit one by its terms from before the run settled, damped by the
    # adjoint's contraction over the ~400 steps since: far below 1e-8 relative.
    assert_close(implicit, bptt, 1e-8)
    # A budget too small for the adjoint iteration is an error, not a silent wrong gradient.
    x_imp = net(x0, steps=steps, dt=dt, implicit=True, tol=1e-12, max_iterations=2)
    with pytest.raises(RuntimeError, match="did not converge"):
        torch.autograd.grad((c * x_imp).sum(), params)


def test_float32_states_and_parameters_keep_their_dtype_and_agree_with_float64():
    net32, _ = build(False, dtype=torch.float32)
    net64, _ = build(False, dtype=torch.float64)
    with torch.no_grad():
        for p32, p64 in zip(net32._params(), net64._params()):
            p64.copy_(p32.double())
    x = 0.5 * torch.randn(3, net32.size)
    y32 = net32(x, steps=5, dt=0.2)
    y64 = net64(x.double(), steps=5, dt=0.2)
    assert y32.dtype == torch.float32
    # The computation runs in float64 either way; float32 only rounds the inputs and the result.
    torch.testing.assert_close(y32.double(), y64, rtol=1e-6, atol=1e-6)
    (gw,) = torch.autograd.grad(y32.sum(), [net32.synapses[0]])
    assert gw.dtype == torch.float32


def test_network_snapshot_is_the_same_network():
    net, _ = build(True)
    x = 0.5 * torch.randn(2, net.size, dtype=torch.float64)
    snap = net.network()
    assert snap.size == net.size
    for b in range(2):
        assert snap.energy(x[b].numpy()) == pytest.approx(float(net.energy(x)[b]), rel=1e-13)
    states, energies = net.trajectory(x, steps=5, dt=0.1)
    assert states.shape == (6, 2, net.size) and energies.shape == (6, 2)
    torch.testing.assert_close(states[-1], net(x, steps=5, dt=0.1), rtol=0, atol=0)
    parts = net.split(x)
    assert parts["image"].shape == (2, 2, 6, 5) and parts["top"].shape == (2, 4)
    torch.testing.assert_close(net.join(parts), x, rtol=0, atol=0)


def test_bad_declarations_and_inputs_name_the_problem():
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        amt.LayeredMemory([amt.Neurons("a", 4, L.identity())], [amt.DenseSynapse("a", "nope")])
    with pytest.raises(ValueError, match="used twice"):
        amt.LayeredMemory([amt.Neurons("a", 4, L.identity()), amt.Neurons("a", 3, L.identity())], [])
    with pytest.raises(ValueError, match=r"maps \(1, 8, 8\) to \(2, 4, 4\), but the layer 'f' has shape \(2, 3, 3\)"):
        amt.LayeredMemory([amt.Neurons("i", (1, 8, 8), L.identity()), amt.Neurons("f", (2, 3, 3), L.identity())],
                          [amt.Conv2dSynapse("i", "f", 4, stride=2, padding=1)])
    with pytest.raises(ValueError, match="needs image layers"):
        amt.LayeredMemory([amt.Neurons("i", 64, L.identity()), amt.Neurons("f", (2, 3, 3), L.identity())],
                          [amt.Conv2dSynapse("i", "f", 4)])
    with pytest.raises(ValueError, match="tau must be finite and > 0"):
        amt.Neurons("a", 4, L.identity(), tau=0)
    with pytest.raises(TypeError, match="assocmem.lagrangians"):
        amt.Neurons("a", 4, "identity")
    net, _ = build(False)
    with pytest.raises(ValueError, match=rf"shape \(B, {net.size}\)"):
        net.energy(torch.zeros(2, net.size + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="dt must be finite and > 0"):
        net(torch.zeros(2, net.size, dtype=torch.float64), dt=-1)
    with pytest.raises(ValueError, match="steps"):
        net(torch.zeros(2, net.size, dtype=torch.float64), steps=-1)
    with pytest.raises(ValueError, match="initial states contains NaN or Inf"):
        net(torch.full((1, net.size), math.nan, dtype=torch.float64))
    with pytest.raises(ValueError, match="is on meta: assocmem computes on the CPU"):
        net(torch.zeros(1, net.size, dtype=torch.float64, device="meta"))
    with pytest.raises(RuntimeError, match="not finite after step"):
        net(torch.zeros(1, net.size, dtype=torch.float64), steps=50, dt=1e6)


def test_save_writes_a_description_the_cli_runs_exactly(tmp_path, cli):
    """A trained network goes to `assocmem simulate`: the description's trajectory is the Python API's."""
    import json
    import subprocess
    net, _ = build(True)
    x0 = 0.5 * torch.randn(net.size, dtype=torch.float64)
    path = net.save(str(tmp_path / "trained"), x0=x0, t_end=2.0, rtol=1e-9, atol=1e-12)
    r = subprocess.run([cli, "--json", "simulate", path, "-o", str(tmp_path / "out.npy")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["layers"] == 4
    t = np.load(tmp_path / "out.npy")
    ref = net.network().simulate(x0.numpy(), t_end=2.0, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(t[-1, 3:], ref.x[-1])  # the same network, bit for bit (float64 .npy files)
    with pytest.raises(ValueError, match="unknown option 'tend'"):
        net.save(str(tmp_path / "x"), tend=3)


def test_the_readme_snippet_runs_as_written():
    """The README's LayeredMemory block, run as written on four glyphs with the lower half hidden: every
    weight and bias gets a gradient, the energy is one number per cue."""
    import pathlib
    text = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = text.index("import assocmem.torch as at\nnet = at.LayeredMemory(")
    block = text[start:text.index("```", start)]
    _, im = am.render_glyphs("", 4, 64)
    images = torch.tensor(im.reshape(4, -1), dtype=torch.float32)
    cues = images.clone()
    cues[:, 2048:] = 0
    scope = {"L": L, "cues": cues, "images": images}
    exec(block, scope)
    net, loss, E = scope["net"], scope["loss"], scope["E"]
    assert math.isfinite(float(loss)) and E.shape == (4,)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
