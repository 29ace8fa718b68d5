"""assocmem: large associative memories (Dense Associative Memories, modern Hopfield networks).

The general two-layer network of Krotov & Hopfield, "Large Associative Memory Problem in Neurobiology
and Machine Learning" (ICLR 2021), and its three effective models:

    Network(xi, feature, hidden, tau_f, tau_h, current)   eq. (1), energy eq. (2), simulate(...)
    lagrangians.log_cosh(beta), .log_sum_exp(beta), ...    layer Lagrangians (eq. 3): value, activation, hvp
    ModelA / DenseAssociativeMemory                       binary neurons, F = power, rectified power or exp (eq. 8)
    ModelB / ModernHopfield                               softmax memories, attention update (eqs. 13, 16)
    ModelC / SphericalMemory                              spherical normalisation (eqs. 21, 22)
    MemoryStore                                           persistent memories (float32, bfloat16, bits)
    plot                                                  matplotlib figures: energy, mosaics, capacity curves

Arrays are numpy arrays; a single query has shape (d,), a batch (B, d), and results have the shape
of the queries. Bad input raises ValueError (or OSError for files) with a message naming the problem.
"""
from __future__ import annotations

import numpy as _np

from . import _core
from ._core import (  # noqa: F401  (re-exported)
    MemoryStore,
    Network,
    Retrieval,
    SolverError,
    Trajectory,
    default_cjk_font,
    lagrangians,
    render_glyphs,
    write_file,
)

__all__ = [
    "ModelA", "ModelB", "ModelC", "DenseAssociativeMemory", "ModernHopfield", "SphericalMemory",
    "Network", "Trajectory", "Retrieval", "MemoryStore", "lagrangians", "SolverError",
    "render_glyphs", "default_cjk_font", "write_file", "plot",
]
__version__ = "0.1.0"


class ModelA(_core.ModelA):
    """Model A, the binary Dense Associative Memory (Section 3.1; Krotov & Hopfield 2016).

    ModelA(patterns, F="power", n=3, beta=1.0, current=None, threads=0)

    patterns: (K, N) array of +1/-1 memories. F: "power" (F(x) = x^n; n = 2 is the classical
    Hopfield network), "rectified" (x^n for x >= 0, else 0) or "exp" (exp(beta x)/beta). current: the
    input current I of eq. (8), length N. Energy E = -sum_i I_i s_i - sum_mu F(xi_mu . s).
    Runs on packed bits with incrementally updated overlaps, many cues in parallel.
    """

    def retrieve(self, cues, order="random", max_sweeps=1000, seed=0, clamp=None):
        """Runs the Krotov-Hopfield update rule from each cue (+1/-1, shape (N,) or (B, N)) to a fixed point.

        order: "random" (a new random order each sweep; cue b uses seed + b), "fixed" or "sync".
        clamp: optional boolean array of length N; clamped neurons keep their cue value (as with an
        infinite input current). Returns the final states, shaped like `cues`.
        """
        return super().retrieve(cues, order, max_sweeps, seed, clamp)

    def retrieve_details(self, cues, order="random", max_sweeps=1000, seed=0, clamp=None):
        """Like retrieve(), but returns a Retrieval: states, steps (sweeps), converged, energy."""
        return super().retrieve_details(cues, order, max_sweeps, seed, clamp)

    def energy(self, states):
        """eq. (8) for a state (N,) (a float) or a batch (B, N) (an array)."""
        return super().energy(states)


class ModelB(_core.ModelB):
    """Model B, the modern Hopfield network (Section 3.2; Ramsauer et al. 2020).

    ModelB(patterns, beta=1.0, dtype="float32", threads=0, kernel="auto")

    patterns: (K, d) memories. Energy eq. (13): E = v.v/2 - (1/beta) log sum_mu exp(beta xi_mu . v).
    One update (eq. 16) is softmax attention: v <- xi^T softmax(beta xi v). dtype "bfloat16" stores the
    memories in bfloat16 and uses bfloat16 products with float32 accumulation (AMX or AVX-512 BF16).
    """

    def retrieve(self, queries, steps=1, tol=0.0, step=1.0, top_k=0):
        """Iterates eq. (15) (step = dt/tau_f in (0, 1]; 1 is eq. 16) up to `steps` times, stopping a
        query once max |v_new - v| <= tol. Returns the states, shaped like `queries`."""
        return super().retrieve(queries, steps, tol, step, top_k)

    def retrieve_details(self, queries, steps=1, tol=0.0, step=1.0, top_k=0, final_pass=True):
        """Like retrieve(), but returns a Retrieval with steps, converged, energy (eq. 13) and the top_k
        memories (top_ids, top_weights: softmax weights). final_pass=True: energy and top-k describe the
        returned states (one more scoring pass); False: the state the last update started from (with
        steps=1, the queries themselves: the attention weights)."""
        return super().retrieve_details(queries, steps, tol, step, top_k, final_pass)

    def energy(self, states):
        """eq. (13) for a state (d,) (a float) or a batch (B, d) (an array)."""
        return super().energy(states)


class ModelC(_core.ModelC):
    """Model C, the spherical memory (Section 3.3).

    ModelC(patterns, F="rectified", n=3, beta=1.0, alpha=1.0, threads=0, kernel="auto")

    Energy eq. (21): E = -sum_mu F(xi_mu . v/|v|); dynamics eq. (22):
    tau_f dv/dt = xi^T f(xi v/|v|) - alpha v, integrated by Euler steps of dt/tau_f = step.
    """

    def retrieve(self, queries, steps=100, tol=0.0, step=0.1):
        """Euler steps of eq. (22) from each (non-zero) query; returns the states shaped like `queries`."""
        return super().retrieve_details(queries, steps, tol, step).states

    def retrieve_details(self, queries, steps=100, tol=0.0, step=0.1):
        """Like retrieve(), but returns a Retrieval with steps, converged and energy (eq. 21)."""
        return super().retrieve_details(queries, steps, tol, step)

    def energy(self, states):
        """eq. (21) for a state (d,) (a float) or a batch (B, d) (an array)."""
        return super().energy(states)


DenseAssociativeMemory = ModelA
ModernHopfield = ModelB
SphericalMemory = ModelC


SolverError.__doc__ = ("A computation that could not finish as asked (an integrator reaching max_steps, a state "
                       "that blew up); a RuntimeError.")


def __getattr__(name):
    if name == "plot":  # matplotlib is imported only when plots are asked for
        import importlib
        return importlib.import_module(__name__ + ".plot")
    raise AttributeError(f"module 'assocmem' has no attribute {name!r}")
