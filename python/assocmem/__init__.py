"""assocmem: large associative memories (Dense Associative Memories, modern Hopfield networks).

The general two-layer network of Krotov & Hopfield, "Large Associative Memory Problem in Neurobiology
and Machine Learning" (ICLR 2021), and its three effective models:

    Network(xi, feature, hidden, tau_f, tau_h, current)   eq. (1), energy eq. (2), simulate(...)
    LayeredNetwork(layers, synapses)                      any number of layers (Layer), dense and convolutional
                                                          synapses (dense, conv2d): hierarchical memories
    lagrangians.log_cosh(beta), .log_sum_exp(beta), ...    layer Lagrangians (eq. 3): value, activation, hvp
    ModelA / DenseAssociativeMemory                       binary neurons, F = power, rectified power or exp (eq. 8)
    ModelB / ModernHopfield                               softmax memories, attention update (eqs. 13, 16)
    ModelC / SphericalMemory                              spherical normalisation (eqs. 21, 22)
    MemoryStore                                           persistent memories (float32, bfloat16, bits)
    plot                                                  matplotlib figures: energy, mosaics, capacity curves

Arrays are numpy arrays; a single query has shape (d,), a batch (..., d) with any leading batch
dimensions, and results have the shape of the queries (float64 for float64 queries, else float32).
Bad input raises ValueError (or OSError for files, TypeError for wrong types) with a message naming
the problem; Ctrl-C interrupts a long retrieval (KeyboardInterrupt) within a fraction of a second.
"""
from __future__ import annotations

import os as _os
import sys as _sys

import warnings as _warnings

import numpy as _np

from . import _core

_DEFAULT_BETA = _core.DEFAULT_BETA  # the one default inverse temperature / gain (assocmem/types.hpp)
from ._core import (  # noqa: F401  (re-exported)
    AdiabaticLimit,
    Layer,
    LayeredNetwork,
    LayeredTrajectory,
    MemoryStore,
    Network,
    Synapse,
    SolverError,
    Trajectory,
    available_kernels,
    conv2d,
    default_cjk_font,
    dense,
    lagrangians,
    render_glyphs,
    write_file,
)

__all__ = [
    "ModelA", "ModelB", "ModelC", "DenseAssociativeMemory", "ModernHopfield", "SphericalMemory",
    "Network", "Trajectory", "LayeredNetwork", "LayeredTrajectory", "Layer", "Synapse", "dense", "conv2d",
    "AdiabaticLimit",
    "Retrieval", "MemoryStore", "lagrangians", "SolverError",
    "render_glyphs", "default_cjk_font", "write_file", "available_kernels", "plot",
    "worker_pools", "worker_pool", "set_worker_pool",
]
__version__ = _core.__version__  # the one version: project(VERSION) in CMakeLists.txt

# `import assocmem.lagrangians` works: the compiled submodule under the package's name.
_sys.modules[__name__ + ".lagrangians"] = lagrangians


# ------------------------------------------------------------------------------------------------
# Shapes and dtypes (one policy for every model):
#   queries (d,) or (..., d): any leading batch dimensions; results keep them.
#   A 1-D query gives 1-D details: states (d,), steps an int, energy a float, top_ids (k,).
#   The engines compute in float32 (bfloat16 products for dtype="bfloat16"); results come back in
#   float64 when the queries are float64, else float32. Other real dtypes are converted.

_STOP = _np.array(["converged", "max_steps", "blew_up"])


