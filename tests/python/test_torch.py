"""assocmem.torch.hopfield_retrieve against PyTorch's own autograd of the same formula (softmax attention
built from torch ops): forward and the gradients of queries, keys, values and beta, for values or not,
masks, steps 1..5, large and small beta, batch dimensions; gradcheck in float64; bad input; and the
memory claim (no queries x memories score matrix)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch  # python3-torch (scripts/setup)

import assocmem as am
import assocmem._functional as functional  # the batched call the modules build on
import assocmem.torch as at


def reference(q, k, v, beta, mask, steps):
    """softmax(beta q k^T) v with masked memories at -inf, steps - 1 updates on the keys first: torch ops."""
    v = k if v is None else v
    shape = q.shape[:-1]
    q = q.reshape(-1, q.shape[-1])
    m = None
    if mask is not None:
        m = torch.as_tensor(mask).reshape(-1, k.shape[0])

    def step(x, vals):
        s = beta * x @ k.T
        if m is not None:
            s = s.masked_fill(m, float("-inf"))
        return torch.softmax(s, dim=-1) @ vals
    for _ in range(steps - 1):
        q = step(q, k)
    out = step(q, v)
    return out.reshape(*shape, out.shape[-1])


def make(dtype, n=6, K=300, d=16, dv=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, d, generator=g, dtype=dtype)
    k = torch.randn(K, d, generator=g, dtype=dtype) / d ** 0.5
    v = torch.randn(K, dv, generator=g, dtype=dtype)
    return q, k, v


@pytest.mark.parametrize("beta", [0.1, 2.0, 40.0])
@pytest.mark.parametrize("steps", [1, 2, 5])
@pytest.mark.parametrize("with_values", [True, False])
@pytest.mark.parametrize("mask_kind", [None, "shared", "per-query"])
def test_forward_and_gradients_equal_torch_autograd(beta, steps, with_values, mask_kind):
    q0, k0, v0 = make(torch.float32)
    K = k0.shape[0]
    mask = None
    if mask_kind == "shared":
        mask = torch.zeros(K, dtype=torch.bool)
        mask[::3] = True
    elif mask_kind == "per-query":
        mask = torch.rand(q0.shape[0], K, generator=torch.Generator().manual_seed(1)) < 0.5
    grads = []
    for fn in (lambda q, k, v, b: at.hopfield_retrieve(q, k, v, beta=b, mask=mask, steps=steps),
               lambda q, k, v, b: reference(q, k, v, b, mask, steps)):
        q, k, v = (t.clone().requires_grad_(True) for t in (q0, k0, v0))
        b = torch.tensor(beta, requires_grad=True)
        out = fn(q, k, v if with_values else None, b)
        w = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
        (out * w).sum().backward()
        grads.append((out.detach(), q.grad, k.grad, v.grad if with_values else None, b.grad))
    ours, ref = grads
    scale = lambda t: 1e-4 * (1 + t.abs().max().item())  # noqa: E731  float32 tolerances
    for name, a, r in zip(("out", "dq", "dk", "dv", "dbeta"), ours, ref):
        if r is None:
            continue
        assert torch.allclose(a, r, rtol=1e-4, atol=scale(r)), f"{name}: max diff {(a - r).abs().max().item():.3g}"


def test_batch_dimensions_and_float64():
    q, k, v = make(torch.float64, n=12)
    qb = q.reshape(2, 3, 2, 16)
    mask = torch.rand(2, 3, 2, k.shape[0], generator=torch.Generator().manual_seed(2)) < 0.3
    out = at.hopfield_retrieve(qb, k, v, beta=3.0, mask=mask)
    assert out.shape == (2, 3, 2, 5) and out.dtype == torch.float64
    assert torch.allclose(out, reference(qb, k, v, 3.0, mask, 1), atol=1e-12)


def test_gradcheck_in_float64():
    q, k, v = make(torch.float64, n=3, K=23, d=4, dv=3)
    mask = torch.zeros(3, 23, dtype=torch.bool)
    mask[0, :5] = True
    mask[2, 10:] = True
    args = tuple(t.clone().requires_grad_(True) for t in (q, k, v)) + (torch.tensor(1.3, dtype=torch.float64,
                                                                               requires_grad=True),)
    for steps in (1, 3):
        assert torch.autograd.gradcheck(
            lambda q, k, v, b: at.hopfield_retrieve(q, k, v, beta=b, mask=mask, steps=steps), args)
        assert torch.autograd.gradcheck(lambda q, k, b: at.hopfield_retrieve(q, k, beta=b, steps=steps),
                                        (args[0], args[1], args[3]))


def test_batched_attention_equals_one_call_per_element_and_gradchecks():
    """The layers' batched fused attention (one graph node for a batch of independent attentions, each
    with its own keys, values, mask and beta): equal to hopfield_retrieve per element (the same kernels:
    float32 exactly, with one thread per element), and gradcheck in float64 with per-element betas, masks
    of either shape, and values = keys."""
    g = torch.Generator().manual_seed(3)
    E, n, K, d, dv = 4, 3, 40, 6, 5
    q = torch.randn(E, n, d, generator=g)
    k = torch.randn(E, K, d, generator=g) / d ** 0.5
    v = torch.randn(E, K, dv, generator=g)
    betas = torch.tensor([0.5, 1.0, 2.0, 7.0])
    mask = torch.rand(E, n, K, generator=g) < 0.3
    for vals in (v, None):
        out = functional._attention_batch(q, k, vals, betas, mask, threads=2)
        for e in range(E):
            one = at.hopfield_retrieve(q[e], k[e], None if vals is None else vals[e], beta=float(betas[e]),
                                       mask=mask[e], threads=1)
            assert torch.equal(out[e], one), e
    q64, k64, v64, b64 = (t.double().requires_grad_(True) for t in (q, k, v, betas))
    def dropped(q, k, v, b, m):  # one fixed draw (seeded from torch's generator): a function of the inputs
        torch.manual_seed(5)
        return functional._attention_batch(q, k, v, b, m, dropout=0.3)
    for m in (mask, mask[:, 0]):
        assert torch.autograd.gradcheck(lambda q, k, v, b: functional._attention_batch(q, k, v, b, m), (q64, k64, v64, b64))
        assert torch.autograd.gradcheck(lambda q, k, v, b: dropped(q, k, v, b, m), (q64, k64, v64, b64))
        assert torch.autograd.gradcheck(lambda q, k, b: functional._attention_batch(q, k, None, b, m), (q64, k64, b64))
    # An additive bias of the scores (per query, or one row per element), differentiable; -inf entries.
    for shape in ((E, n, K), (E, K)):
        bias = torch.randn(*shape, generator=g, dtype=torch.float64)
        bias[..., ::7] = float("-inf")
        b64 = bias.requires_grad_(True)
        assert torch.autograd.gradcheck(lambda q, k, v, bb: functional._attention_batch(q, k, v, bb, bias=b64),
                                        (q64, k64, v64, betas.double().requires_grad_(True)))
        assert torch.autograd.gradcheck(lambda bb: functional._attention_batch(q64, k64, v64, betas.double(), bias=bb), (b64,))
        ref = torch.softmax(betas.double().view(E, 1, 1) * q64 @ k64.transpose(1, 2) +
                            (bias if bias.dim() == 3 else bias[:, None]), dim=-1) @ v64
        torch.testing.assert_close(functional._attention_batch(q64, k64, v64, betas.double(), bias=bias), ref, rtol=1e-12,
                                   atol=1e-12)
    with pytest.raises(ValueError, match="betas must have shape"):
        functional._attention_batch(q, k, v, betas[:2])
    with pytest.raises(ValueError, match="mask must have shape"):
        functional._attention_batch(q, k, v, betas, mask[:, :, :5])
    bad = k.clone()
    bad[2, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="batch element 2: keys contains NaN"):
        functional._attention_batch(q, bad, v, betas)



def test_association_matrices_are_the_softmax_and_gradcheck():
    """The layers' association matrices (need_weights) from the fused kernels: equal in float64 to torch's
    softmax of beta q k^T + bias with masked memories 0, rows summing to one in float32, their product with
    the keys the fused attention's output, and gradcheck in float64 (queries, keys, betas, the bias) with
    masks of either shape and bias rows per query or per element."""
    g = torch.Generator().manual_seed(12)
    E, n, K, d = 3, 4, 37, 5
    q, k = (torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_(True) for s in ((E, n, d), (E, K, d)))
    betas = (torch.rand(E, generator=g, dtype=torch.float64) + 0.5).requires_grad_(True)
    mask = torch.rand(E, n, K, generator=g) < 0.3
    for m in (None, mask, mask[:, 0]):
        for bshape in (None, (E, n, K), (E, K)):
            bias = None if bshape is None else torch.randn(*bshape, generator=g, dtype=torch.float64)
            if bias is not None:
                bias[..., ::6] = float("-inf")
                bias.requires_grad_(True)
            P = functional._association_batch(q, k, betas, m, bias=bias)
            s = betas.view(E, 1, 1) * q @ k.transpose(1, 2)
            if bias is not None:
                s = s + (bias if bias.dim() == 3 else bias[:, None])
            if m is not None:
                s = s.masked_fill(m if m.dim() == 3 else m[:, None], float("-inf"))
            torch.testing.assert_close(P, torch.softmax(s, -1), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(P @ k, functional._attention_batch(q, k, None, betas, m, bias=bias),
                                       rtol=1e-12, atol=1e-12)
            args = (q, k, betas) + (() if bias is None else (bias,))
            assert torch.autograd.gradcheck(
                lambda q, k, b, *bb: functional._association_batch(q, k, b, m, bias=bb[0] if bb else None), args)
    P32 = functional._association_batch(q.detach().float(), k.detach().float(), betas.detach().float(), mask)
    assert P32.dtype == torch.float32
    torch.testing.assert_close(P32.sum(-1), torch.ones(E, n), rtol=0, atol=K * 2.0 ** -23)
    with pytest.raises(TypeError, match="float32 or float64"):
        functional._association_batch(q.detach(), k.detach().bfloat16(), betas.detach())

def test_batched_attention_with_layer_norms_of_the_memories():
    """Layer norms of the key and value rows fused into the batched attention (what Hopfield's stored-pattern
    and projection LayerNorms become in the input space): equal in float64 to torch's layer_norm followed by
    the attention, and gradcheck in float64 - raw rows, the norms' weights and biases, queries, betas - for
    separate keys and values, one array under two norms (Hopfield((Y, state, Y))), the values being the keys
    (v None: one norm), norms without affine parameters, a mask and dropout (one fixed draw)."""
    g = torch.Generator().manual_seed(8)
    E, n, K, d, dv, eps = 3, 4, 40, 5, 6, 1e-3
    q, y, z = (torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_(True)
               for s in ((E, n, d), (E, K, d), (E, K, dv)))
    kw, kb, vw, vb, uw, ub = (torch.randn(c, generator=g, dtype=torch.float64).requires_grad_(True)
                              for c in (d, d, dv, dv, d, d))
    betas = (torch.rand(E, generator=g, dtype=torch.float64) + 0.5).requires_grad_(True)
    mask = torch.rand(E, n, K, generator=g) < 0.3

    def ref(q, y, z, b, kn, vn, m=None):
        k = torch.nn.functional.layer_norm(y, (d,), kn[0], kn[1], eps)
        v = k if z is None else torch.nn.functional.layer_norm(z, (z.shape[-1],), vn[0], vn[1], eps)
        s = b.view(-1, 1, 1) * q @ k.transpose(1, 2)
        return torch.softmax(s if m is None else s.masked_fill(m, float("-inf")), -1) @ v

    def fused(q, y, z, b, kn, vn, m=None, dropout=0.0):
        torch.manual_seed(5)  # the dropout draw: one fixed function of the inputs
        return functional._attention_batch(q, y, z, b, m, dropout=dropout, key_norm=(*kn, eps),
                                           value_norm=None if vn is None else (*vn, eps))
    cases = {"separate": (z, (kw, kb), (vw, vb)), "one array, two norms": (y, (kw, kb), (uw, ub)),
             "values are the keys": (None, (kw, kb), None), "no affine": (z, (None, None), (None, None))}
    for name, (vals, kn, vn) in cases.items():
        for m in (None, mask):
            torch.testing.assert_close(fused(q, y, vals, betas, kn, vn, m), ref(q, y, vals, betas, kn, vn, m),
                                       rtol=1e-12, atol=1e-12, msg=name)
        params = [t for t in (*kn, *(vn or ())) if t is not None]
        if vals is z:
            inputs = (q, y, z, betas, *params)
            def f(q, y, z, b, *p, m=None, dropout=0.0):
                return fused(q, y, z, b, tuple(p[:2]) if p else (None, None), tuple(p[2:]) if p else (None, None),
                             m, dropout)
        else:
            inputs = (q, y, betas, *params)
            def f(q, y, b, *p, m=None, dropout=0.0, vals=vals):
                return fused(q, y, None if vals is None else y, b, tuple(p[:2]), tuple(p[2:]) or None, m, dropout)
        assert torch.autograd.gradcheck(f, inputs), name
        assert torch.autograd.gradcheck(lambda *x: f(*x, m=mask, dropout=0.3), inputs), name
    with pytest.raises(ValueError, match="key_norm eps must be > 0"):
        functional._attention_batch(q, y, z, betas, key_norm=(kw, kb, 0.0))
    with pytest.raises(ValueError, match=r"value_norm weight must be a torch.float64 tensor of shape \(6,\)"):
        functional._attention_batch(q, y, z, betas, value_norm=(kw, None, eps))

def test_learns_a_memory_by_gradient_descent():
    """Memory learning: stored patterns, trained by gradient descent through the retrieval on a
    reconstruction loss, come to reconstruct their cues (the loss falls below 1% of its start)."""
    g = torch.Generator().manual_seed(3)
    targets = torch.randn(4, 8, generator=g)
    keys = (0.1 * torch.randn(4, 8, generator=g)).requires_grad_(True)
    opt = torch.optim.Adam([keys], lr=0.05)
    losses = []
    for _ in range(600):
        opt.zero_grad()
        loss = ((at.hopfield_retrieve(targets, keys, beta=4.0) - targets) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.01 * losses[0], (losses[0], losses[-1])


def test_bad_input_is_a_clear_error():
    q, k, v = make(torch.float32)
    with pytest.raises(TypeError, match="queries must be float32 or bfloat16, got torch.int32"):
        at.hopfield_retrieve(q.to(torch.int32), k)
    with pytest.raises(TypeError, match="queries must be float64, got torch.float32"):
        at.hopfield_retrieve(q, k.double())
    with pytest.raises(TypeError, match="keys must be float32 or float64 or bfloat16"):
        at.hopfield_retrieve(q, k.half())
    with pytest.raises(TypeError, match="values must be bfloat16"):
        at.hopfield_retrieve(q, k.bfloat16(), v)
    with pytest.raises(ValueError, match="CPU tensors"):
        at.hopfield_retrieve(q.to("meta"), k)
    with pytest.raises(ValueError, match="share d"):
        at.hopfield_retrieve(q[:, :3], k)
    with pytest.raises(ValueError, match="values must be"):
        at.hopfield_retrieve(q, k, v[:7])
    with pytest.raises(ValueError, match="mask must have shape"):
        at.hopfield_retrieve(q, k, mask=torch.zeros(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="leaves out every memory"):
        at.hopfield_retrieve(q, k, mask=torch.ones(k.shape[0], dtype=torch.bool))
    with pytest.raises(ValueError, match="beta"):
        at.hopfield_retrieve(q, k, beta=-1.0)
    with pytest.raises(ValueError, match="steps"):
        at.hopfield_retrieve(q, k, steps=0)
    with pytest.raises(ValueError, match="NaN"):
        at.hopfield_retrieve(q * float("nan"), k)
    # Issue 23: masks were cast to uint8 (0.5 and 256 left the memory in); absurd step counts looped;
    # beta = 1e38 gave NaN. Masks are bool or 0/1, steps a whole number <= 10^6, scores within range.
    K = k.shape[0]
    for odd in (0.5, 256.0, float("nan"), float("-inf"), 2):
        with pytest.raises(ValueError, match="a mask holds bool or 0/1"):
            at.hopfield_retrieve(q, k, mask=torch.full((K,), odd))
    ones = torch.zeros(K, dtype=torch.int64)
    ones[3] = 1
    torch.testing.assert_close(at.hopfield_retrieve(q, k, mask=ones),
                               at.hopfield_retrieve(q, k, mask=ones.bool()), rtol=0, atol=0)
    for steps, err in ((1e38, ValueError), (1.5, ValueError), (True, TypeError), ("3", TypeError)):
        with pytest.raises(err, match="steps must be"):
            at.hopfield_retrieve(q, k, steps=steps)
        with pytest.raises(err, match="steps must be"):
            at.spherical_retrieve(q, k, steps=steps)
    with pytest.raises(ValueError, match="exceeds the float32 range of the scores"):
        at.hopfield_retrieve(q, k, beta=1e38)
    with pytest.raises(ValueError, match="exceeds the float64 range"):
        at.hopfield_retrieve(q.double(), k.double(), beta=1e307)


def test_worker_pools_give_the_same_results_and_torch_chooses_openmp():
    """The layers' calls and the engines run their workers in OpenMP's team (PyTorch's threads) or on
    assocmem's own threads: the same chunks, so the same bits (forward, every gradient, a ModelB batch).
    Importing assocmem.torch chooses 'openmp' where PyTorch runs on OpenMP, unless a pool was set before
    (fresh processes); a pool this build lacks is a ValueError naming it. A child forked after a call on
    OpenMP's team finishes its own calls (on assocmem's threads)."""
    g = torch.Generator().manual_seed(11)
    E, n, K, d = 3, 5, 3000, 16
    q = torch.randn(E, n, d, generator=g).requires_grad_(True)
    k = (torch.randn(E, K, d, generator=g) / d ** 0.5).requires_grad_(True)
    betas = torch.tensor([0.5, 2.0, 4.0])
    store = k.detach()[0].numpy()

    def run():
        q.grad = k.grad = None
        out = functional._attention_batch(q, k, None, betas, threads=2)
        (out * out).sum().backward()
        r = am.ModelB(store, beta=3.0, threads=2).retrieve(q.detach()[0].numpy())
        return [out.detach().clone(), q.grad.clone(), k.grad.clone(), torch.from_numpy(r.copy())]

    pools = am.worker_pools()
    assert pools[0] == "threads"
    before, torch_threads = am.worker_pool(), torch.get_num_threads()
    torch.set_num_threads(2)  # OpenMP's team as large as the calls' 2 workers (larger calls are declined)
    try:
        results = {}
        for pool in pools:
            am.set_worker_pool(pool)
            assert am.worker_pool() == pool
            results[pool] = run()
        for pool in pools[1:]:
            for a, b in zip(results["threads"], results[pool]):
                assert torch.equal(a, b), pool
        with pytest.raises(ValueError, match="pool must be one of.*not 'tbb'"):
            am.set_worker_pool("tbb")
        with pytest.raises(TypeError, match="pool must be a str"):
            am.set_worker_pool(2)
        assert am.worker_pool() == pools[-1]
    finally:
        am.set_worker_pool(before)
        torch.set_num_threads(torch_threads)

    on_openmp = "parallel backend: OpenMP" in torch.__config__.parallel_info()
    expect = "openmp" if on_openmp and "openmp" in pools else "threads"
    for first, want in (("", expect), ("am.set_worker_pool('threads'); ", "threads")):
        r = subprocess.run([sys.executable, "-c", f"import assocmem as am; {first}import assocmem.torch; "
                            "print(am.worker_pool())"], capture_output=True, text=True, timeout=120, env=dict(os.environ))
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == want, (first, r.stdout)

    # OpenMP's team does not survive fork(): a child forked after a call on it runs on assocmem's own threads
    # (with the team it would wait forever for threads that exist only in the parent), the same results.
    script = textwrap.dedent("""
        import os, torch
        import assocmem as am
        from assocmem import _functional
        torch.set_num_threads(2)
        g = torch.Generator().manual_seed(0)
        q, k, b = torch.randn(4, 16, 64, generator=g), torch.randn(4, 1000, 64, generator=g), torch.ones(4)
        out = _functional._attention_batch(q, k, None, b, threads=2)
        pid = os.fork()
        if pid == 0:
            same = torch.equal(out, _functional._attention_batch(q, k, None, b, threads=2))
            print("child", am.worker_pool(), same, flush=True)
            os._exit(0)
        print("parent", am.worker_pool(), os.waitpid(pid, 0)[1], flush=True)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split("\n")[:2]) == sorted(["child threads True", f"parent {expect} 0"]), r.stdout


