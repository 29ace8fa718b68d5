"""The Python module against independent numpy computations of the paper's formulas."""
import threading
import time

import numpy as np
import pytest

import assocmem as am

rng = np.random.default_rng(12345)


def unit_rows(k, d):
    x = rng.standard_normal((k, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_public_names_and_aliases():
    assert am.DenseAssociativeMemory is am.ModelA
    assert am.ModernHopfield is am.ModelB
    assert am.SphericalMemory is am.ModelC
    for name in am.__all__:
        obj = getattr(am, name)
        assert obj.__doc__, f"{name} has no docstring"
    for cls in (am.ModelA, am.ModelB, am.ModelC):
        for meth in ("retrieve", "retrieve_details", "energy"):
            assert getattr(cls, meth).__doc__, f"{cls.__name__}.{meth} has no docstring"
    for cls in (am.ModelA, am.ModelB, am.ModelC, am.Network, am.MemoryStore, am.Trajectory, am.Retrieval):
        for klass in cls.__mro__:
            if klass.__module__.startswith("assocmem"):
                for k, v in vars(klass).items():
                    if not k.startswith("_"):
                        assert getattr(v, "__doc__", None), f"{klass.__name__}.{k} has no docstring"


@pytest.mark.parametrize("make", [
    lambda: am.lagrangians.identity(), lambda: am.lagrangians.log_cosh(2.0), lambda: am.lagrangians.softplus(1.5),
    lambda: am.lagrangians.power(4), lambda: am.lagrangians.exp(0.7), lambda: am.lagrangians.log_sum_exp(3.0),
    lambda: am.lagrangians.spherical(), lambda: am.lagrangians.layer_norm(1.2, 1e-3)])
def test_lagrangian_derivatives_match_finite_differences(make):
    L = make()
    x = rng.standard_normal(5)
    u = rng.standard_normal(5)
    h = 1e-6
    fd = np.array([(L.value(x + h * e) - L.value(x - h * e)) / (2 * h) for e in np.eye(5)])
    np.testing.assert_allclose(L.activation(x), fd, rtol=1e-6, atol=1e-7)
    fd_hvp = (L.activation(x + h * u) - L.activation(x - h * u)) / (2 * h)
    np.testing.assert_allclose(L.hvp(x, u), fd_hvp, rtol=1e-5, atol=1e-6)
    assert L.psd_region and L.name in repr(L)


def test_log_sum_exp_is_stable_at_large_beta():
    L = am.lagrangians.log_sum_exp(1e4)
    x = np.array([1.0, 0.999, -5.0])
    assert np.isfinite(L.value(x))
    p = L.activation(x)
    assert np.all(np.isfinite(p)) and abs(p.sum() - 1) < 1e-12


def test_bad_lagrangian_parameters_raise_value_error():
    with pytest.raises(ValueError, match="beta"):
        am.lagrangians.log_cosh(0.0)
    with pytest.raises(ValueError, match="n must"):
        am.lagrangians.power(0.5)


def test_network_energy_decreases_and_rate_is_eq4():
    xi = rng.standard_normal((12, 6)) * 0.5
    net = am.Network(xi, am.lagrangians.log_cosh(3.0), am.lagrangians.log_sum_exp(2.0), tau_f=1.0, tau_h=0.01)
    tr = net.simulate(rng.standard_normal(6), t_end=10.0, method="bdf", rtol=1e-9, atol=1e-11)
    assert tr.v.shape == (len(tr.t), 6) and tr.h.shape == (len(tr.t), 12)
    assert np.all(np.diff(tr.energy) <= 1e-8 * (1 + abs(tr.energy[0])))
    assert np.all(tr.energy_rate <= 1e-12)
    # eq. (4) written out with the Hessian-vector products.
    v, h = tr.v[3], tr.h[3]
    dv, dh = net.rhs(v, h)
    Lv, Lh = am.lagrangians.log_cosh(3.0), am.lagrangians.log_sum_exp(2.0)
    rate = -1.0 * dv @ Lv.hvp(v, dv) - 0.01 * dh @ Lh.hvp(h, dh)
    assert net.energy_rate(v, h) == pytest.approx(rate, rel=1e-10)


def test_network_bad_input():
    xi = rng.standard_normal((3, 4))
    with pytest.raises(ValueError, match="tau_h"):
        am.Network(xi, am.lagrangians.identity(), am.lagrangians.log_sum_exp(), tau_h=0)
    net = am.Network(xi, am.lagrangians.identity(), am.lagrangians.log_sum_exp())
    with pytest.raises(ValueError, match="v has length 5"):
        net.energy(np.ones(5), np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        net.energy(np.array([1, np.nan, 0, 0]), np.ones(3))
    with pytest.raises(ValueError, match="method"):
        net.simulate(np.ones(4), method="rk23")
    with pytest.raises(am.SolverError, match="max_steps"):
        net.simulate(np.ones(4), t_end=100.0, method="euler", dt=1e-3, max_steps=10)


def test_model_b_one_step_is_attention_and_keeps_the_query_shape():
    X = unit_rows(300, 24)
    beta = 6.0
    B = am.ModelB(X, beta=beta)
    q = X[:7] + 0.1 * rng.standard_normal((7, 24)).astype(np.float32)
    s = beta * q.astype(np.float64) @ X.T.astype(np.float64)
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(B.retrieve(q), p @ X, atol=2e-5)
    one = B.retrieve(q[0])
    assert one.shape == (24,)
    np.testing.assert_allclose(one, (p @ X)[0], atol=2e-5)
    # eq. (13) with beta, at the given states.
    e = 0.5 * (q.astype(np.float64) ** 2).sum(1) - (s.max(1) + np.log(np.exp(s - s.max(1, keepdims=True)).sum(1))) / beta
    np.testing.assert_allclose(B.energy(q), e, rtol=1e-5)
    r = am.ModelB(X, beta=40.0).retrieve_details(q, steps=20, tol=1e-6, top_k=3)
    assert r.top_ids.shape == (7, 3) and np.all(r.top_ids[:, 0] == np.arange(7))
    assert np.all(r.converged) and np.all(np.diff(r.top_weights, axis=1) <= 0)


def test_model_b_bfloat16_agrees_within_bfloat16_precision():
    X = unit_rows(500, 32)
    q = X[:5] + 0.05 * rng.standard_normal((5, 32)).astype(np.float32)
    a = am.ModelB(X, beta=4.0).retrieve(q)
    b = am.ModelB(X, beta=4.0, dtype="bfloat16").retrieve(q)
    np.testing.assert_allclose(a, b, atol=2e-2)


def test_model_a_power_two_is_the_classical_network():
    P = np.sign(rng.standard_normal((8, 40))).astype(np.float32)
    T = P.T @ P
    np.fill_diagonal(T, 0)
    s = np.sign(rng.standard_normal((5, 40))).astype(np.float32)
    A = am.ModelA(P, F="power", n=2)
    one = A.retrieve(s, order="sync", steps=1)
    h = s @ T
    np.testing.assert_array_equal(one, np.where(h > 0, 1, np.where(h < 0, -1, s)))
    np.testing.assert_allclose(A.energy(s), -((s @ P.T) ** 2).sum(1))


def test_model_a_recalls_and_clamps():
    P = np.sign(rng.standard_normal((60, 100))).astype(np.float32)
    A = am.DenseAssociativeMemory(P, F="power", n=3)
    cue = P[:10].copy()
    cue[:, :15] *= -1
    np.testing.assert_array_equal(A.retrieve(cue), P[:10])
    clamp = np.zeros(100, bool)
    clamp[:15] = True
    out = A.retrieve(cue, clamp=clamp)
    np.testing.assert_array_equal(out[:, :15], cue[:, :15])  # clamped neurons keep the cue
    with pytest.raises(ValueError, match="\\+1 or -1"):
        A.retrieve(np.zeros(100))
    with pytest.raises(ValueError, match="\\+1/-1"):
        am.ModelA(np.full((3, 4), 0.5))


def test_model_c_energy_is_eq21():
    X = unit_rows(50, 10) * 2
    C = am.ModelC(X, F="rectified", n=3)
    v = rng.standard_normal((4, 10)).astype(np.float32)
    g = v / np.linalg.norm(v, axis=1, keepdims=True)
    h = g.astype(np.float64) @ X.T.astype(np.float64)
    np.testing.assert_allclose(C.energy(v), -(np.maximum(h, 0) ** 3).sum(1), rtol=1e-5)
    assert C.retrieve(v, steps=5).shape == (4, 10)
    with pytest.raises(ValueError, match="zero"):
        C.retrieve(np.zeros(10, np.float32))


def test_memory_store_round_trip_and_errors(tmp_path):
    X = rng.standard_normal((20, 7)).astype(np.float32)
    s = am.MemoryStore(7, "bfloat16")
    s.append(X[:10], ids=np.arange(100, 110))
    s.append(X[10:])
    s.save(str(tmp_path / "m.amem"))
    o = am.MemoryStore.open(str(tmp_path / "m.amem"), access="map")
    assert len(o) == 20 and o.dim == 7 and o.dtype == "bfloat16" and o.mapped
    assert not am.MemoryStore.open(str(tmp_path / "m.amem")).mapped  # small stores are read into memory
    np.testing.assert_array_equal(o.ids[:3], [100, 101, 102])
    np.testing.assert_allclose(o.to_array(), X, rtol=1 / 128)
    data = (tmp_path / "m.amem").read_bytes()
    (tmp_path / "bad.amem").write_bytes(data[:-9])
    with pytest.raises(OSError, match="bad.amem"):
        am.MemoryStore.open(str(tmp_path / "bad.amem"))
    with pytest.raises(ValueError, match="NaN"):
        s.append(np.full(7, np.nan, np.float32))
    with pytest.raises(ValueError, match="dimension"):
        s.append(np.ones((2, 5), np.float32))


def test_long_calls_release_the_gil():
    X = unit_rows(100000, 64)
    B = am.ModelB(X, beta=8.0)
    q = X[:256]
    done = threading.Event()
    ticks = 0

    def work():
        B.retrieve(q, steps=3)
        done.set()

    t = threading.Thread(target=work)
    start = time.perf_counter()
    t.start()
    while not done.is_set():
        ticks += 1
    t.join()
    elapsed = time.perf_counter() - start
    # With the GIL held for the whole call the loop above could not have run while it worked.
    assert elapsed > 0.01 and ticks > 1000


def test_outputs_are_numpy_arrays_that_own_their_data():
    X = unit_rows(40, 8)
    out = am.ModelB(X, beta=2.0).retrieve(X[:3])
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.flags.c_contiguous
    out += 1  # writable, and independent of the model
    np.testing.assert_allclose(am.ModelB(X, beta=2.0).retrieve(X[:3]) + 1, out, atol=1e-6)
