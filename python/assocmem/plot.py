"""matplotlib figures for assocmem: energy along trajectories, retrieval mosaics, capacity curves.

Every function draws into `ax` when given (a matplotlib Axes), else into a new figure, and saves to
`path` when given. They return the Figure. Uses the non-interactive Agg backend unless one is set.
"""
from __future__ import annotations

import os

import matplotlib

if os.environ.get("MPLBACKEND") is None:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["energy", "mosaic", "capacity", "save_figure"]


def save_figure(fig, path, dpi=110, **kwargs):
    """Saves a figure through assocmem.write_file (atomic, no devices or FIFOs, modes kept); the
    format follows the extension (default png)."""
    import io
    import os

    from . import _core
    fmt = os.path.splitext(str(path))[1].lstrip(".").lower() or "png"
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi, **kwargs)
    _core.write_file(str(path), buf.getvalue())


def _finish(fig, path):
    if path is not None:
        save_figure(fig, path, bbox_inches="tight")
    return fig


def energy(curves, labels=None, *, ax=None, path=None, xlabel="t", title="Energy along the trajectory"):
    """Plots energy curves.

    curves: a Trajectory (its t and energy), a pair (x, E), or a list of either.
    labels: one label per curve (optional).
    """
    if not isinstance(curves, (list, tuple)) or (len(curves) == 2 and np.ndim(curves[0]) == 1
                                                  and not hasattr(curves[0], "energy")):
        curves = [curves]
    fig = ax.figure if ax is not None else plt.figure(figsize=(5.5, 3.6))
    ax = ax if ax is not None else fig.add_subplot(111)
    for k, c in enumerate(curves):
        x, e = (c.t, c.energy) if hasattr(c, "energy") else c
        ax.plot(x, e, marker="." if len(e) < 30 else None, label=None if labels is None else labels[k])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("E")
    ax.set_title(title)
    if labels is not None:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _finish(fig, path)


def mosaic(rows, row_labels=None, *, shape=None, path=None, title=None, cmap="gray_r"):
    """Draws a grid of images: each entry of `rows` is a sequence of images (or a (n, d) array with
    `shape` = (h, w) to reshape each row). Typical rows: cues, recalled, originals."""
    rows = [np.asarray(r) for r in rows]
    if shape is not None:
        rows = [r.reshape((r.shape[0],) + tuple(shape)) for r in rows]
    nr, nc = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(nr, nc, figsize=(1.1 * nc + 0.8, 1.15 * nr), squeeze=False)
    for i, r in enumerate(rows):
        for j in range(nc):
            a = axes[i][j]
            a.set_xticks([])
            a.set_yticks([])
            if j < len(r):
                a.imshow(r[j], cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
            else:
                a.axis("off")
        if row_labels is not None:
            axes[i][0].set_ylabel(row_labels[i], rotation=0, ha="right", va="center", fontsize="small")
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def capacity(x, measured, theory=None, *, ax=None, path=None, xlabel="K (stored patterns)",
             ylabel="fraction recalled exactly", title="Capacity", logx=False):
    """Capacity curves: measured = {label: y values at x}; theory = {label: (x, y)} drawn as dashed lines."""
    fig = ax.figure if ax is not None else plt.figure(figsize=(5.5, 3.8))
    ax = ax if ax is not None else fig.add_subplot(111)
    for label, y in measured.items():
        ax.plot(x, y, marker="o", label=label)
    for label, (tx, ty) in (theory or {}).items():
        ax.plot(tx, ty, linestyle="--", label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _finish(fig, path)


def _main(argv=None):
    """Command-line entry used by the `assocmem` tool (simulate --plot, capacity --plot):
    python3 -m assocmem.plot energy TRAJECTORY.csv OUT.png        (columns t, energy)
    python3 -m assocmem.plot capacity POINTS.csv OUT.png XCOLUMN LABEL [theory]"""
    import sys
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) >= 3 and args[0] == "energy":
        d = np.loadtxt(args[1], delimiter=",", ndmin=2)
        energy((d[:, 0], d[:, 1]), path=args[2])
        return 0
    if len(args) >= 5 and args[0] == "capacity":
        d = np.genfromtxt(args[1], delimiter=",", names=True)
        x = np.atleast_1d(d[args[3]])
        y = np.atleast_1d(d["recalled"])
        o = np.argsort(x)
        theory = {}
        if len(args) > 5 and args[5] == "theory":  # model A, F = x^n, one-step stability against K
            from .capacity import one_step_theory
            ks = np.unique(np.geomspace(max(1, x.min()), x.max(), 60).astype(int))
            N, n = int(np.atleast_1d(d["N"])[0]), int(np.atleast_1d(d["n"])[0])
            theory = {"Krotov-Hopfield 2016 (1 - P_err)^N": (ks, [one_step_theory(N, n, k) for k in ks])}
        capacity(x[o], {args[4]: y[o]}, theory, xlabel=args[3], path=args[2])
        return 0
    print(_main.__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(_main())