def test_no_score_matrix_is_stored(tmp_path):
    """Forward and backward at K = 200,000 memories and 256 queries: the (queries x memories) scores would
    be 205 MB in float32 (torch's own autograd keeps two such matrices); the peak grows by less than the
    gradients dK and dV (51 MB each) plus a margin."""
    script = tmp_path / "mem.py"
    script.write_text(textwrap.dedent("""
        import resource, torch
        import assocmem.torch as at
        g = torch.Generator().manual_seed(0)
        K, n, d = 200_000, 256, 64
        k = (torch.randn(K, d, generator=g) / 8).requires_grad_(True)
        q = torch.randn(n, d, generator=g).requires_grad_(True)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = at.hopfield_retrieve(q, k, beta=2.0)
        out.sum().backward()
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(grew // 1024)
    """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    grew_mb = int(r.stdout.strip())
    assert grew_mb < 150, f"peak memory grew by {grew_mb} MB"


def energy_reference(v, k, beta, mask):
    s = beta * v @ k.T
    if mask is not None:
        s = s.masked_fill(torch.as_tensor(mask), float("-inf"))
    return 0.5 * (v * v).sum(-1) - torch.logsumexp(s, dim=-1) / beta


@pytest.mark.parametrize("beta", [0.2, 3.0, 60.0])
@pytest.mark.parametrize("masked", [False, True])
def test_energy_and_its_gradients_equal_torch_autograd(beta, masked):
    q0, k0, _ = make(torch.float32)
    mask = (torch.rand(q0.shape[0], k0.shape[0], generator=torch.Generator().manual_seed(4)) < 0.4) if masked else None
    res = []
    for fn in (lambda v, k, b: at.hopfield_energy(v, k, beta=b, mask=mask),
               lambda v, k, b: energy_reference(v, k, b, mask)):
        v, k = q0.clone().requires_grad_(True), k0.clone().requires_grad_(True)
        b = torch.tensor(beta, requires_grad=True)
        e = fn(v, k, b)
        (e * torch.linspace(0.5, 2, e.numel())).sum().backward()
        res.append((e.detach(), v.grad, k.grad, b.grad))
    for name, a, r in zip(("E", "dv", "dk", "dbeta"), *res):
        assert torch.allclose(a, r, rtol=1e-4, atol=1e-4 * (1 + r.abs().max().item())), \
            f"{name}: max diff {(a - r).abs().max().item():.3g}"


def test_the_update_is_gradient_descent_on_the_energy():
    """Eq. (16) is v <- v - dE/dv (eq. 13): the retrieval equals the state minus the energy's gradient."""
    q, k, _ = make(torch.float64, n=5)
    v = q.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(at.hopfield_energy(v, k, beta=2.5).sum(), v)
    assert torch.allclose(at.hopfield_retrieve(q, k, beta=2.5), q - grad, atol=1e-12)


def test_energy_gradcheck_in_float64():
    q, k, _ = make(torch.float64, n=3, K=19, d=4)
    args = (q.clone().requires_grad_(True), k.clone().requires_grad_(True),
            torch.tensor(0.8, dtype=torch.float64, requires_grad=True))
    mask = torch.zeros(19, dtype=torch.bool)
    mask[3] = True
    assert torch.autograd.gradcheck(lambda v, k, b: at.hopfield_energy(v, k, beta=b, mask=mask), args)


def test_implicit_gradients_equal_unrolled_ones_at_a_fixed_point():
    """implicit=True (adjoint of the fixed point) gives the gradients of backpropagating through the
    converged updates, for keys, values and beta; the queries get none (the fixed point does not depend
    on the start)."""
    g = torch.Generator().manual_seed(5)
    k0 = torch.randn(50, 6, generator=g, dtype=torch.float64)
    v0 = torch.randn(50, 3, generator=g, dtype=torch.float64)
    q = (k0[:4] + 0.2 * torch.randn(4, 6, generator=g, dtype=torch.float64)).requires_grad_(True)
    res = []
    for implicit in (False, True):
        k, v = k0.clone().requires_grad_(True), v0.clone().requires_grad_(True)
        b = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
        out = at.hopfield_retrieve(q, k, v, beta=b, steps=80, implicit=implicit, fixed_point_tol=1e-13)
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).reshape(out.shape)).sum().backward()
        res.append((out.detach(), k.grad, v.grad, b.grad))
    for name, a, r in zip(("out", "dk", "dv", "dbeta"), *res):
        assert torch.allclose(a, r, atol=1e-9), f"{name}: {(a - r).abs().max().item():.3g}"
    assert q.grad is not None and q.grad.abs().max() < 1e-8  # unrolled: the start barely matters
    with pytest.warns(RuntimeWarning, match="no fixed point"):
        at.hopfield_retrieve(q.detach(), k0.requires_grad_(True), v0, beta=0.5, steps=2, implicit=True,
                             fixed_point_tol=1e-15)


