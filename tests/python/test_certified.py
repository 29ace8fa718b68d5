"""Certified retrieval (issue 14) from Python and the command line: the returned state is within its
certified error of an independent float64 numpy evaluation of eq. (16) (model B) or one Euler step of
eq. (22) (model C), the top-k ids are the exact ones, small beta falls back to the exact scan, `assocmem
index` writes codes that recall, ModelB and ModelC find beside the store, and bad input is refused
clearly."""
import json
import subprocess

import numpy as np
import pytest

import assocmem as am


def exact_step(X, q, beta, mask=None):
    """eq. (16) in float64: (state, softmax weights)."""
    s = beta * (X.astype(np.float64) @ q.astype(np.float64))
    if mask is not None:
        s = np.where(mask, -np.inf, s)
    w = np.exp(s - s.max())
    w /= w.sum()
    return w @ X.astype(np.float64), w


@pytest.fixture(scope="module")
def memories():
    rng = np.random.default_rng(21)
    X = rng.standard_normal((20_000, 64)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Q = (X[:8] + 0.1 * rng.standard_normal((8, 64))).astype(np.float32)
    return X, Q


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_certified_state_is_within_its_bound(memories, dtype):
    X, Q = memories
    m = am.ModelB(X, beta=30.0, dtype=dtype)
    r = m.retrieve_details(Q, steps=1, top_k=4, certify=1e-4)
    assert m.codes_source == "built in memory"
    rows = m.store.to_array().astype(np.float64)  # as the store holds them (bfloat16 rounding included)
    exact = m.retrieve_details(Q, steps=1, top_k=4)
    for b in range(len(Q)):
        v, _ = exact_step(rows, Q[b], 30.0)
        assert np.linalg.norm(r.states[b] - v) <= r.state_error[b] + 2e-5
        assert r.discarded_weight[b] <= 1e-4
        # The last step's candidates (issue 23: not the top-k pass's): K where that step fell back.
        assert 0 < r.candidates[b] < 20_000 / 16 or (r.candidates[b] == 20_000 and r.fallback_steps[b] >= 1)
        assert (r.top_ids[b] == exact.top_ids[b]).all()
        np.testing.assert_allclose(r.top_weights[b], exact.top_weights[b], rtol=1e-4, atol=1e-6)
    # A query whose step had more than K / 16 candidates fell back to the exact scan; most did not.
    assert (r.fallback_steps == 0).sum() >= 6, r.fallback_steps
    # Without certify the same model answers exactly, with no certificate.
    assert exact.discarded_weight is None and exact.candidates is None


def test_small_beta_falls_back_and_equals_the_exact_scan(memories):
    X, Q = memories
    m = am.ModelB(X, beta=0.5)
    r = m.retrieve_details(Q[:2], steps=2, certify=1e-4, energy=False)  # 2 passes (energy would be a third)
    assert (r.fallback_steps == 2).all() and (r.candidates == 20_000).all() and (r.discarded_weight == 0).all()
    np.testing.assert_array_equal(r.states, m.retrieve(Q[:2], steps=2))


def test_refusals(memories):
    X, Q = memories
    m = am.ModelB(X[:100], beta=10.0)
    for eps in (0.0, -1e-3, 0.9, float("nan")):
        with pytest.raises(ValueError, match="certify: eps must be in"):
            m.retrieve(Q[0], certify=eps)
    kv = am.ModelB(X[:100], beta=10.0, values=X[:100, :8])
    with pytest.raises(ValueError, match="value store"):
        kv.retrieve(Q[0], certify=1e-3)


def run(cli, *args):
    return subprocess.run([cli, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_index_and_recall_certify(cli, memories, tmp_path):
    X, Q = memories
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "q.npy", Q)
    assert run(cli, "store", tmp_path / "x.npy", tmp_path / "x.amem").returncode == 0
    r = run(cli, "--json", "index", tmp_path / "x.amem")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["codes"] == str(tmp_path / "x.amem.codes") and j["fraction_of_float32_store"] < 0.30
    assert run(cli, "index", tmp_path / "x.amem", "--verify").returncode == 0
    # ModelB over the saved store finds the codes beside it.
    m = am.ModelB.from_store(tmp_path / "x.amem", beta=30.0)
    got = m.retrieve_details(Q, steps=1, certify=1e-4)
    assert m.codes_source == str(tmp_path / "x.amem.codes")
    # recall --certify: the same states, each query's certificate in --details.
    r = run(cli, "--json", "recall", tmp_path / "x.amem", tmp_path / "q.npy", tmp_path / "out.npy", "--beta", "30",
            "--steps", "1", "--certify", "1e-4", "--details", tmp_path / "d.json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["certified"]["codes"] == str(tmp_path / "x.amem.codes")
    assert summary["certified"]["max_discarded_weight"] <= 1e-4
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), got.states, atol=1e-6)
    details = json.loads((tmp_path / "d.json").read_text())["results"]
    for b, q in enumerate(details):
        v, _ = exact_step(X, Q[b], 30.0)
        c = q["certificate"]
        assert c["discarded_weight"] <= 1e-4 and c["fallback_steps"] in (0, 1)
        assert np.linalg.norm(np.load(tmp_path / "out.npy")[b] - v) <= c["state_error"] + 2e-5
    # Corrupted codes: refused, naming the file; codes of another store: refused.
    codes = tmp_path / "x.amem.codes"
    b = bytearray(codes.read_bytes())
    b[4096 + 100] ^= 1
    codes.write_bytes(bytes(b))
    r = run(cli, "recall", tmp_path / "x.amem", tmp_path / "q.npy", tmp_path / "o2.npy", "--certify", "1e-4")
    assert r.returncode != 0 and "payload checksum mismatch" in r.stderr and str(codes) in r.stderr
    assert not (tmp_path / "o2.npy").exists()
    np.save(tmp_path / "y.npy", X[::-1].copy())
    assert run(cli, "store", tmp_path / "y.npy", tmp_path / "y.amem").returncode == 0
    assert run(cli, "index", tmp_path / "x.amem").returncode == 0  # rebuilt
    r = run(cli, "index", tmp_path / "y.amem", "-o", codes, "--verify")
    assert r.returncode != 0 and "the store changed since they were built" in r.stderr
    # Codes at store time: `store --codes` writes them beside the new store; index --verify accepts them.
    r = run(cli, "--json", "store", tmp_path / "x.npy", tmp_path / "z.amem", "--codes")
    assert r.returncode == 0 and json.loads(r.stdout)["codes"] == str(tmp_path / "z.amem.codes"), r.stderr
    assert run(cli, "index", tmp_path / "z.amem", "--verify").returncode == 0
    r = run(cli, "--json", "recall", tmp_path / "z.amem", tmp_path / "q.npy", tmp_path / "z.npy", "--beta", "30",
            "--steps", "1", "--certify", "1e-4")
    assert json.loads(r.stdout)["certified"]["codes"] == str(tmp_path / "z.amem.codes")
    np.testing.assert_array_equal(np.load(tmp_path / "z.npy"), np.load(tmp_path / "out.npy"))
    np.save(tmp_path / "s.npy", np.sign(X[:10]).astype(np.int8))
    r = run(cli, "store", tmp_path / "s.npy", tmp_path / "s.amem", "--dtype", "bits", "--codes")
    assert r.returncode == 2 and "--codes" in r.stderr
    # Model C (F = exp) over the same store and codes: the states of ModelC, each query's certificate.
    mc = am.ModelC.from_store(tmp_path / "x.amem", F="exp", beta=30.0)
    want = mc.retrieve_details(Q, steps=1, step=0.5, certify=1e-4)
    assert mc.codes_source == str(tmp_path / "x.amem.codes")
    r = run(cli, "--json", "recall", tmp_path / "x.amem", tmp_path / "q.npy", tmp_path / "c.npy", "--model", "C",
            "--F", "exp", "--beta", "30", "--steps", "1", "--step", "0.5", "--certify", "1e-4", "--details",
            tmp_path / "dc.json")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), want.states)
    details = json.loads((tmp_path / "dc.json").read_text())["results"]
    for b, q in enumerate(details):
        assert q["certificate"]["state_error"] == pytest.approx(want.state_error[b])
        assert q["certificate"]["discarded_weight"] <= 1e-4
    # Model A and --values are refused with exit 2.
    for extra in (["--model", "A"], ["--values", tmp_path / "y.amem"]):
        r = run(cli, "recall", tmp_path / "x.amem", tmp_path / "q.npy", tmp_path / "o3.npy", *extra, "--certify", "1e-4")
        assert r.returncode == 2 and "--certify" in r.stderr, r.stderr


