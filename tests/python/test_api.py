"""The one retrieval API from Python (issue 10): keys and values against numpy softmax attention,
masks against deleting the masked memories, batch dimensions, from_store without a copy, Ctrl-C,
1-D details, top_k > K, dtypes, reprs, progress, per-call beta, defaults shared with the CLI."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import assocmem as am

CLI = os.environ.get("ASSOCMEM_CLI", "assocmem")


def unit(rng, k, d):
    x = rng.standard_normal((k, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def softmax_attention(K, V, q, beta):
    """numpy's own: softmax(beta q K^T) V, row by row."""
    s = beta * q @ K.T
    w = np.exp(s - s.max(-1, keepdims=True))
    return (w / w.sum(-1, keepdims=True)) @ V


def test_keys_and_values_are_numpy_softmax_attention():
    rng = np.random.default_rng(1)
    K, V = unit(rng, 500, 32), rng.standard_normal((500, 5))
    q = K[:7] + 0.3 * rng.standard_normal((7, 32))
    m = am.ModelB(K, beta=5.0, values=V)
    assert (m.n_features, m.value_dim, m.n_memories) == (32, 5, 500)
    np.testing.assert_allclose(m.retrieve(q), softmax_attention(K, V, q, 5.0), atol=2e-5)
    # steps = 3: two updates of eq. (16) on the keys, then the association with the values.
    v = q
    for _ in range(2):
        v = softmax_attention(K, K, v, 5.0)
    np.testing.assert_allclose(m.retrieve(q, steps=3), softmax_attention(K, V, v, 5.0), atol=2e-5)
    with pytest.raises(ValueError, match="values: 3 memories"):
        am.ModelB(K, values=V[:3])


def test_mask_equals_deleting_the_memories():
    rng = np.random.default_rng(2)
    X = unit(rng, 400, 16)
    ids = np.arange(1000, 1400, dtype=np.uint64)  # store ids, not row numbers
    store = am.MemoryStore(16)
    store.append(X.astype(np.float32), ids)
    q = X[[5, 50, 300]] + 0.05 * rng.standard_normal((3, 16))
    mask = np.zeros((3, 400), bool)
    mask[0, ::3] = True
    mask[1, 50] = True            # the query's own memory
    mask[2, 100:400] = True
    B = am.ModelB(store, beta=30.0)
    r = B.retrieve_details(q, steps=50, tol=1e-6, step=0.5, top_k=4, mask=mask)
    for b in range(3):
        keep = ~mask[b]
        sub = am.MemoryStore(16)
        sub.append(X[keep].astype(np.float32), ids[keep])
        p = am.ModelB(sub, beta=30.0).retrieve_details(q[b], steps=50, tol=1e-6, step=0.5, top_k=4)
        np.testing.assert_allclose(r.states[b], p.states, atol=1e-5)
        np.testing.assert_array_equal(r.top_ids[b], p.top_ids)
        assert np.all(np.isin(r.top_ids[b], ids[keep]))
        assert r.energy[b] == pytest.approx(p.energy, rel=1e-5)
    # The independent formula: one step over the kept memories in numpy.
    one = B.retrieve(q, mask=mask)
    for b in range(3):
        np.testing.assert_allclose(one[b], softmax_attention(X[~mask[b]], X[~mask[b]], q[b], 30.0), atol=2e-5)
    # Model C, and a mask shared by all queries.
    C = am.ModelC(X * 3, F="exp", beta=2.0)
    rc = C.retrieve(q, steps=20, mask=mask[2])
    pc = am.ModelC(X[~mask[2]] * 3, F="exp", beta=2.0).retrieve(q, steps=20)
    np.testing.assert_allclose(rc, pc, atol=1e-4)
    with pytest.raises(ValueError, match="mask must have shape"):
        B.retrieve(q, mask=mask[:2])
    with pytest.raises(ValueError, match="leaves out every memory"):
        B.retrieve(q, mask=np.ones(400, bool))