def test_implicit_fixed_point_with_a_mask_per_query_and_its_errors():
    """The implicit path's updates run in C++ (attention_fixed_point), each query with its own mask row and
    stopping on its own: the same output and gradients as the unrolled updates with the same mask."""
    g = torch.Generator().manual_seed(9)
    k0 = torch.randn(40, 5, generator=g, dtype=torch.float64)
    q = k0[:6] + 0.5 * torch.randn(6, 5, generator=g, dtype=torch.float64)
    q[2] *= 0.05  # near the mean: converges later than the others
    mask = torch.rand(6, 40, generator=g) < 0.3
    mask[torch.arange(6), torch.arange(6)] = False
    res = []
    for implicit in (False, True):
        k = k0.clone().requires_grad_(True)
        out = at.hopfield_retrieve(q, k, beta=2.0, mask=mask, steps=120, implicit=implicit, fixed_point_tol=1e-13)
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).reshape(out.shape)).sum().backward()
        res.append((out.detach(), k.grad))
    for name, a, r in zip(("out", "dk"), *res):
        assert torch.allclose(a, r, atol=1e-9), f"{name}: {(a - r).abs().max().item():.3g}"
    with pytest.raises(ValueError, match="fixed_point_tol must be finite and >= 0"):
        at.hopfield_retrieve(q, k0, steps=3, implicit=True, fixed_point_tol=-1.0)
    with pytest.raises(ValueError, match="alpha must be finite and >= 0"):
        at.spherical_retrieve(q, k0, alpha=-0.5, steps=2)
    with pytest.raises(ValueError, match="step must be finite and > 0"):
        at.spherical_retrieve(q, k0, step=0.0, steps=2)
    z = q.clone()
    z[4] = 0
    with pytest.raises(ValueError, match="state 4 is zero"):
        at.spherical_retrieve(z, k0, steps=2)


