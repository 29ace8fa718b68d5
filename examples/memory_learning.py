#!/usr/bin/python3
"""Memory learning: the stored patterns of a modern Hopfield network (model B, eq. 16) learned by gradient
descent through the retrieval, on a reconstruction loss.

--patterns random +-1 patterns of dimension --dim are the data; the network starts from --memories random
memories of small norm and is shown cues with --flip of the bits flipped (fresh noise at every step). The
loss is the squared error between the retrieval from the cue (--steps updates of eq. 16, backpropagated
through every step by assocmem.torch's fused backward) and the clean pattern. The memories become the
patterns: the script prints the loss, the fraction of fresh noisy cues whose retrieval has the pattern's
signs exactly, and the cosine of each pattern with its nearest learned memory (spare memories let
no two patterns share one).

    /usr/bin/python3 examples/memory_learning.py
    /usr/bin/python3 examples/memory_learning.py --patterns 64 --dim 128 --flip 0.2
"""
import argparse
import json
import sys
import time

import torch

import assocmem.torch as at


def flip(patterns, fraction, generator):
    return torch.where(torch.rand(patterns.shape, generator=generator) < fraction, -patterns, patterns)


def run(patterns=32, dim=64, memories=None, flip_fraction=0.15, steps=2, beta=0.25, iterations=1000, lr=0.05, seed=0,
        log=print):
    g = torch.Generator().manual_seed(seed)
    data = torch.where(torch.rand(patterns, dim, generator=g) < 0.5, -1.0, 1.0)
    memories = (0.1 * torch.randn(memories or patterns, dim, generator=g)).requires_grad_(True)
    opt = torch.optim.Adam([memories], lr=lr)
    # The step size anneals to 0 (cosine): at a constant lr Adam keeps jumping around the minimum late in
    # training, and where it stands after the last step then depends on the rounding of every step.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iterations)
    t0 = time.perf_counter()
    losses = []
    for it in range(iterations):
        out = at.hopfield_retrieve(flip(data, flip_fraction, g), memories, beta=beta, steps=steps)
        loss = ((out - data) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(loss.item())
        if it % 50 == 0 or it == iterations - 1:
            log(f"iteration {it:4d}  loss {loss.item():.5f}")
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        trials = 20
        exact = sum((torch.sign(at.hopfield_retrieve(flip(data, flip_fraction, g), memories, beta=beta, steps=steps))
                     == data).all(dim=1).float().mean().item() for _ in range(trials)) / trials
        unit = memories / memories.norm(dim=1, keepdim=True)
        cos = (data / dim ** 0.5 @ unit.T).max(dim=1).values
    return {"initial_loss": losses[0], "final_loss": losses[-1], "exact_recall": exact,
            "min_cosine": cos.min().item(), "seconds": seconds, "patterns": patterns, "dim": dim, "seed": seed}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patterns", type=int, default=32, help="patterns to learn, and memories [32]")
    p.add_argument("--dim", type=int, default=64, help="pattern dimension [64]")
    p.add_argument("--memories", type=int, default=None, help="memories (hidden neurons) to learn [2 x --patterns]")
    p.add_argument("--flip", type=float, default=0.15, help="fraction of a cue's bits flipped [0.15]")
    p.add_argument("--steps", type=int, default=2, help="retrieval steps, backpropagated through [2]")
    p.add_argument("--beta", type=float, default=0.25, help="inverse temperature [0.25]")
    p.add_argument("--iterations", type=int, default=1000, help="gradient steps [1000]")
    p.add_argument("--seed", type=int, default=0, help="random seed [0]")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    a = p.parse_args(argv)
    if min(a.patterns, a.dim, a.steps, a.iterations, a.memories or 1) < 1:
        p.error("--patterns, --dim, --memories, --steps and --iterations must be >= 1")
    if not 0 <= a.flip < 0.5 or not a.beta > 0:
        p.error("--flip must be in [0, 0.5) and --beta > 0")
    r = run(a.patterns, a.dim, a.memories or 2 * a.patterns, a.flip, a.steps, a.beta, a.iterations, seed=a.seed,
            log=(lambda *_: None) if a.json else print)
    if a.json:
        print(json.dumps(r))
    else:
        print(f"loss {r['initial_loss']:.4f} -> {r['final_loss']:.5f}; exact recall from cues with {a.flip:.0%} "
              f"of the bits flipped: {r['exact_recall']:.3f}; nearest learned memory cosine >= {r['min_cosine']:.3f}"
              f"; {r['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