def test_leading_batch_dimensions_and_one_dimensional_details():
    rng = np.random.default_rng(3)
    X = unit(rng, 300, 8)
    B = am.ModelB(X, beta=8.0)
    q = X[:12].reshape(2, 3, 2, 8) + 0.1 * rng.standard_normal((2, 3, 2, 8))
    r = B.retrieve_details(q, steps=4, top_k=3)
    flat = B.retrieve_details(q.reshape(12, 8), steps=4, top_k=3)
    assert r.states.shape == (2, 3, 2, 8) and r.steps.shape == (2, 3, 2) and r.top_ids.shape == (2, 3, 2, 3)
    assert r.stop.shape == (2, 3, 2) and r.energy.shape == (2, 3, 2)
    np.testing.assert_array_equal(r.states.reshape(12, 8), flat.states)
    np.testing.assert_array_equal(r.top_ids.reshape(12, 3), flat.top_ids)
    assert B.energy(q).shape == (2, 3, 2)
    # A 1-D query: 1-D details, scalars where there is one number.
    one = B.retrieve_details(q[0, 0, 0], steps=4, top_k=3)
    assert one.states.shape == (8,) and one.top_ids.shape == (3,) and one.top_weights.shape == (3,)
    assert isinstance(one.steps, int) and isinstance(one.energy, float) and isinstance(one.stop, str)
    assert isinstance(one.converged, bool)
    np.testing.assert_allclose(one.states, flat.states[0], atol=1e-6)  # one query: the matrix-vector kernel
    assert isinstance(B.energy(q[0, 0, 0]), float)
    ids, w = B.attention(q[0, 0, 0], 2)
    assert ids.shape == (2,) and w.shape == (2,)


def test_top_k_beyond_K_is_clipped_and_padding_is_minus_one():
    X = np.eye(4, dtype=np.float32)
    B = am.ModelB(X, beta=2.0)
    r = B.retrieve_details(np.array([1.0, 0.2, 0, 0]), top_k=10)
    assert r.top_ids.shape == (4,)                     # min(top_k, K)
    assert sorted(r.top_ids.tolist()) == [0, 1, 2, 3]  # every memory once, no id 0 padding
    assert r.top_weights.sum() == pytest.approx(1.0, abs=1e-6)
    r = B.retrieve_details(np.array([1.0, 0.2, 0, 0]), top_k=3, mask=[False, False, True, True])
    assert r.top_ids.tolist() == [0, 1, -1]            # fewer memories than k: -1 pads
    assert r.top_weights[2] == 0.0
    with pytest.raises(ValueError, match="top_k"):
        B.retrieve_details(X[0], top_k=-1)


def test_dtype_policy():
    X = np.eye(6)
    B = am.ModelB(X, beta=3.0)
    assert B.retrieve(X[:2]).dtype == np.float64                      # float64 in, float64 out
    assert B.retrieve(X[:2].astype(np.float32)).dtype == np.float32
    assert B.retrieve(np.eye(6, dtype=np.int64)[:2]).dtype == np.float32
    with pytest.raises(TypeError, match="real numbers"):
        B.retrieve(X[:2].astype(complex))
    with pytest.raises(ValueError, match="dimension 5"):
        B.retrieve(np.ones(5))


def test_reprs():
    rng = np.random.default_rng(4)
    P = np.sign(rng.standard_normal((20, 30)))
    assert "ModelA: 20 memories of 30 neurons" in repr(am.ModelA(P))
    assert "ModelB: 20 memories of dim 30 (float32), beta=2" in repr(am.ModelB(P, beta=2.0))
    assert "values of dim 3" in repr(am.ModelB(P, values=P[:, :3]))
    assert "ModelC: 20 memories of dim 30" in repr(am.ModelC(P))
    r = am.ModelB(P).retrieve_details(P[:5])
    assert repr(r).startswith("Retrieval(5 queries (5,), dim 30")
    assert "stop=" in repr(am.ModelB(P).retrieve_details(P[0]))


def test_per_call_beta_equals_a_model_built_with_it():
    rng = np.random.default_rng(5)
    X = unit(rng, 200, 12)
    q = X[:4] + 0.2 * rng.standard_normal((4, 12))
    a = am.ModelB(X, beta=1.0).retrieve_details(q, steps=3, beta=9.0, top_k=2)
    b = am.ModelB(X, beta=9.0).retrieve_details(q, steps=3, top_k=2)
    np.testing.assert_array_equal(a.states, b.states)
    np.testing.assert_array_equal(a.energy, b.energy)
    with pytest.raises(ValueError, match="beta"):
        am.ModelB(X).retrieve(q, beta=-1.0)


def test_progress_callback_and_its_exceptions():
    rng = np.random.default_rng(6)
    X = unit(rng, 20000, 32).astype(np.float32)
    B = am.ModelB(X, beta=4.0, threads=2)
    seen = []
    B.retrieve(X[:256], steps=40, step=0.1, progress=lambda *p: seen.append(p))
    assert seen and all(1 <= s <= 40 and m == 40 and 0 <= f <= 1 for s, m, f, _ in seen)

    class Stop(Exception):
        pass

    def stop(step, max_steps, fraction, active):
        raise Stop("enough")
    t = time.perf_counter()
    with pytest.raises(Stop, match="enough"):
        B.retrieve(X[:256], steps=10000, step=0.01, progress=stop)
    assert time.perf_counter() - t < 2.0
    with pytest.raises(TypeError, match="callable"):
        B.retrieve(X[:2], progress=3)