class Retrieval:
    """The result of retrieve_details(): one entry per query, shaped by the queries' batch dimensions.

    states       final states (..., d) (model B with values: (..., value_dim))
    steps        updates applied (model A: sweeps)
    stop         why each query stopped: 'converged', 'max_steps' or 'blew_up'
    converged    stop == 'converged'
    last_change  size of the last update (A: flips of the last sweep; B, C: max |v_new - v|)
    energy       energy of the final state (eq. 8, 13, 21), None when energy=False
    top_ids      store ids of the top_k memories (model B), best first, (..., k) with
                 k = min(top_k, K); -1 pads queries whose mask leaves fewer than k; None if top_k=0
    top_weights  their softmax weights at the final state (0 where padded)
    max_weight   model B: the largest softmax weight of the last pass; near 1/K no memory stands out
                 (beta too small: the state is nearly the mean of the memories, and retrieve warns)
    discarded_weight, state_error, candidates, fallback_steps
                 models B and C with certify=eps: the certificate (see ModelB.retrieve_details,
                 ModelC.retrieve_details); else None
    """

    _FIELDS = {
        "states": "Final states (..., d); model B with values: (..., value_dim).",
        "steps": "Updates applied per query (model A: sweeps).",
        "stop": "Why each query stopped: 'converged', 'max_steps' or 'blew_up'.",
        "converged": "stop == 'converged'.",
        "last_change": "Size of the last update (A: flips of the last sweep; B, C: max |v_new - v|).",
        "energy": "Energy of each final state (eq. 8, 13 or 21); None when energy=False.",
        "top_ids": "Store ids of the top_k memories (model B), best first, (..., min(top_k, K)); -1 pads.",
        "top_weights": "Softmax weights of top_ids at the final state (0 where padded).",
        "max_weight": "Model B: the largest softmax weight of the last pass (near 1/K: nearly the mean of the "
                      "memories); else None.",
        "discarded_weight": "certify=: bound on the weight left out (B: softmax weight; C: F' mass over the kept; "
                            "largest over the steps); else None.",
        "state_error": "certify=: bound on ||state - exact update of the same previous state||_2 (last step).",
        "candidates": "certify=: memories rescored exactly in the last pass (K where it fell back).",
        "fallback_steps": "certify=: passes that fell back to the exact scan (too many candidates); energy and top-k add one.",
    }
    __slots__ = tuple("_" + k for k in _FIELDS)

    def __init__(self, d, batch_shape, out_dtype):
        def shaped(a, extra=()):
            if a is None:
                return None
            a = a.reshape(batch_shape + extra)
            return a[()] if a.ndim == 0 else a
        self._states = d["states"].reshape(batch_shape + (d["states"].shape[1],)).astype(out_dtype, copy=False)
        self._steps = shaped(d["steps"])
        self._stop = shaped(_STOP[d["stop"]])
        self._converged = shaped(d["stop"] == 0)
        self._last_change = shaped(d["last_change"])
        self._energy = shaped(d["energy"])
        k = () if d["top_ids"] is None else (d["top_ids"].shape[1],)
        self._top_ids = shaped(d["top_ids"], k)
        self._top_weights = shaped(d["top_weights"], k)
        for name in ("max_weight", "discarded_weight", "state_error", "candidates", "fallback_steps"):
            setattr(self, "_" + name, shaped(d.get(name)))
        if self._steps is not None and _np.ndim(self._steps) == 0:  # one query: plain Python scalars
            self._steps, self._stop, self._converged = int(self._steps), str(self._stop), bool(self._converged)
            self._last_change = float(self._last_change)
            self._energy = None if self._energy is None else float(self._energy)

    def __repr__(self):
        shape = self.states.shape[:-1]
        if shape == ():
            return (f"Retrieval(state dim {self.states.shape[-1]}, steps={self.steps}, stop={self.stop!r}"
                    + ("" if self.energy is None else f", energy={self.energy:.6g}") + ")")
        stops = {s: int((self.stop == s).sum()) for s in _STOP if (self.stop == s).any()}
        return (f"Retrieval({_np.prod(shape, dtype=int)} queries {shape}, dim {self.states.shape[-1]}, "
                f"steps {int(_np.min(self.steps))}..{int(_np.max(self.steps))}, stop {stops}"
                + ("" if self.energy is None else ", with energy")
                + ("" if self.top_ids is None else f", top {self.top_ids.shape[-1]}") + ")")


for _name, _doc in Retrieval._FIELDS.items():
    setattr(Retrieval, _name, property(lambda self, _n="_" + _name: getattr(self, _n), doc=_doc))


