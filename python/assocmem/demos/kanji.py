"""The Kanji demo: the paper's Section 4 pattern-memorisation example, the main job of assocmem.

Renders the first K CJK ideographs of Debian's IPA Gothic font (FreeType) as 64 x 64 binary images
(N = 4096 feature neurons), stores them, and recalls them from two kinds of cue:
  - half: the lower half hidden (model B: hidden pixels 0; model A: hidden pixels random +-1 with
    the visible half clamped, as with an infinite input current I of eq. 8);
  - noise: 20% of the pixels flipped.
Models: B (modern Hopfield, one step of eq. 16, bfloat16 storage), A with F = exp (dense associative
memory, synchronous updates to a fixed point), and the classical network (model A with n = 2) as a
baseline on growing subsets of the memories. "Recalled exactly" means every one of the 4096 pixels
(the sign of model B's state) equals the stored image.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import assocmem as am
from assocmem.demos import int_in, progress, run_main

SIZE = 64
N = SIZE * SIZE


def run(count=3000, out="assocmem-kanji-report", seed=0, classical_counts=(2, 5, 10, 50, 100, 300, 573, 1000),
        classical_cues=100, model_a_count=None, beta_b=2.0, beta_a=1.0, make_report=True):
    """Runs the demo; returns a dict with the table rows and the report path."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    codepoints, images = am.render_glyphs("", count, SIZE)
    K = len(codepoints)
    if K == 0:
        raise RuntimeError("no glyphs rendered: is fonts-ipafont-gothic installed?")
    P = images.reshape(K, N).astype(np.float32)
    t_render = time.perf_counter() - t0
    progress("kanji", f"rendered {K} glyphs (U+{codepoints[0]:04X}..U+{codepoints[-1]:04X}) in {t_render:.2f} s")

    visible = np.zeros(N, bool)
    visible[: N // 2] = True
    half_b = P.copy()
    half_b[:, ~visible] = 0.0
    half_a = P.copy()
    half_a[:, ~visible] = np.where(rng.random((K, N // 2)) < 0.5, 1.0, -1.0)
    noisy = P * np.where(rng.random(P.shape) < 0.2, -1.0, 1.0).astype(np.float32)
    rows = []
    examples = {}

    def record(model, k, cue, recalled, truth, seconds, extra=""):
        exact = np.all(recalled == truth, axis=1)
        rows.append({"model": model, "K": int(k), "cue": cue, "cues": int(len(truth)),
                     "recalled_exactly": float(exact.mean()), "seconds": round(seconds, 3), "note": extra})
        progress("kanji", f"{model:28s} K={k:5d} {cue:6s} {exact.mean():7.2%} in {seconds:.2f} s")
        return exact

    # Model B: one step of eq. (16), bfloat16 storage.
    t = time.perf_counter()
    B = am.ModelB(P, beta=beta_b, dtype="bfloat16")
    for cue_name, cues in (("half", half_b), ("noise", noisy)):
        t = time.perf_counter()
        states = B.retrieve(cues)
        recalled = np.sign(states)
        ok = record(f"B (modern Hopfield, beta={beta_b:g})", K, cue_name, recalled, P, time.perf_counter() - t,
                    f"kernel {B.kernel}")
        examples[("B", cue_name)] = (cues, recalled, ok)

    # Model A, F = exp: synchronous updates to a fixed point.
    ka = K if model_a_count is None else min(K, model_a_count)
    A = am.ModelA(P, F="exp", beta=beta_a)
    t = time.perf_counter()
    recalled = A.retrieve(half_a[:ka], order="sync", clamp=visible)
    ok = record(f"A (F = exp, beta={beta_a:g})", K, "half", recalled, P[:ka], time.perf_counter() - t,
                "visible half clamped; hidden pixels start random")
    examples[("A", "half")] = (half_a[:ka], recalled, ok)
    t = time.perf_counter()
    recalled = A.retrieve(noisy[:ka], order="sync")
    record(f"A (F = exp, beta={beta_a:g})", K, "noise", recalled, P[:ka], time.perf_counter() - t)

    # The classical network (model A, n = 2) on the first k memories.
    classical = []
    for k in [c for c in classical_counts if c <= K]:
        C = am.ModelA(P[:k], F="power", n=2)
        m = min(k, classical_cues)
        t = time.perf_counter()
        recalled = C.retrieve(half_a[:m], order="random", seed=seed, clamp=visible)
        ok = record("classical (A, n = 2)", k, "half", recalled, P[:m], time.perf_counter() - t,
                    f"{m} cues; 0.14 N = {0.14 * N:.0f}")
        classical.append((k, float(ok.mean())))
        examples[("classical", k)] = (half_a[:m], recalled, ok)

    result = {"glyphs": K, "first": f"U+{codepoints[0]:04X}", "last": f"U+{codepoints[-1]:04X}", "rows": rows,
              "render_seconds": round(t_render, 3)}
    if make_report:
        result["report"] = _report(out, P, examples, classical, rows, result, B, A, half_b, half_a, visible, beta_a)
    result["total_seconds"] = round(time.perf_counter() - t0, 2)
    return result


def _neg_log_neg_energy(P, s, beta):
    """-log(-E) for model A with F = exp(beta x)/beta and no current: E = -(1/beta) sum_mu exp(beta m_mu)
    overflows a double at N = 4096, its logarithm does not (log-sum-exp). Increasing in E."""
    z = beta * (P.astype(np.float64) @ s.astype(np.float64))
    zmax = z.max()
    return -(zmax + np.log(np.exp(z - zmax).sum()) - np.log(beta))


def _pick(ok, n=8):
    """Indices to show: failures first (when there are any), then successes."""
    bad = list(np.flatnonzero(~ok)[: n // 2])
    good = list(np.flatnonzero(ok)[: n - len(bad)])
    return bad + good


def _report(out, P, examples, classical, rows, result, B, A, half_b, half_a, visible, A_beta):
    import assocmem.plot as plot
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    figs = []
    for key, title in ((("B", "half"), "Model B, lower half hidden"), (("B", "noise"), "Model B, 20% of pixels flipped"),
                       (("A", "half"), "Model A (F = exp), lower half hidden")):
        cues, recalled, ok = examples[key]
        idx = _pick(ok)
        name = f"mosaic_{key[0]}_{key[1]}.png"
        plot.mosaic([cues[idx], recalled[idx], P[idx]], ["cue", "recalled", "original"], shape=(SIZE, SIZE),
                    path=os.path.join(out, name), title=title)
        figs.append((title, name))
    worst = max(k for k, _ in classical) if classical else None
    if worst is not None:
        cues, recalled, ok = examples[("classical", worst)]
        idx = _pick(ok)
        name = "mosaic_classical.png"
        plot.mosaic([cues[idx], recalled[idx], P[idx]], ["cue", "recalled", "original"], shape=(SIZE, SIZE),
                    path=os.path.join(out, name), title=f"Classical network, K = {worst}")
        figs.append((f"Classical network (n = 2), K = {worst}", name))

    # Energy along a few recalls: model B per update (eq. 13), model A per synchronous sweep (eq. 8).
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    curves_b, curves_a = [], []
    for i in range(5):
        v = half_b[i].copy()
        e = [B.energy(v)]
        for _ in range(5):
            v = B.retrieve(v)
            e.append(B.energy(v))
        curves_b.append((np.arange(len(e)), np.array(e)))
        s = half_a[i].copy()
        e = [_neg_log_neg_energy(P, s, A_beta)]
        for _ in range(6):
            s = A.retrieve(s, order="sync", steps=1, clamp=visible)
            e.append(_neg_log_neg_energy(P, s, A_beta))
        curves_a.append((np.arange(len(e)), np.array(e)))
    labels = [f"glyph {i}" for i in range(5)]
    plot.energy(curves_b, labels, ax=axes[0], xlabel="update (eq. 16)", title="Model B: energy (eq. 13)")
    plot.energy(curves_a, labels, ax=axes[1], xlabel="synchronous sweep",
                title="Model A, F = exp: -log(-E), E of eq. (8)")
    axes[1].set_ylabel("-log(-E)")
    fig.tight_layout()
    plot.save_figure(fig, os.path.join(out, "energy.png"))
    plt.close("all")
    if classical:
        plot.capacity([k for k, _ in classical], {"classical network (n = 2)": [r for _, r in classical]},
                      path=os.path.join(out, "classical.png"), logx=True,
                      title="Classical network on Kanji, lower half hidden")
        plt.close("all")

    lines = ["# assocmem: the Kanji demo", "",
             f"{result['glyphs']} CJK ideographs ({result['first']}..{result['last']}) of IPA Gothic rendered as "
             f"64 x 64 binary images (N = 4096 feature neurons); the classical capacity is 0.14 N = 573 patterns.", "",
             "| model | K | cue | cues | recalled exactly | time (s) | note |", "|---|---:|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['K']} | {r['cue']} | {r['cues']} | {r['recalled_exactly']:.2%} | "
                     f"{r['seconds']:.2f} | {r['note']} |")
    lines += ["", "Cues: *half* hides the lower half (model B: hidden pixels 0; models A: hidden pixels random, the",
              "visible half clamped); *noise* flips 20% of the pixels. Exactly = all 4096 pixels right.", "",
              f"Glyph images are strongly correlated (mean pixel {P.mean():+.2f}: mostly background), unlike the random",
              "unbiased patterns behind the classical estimate 0.14 N; the classical network (n = 2) fails on them",
              "almost at once, while models A (F = exp) and B separate thousands.", ""]
    for title, name in figs:
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    lines += ["## Energy along recalls", "", "![energy](energy.png)", ""]
    if classical:
        lines += ["## The classical network against K", "", "![classical](classical.png)", ""]
    path = os.path.join(out, "index.md")
    am.write_file(path, "\n".join(lines).encode())
    return os.path.abspath(path)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="assocmem demo kanji", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int_in(1, 100_000), default=3000, help="glyphs to store (default 3000)")
    ap.add_argument("--out", default="assocmem-kanji-report", help="report folder (default ./assocmem-kanji-report)")
    ap.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0, help="seed of the random cues")
    ap.add_argument("--no-report", action="store_true", help="print the table only")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    if args.count < 1:
        ap.error("--count must be >= 1")
    res = run(count=args.count, out=args.out, seed=args.seed, make_report=not args.no_report)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{res['glyphs']} glyphs {res['first']}..{res['last']}, N = {N}; classical capacity 0.14 N = {0.14 * N:.0f}")
    print(f"{'model':30s} {'K':>5s} {'cue':6s} {'cues':>5s} {'exact':>8s} {'time':>8s}")
    for r in res["rows"]:
        print(f"{r['model']:30s} {r['K']:5d} {r['cue']:6s} {r['cues']:5d} {r['recalled_exactly']:8.2%} {r['seconds']:7.2f}s")
    if "report" in res:
        print(f"report: {res['report']}")
    print(f"total {res['total_seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