# Each a call of minutes (issue 23: energy and attention answered Ctrl-C 25-110 s late, simulate 80 s).
LONG_CALLS = {
    "retrieve": "B.retrieve(X[:64], steps=100000, step=0.01)",
    "energy_b": "B.energy(np.repeat(X[:64], 400, axis=0))",
    "attention": "B.attention(np.repeat(X[:64], 400, axis=0), top_k=3)",
    "energy_c": "am.ModelC(X, F='exp', beta=0.1).energy(np.repeat(X[:64], 400, axis=0))",
    "simulate": "am.Network(X[:3000].astype(np.float64), am.lagrangians.log_cosh(3.0), am.lagrangians.log_sum_exp(2.0),"
                " tau_f=1.0, tau_h=0.01).simulate(X[0].astype(np.float64), t_end=1e6, method='rk45')",
}


@pytest.mark.parametrize("call", list(LONG_CALLS))
def test_ctrl_c_stops_a_long_call_within_half_a_second(tmp_path, call):
    script = tmp_path / "long.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        import numpy as np
        import assocmem as am
        X = np.random.default_rng(0).standard_normal((200000, 64)).astype(np.float32)
        B = am.ModelB(X, beta=0.1)
        print("ready", flush=True)
        try:
            CALL
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(0)
        print("finished", flush=True)
    """).replace("CALL", LONG_CALLS[call]))
    env = dict(os.environ)
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        t = time.perf_counter()
        p.send_signal(signal.SIGINT)
        line = p.stdout.readline().strip()
        took = time.perf_counter() - t
        assert line == "interrupted"
        assert took < 0.5, f"Ctrl-C honoured after {took:.2f} s"
        assert p.wait(timeout=10) == 0
    finally:
        if p.poll() is None:
            p.kill()


def test_model_a_and_c_take_the_same_options():
    rng = np.random.default_rng(7)
    P = np.sign(rng.standard_normal((30, 64)))
    A = am.ModelA(P, F="power", n=3)
    cue = P[:4].copy()
    cue[:, 40:] = -1
    clamp = np.zeros(64, bool)
    clamp[:40] = True
    r = A.retrieve_details(cue, order="random", seed=3, clamp=clamp)
    np.testing.assert_array_equal(r.states[:, :40], cue[:, :40])
    assert set(r.stop.tolist()) <= {"converged", "max_steps"}
    with pytest.raises(TypeError):
        A.retrieve(cue, step=0.5)                # no such option for model A
    with pytest.raises(ValueError, match="order must be one of"):
        A.retrieve(cue, order="shuffle")
    C = am.ModelC(P)
    assert C.retrieve_details(P[0]).steps == am._core.retrieve_defaults("C")["max_steps"]


def test_from_store_maps_without_a_copy_and_reports_store_ids(tmp_path):
    rng = np.random.default_rng(8)
    K, d = 400_000, 64  # 102 MB of float32
    X = rng.standard_normal((K, d)).astype(np.float32)
    s = am.MemoryStore(d)
    s.append(X, np.arange(K, dtype=np.uint64) * 7 + 5)
    path = str(tmp_path / "m.amem")
    s.save(path)
    del s, X

    def anon_kib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))
    before = anon_kib()
    B = am.ModelB.from_store(path, beta=0.5)
    grew = anon_kib() - before
    assert B.store.mapped
    assert grew < 20_000, f"from_store took {grew} KiB of private memory for a 102 MB store"
    r = B.retrieve_details(np.ones((2, d), np.float32), top_k=3)
    assert np.all((r.top_ids - 5) % 7 == 0)        # ids from the store, not row numbers
    with pytest.raises(ValueError, match="in use by a model"):
        B.store.close()
    del B, r


def test_memory_store_as_a_context_manager(tmp_path):
    path = str(tmp_path / "s.amem")
    s = am.MemoryStore(4)
    s.append(np.eye(4, dtype=np.float32))
    s.save(path)
    with am.MemoryStore.open(path, access="map") as m:
        assert len(m) == 4 and m.mapped
        out = am.ModelB(m).retrieve(np.eye(4)[0])
    assert len(m) == 0  # closed
    assert out.shape == (4,)


def test_python_and_cli_share_the_defaults(tmp_path):
    rng = np.random.default_rng(9)
    X = unit(rng, 50, 6).astype(np.float32)
    q = (X[:3] + 0.1 * rng.standard_normal((3, 6))).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "q.npy", q)
    subprocess.run([CLI, "store", str(tmp_path / "x.npy"), str(tmp_path / "x.amem")], check=True, capture_output=True)
    for model in ("B", "C"):
        out, det = tmp_path / f"out{model}.npy", tmp_path / f"d{model}.json"
        subprocess.run([CLI, "recall", str(tmp_path / "x.amem"), str(tmp_path / "q.npy"), str(out), "--model", model,
                        "--details", str(det)], check=True, capture_output=True)
        py = (am.ModelB(X) if model == "B" else am.ModelC(X)).retrieve_details(q)
        np.testing.assert_allclose(np.load(out), py.states, atol=1e-6)
        steps = [r["steps"] for r in json.load(open(det))["results"]]
        assert steps == py.steps.tolist() and steps[0] == am._core.retrieve_defaults(model)["max_steps"]


def test_import_lagrangians_as_the_stubs_say():
    import assocmem.lagrangians as L
    assert L.log_sum_exp(2.0).name.startswith("log_sum_exp")
    from assocmem.lagrangians import spherical
    assert spherical().name == "spherical"


ALL_KERNELS = ("amx_bf16", "avx512_bf16", "avx512", "avx2", "sse4", "sve2", "sve", "neon", "generic")


def test_every_available_kernel_runs_and_agrees_with_numpy():
    """available_kernels() names what this CPU runs (best first, the portable table last); each, forced,
    computes one step of eq. (16) within the float32 forward error bound of the computation."""
    names = am.available_kernels()
    assert names and names[-1] == "generic" and set(names) <= set(ALL_KERNELS)
    rng = np.random.default_rng(5)
    K, d, beta = 300, 24, 4.0
    X = unit(rng, K, d).astype(np.float32)
    q = (X[:3] + 0.2 * rng.standard_normal((3, d))).astype(np.float32)
    ref = softmax_attention(X.astype(np.float64), X.astype(np.float64), q.astype(np.float64), beta)
    # Scores beta x.q carry beta gamma_d |x||q| each (x unit rows), the weights' relative error theta is
    # about that; the output sum w x / sum w (a convex combination of unit rows) moves by at most
    # 2 theta from the weights, gamma_K from the float32 sums and u_op where the bf16 tables round
    # queries and weights to bfloat16 (u_op = 2^-8) before their products; twice that as the bound.
    u = 2.0 ** -24
    gamma = lambda n: n * u / (1 - n * u)  # noqa: E731
    for k in names:
        m = am.ModelB(X, beta=beta, kernel=k)
        assert m.kernel == k
        u_op = 2.0 ** -8 if k in ("amx_bf16", "avx512_bf16") else 0.0
        theta = beta * (gamma(d + 2) + u_op) * np.linalg.norm(q, axis=1).max() + 8 * u
        bound = 2 * (2 * theta + gamma(K + 8) + u_op)
        got = m.retrieve(q, steps=1)
        assert np.abs(got - ref).max() <= bound, (k, np.abs(got - ref).max(), bound)


def test_a_kernel_this_cpu_lacks_is_a_clear_error():
    missing = [k for k in ALL_KERNELS if k not in am.available_kernels()]
    X = unit(np.random.default_rng(6), 10, 8)
    for k in missing:
        with pytest.raises(ValueError, match=f"kernel '{k}' is not available on this CPU.*available: "):
            am.ModelB(X, beta=1.0, kernel=k)
    with pytest.raises(ValueError, match="kernel"):
        am.ModelB(X, beta=1.0, kernel="avx9")


def test_every_default_beta_is_the_one_default():
    """Issue 24: the default beta was written in ~14 places. Every public signature with a beta reads
    assocmem::kDefaultBeta (assocmem._core.DEFAULT_BETA); so does the command line's --beta."""
    import inspect
    import os
    import subprocess
    import assocmem.distributed as ad
    import assocmem.torch as amt
    found = []
    for owner in (am.ModelA, am.ModelB, am.ModelC, ad.ShardedMemory, amt):
        for name, fn in inspect.getmembers(owner, callable):
            try:
                params = inspect.signature(fn).parameters
            except (TypeError, ValueError):
                continue
            if "beta" in params and params["beta"].default is not inspect.Parameter.empty \
                    and params["beta"].default is not None:
                found.append(f"{getattr(owner, '__name__', owner)}.{name}")
                assert params["beta"].default == am._core.DEFAULT_BETA, (owner, name, params["beta"].default)
    assert len(found) >= 10, found  # the models' constructors and from_store, the torch functions, the shards
    cli = os.environ.get("ASSOCMEM_CLI")
    if cli:
        for cmd in ("recall", "capacity"):
            out = subprocess.run([cli, cmd, "--help"], capture_output=True, text=True, timeout=60).stdout
            assert f"--beta FLOAT={am._core.DEFAULT_BETA:g}" in out, out