def test_large_gradients_reuse_freed_buffers_and_empty_cache_releases_them():
    """Gradients of 32 MB and more come from recently freed buffers (a fresh mapping is zero-filled by the
    kernel on every call): a recycled buffer gets every entry written (masked memories' zeros included),
    at most 4 buffers are kept, and empty_cache frees them."""
    from assocmem._functional import _attention_batch
    at.empty_cache()
    g = torch.Generator().manual_seed(11)
    k = torch.randn(2, 70000, 64, generator=g).requires_grad_(True)  # a 35.8 MB gradient
    q1, q2 = torch.randn(2, 8, 64, generator=g), torch.randn(2, 8, 64, generator=g)
    mask = torch.zeros(2, 70000, dtype=torch.bool)
    mask[:, 5000:9000] = True

    def grad(q, m):
        k.grad = None
        (_attention_batch(q, k, None, torch.ones(2), m) * torch.linspace(-1, 1, 64)).sum().backward()
        return k.grad
    first = grad(q1, None)
    ptr, nbytes = first.data_ptr(), first.numel() * 4
    del first
    k.grad = None
    assert at.memory_reserved() == nbytes
    second = grad(q2, mask)
    assert second.data_ptr() == ptr and at.memory_reserved() == 0  # the freed buffer, taken again
    assert at.empty_cache() == 0
    fresh = grad(q2, mask).clone()  # the clone is torch's own memory
    assert torch.equal(second, fresh) and (second[:, 5000:9000] == 0).all()
    del second
    k.grad = None
    many = []
    for _ in range(5):
        many.append(grad(q1, None))
    k.grad = None
    del many
    assert at.memory_reserved() == 4 * nbytes  # the 5th was freed
    assert at.empty_cache() == 4 * nbytes and at.memory_reserved() == 0


