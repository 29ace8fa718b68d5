"""Colour memory (Section 4): N_f = 3 cone-like features, up to 10^6 stored colours, model B.

Memories: the named colours of X11's rgb.txt (Debian package x11-common) and dense grids of n^3
colours in the RGB cube (up to 100^3 = 10^6). A cue is a stored colour perturbed by Gaussian noise
(sigma, in units of the [0, 1] RGB cube); recalled means the colour returned by one update (eq. 16) is
nearer to that colour than to any other stored one ("nearest" reports whether the cue's strongest
weight is on it, which beta does not change). Model B compares dot products, so for recall by distance each colour
xi is stored as (xi, -|xi|^2/2) and a cue v as (v, 1): one constant "bias" feature beside the three
colour features, the standard way to turn a dot product into -|v - xi|^2/2 + const.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import assocmem as am
from assocmem.demos import float_in, int_in, progress, run_main

RGB_TXT = "/usr/share/X11/rgb.txt"


def x11_colours(path=RGB_TXT):
    """(names, rgb in [0, 1]) of the distinct colours of rgb.txt."""
    names, rgb, seen = [], [], set()
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 4 or line.startswith("!"):
                continue
            c = tuple(int(p) for p in parts[:3])
            if c in seen:
                continue
            seen.add(c)
            names.append(" ".join(parts[3:]))
            rgb.append(c)
    return names, np.array(rgb, np.float32) / 255.0


def grid(n):
    g = (np.arange(n, dtype=np.float32) + 0.5) / n
    return np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)


def recall_rate(C, beta, sigma, queries, rng):
    """(recalled, nearest, seconds): recalled = the colour returned by one update is closer to the cue's
    colour than to any other stored colour; nearest = the cue's strongest weight is on its colour."""
    aug = np.concatenate([C, -0.5 * (C ** 2).sum(1, keepdims=True)], 1).astype(np.float32)
    m = am.ModernHopfield(aug, beta=beta)
    idx = rng.choice(len(C), size=min(queries, len(C)), replace=False)
    cues = C[idx] + sigma * rng.standard_normal((len(idx), 3)).astype(np.float32)
    ones = np.ones((len(idx), 1), np.float32)
    q = np.concatenate([cues, ones], 1)
    t = time.perf_counter()
    states = m.retrieve(q, steps=1)
    secs = time.perf_counter() - t
    strongest, _ = m.attention(q, 1)  # the cue's strongest weight
    # Which stored colour is the returned colour nearest to? (the same distance form, one more pass)
    back, _ = m.attention(np.concatenate([states[:, :3], ones], 1), 1)
    return float((back[:, 0] == idx).mean()), float((strongest[:, 0] == idx).mean()), secs


def run(sigma=0.002, queries=1000, seed=0, sizes=(10, 20, 50, 100), betas=(1e2, 1e3, 1e4, 1e5, 1e6)):
    rng = np.random.default_rng(seed)
    sets = []
    if os.path.exists(RGB_TXT):
        names, rgb = x11_colours()
        sets.append((f"X11 named ({len(rgb)})", rgb))
    sets += [(f"grid {n}^3 ({n ** 3:,})", grid(n)) for n in sizes]
    rows = []
    for label, C in sets:
        for beta in betas:
            rate, nearest, secs = recall_rate(C, beta, sigma, queries, rng)
            rows.append({"colours": label, "count": int(len(C)), "beta": beta, "recalled": rate, "nearest": nearest,
                         "seconds": round(secs, 3)})
            progress("colour", f"{label:26s} beta {beta:8g}: recalled {rate:7.2%} ({secs:.2f} s)")
    return {"sigma": sigma, "queries": queries, "rows": rows}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="assocmem demo colour", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sigma", type=float_in(0.0, 10.0), default=0.002, help="cue noise (RGB units in [0, 1])")
    ap.add_argument("--queries", type=int_in(1, 10**7), default=1000)
    ap.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    res = run(sigma=a.sigma, queries=a.queries, seed=a.seed)
    if a.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"colour memory, N_f = 3 (+1 bias feature); cue noise sigma = {res['sigma']}")
    print(f"{'colours':26s} {'beta':>8s} {'recalled':>9s} {'nearest':>8s} {'time':>7s}")
    for r in res["rows"]:
        print(f"{r['colours']:26s} {r['beta']:8g} {r['recalled']:9.2%} {r['nearest']:8.2%} {r['seconds']:6.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