def _batch(queries, dim, what):
    """(queries as a C-contiguous float32 (n, dim) array, batch shape, output dtype)."""
    a = _np.asarray(queries)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{what} must be real numbers, got dtype {a.dtype}")
    if a.ndim == 0:
        raise ValueError(f"{what} must have shape (d,) or (..., d), got a scalar")
    if a.shape[-1] != dim:
        raise ValueError(f"{what} have dimension {a.shape[-1]} but the memories have {dim}")
    if a.size == 0:
        raise ValueError(f"{what}: the batch is empty")
    out_dtype = _np.float64 if a.dtype == _np.float64 else _np.float32
    with _np.errstate(over="ignore"):  # checked below, naming the element
        q = _np.ascontiguousarray(a.reshape(-1, dim), dtype=_np.float32)
    if a.dtype.itemsize > 4 or a.dtype.kind in "iu":  # a finite value that float32 cannot hold (1e39 read "NaN or Inf")
        big = _np.isinf(q) & _np.isfinite(a.reshape(-1, dim))
        if big.any():
            at = tuple(int(i) for i in _np.argwhere(big)[0])
            raise ValueError(f"{what}: row {at[0]} element {at[1]} = {a.reshape(-1, dim)[at]!r} does not fit in "
                             "float32 (largest 3.4028e38)")
    return q, a.shape[:-1], out_dtype


def _mask_values(m, what="mask"):
    """The one mask rule of every face (the CLI's too): bool, or the numbers 0 and 1 (1 = True leaves the
    memory out), as uint8. Anything else (0.5, 256, NaN, -inf) has no agreed meaning - a cast to uint8
    read 0.5 and 256 as 0 - and is refused naming the value."""
    m = _np.asarray(m)
    if m.dtype == _np.bool_:
        return m.astype(_np.uint8)
    if m.dtype.kind not in "iuf":
        raise TypeError(f"{what} must be a bool array (True leaves a memory out), got dtype {m.dtype}")
    odd = ~((m == 0) | (m == 1))
    if odd.any():
        at = tuple(int(i) for i in _np.argwhere(odd)[0])
        raise ValueError(f"{what} holds {m[at]!r} at {at}; a mask holds bool or 0/1 (True/1 leaves the memory out)")
    return m.astype(_np.uint8)


def _mask(mask, batch_shape, K):
    """A mask (K,) shared by all queries, or batch_shape + (K,): uint8 (1 or n, K); True = leave out."""
    if mask is None:
        return None
    m = _np.asarray(mask)
    if m.shape == (K,):
        return _np.ascontiguousarray(_mask_values(m).reshape(1, K))
    if m.shape == tuple(batch_shape) + (K,):
        return _np.ascontiguousarray(_mask_values(m).reshape(-1, K))
    raise ValueError(f"mask must have shape ({K},) or {tuple(batch_shape) + (K,)} (True leaves a memory out), "
                     f"got {m.shape}")


# The most updates (sweeps) one retrieval may ask for, as the library's kMaxRetrieveSteps.
_MAX_STEPS = 1000000