def interaction(F, n, beta):
    """F and F' from torch ops (models A and C's interaction functions)."""
    if F == "power":
        return lambda x: x ** n
    if F == "rectified":
        return lambda x: torch.relu(x) ** n
    return lambda x: torch.exp(beta * x) / beta


def spherical_reference(v, X, F, n, beta, alpha, step, steps, mask):
    """Euler steps of eq. (22) from torch ops; f = F' by torch's autograd of F (an independent derivative,
    kept differentiable with create_graph). v must require grad."""
    G = interaction(F, n, beta)
    for _ in range(steps):
        s = (v / v.norm(dim=-1, keepdim=True)) @ X.T
        (f,) = torch.autograd.grad(G(s).sum(), s, create_graph=True)
        if mask is not None:
            f = f.masked_fill(torch.as_tensor(mask), 0.0)
        v = v + step * (f @ X - alpha * v)
    return v


def spherical_energy_reference(v, X, F, n, beta, mask):
    e = interaction(F, n, beta)((v / v.norm(dim=-1, keepdim=True)) @ X.T)
    if mask is not None:
        e = e.masked_fill(torch.as_tensor(mask), 0.0)
    return -e.sum(-1)


@pytest.mark.parametrize("F,n,beta", [("rectified", 3, 1.0), ("power", 2, 1.0), ("exp", 2, 1.5)])
@pytest.mark.parametrize("masked", [False, True])
def test_model_c_functions_equal_torch_and_the_engine(F, n, beta, masked):
    g = torch.Generator().manual_seed(6)
    X = torch.randn(60, 8, generator=g, dtype=torch.float64)
    v0 = torch.randn(5, 8, generator=g, dtype=torch.float64)
    mask = (torch.rand(5, 60, generator=g) < 0.3) if masked else None
    # Energy (eq. 21) and its gradients against torch's autograd of the formula.
    res = []
    for fn in (lambda v, x: at.spherical_energy(v, x, F=F, n=n, beta=beta, mask=mask),
               lambda v, x: spherical_energy_reference(v, x, F, n, beta, mask)):
        v, x = v0.clone().requires_grad_(True), X.clone().requires_grad_(True)
        e = fn(v, x)
        (e * torch.linspace(1, 2, 5, dtype=torch.float64)).sum().backward()
        res.append((e.detach(), v.grad, x.grad))
    for name, a, r in zip(("E", "dv", "dX"), *res):
        assert torch.allclose(a, r, rtol=1e-10, atol=1e-10), f"{name}: {(a - r).abs().max().item():.3g}"
    # Euler steps of eq. (22) and their gradients (through the steps).
    res = []
    for fn in (lambda v, x: at.spherical_retrieve(v, x, F=F, n=n, beta=beta, alpha=0.5, step=0.02, steps=3, mask=mask),
               lambda v, x: spherical_reference(v, x, F, n, beta, 0.5, 0.02, 3, mask)):
        v, x = v0.clone().requires_grad_(True), X.clone().requires_grad_(True)
        out = fn(v, x)
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).reshape(out.shape)).sum().backward()
        res.append((out.detach(), v.grad, x.grad))
    for name, a, r in zip(("v", "dv", "dX"), *res):
        assert torch.allclose(a, r, rtol=1e-9, atol=1e-9), f"{name}: {(a - r).abs().max().item():.3g}"
    # The same numbers as the library's model C engine (float32, no gradients).
    if not masked:
        C = am.ModelC(X.numpy(), F=F, n=n, beta=beta, alpha=0.5)
        np.testing.assert_allclose(at.spherical_energy(v0, X, F=F, n=n, beta=beta).numpy(), C.energy(v0.numpy()),
                                   rtol=1e-5)
        ours = at.spherical_retrieve(v0, X, F=F, n=n, beta=beta, alpha=0.5, step=0.02, steps=3).numpy()
        np.testing.assert_allclose(ours, C.retrieve(v0.numpy(), steps=3, step=0.02), rtol=1e-4, atol=1e-4)


