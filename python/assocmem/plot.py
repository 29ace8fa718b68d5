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

__all__ = ["energy", "mosaic", "capacity"]


def _finish(fig, path):
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
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
