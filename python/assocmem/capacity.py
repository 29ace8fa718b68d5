"""Capacity measurements over random +-1 memories, and sweeps over their parameters.

Protocols (protocol=...): "stability" (start at each stored pattern; one_step=True is a single
synchronous update as in Krotov & Hopfield 2016's table, else run to a fixed point), "basin" (start
from a stored pattern with round(rho N) bits flipped) and "random" (random starts; the fraction that
ends on a stored pattern, or on its negative when count_negatives: with even n, -xi is a minimum too).
"Recalled" means no wrong bit. criterion="per-cue" (default) reports the fraction of cues recalled;
criterion="all" the fraction of trials in which every stored memory, cued once, is recalled (the event
of Demircigil et al.'s theorem). Models: "A" (F = power, rectified or exp), "B" (sign of the state after
eq. 16 updates), "C" (sign after Euler steps of eq. 22). hidden = N_h < K stores only the first N_h
patterns (one per hidden neuron, eq. 9's bound) and probes all K.

    measure(model="A", F="power", n=3, N=100, K=300, one_step=True, trials=20) -> dict
    bisect(0.5, 10, 5000, model="A", n=3, N=100) -> (K, points)
    bisect_interval(0.5, 10, 5000, model="A", n=3, N=100) -> dict K, K_low, K_high, points
    loglog_slope([32, 64, 128], [(24, 34), (88, 118), (364, 410)]) -> (slope, stderr)

recalled_stderr is the standard error over trials (the unit of repetition: the cues of one trial share
its memories); trial_recalled lists each trial's fraction.
    sweep("K", [100, 200, 400], model="A", n=3, N=100) -> list of dicts
"""
from __future__ import annotations

from ._core import bisect_capacity as _bisect
from ._core import fit_loglog_slope as _fit_loglog_slope
from ._core import measure_capacity as _measure

__all__ = ["measure", "bisect", "bisect_interval", "loglog_slope", "sweep", "k_max_theory", "one_step_theory", "double_factorial"]


def measure(**spec):
    """One measurement; keyword arguments as in the module docstring (model, F, n, beta, N, K, hidden,
    protocol, rho, one_step, order, max_steps, step, trials, cues, count_negatives, seed, threads,
    criterion).
    Returns a dict: K, N, cues, recalled, recalled_stderr (over trials), trial_recalled, bit_error, seconds."""
    return _measure(**spec)


def bisect(threshold, K_lo, K_hi, **spec):
    """The largest K in [K_lo, K_hi] with recalled >= threshold, by bisection; returns (K, points)."""
    K, points, _ = _bisect(threshold, K_lo, K_hi, interval=False, **spec)
    return K, points


def bisect_interval(threshold, K_lo, K_hi, **spec):
    """bisect() with the uncertainty of its answer: a dict with K, K_low, K_high and points. K_low is the
    largest measured K confidently above the threshold (recalled - 2 stderr >= threshold), K_high the
    smallest confidently below, minus 1; a wide interval asks for more trials."""
    K, points, (lo, hi) = _bisect(threshold, K_lo, K_hi, interval=True, **spec)
    return {"K": K, "K_low": lo, "K_high": hi, "points": points}


def loglog_slope(Ns, K_ranges):
    """The growth exponent d ln K / d ln N and its standard error, fitted to capacity ranges (K_low, K_high)
    from bisect_interval at sizes Ns: each range's geometric midpoint is the point, its half-width in ln K
    one standard error. Compare the slope with a law such as eq. 6 within a few standard errors."""
    slope, stderr = _fit_loglog_slope([float(n) for n in Ns], [(float(lo), float(hi)) for lo, hi in K_ranges])
    return slope, stderr


def sweep(parameter, values, **spec):
    """measure() for each value of one parameter (e.g. "K", "N", "n", "beta", "rho", "hidden");
    returns the list of result dicts, each with the swept parameter's value added."""
    out = []
    for v in values:
        r = measure(**{**spec, parameter: v})
        r[parameter] = v
        out.append(r)
    return out


def double_factorial(k):
    """k!! for odd k >= -1 (with (-1)!! = 1)."""
    r = 1
    while k > 1:
        r *= k
        k -= 2
    return r


def k_max_theory(N, n):
    """Krotov & Hopfield 2016, eq. 6: K_max ~ N^(n-1) / (2 (2n-3)!! ln N), all bits stable."""
    import math
    return N ** (n - 1) / (2 * double_factorial(2 * n - 3) * math.log(N))


def one_step_theory(N, n, K):
    """Krotov & Hopfield 2016: the fraction of stored patterns with no wrong bit after one update,
    (1 - P_err)^N with P_err ~ sqrt((2n-3)!! K / (2 pi N^(n-1))) exp(-N^(n-1) / (2 K (2n-3)!!))
    (F = x^n, random patterns; a large-N approximation)."""
    import math
    d = double_factorial(2 * n - 3)
    p = math.sqrt(d * K / (2 * math.pi * N ** (n - 1))) * math.exp(-N ** (n - 1) / (2 * K * d))
    return (1 - min(p, 1.0)) ** N
