"""Hierarchical associative memories (assocmem.LayeredNetwork) against an independent implementation:
the energy and the right-hand side written with torch's own conv2d / conv_transpose2d and matrix products
in float64, dE/dt against torch autograd of that energy, and trajectories against scipy's solve_ivp of
the torch right-hand side (L = 3 and 4, dense and convolutional synapses)."""
import numpy as np
import pytest

import assocmem as am

torch = pytest.importorskip("torch")
scipy_integrate = pytest.importorskip("scipy.integrate")
F = torch.nn.functional
L = am.lagrangians


def make(rng, fourth, params=None):
    """(our network, the same network as torch functions (energy, rhs), sizes). params: a list that
    receives the torch tensors of the synapses' parameters (requires_grad) in synapse order."""
    C, H, W = 2, 6, 5
    K = rng.normal(0, 0.3, (3, C, 3, 3))
    stride, pad = 2, 1
    Ho, Wo = (H + 2 * pad - 3) // stride + 1, (W + 2 * pad - 3) // stride + 1
    nf = 3 * Ho * Wo
    Wm = rng.normal(0, 0.4, (7, nf))
    I_img = rng.normal(0, 0.2, C * H * W)
    layers = [am.Layer("image", C * H * W, L.log_cosh(1.5), tau=1.0, current=I_img),
              am.Layer("features", nf, L.softplus(1.0), tau=0.5),
              am.Layer("memories", 7, L.log_sum_exp(2.0), tau=0.25)]
    synapses = [am.conv2d("image", "features", K, (C, H, W), stride=stride, padding=pad),
                am.dense("features", "memories", Wm)]
    taus = [1.0, 0.5, 0.25]
    sizes = [C * H * W, nf, 7]
    if fourth:
        Wt, Wi = rng.normal(0, 0.5, (4, 7)), rng.normal(0, 0.1, (4, C * H * W))
        I_top = rng.normal(0, 0.1, 4)
        layers.append(am.Layer("top", 4, L.identity(), tau=2.0, current=I_top))
        synapses += [am.dense("memories", "top", Wt), am.dense("image", "top", Wi)]
        taus.append(2.0)
        sizes.append(4)
    net = am.LayeredNetwork(layers, synapses)
    T = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    Wtt = Wit = None
    if fourth:
        Wtt, Wit = T(Wt), T(Wi)
        if params is not None:
            Wtt.requires_grad_(True)
            Wit.requires_grad_(True)
    Kt, Wmt, It = T(K), T(Wm), T(I_img)
    if params is not None:
        Kt.requires_grad_(True)
        Wmt.requires_grad_(True)
        params += [Kt, Wmt] + ([Wtt, Wit] if fourth else [])
    offs = np.cumsum([0] + sizes)

    def parts(x):
        return [x[offs[i]:offs[i + 1]] for i in range(len(sizes))]

    def lagr(x):  # (value, activation) of each layer, written here from their definitions
        xi, xf, xm = x[0], x[1], x[2]
        out = [((torch.log(torch.cosh(1.5 * xi)) / 1.5).sum(), torch.tanh(1.5 * xi)),
               ((F.softplus(xf)).sum(), torch.sigmoid(xf)),
               (torch.logsumexp(2.0 * xm, 0) / 2.0, torch.softmax(2.0 * xm, 0))]
        if fourth:
            out.append(((x[3] ** 2).sum() / 2, x[3]))
        return out

    def conv(g):
        return F.conv2d(g.reshape(1, C, H, W), Kt, stride=stride, padding=pad).reshape(-1)

    def conv_t(y):
        op = (H + 2 * pad - 3) % stride, (W + 2 * pad - 3) % stride  # rows/columns the forward skipped
        return F.conv_transpose2d(y.reshape(1, 3, Ho, Wo), Kt, stride=stride, padding=pad, output_padding=op).reshape(-1)

    def energy(x):
        xs = parts(x)
        lg = lagr(xs)
        g = [a for _, a in lg]
        e = sum((xs[A] * g[A]).sum() - lg[A][0] for A in range(len(xs)))
        e = e - (g[1] * conv(g[0])).sum() - (g[2] * (Wmt @ g[1])).sum() - (It * g[0]).sum()
        if fourth:
            e = e - (g[3] * (Wtt @ g[2])).sum() - (g[3] * (Wit @ g[0])).sum() - (T(I_top) * g[3]).sum()
        return e

    def rhs(x):
        xs = parts(x)
        g = [a for _, a in lagr(xs)]
        f = [conv_t(g[1]) + It, conv(g[0]) + Wmt.T @ g[2], Wmt @ g[1]]
        if fourth:
            f[0] = f[0] + Wit.T @ g[3]
            f[2] = f[2] + Wtt.T @ g[3]
            f.append(Wtt @ g[2] + Wit @ g[0] + T(I_top))
        return torch.cat([(f[A] - xs[A]) / taus[A] for A in range(len(xs))])

    return net, energy, rhs