def test_codes_are_built_once_under_concurrent_calls(memories):
    """Threads asking for certified retrieval at once on a new model: one builds the codes, none deadlocks
    (the GIL is never held while waiting for the codes), all get the same answer."""
    import threading
    X, Q = memories
    m = am.ModelB(X, beta=30.0)
    out = [None] * 4

    def work(i):
        out[i] = m.retrieve(Q, steps=1, certify=1e-4)

    ts = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in ts), "deadlock"
    for o in out[1:]:
        np.testing.assert_array_equal(o, out[0])
    assert m.codes_source == "built in memory"


def exact_c_step(X, v, F, n, beta, step):
    """One Euler step of eq. (22) in float64 (alpha = 1): v + step (xi^T F'(xi v/|v|) - v)."""
    X = X.astype(np.float64)
    x = X @ (v.astype(np.float64) / np.linalg.norm(v))
    f = beta * 0 + np.exp(beta * x) if F == "exp" else np.where(x > 0, n * np.maximum(x, 0) ** (n - 1), 0.0)
    return v + step * (f @ X - v), f


@pytest.mark.parametrize("F,n,beta,eps", [("rectified", 3.0, 1.0, 1e-3), ("rectified", 2.0, 1.0, 0.1),
                                          ("exp", 3.0, 40.0, 1e-4)])
