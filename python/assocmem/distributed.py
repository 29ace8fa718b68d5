"""Models A, B and C over a sharded store on the ranks of an MPI job, from Python (mpi4py; Debian's
python3-mpi4py). The semantics of assocmem/distributed.hpp and of `mpirun assocmem recall manifest.json`:

    # mpirun -np 4 python3 script.py
    import numpy as np, assocmem.distributed as ad
    memory = ad.ShardedMemory("shards/manifest.json")          # collective; comm=None: COMM_WORLD
    states = memory.retrieve(queries, model="B", beta=16.0)      # every rank passes the same queries...
    details = memory.retrieve_details(queries, top_k=5)          # ...and gets the same result
    spins = memory.retrieve(cues, model="A", F="power", n=4)     # +-1 memories: synchronous order

Shard i belongs to rank i mod P (a rank may hold several; more ranks than shards is refused); every pass
over the memories is merged across the ranks exactly, so the result equals one process over the
unsharded store (float sums in another order). A failure on any rank raises the same exception on every
rank, naming the rank and shard; no rank is left waiting. Model A runs the synchronous order only (the
random and fixed orders visit one neuron at a time: a collective per visit). Not on shards yet: masks, values.
"""
from __future__ import annotations

import hashlib

from . import _core
from . import _DEFAULT_BETA, Retrieval, _batch, _DEF, _whole

__all__ = ["ShardedMemory"]


def _comm(comm):
    try:
        from mpi4py import MPI  # initialises MPI (and finalises it at exit)
    except ImportError as e:  # pragma: no cover - python3-mpi4py is installed by scripts/setup
        raise ImportError("assocmem.distributed needs mpi4py (Debian: python3-mpi4py)") from e
    comm = MPI.COMM_WORLD if comm is None else comm
    if not isinstance(comm, MPI.Comm):
        raise TypeError(f"comm must be an mpi4py communicator, got {type(comm).__name__}")
    return comm


class ShardedMemory:
    """The shards of `manifest` (assocmem shard) over the ranks of `comm` (an mpi4py communicator; None:
    COMM_WORLD). Collective: every rank of comm constructs it and calls its methods in the same order."""

    def __init__(self, manifest, comm=None, threads=0):
        if not hasattr(_core, "DistributedStore"):
            raise RuntimeError("this assocmem was built without MPI (install libopenmpi-dev and rebuild)")
        self._comm = _comm(comm)
        self._s = _core.DistributedStore(str(manifest), self._comm.py2f())
        self._threads = int(threads)

    def retrieve(self, queries, model="B", steps=None, tol=None, step=None, *, beta=_DEFAULT_BETA, F=None, n=None,
                 alpha=1.0):
        """States after model A (eq. 7/8, synchronous order: F, n, beta; +-1 memories and cues), model B
        (eq. 15/16, inverse temperature beta) or model C (eq. 22: F, n, gain beta, alpha) from `queries`
        (d,) or (..., d); defaults as ModelA / ModelB / ModelC. Shaped like `queries`."""
        return self.retrieve_details(queries, model, steps, tol, step, beta=beta, F=F, n=n, alpha=alpha,
                                     energy=False).states

    def _agreed(self, checks, signature):
        """Runs `checks` (the Python side's argument checks; returns the checked arguments) on every rank,
        then agrees before any collective (issue 23: a check failing on one rank - an empty batch, a wrong
        dimension, top_k = -1 - left the other ranks waiting for ever in the pass): a failure on any rank
        raises the same exception on every rank, naming the rank; and every rank must have passed the same
        call (signature(args): the queries' shape and checksum and the options), else ValueError naming
        the first rank that differs."""
        args, err = None, None
        try:
            args = checks()
        except (ValueError, TypeError) as e:
            err = (type(e).__name__, str(e))
        errs = self._comm.allgather(err)
        failed = [(r, e) for r, e in enumerate(errs) if e is not None]
        if failed:
            r, (kind, msg) = failed[0]
            more = f" (and {len(failed) - 1} other rank{'s' if len(failed) > 2 else ''})" if len(failed) > 1 else ""
            raise (TypeError if kind == "TypeError" else ValueError)(f"rank {r}{more}: {msg}")
        sigs = self._comm.allgather(signature(args))
        for r, sig in enumerate(sigs):
            if sig != sigs[0]:
                raise ValueError(f"rank {r} passed other queries or options than rank 0 ({sig} vs {sigs[0]}); "
                                 "every rank passes the same call")
        return args

    def retrieve_details(self, queries, model="B", steps=None, tol=None, step=None, *, beta=_DEFAULT_BETA, F=None, n=None,
                         alpha=1.0, top_k=0, energy=True):
        """Like retrieve(), but a Retrieval (steps, stop, energy; top_ids and top_weights for model B)."""
        def checks():
            q, shape, dt = _batch(queries, self._s.dim, "queries")
            k = _whole(top_k, "top_k", 0, 2**62)
            if model not in ("A", "B", "C"):
                raise ValueError(f"model must be 'A', 'B' or 'C', got {model!r}")
            if model != "B" and k:
                raise ValueError(f"top_k: model {model} reports no top memories")
            if model == "A" and step is not None:
                raise ValueError("step: model A takes no step size")
            return q, shape, dt, k, _whole(steps, "steps")

        def signature(args):
            q = args[0]
            return repr((q.shape, hashlib.blake2b(q.tobytes(), digest_size=16).hexdigest(), model, args[4], tol, step,
                         beta, F, n, alpha, args[3], bool(energy)))

        q, shape, dt, top_k, steps = self._agreed(checks, signature)
        if model == "A":
            d = _DEF["A"]
            r = self._s.retrieve_a(q, F or d["F"], float(d["n"] if n is None else n), float(beta), steps, tol,
                                   bool(energy), self._threads)
        elif model == "B":
            r = self._s.retrieve_b(q, float(beta), steps, tol, step, int(top_k), bool(energy), self._threads)
        else:
            d = _DEF["C"]
            r = self._s.retrieve_c(q, F or d["F"], float(d["n"] if n is None else n), float(beta), float(alpha), steps,
                                   tol, step, bool(energy), self._threads)
        return Retrieval(r, shape, dt)

    rank = property(lambda self: self._s.rank, doc="This process's rank in comm.")
    ranks = property(lambda self: self._s.ranks, doc="The number of ranks in comm.")
    local_shards = property(lambda self: list(self._s.local_shards), doc="The shards this rank holds.")
    n_memories = property(lambda self: self._s.count, doc="K, the memories in all shards.")
    n_features = property(lambda self: self._s.dim, doc="d, the dimension of the memories.")