@pytest.mark.parametrize("fourth", [False, True])
def test_energy_rhs_and_rate_agree_with_torch(fourth):
    rng = np.random.default_rng(11)
    net, energy, rhs = make(rng, fourth)
    for _ in range(3):
        x = rng.normal(0, 0.7, net.size)
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        e = energy(xt)
        (grad,) = torch.autograd.grad(e, xt)
        dx = rhs(xt.detach()).numpy()
        # Both are sums of O(100) float64 terms of size <= ~10: agreement to ~1e-12 relative.
        assert net.energy(x) == pytest.approx(float(e), rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(net.rhs(x), dx, rtol=1e-11, atol=1e-12)
        # eq. (4) for L layers: dE/dt = grad E . dx/dt.
        rate = float(grad.numpy() @ dx)
        assert rate < 0
        assert net.energy_rate(x) == pytest.approx(rate, rel=1e-10)


@pytest.mark.parametrize("fourth", [False, True])
def test_trajectory_agrees_with_scipy_on_the_torch_rhs(fourth):
    rng = np.random.default_rng(12)
    net, energy, rhs = make(rng, fourth)
    x0 = rng.normal(0, 1.0, net.size)
    tr = net.simulate(x0, t_end=3.0, method="rk45", rtol=1e-10, atol=1e-12)
    ref = scipy_integrate.solve_ivp(lambda t, y: rhs(torch.tensor(y, dtype=torch.float64)).numpy(), (0.0, 3.0), x0,
                                    method="DOP853", rtol=1e-11, atol=1e-13)
    assert ref.success
    # Two integrations at tolerances ~1e-10 of a contracting flow: states agree to ~1e-8.
    np.testing.assert_allclose(tr.x[-1], ref.y[:, -1], atol=1e-7)
    assert tr.t[-1] == pytest.approx(3.0)
    assert np.all(np.diff(tr.energy) <= 1e-10 * (1 + np.abs(tr.energy[1:])))
    assert tr.non_psd_steps == 0
    verdict, lower, why = net.energy_bound()
    assert verdict == "bounded" and tr.energy.min() >= lower, why
    parts = net.split(tr.x)
    assert list(parts) == [layer.name for layer in net.layers]
    assert sum(p.shape[1] for p in parts.values()) == net.size


def test_two_layers_are_the_network_of_eq1():
    rng = np.random.default_rng(13)
    xi = rng.normal(size=(6, 4))
    n = am.Network(xi, L.identity(), L.log_sum_exp(3.0), tau_f=1.0, tau_h=0.1, current=rng.normal(size=4))
    lay = am.LayeredNetwork.from_network(n)
    v, h = rng.normal(size=4), rng.normal(size=6)
    x = np.concatenate([v, h])
    assert lay.energy(x) == n.energy(v, h)
    dv, dh = n.rhs(v, h)
    np.testing.assert_array_equal(lay.rhs(x), np.concatenate([dv, dh]))
    a = n.simulate(v, h, t_end=1.0, method="rk4", dt=0.01)
    b = lay.simulate(x, t_end=1.0, method="rk4", dt=0.01)
    np.testing.assert_array_equal(b.x, np.hstack([a.v, a.h]))
    np.testing.assert_array_equal(b.energy, a.energy)


def test_bad_layered_networks_raise_value_errors_naming_the_part():
    W = np.ones((3, 2))
    ok = [am.Layer("a", 2, L.identity()), am.Layer("b", 3, L.identity())]
    with pytest.raises(ValueError, match="no layer named 'c'"):
        am.LayeredNetwork(ok, [am.dense("a", "c", W)])
    with pytest.raises(ValueError, match="reads 2 neurons but layer 'b' has 3"):
        am.LayeredNetwork(ok, [am.dense("b", "a", W)])
    with pytest.raises(ValueError, match="4-D"):
        am.conv2d("a", "b", np.ones((2, 2)), (1, 2, 2))
    with pytest.raises(ValueError, match="input channels"):
        am.conv2d("a", "b", np.ones((1, 2, 1, 1)), (1, 2, 1))
    net = am.LayeredNetwork(ok, [am.dense("a", "b", W)])
    with pytest.raises(ValueError, match="length 4 but the layers have 5"):
        net.energy(np.zeros(4))
    with pytest.raises(ValueError, match=r"shape \(5,\) or \(T, 5\)"):
        net.split(np.zeros((2, 3)))


def test_adiabatic_limit_of_two_layers_is_the_effective_model():
    rng = np.random.default_rng(14)
    xi = rng.normal(size=(6, 4))
    n = am.Network(xi, L.identity(), L.log_sum_exp(3.0), current=rng.normal(size=4))
    lim = am.AdiabaticLimit(am.LayeredNetwork.from_network(n), ["h"])
    assert lim.size == 4
    v = rng.normal(size=4)
    assert lim.energy(v) == pytest.approx(n.effective_energy(v), rel=1e-13, abs=1e-13)
    tr = lim.simulate(v, t_end=5.0)
    assert tr.x.shape[1] == 10 and np.all(np.diff(tr.energy) <= 1e-10 * (1 + np.abs(tr.energy[1:])))
    np.testing.assert_allclose(tr.x[-1, 4:], xi @ tr.x[-1, :4], rtol=1e-12, atol=1e-12)  # h = xi g (eq. 5)
    with pytest.raises(ValueError, match="joins the fast layers .v. and .h."):
        am.AdiabaticLimit(am.LayeredNetwork.from_network(n), ["h", "v"])


@pytest.mark.parametrize("fourth", [False, True])
def test_gradients_for_training_equal_torch_autograd(fourth):
    """The energy's gradient in the state and in every synapse's parameters (conv kernel in torch's
    (out, in, kh, kw) layout), and the vector-Jacobian product of the dynamics, against torch autograd of
    the independent torch implementation."""
    rng = np.random.default_rng(15)
    params = []
    net, energy, rhs = make(rng, fourth, params)
    x = rng.normal(0, 0.7, net.size)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    grads = torch.autograd.grad(energy(xt), [xt] + params)
    np.testing.assert_allclose(net.energy_gradient(x), grads[0].numpy(), rtol=1e-10, atol=1e-12)
    ours = net.energy_weight_gradients(x)
    assert len(ours) == len(params)
    for a, b in zip(ours, grads[1:]):
        assert a.shape == tuple(b.shape)
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-10, atol=1e-12)
    u = rng.normal(size=net.size)
    xt2 = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (vjp,) = torch.autograd.grad(rhs(xt2), xt2, torch.tensor(u))
    np.testing.assert_allclose(net.vjp(x, u), vjp.numpy(), rtol=1e-10, atol=1e-12)