def _whole(value, name, lo=1, hi=_MAX_STEPS):
    """An integer option: a whole number in [lo, hi] (1.0 is 1; 1.5, True, 1e38 and strings are refused
    naming the option); None stays None (the model's default)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, _np.integer, _np.floating)):
        raise TypeError(f"{name} must be a whole number, got {value!r}")
    if not (_np.isfinite(value) and float(value).is_integer()):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value!r}")
    return int(value)


def _clamp(clamp, dim):
    if clamp is None:
        return None
    c = _np.asarray(clamp)
    if c.shape != (dim,):
        raise ValueError(f"clamp must be a boolean array of shape ({dim},), got {c.shape}")
    return _np.ascontiguousarray(_mask_values(c, "clamp"))


def _warn_on(r, K):
    """RuntimeWarnings for what the numbers alone would not say (issue 23): queries whose state blew up
    (left the float range; the last finite state is returned), and model B associations so flat that no
    memory carries more than 10/K of the weight (the result is nearly the mean of the memories)."""
    blew = int((r["stop"] == 2).sum())
    if blew:
        _warnings.warn(f"{blew} of {r['stop'].size} queries blew up (the state left the float range; the last "
                       "finite state is returned): lower beta or the step, or scale the memories down",
                       RuntimeWarning, stacklevel=3)
    w = r.get("max_weight")
    if w is not None:
        flat = (w < 0.1) & (w * K < 10)   # the library's nearly_uniform
        if flat.any():
            _warnings.warn(f"for {int(flat.sum())} of {w.size} queries no memory carries more than 10/K of the "
                           f"weight (largest {float(w[flat].max()):.3g}, 1/K = {1 / K:.3g}): the result is nearly "
                           "the mean of the memories; raise beta (README: choosing beta)", RuntimeWarning,
                           stacklevel=3)


def _progress(progress):
    if progress is None:
        return None
    if not callable(progress):
        raise TypeError("progress must be callable as progress(step, max_steps, fraction, active)")
    return progress


def _store(patterns, dtype, what):
    """A MemoryStore from an array (copied into a new store) or a MemoryStore (used as it is)."""
    if isinstance(patterns, MemoryStore):
        if dtype is not None and dtype != patterns.dtype:
            raise ValueError(f"{what}: dtype={dtype!r} but the store holds {patterns.dtype}")
        return patterns
    if isinstance(patterns, (str, _os.PathLike)):
        raise TypeError(f"{what}: a path; use from_store(path) to map a saved store")
    a = _np.asarray(patterns)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{what} must be real numbers, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{what} must be 2-D (K memories x d features), got shape {a.shape}")
    s = MemoryStore(a.shape[1], dtype or "float32")
    s.append(_np.ascontiguousarray(a, dtype=_np.float32))
    return s


def _as_dtype(store, dtype, what):
    """`store` in `dtype`: itself, or a converted copy (same ids; float32 -> bfloat16 rounds to nearest
    even). Values of another float type than the keys are converted, not refused (issue 23)."""
    if store.dtype == dtype:
        return store
    if "bits" in (dtype, store.dtype):
        raise ValueError(f"{what}: a {store.dtype} store cannot stand in for {dtype} memories")
    s = MemoryStore(store.dim, dtype)
    s.append(store.to_array(), store.ids)
    return s


def _open(store, what):
    """A MemoryStore from a path (mapped read-only, no copy) or a MemoryStore."""
    if isinstance(store, MemoryStore):
        return store
    if isinstance(store, (str, _os.PathLike)):
        return MemoryStore.open(_os.fspath(store), access="map")
    raise TypeError(f"{what} must be a path or a MemoryStore, got {type(store).__name__}")


_DEF = {m: _core.retrieve_defaults(m) for m in "ABC"}
_ONE_DEFAULTS = ("Defaults (the library's one table, also used by C++ and the CLI): model A {A}; "
                 "model B {B}; model C {C}.").format(**{m: ", ".join(f"{k}={v!r}" for k, v in d.items() if v == v)
                                                         for m, d in _DEF.items()})


class ModelA:
    """Model A, the binary Dense Associative Memory (Section 3.1; Krotov & Hopfield 2016).

    ModelA(patterns, F="power", n=3, beta=1.0, current=None, threads=0)

    patterns: (K, N) array of +1/-1 memories, or a MemoryStore of them (bits, or +-1 floats, packed
    once); ModelA.from_store(path) opens a saved store. F: "power" (F(x) = x^n; n = 2 is the classical
    Hopfield network), "rectified" (x^n for x >= 0, else 0) or "exp" (exp(beta x)/beta). current: the
    input current I of eq. (8), length N. Energy E = -sum_i I_i s_i - sum_mu F(xi_mu . s).
    Runs on packed bits with incrementally updated overlaps, many cues in parallel.
    """

    def __init__(self, patterns, F=None, n=None, beta=_DEFAULT_BETA, current=None, threads=0):
        d = _DEF["A"]
        self._F, self._n, self._beta = F or d["F"], float(d["n"] if n is None else n), float(beta)
        try:
            store = _store(patterns, "bits" if not isinstance(patterns, MemoryStore) else None, "patterns")
            self._m = _core._ModelA(store, self._F, self._n, self._beta, current, threads)
        except ValueError as e:
            if "+1" not in str(e):
                raise
            raise ValueError(f"ModelA patterns must be +1/-1: {e}") from None

    @classmethod
    def from_store(cls, store, F=None, n=None, beta=_DEFAULT_BETA, current=None, threads=0):
        """A model over a saved store (a path, mapped without a copy, or a MemoryStore)."""
        return cls(_open(store, "store"), F, n, beta, current, threads)

    def retrieve(self, cues, steps=None, *, order=None, seed=0, tol=None, clamp=None, progress=None):
        """Runs the Krotov-Hopfield update rule from each cue (+1/-1, shape (N,) or (..., N)) to a
        fixed point (a sweep that flips at most tol neurons) or `steps` sweeps. order: "random" (a new
        random order each sweep; cue b uses seed + b), "fixed" or "sync". clamp: boolean (N,); clamped
        neurons keep their cue value (an infinite input current). progress(step, max_steps, fraction,
        active) is called about every 50 ms; Ctrl-C stops the call within a fraction of a second.
        Returns the final states, shaped like `cues`."""
        return self.retrieve_details(cues, steps, order=order, seed=seed, tol=tol, clamp=clamp, energy=False,
                                     progress=progress).states

    def retrieve_details(self, cues, steps=None, *, order=None, seed=0, tol=None, clamp=None, energy=True,
                         progress=None):
        """Like retrieve(), but returns a Retrieval (states, steps = sweeps, stop, converged, energy)."""
        q, shape, dt = _batch(cues, self.n_features, "cues")
        r = self._m.retrieve(q, _whole(steps, "steps"), tol, order, seed, energy, _clamp(clamp, self.n_features),
                             _progress(progress))
        return Retrieval(r, shape, dt)

    def energy(self, states):
        """eq. (8) for a state (N,) (a float) or states (..., N) (an array)."""
        q, shape, _ = _batch(states, self.n_features, "states")
        e = self._m.energy(q).reshape(shape)
        return float(e) if e.ndim == 0 else e

    n_features = property(lambda self: self._m.n_features, doc="N, the number of neurons.")
    n_memories = property(lambda self: self._m.n_memories, doc="K, the number of stored memories.")
    kernel = property(lambda self: self._m.kernel, doc="The kernel in use: avx512 or generic.")
    store = property(lambda self: self._m.store, doc="The MemoryStore the memories come from.")

    def __repr__(self):
        F = f"x^{self._n:g}" if self._F == "power" else (f"max(x,0)^{self._n:g}" if self._F == "rectified"
                                                         else f"exp({self._beta:g} x)/{self._beta:g}")
        return f"<assocmem.ModelA: {self.n_memories} memories of {self.n_features} neurons, F = {F}, {self.kernel}>"


class ModelB:
    """Model B, the modern Hopfield network (Section 3.2; Ramsauer et al. 2020).

    ModelB(keys, beta=1.0, *, values=None, dtype="float32", threads=0, kernel="auto")

    keys: (K, d) memories (an array, copied into a store of `dtype`, or a MemoryStore, used as it is;
    ModelB.from_store(path) maps a saved store without a copy). Energy eq. (13):
    E = v.v/2 - (1/beta) log sum_mu exp(beta xi_mu . v). One update (eq. 16) is softmax attention:
    v <- xi^T softmax(beta xi v). values: (K, d_v) (or a store) to return softmax(beta xi v)^T values
    instead (hetero-association, attention's keys and values). dtype "bfloat16" stores the memories in
    bfloat16 and uses bfloat16 products with float32 accumulation (AMX or AVX-512 BF16).
    """

    def __init__(self, keys, beta=_DEFAULT_BETA, *, values=None, dtype=None, threads=0, kernel="auto"):
        k = _store(keys, dtype, "keys")
        v = None if values is None else _as_dtype(_store(values, None, "values"), k.dtype, "values")
        self._m = _core._ModelB(k, v, float(beta), threads, kernel)

    @classmethod
    def from_store(cls, keys, beta=_DEFAULT_BETA, *, values=None, threads=0, kernel="auto"):
        """A model over saved stores (paths, mapped read-only without a copy, or MemoryStores).
        Results report the store's ids (top_ids)."""
        return cls(_open(keys, "keys"), beta, values=None if values is None else _open(values, "values"),
                   threads=threads, kernel=kernel)

    def retrieve(self, queries, steps=None, tol=None, step=None, *, beta=None, mask=None, clamp=None, progress=None,
                 certify=None, approximate=None):
        """Iterates eq. (15) (step = dt/tau_f in (0, 1]; 1 is eq. 16) up to `steps` times, stopping a
        query once max |v_new - v| <= tol. With values, steps - 1 updates on the keys and then the
        association with the values. beta: this call's inverse temperature. mask: bool (K,) or
        (..., K); True leaves a memory out for that query, exactly as if it were deleted. clamp: bool
        (d,) features that keep the query's value. progress(step, max_steps, fraction, active) is called
        about every 50 ms; Ctrl-C stops the call within a fraction of a second. certify: eps in (0, 0.5]
        for certified retrieval, approximate: candidates per query for approximate retrieval (see
        retrieve_details). Returns the states, shaped like `queries` (one pass over the memories per
        step: no energy, no top-k)."""
        return self.retrieve_details(queries, steps, tol, step, beta=beta, mask=mask, clamp=clamp, energy=False,
                                     progress=progress, certify=certify, approximate=approximate).states

    def retrieve_details(self, queries, steps=None, tol=None, step=None, *, top_k=0, energy=True, beta=None,
                         mask=None, clamp=None, progress=None, certify=None, approximate=None):
        """Like retrieve(), but returns a Retrieval with steps, stop, energy (eq. 13) and the top_k
        memories (top_ids: store ids, top_weights: softmax weights) of the returned states. Energy and
        top-k cost one more pass over the memories (none with values: they describe the last association).

        certify=eps: every pass screens int8 codes of the keys (STORE.codes beside a saved store, written
        by `assocmem index`; else built on first use and kept: codes_source says which), rescores
        exactly the memories that can carry weight and leaves out the rest, whose softmax weight is
        provably <= eps. The Retrieval then has discarded_weight (that bound), state_error (a bound on
        the distance to the exact update, the float32 rounding included), candidates (memories rescored) and fallback_steps (passes
        that scanned everything: too many candidates, e.g. at small beta). Not with values yet.

        approximate=k: every pass rescores exactly only the k best candidates of an ANN index of the keys
        (FAISS IVF by default, built on first use; index_candidates() builds another) - fast at very large
        K, but with no bound on what it misses (measured in docs/performance.md). Not with certify."""
        q, shape, dt = _batch(queries, self.n_features, "queries")
        top_k = _whole(top_k, "top_k", 0, 2**62)
        approximate = _whole(approximate, "approximate (the number of candidates)", 1, 2**62)
        r = self._m.retrieve(q, _whole(steps, "steps"), tol, step, top_k, energy, beta, _mask(mask, shape, self.n_memories),
                             _clamp(clamp, self.n_features), _progress(progress),
                             None if certify is None else float(certify),
                             None if approximate is None else int(approximate))
        _warn_on(r, self.n_memories)
        return Retrieval(r, shape, dt)

    def index_candidates(self, kind="ivf", *, lists=None, probes=16, links=32, ef_search=64, seed=0):
        """Builds (or rebuilds) the ANN index of approximate retrieval over the keys with FAISS
        (assocmem/ann.hpp): kind "ivf" (k-means into `lists` cells, default about 4 sqrt(K), 8-bit codes;
        a search visits `probes` cells) or "hnsw" (a graph of `links` neighbours per memory; a search
        keeps `ef_search` candidates; slow to build on few cores). Returns its description (also
        candidates_index). ValueError where this build has no FAISS."""
        for name, v in (("probes", probes), ("links", links), ("ef_search", ef_search), ("seed", seed)):
            if isinstance(v, bool) or int(v) != v or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        if lists is not None and (isinstance(lists, bool) or int(lists) != lists or lists < 1):
            raise ValueError(f"lists must be an integer >= 1 (or None), got {lists!r}")
        return dict(self._m.index_candidates(str(kind), 0 if lists is None else int(lists), int(probes), int(links),
                                             int(ef_search), int(seed)))

    candidates_index = property(lambda self: dict(self._m.candidates_index) or None,
                                doc="The ANN index of approximate retrieval (kind, lists/probes or links/ef_search, "
                                    "bytes), or None (not built yet).")
    has_ann = property(lambda self: bool(_core._ModelB.has_ann),
                       doc="Whether this build has FAISS (approximate retrieval).")

    codes_source = property(lambda self: self._m.codes_source or None,
                            doc="Where certify= took the keys' codes from: a file, 'built in memory', or None (not yet).")

    def attention(self, queries, top_k=1, *, beta=None, mask=None):
        """The top_k memories of softmax(beta xi v) at the queries themselves (one pass): (top_ids,
        top_weights), each (..., min(top_k, K)); ids are store ids, -1 pads where a mask leaves fewer."""
        q, shape, _ = _batch(queries, self.n_features, "queries")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        ids, w = self._m.attention(q, top_k, beta, _mask(mask, shape, self.n_memories))
        return ids.reshape(shape + ids.shape[1:]), w.reshape(shape + w.shape[1:])

    def energy(self, states, *, beta=None, mask=None):
        """eq. (13) for a state (d,) (a float) or states (..., d) (an array)."""
        q, shape, _ = _batch(states, self.n_features, "states")
        e = self._m.energy(q, beta, _mask(mask, shape, self.n_memories)).reshape(shape)
        return float(e) if e.ndim == 0 else e

    n_features = property(lambda self: self._m.n_features, doc="d, the dimension of queries and keys.")
    value_dim = property(lambda self: self._m.value_dim, doc="Dimension of the results (d without values).")
    n_memories = property(lambda self: self._m.n_memories, doc="K, the number of stored memories.")
    beta = property(lambda self: self._m.beta, doc="The inverse temperature.")
    kernel = property(lambda self: self._m.kernel, doc="The kernel in use: one of amx_bf16, avx512_bf16, avx512, avx2, sse4, sve2, sve, neon, generic.")
    store = property(lambda self: self._m.store, doc="The MemoryStore of the keys.")
    values_store = property(lambda self: self._m.values_store, doc="The MemoryStore of the values, or None.")

    def __repr__(self):
        v = "" if self.values_store is None else f", values of dim {self.value_dim}"
        return (f"<assocmem.ModelB: {self.n_memories} memories of dim {self.n_features} ({self.store.dtype}{v}), "
                f"beta={self.beta:g}, {self.kernel}>")


class ModelC:
    """Model C, the spherical memory (Section 3.3).

    ModelC(patterns, F="rectified", n=3, beta=1.0, alpha=1.0, threads=0, kernel="auto")

    patterns: (K, d) array or MemoryStore (ModelC.from_store(path) maps a saved store). Energy eq. (21):
    E = -sum_mu F(xi_mu . v/|v|); dynamics eq. (22): tau_f dv/dt = xi^T f(xi v/|v|) - alpha v,
    integrated by Euler steps of dt/tau_f = step.
    """

    def __init__(self, patterns, F=None, n=None, beta=_DEFAULT_BETA, alpha=1.0, threads=0, kernel="auto"):
        d = _DEF["C"]
        self._F, self._n, self._beta, self._alpha = F or d["F"], float(d["n"] if n is None else n), float(beta), alpha
        self._m = _core._ModelC(_store(patterns, None, "patterns"), self._F, self._n, self._beta, float(alpha),
                                threads, kernel)

    @classmethod
    def from_store(cls, store, F=None, n=None, beta=_DEFAULT_BETA, alpha=1.0, threads=0, kernel="auto"):
        """A model over a saved store (a path, mapped without a copy, or a MemoryStore)."""
        return cls(_open(store, "store"), F, n, beta, alpha, threads, kernel)

    def retrieve(self, queries, steps=None, tol=None, step=None, *, mask=None, clamp=None, progress=None,
                 certify=None):
        """Euler steps of eq. (22) from each (non-zero) query; mask, clamp and progress as in
        ModelB.retrieve; certify: eps in (0, 0.5] for certified retrieval (see retrieve_details).
        Returns the states shaped like `queries`."""
        return self.retrieve_details(queries, steps, tol, step, mask=mask, clamp=clamp, energy=False,
                                     progress=progress, certify=certify).states

    def retrieve_details(self, queries, steps=None, tol=None, step=None, *, energy=True, mask=None, clamp=None,
                         progress=None, certify=None):
        """Like retrieve(), but returns a Retrieval with steps, stop and energy (eq. 21).

        certify=eps (F = rectified or exp: F' >= 0 and non-decreasing): every step screens codes of the
        memories (as ModelB's; codes_source says where they came from) and rescores exactly the memories
        whose overlap can matter; the F'(xi . v/|v|) mass of the rest is provably <= eps times the
        rescored memories' (rectified F: memories of negative overlap contribute exactly 0). The
        Retrieval has discarded_weight (that ratio's bound), state_error (step R |D| F'(u_D) plus the
        float32 rounding: a bound on the distance to the exact step), candidates and fallback_steps (passes that scanned everything:
        more than K/16 candidates, e.g. rectified F on memories half of which overlap the state). The
        energy comes from an exact pass."""
        q, shape, dt = _batch(queries, self.n_features, "queries")
        r = self._m.retrieve(q, _whole(steps, "steps"), tol, step, energy, _mask(mask, shape, self.n_memories),
                             _clamp(clamp, self.n_features), _progress(progress),
                             None if certify is None else float(certify))
        _warn_on(r, self.n_memories)
        return Retrieval(r, shape, dt)

    codes_source = property(lambda self: self._m.codes_source or None,
                            doc="Where certify= took the codes from: a file, 'built in memory', or None (not yet).")

    def energy(self, states, *, mask=None):
        """eq. (21) for a state (d,) (a float) or states (..., d) (an array)."""
        q, shape, _ = _batch(states, self.n_features, "states")
        e = self._m.energy(q, _mask(mask, shape, self.n_memories)).reshape(shape)
        return float(e) if e.ndim == 0 else e

    n_features = property(lambda self: self._m.n_features, doc="d, the dimension of the memories.")
    n_memories = property(lambda self: self._m.n_memories, doc="K, the number of stored memories.")
    kernel = property(lambda self: self._m.kernel, doc="The kernel in use.")
    store = property(lambda self: self._m.store, doc="The MemoryStore of the memories.")

    def __repr__(self):
        return (f"<assocmem.ModelC: {self.n_memories} memories of dim {self.n_features}, F={self._F} n={self._n:g}, "
                f"alpha={self._alpha:g}, {self.kernel}>")


for _cls in (ModelA, ModelB, ModelC):
    _cls.retrieve.__doc__ += "\n\n" + _ONE_DEFAULTS

DenseAssociativeMemory = ModelA
ModernHopfield = ModelB
SphericalMemory = ModelC


SolverError.__doc__ = ("A computation that could not finish as asked (an integrator reaching max_steps, a state "
                       "that blew up); a RuntimeError.")


def worker_pools() -> list:
    """The worker pools this build can run parallel calls on: 'threads' (assocmem's own threads, started per
    call) and, where it was built with OpenMP, 'openmp' (the OpenMP runtime's team of the calling thread, the
    threads PyTorch runs its own ops on)."""
    return list(_core._worker_pools())


def worker_pool() -> str:
    """The pool parallel calls run their workers on now ('threads' or 'openmp'; see set_worker_pool)."""
    return _core._worker_pool()


def set_worker_pool(pool: str) -> str:
    """Runs every parallel call's workers (the `threads` of the models, the fused attention, the codes) on
    `pool` from now on, process-wide, and returns the pool used before. 'threads' (the default) starts
    assocmem's own threads per call; 'openmp' runs the same chunks in OpenMP's team, so that a host's idle
    OpenMP threads (PyTorch's spin for milliseconds after each of its ops) do assocmem's work instead of
    sharing the cores with it (a call asking for more threads than OpenMP's thread count, which
    torch.set_num_threads sets, runs on assocmem's own threads). `import assocmem.torch` chooses 'openmp' where PyTorch runs on OpenMP (unless a pool was
    set before). The
    results are the same bit for bit: the work is split the same way. OpenMP's team does not survive fork():
    a child forked while 'openmp' is set runs on 'threads'. A pool not in worker_pools() is a ValueError
    naming it."""
    if not isinstance(pool, str):
        raise TypeError(f"pool must be a str (one of {worker_pools()}), not {type(pool).__name__}")
    global _worker_pool_chosen
    before = _core._worker_pool()
    _core._set_worker_pool(pool)
    _worker_pool_chosen = True
    return before


_worker_pool_chosen = False  # set_worker_pool was called: importing assocmem.torch keeps that choice


def __getattr__(name):
    if name == "plot":  # matplotlib is imported only when plots are asked for
        import importlib
        return importlib.import_module(__name__ + ".plot")
    raise AttributeError(f"module 'assocmem' has no attribute {name!r}")