def test_model_c_certified_step_is_within_its_bound(F, n, beta, eps):
    """Memories mostly of negative overlap with the queries (rectified F: exactly zero contributions the
    screen skips), a few near each query; exp F on random directions, as model B."""
    rng = np.random.default_rng(5)
    d, K = 32, 20_000
    X = rng.standard_normal((K, d))
    if F == "rectified":
        X[:, 0] = -np.abs(X[:, 0]) - 4.0  # negative overlap with e_0 and its neighbours
        X[:40, 0] = 6.0 + rng.random(40)
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    Q = (X[:6] + 0.05 * rng.standard_normal((6, d))).astype(np.float32)
    m = am.ModelC(X, F=F, n=n, beta=beta)
    r = m.retrieve_details(Q, steps=1, step=0.2, certify=eps, energy=False)
    assert (r.fallback_steps == 0).all() and (r.candidates < K / 16).all(), (r.fallback_steps, r.candidates)
    exact = m.retrieve(Q, steps=1, step=0.2)
    for b in range(len(Q)):
        v, f = exact_c_step(X, Q[b], F, n, beta, 0.2)
        scale = np.linalg.norm(v)
        assert np.linalg.norm(r.states[b] - v) <= r.state_error[b] + 1e-5 * scale
        assert np.linalg.norm(exact[b] - v) <= 1e-4 * scale  # the test's own arithmetic
        assert r.discarded_weight[b] <= eps
    if F == "rectified":  # most memories overlap negatively: the screen keeps few of the K
        assert (r.candidates <= 200).all(), r.candidates
    with pytest.raises(ValueError, match="certify: model C needs F"):
        am.ModelC(X[:100], F="power", n=3).retrieve(Q[0], certify=1e-3)


@pytest.mark.skipif(not am.ModelB(np.eye(4, dtype=np.float32), 1.0).has_ann, reason="built without FAISS")
def test_approximate_retrieval_over_faiss_candidates(memories):
    """approximate=k rescores exactly the k best candidates of an ANN index: on well separated memories and
    near cues it finds the exact top memory and nearly all its weight (a measured recall, no bound: with
    cues at 0.8 of a memory's norm away, IVF missed 1 of 8 nearest memories at 16 probes); index_candidates
    builds IVF or HNSW; bad input is refused."""
    X, _ = memories
    Q = (X[100:108] + 0.02 * np.random.default_rng(8).standard_normal((8, X.shape[1]))).astype(np.float32)
    m = am.ModelB(X, beta=30.0)
    assert m.candidates_index is None
    exact = m.retrieve_details(Q, steps=1, top_k=5)
    r = m.retrieve_details(Q, steps=1, top_k=5, approximate=200)
    info = m.candidates_index
    assert info["kind"] == "ivf" and info["probes"] == 16 and 0 < info["bytes"] < X.nbytes / 2  # 8-bit codes
    assert r.discarded_weight is None  # no certificate
    assert (r.top_ids[:, 0] == exact.top_ids[:, 0]).all()
    assert (r.top_weights[:, 0] >= 0.95 * exact.top_weights[:, 0]).all()
    assert np.abs(r.states - exact.states).max() < 0.05
    assert m.index_candidates("hnsw", links=16) == {"kind": "hnsw", "links": 16, "ef_search": 64,
                                                    "bytes": m.candidates_index["bytes"]}
    h = m.retrieve_details(Q, steps=1, top_k=1, approximate=50)
    assert (h.top_ids[:, 0] == exact.top_ids[:, 0]).all()
    with pytest.raises(ValueError, match="approximate: not with certify"):
        m.retrieve(Q[0], approximate=10, certify=1e-3)
    for bad in (0, -3, 2.5, True):
        with pytest.raises((ValueError, TypeError), match="approximate"):
            m.retrieve(Q[0], approximate=bad)
    with pytest.raises(ValueError, match="kind must be 'ivf' or 'hnsw'"):
        m.index_candidates("lsh")
    with pytest.raises(ValueError, match="value store"):
        am.ModelB(X[:100], beta=10.0, values=X[:100, :8]).retrieve(Q[0], approximate=10)


@pytest.mark.skipif(not am.ModelB(np.eye(4, dtype=np.float32), 1.0).has_ann, reason="built without FAISS")
def test_rebuilding_the_index_while_retrieving(memories):
    """index_candidates() while other threads retrieve with approximate=: a running retrieval keeps the
    index it started with (never freed under it); every answer is the exact top memory here."""
    import threading
    X, _ = memories
    X = X[:3000]
    Q = (X[:4] + 0.02 * np.random.default_rng(9).standard_normal((4, X.shape[1]))).astype(np.float32)
    m = am.ModelB(X, beta=30.0)
    m.index_candidates("ivf", lists=40, probes=8)
    tops, errors = [], []

    def work():
        try:
            for _ in range(30):
                tops.append(m.retrieve_details(Q, steps=1, top_k=1, energy=False, approximate=100).top_ids[:, 0])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=work, daemon=True) for _ in range(2)]
    for t in ts:
        t.start()
    for kind in ("hnsw", "ivf", "hnsw"):
        m.index_candidates(kind, lists=40, probes=8, links=8)
    for t in ts:
        t.join(timeout=120)
    assert not errors and len(tops) == 60
    for t in tops:
        assert (t == np.arange(4)).all()
