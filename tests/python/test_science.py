"""Science checked against independent computations (issue 9): references written here in plain
Python with arbitrary precision (mpmath), not with the library's code."""
import mpmath
import numpy as np
import pytest

import assocmem as am


def exact_field_sign(X, sigma, i, beta):
    """sign of E(sigma_i = -1) - E(sigma_i = +1) for F(x) = exp(beta x) / beta, in mpmath."""
    # Terms span exp(beta (2N + 2)): with that many digits and 50 more, the plain (ungrouped) sum keeps
    # every term, even after the largest ones cancel.
    mpmath.mp.dps = int(beta * (2 * len(sigma) + 2) / 2.302585) + 50
    total = mpmath.mpf(0)
    for row in X:
        r = int(row @ sigma - row[i] * sigma[i])
        total += mpmath.exp(beta * (r + row[i])) - mpmath.exp(beta * (r - row[i]))
    return int(mpmath.sign(total))


def the_issue_case():
    X = np.array([[1, 1, 1, 1, 1, 1, 1], [-1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, -1, -1, 1]], np.float32)
    return X, np.array([-1, 1, 1, 1, 1, 1, 1], np.float32)


@pytest.mark.parametrize("beta", [1.0, 10.0, 50.0, 200.0])
def test_model_a_exp_follows_the_exact_field(beta):
    """One synchronous update equals sign(field) computed in arbitrary precision, neuron by neuron."""
    rng = np.random.default_rng(int(beta))
    cases = [the_issue_case()]
    for _ in range(6):  # memories in pairs differing at one neuron: exact ties in every field
        N, pairs = 24, 12
        base = np.sign(rng.standard_normal((pairs, N))).astype(np.float32)
        twins = base.copy()
        twins[np.arange(pairs), rng.integers(0, N, pairs)] *= -1
        X = np.vstack([base, twins, np.sign(rng.standard_normal((2, N)))]).astype(np.float32)
        s = base[rng.integers(0, pairs)].copy()
        s[rng.choice(N, 2, replace=False)] *= -1
        cases.append((X, s))
    for X, s in cases:
        model = am.ModelA(X, F="exp", beta=beta)
        out = model.retrieve(s, order="sync", steps=1)
        for i in range(len(s)):
            expect = exact_field_sign(X.astype(int), s.astype(int), i, beta)
            assert out[i] == (expect if expect != 0 else s[i]), (beta, i)