def test_model_c_gradcheck_in_float64():
    g = torch.Generator().manual_seed(7)
    X = torch.randn(23, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    v = torch.randn(3, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v, x: at.spherical_retrieve(v, x, F="exp", n=2, beta=1.2, steps=2,
                                                                       step=0.05), (v, X))
    assert torch.autograd.gradcheck(lambda v, x: at.spherical_energy(v, x, F="rectified", n=3), (v, X))
    with pytest.raises(ValueError, match="zero"):
        at.spherical_energy(torch.zeros(2, 4, dtype=torch.float64), X.detach())


def test_bfloat16_memories_equal_float32_on_the_rounded_values():
    """bfloat16 keys and values (half the memory) give what float32 gives on the same rounded values;
    their gradients come back in bfloat16, as autograd requires."""
    q0, k0, v0 = make(torch.float32)
    kb, vb = k0.bfloat16(), v0.bfloat16()
    res = []
    for kk, vv in ((kb, vb), (kb.float(), vb.float())):
        q, k, v = q0.clone().requires_grad_(True), kk.clone().requires_grad_(True), vv.clone().requires_grad_(True)
        out = at.hopfield_retrieve(q, k, v, beta=3.0, steps=2)
        e = at.hopfield_energy(q, k, beta=3.0)
        (out.sum() + e.sum()).backward()
        res.append((out.detach(), e.detach(), q.grad, k.grad.float(), v.grad.float(), k.grad.dtype))
    (ob, eb, dqb, dkb, dvb, tb), (of, ef, dqf, dkf, dvf, tf) = res
    assert tb == torch.bfloat16 and tf == torch.float32
    assert ob.dtype == torch.float32
    for a, r in ((ob, of), (eb, ef), (dqb, dqf)):
        assert torch.allclose(a, r, rtol=1e-5, atol=1e-5)
    for a, r in ((dkb, dkf), (dvb, dvf)):  # rounded to bfloat16 on the way out: 2^-8 relative
        assert torch.allclose(a, r, rtol=1e-2, atol=1e-2 * r.abs().max().item())
    # Model C on bfloat16 memories.
    x = k0.bfloat16().requires_grad_(True)
    ec = at.spherical_energy(q0, x, F="exp", beta=2.0)
    ec.sum().backward()
    assert x.grad.dtype == torch.bfloat16
    assert torch.allclose(ec, at.spherical_energy(q0, k0.bfloat16().float(), F="exp", beta=2.0), rtol=1e-5)
