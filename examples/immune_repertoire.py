#!/usr/bin/python3
"""Immune-repertoire-style multiple-instance classification with Hopfield pooling (DeepRC, Widrich et al.
2020; the paper's Section 4 example: N_f = 32, far more than 10^4 memories).

Each bag (a repertoire) holds --instances random 32-dimensional sequence embeddings; a positive bag also
holds --motifs noisy copies of one motif embedding (a disease-associated receptor). A HopfieldPooling
classifier (hopfield-layers' defaults, assocmem's fused association) stores the bag's instances as its
memories and retrieves with a learned state pattern; a linear read-out of the pooled pattern classifies
the bag. The association over 10,000 memories per bag is computed tile by tile, never as a matrix.

At a few copies in 10,000 (the default: 4, a 0.04% witness rate) the pooled pattern of an untrained
classifier is the bag's average, where the motif's share is 4/10,000 of the signal: the gradient that
would turn the query towards the motif is lost in the noise and plain training stays at chance. So the
classifier is trained on a curriculum (--curriculum): a few epochs each on bags with more copies of the
motif (100, 30, 10 by default), where the query learns to find it, then --epochs on bags at the target
rate. Every held-out bag has exactly --motifs copies.

    /usr/bin/python3 examples/immune_repertoire.py                        # 4 copies in 10,000 instances
    /usr/bin/python3 examples/immune_repertoire.py --curriculum none --motifs 100   # no curriculum, 1%
    /usr/bin/python3 examples/immune_repertoire.py --instances 1000 --motifs 1 --curriculum 30,10,3   # quick

Prints the held-out accuracy, the loss, and the time per epoch. tests/python/test_examples.py runs it at
small size for two seeds (where, without the curriculum, it stays near chance too). Measured at full
size on 2 cores (`--seed S --json`): held-out accuracy 1.000 for seeds 0, 1, 2 and 3, 5-6 s per epoch;
`--curriculum none --epochs 20` (the same 20 epochs at 4 copies, seed 0): 0.500, training loss ln 2.
"""
import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from assocmem.torch import HopfieldPooling


def make_bags(count, instances, motifs, motif, noise, generator):
    """(bags (count, instances, d), labels (count,)): half positive, each with `motifs` noisy motif copies."""
    d = motif.shape[0]
    x = torch.randn(count, instances, d, generator=generator)
    y = torch.zeros(count)
    y[: count // 2] = 1
    for b in range(count // 2):
        where = torch.randperm(instances, generator=generator)[:motifs]
        x[b, where] = motif + noise * torch.randn(motifs, d, generator=generator)
    order = torch.randperm(count, generator=generator)
    return x[order], y[order]


class Classifier(torch.nn.Module):
    def __init__(self, d, hidden, scaling):
        super().__init__()
        self.pool = HopfieldPooling(input_size=d, hidden_size=hidden, scaling=scaling)
        self.out = torch.nn.Linear(d, 1)

    def forward(self, bags):
        return self.out(self.pool(bags)).squeeze(-1)


def run(instances=10_000, bags=96, motifs=4, noise=0.1, d=32, hidden=32, scaling=1.0, epochs=5, batch=8,
        lr=0.01, seed=0, curriculum=(100, 30, 10), stage_epochs=5, log=print):
    """Trains on fresh bags with each count of motif copies in `curriculum` for `stage_epochs` epochs, then
    for `epochs` epochs on bags with `motifs` copies; held-out bags have `motifs` copies."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    motif = torch.randn(d, generator=g)
    model = Classifier(d, hidden, scaling)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    stages = [(m, stage_epochs) for m in curriculum if m < instances] + [(motifs, epochs)]
    t0, done, total = time.perf_counter(), 0, 0.0
    for copies, n_epochs in stages:
        xtr, ytr = make_bags(bags, instances, copies, motif, noise, g)
        for _ in range(n_epochs):
            order = torch.randperm(bags, generator=g)
            total = 0.0
            for i in range(0, bags, batch):
                idx = order[i:i + batch]
                loss = F.binary_cross_entropy_with_logits(model(xtr[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            done += 1
            log(f"epoch {done:3d}  {copies:4d} copies per positive bag  training loss {total / bags:.4f}")
    seconds = time.perf_counter() - t0
    xte, yte = make_bags(bags, instances, motifs, motif, noise, g)
    with torch.no_grad():
        acc = ((torch.cat([model(xte[i:i + batch]) for i in range(0, bags, batch)]) > 0).float() == yte).float()
    return {"accuracy": acc.mean().item(), "final_loss": total / bags, "seconds_per_epoch": seconds / done,
            "epochs": done, "instances": instances, "bags": bags, "motifs": motifs,
            "curriculum": [m for m, _ in stages[:-1]], "seed": seed}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--instances", type=int, default=10_000, help="instances (memories) per bag [10000]")
    p.add_argument("--bags", type=int, default=96, help="training bags, and as many held-out bags [96]")
    p.add_argument("--motifs", type=int, default=4,
                   help="motif copies in a positive bag [4: a 0.04%% witness rate]")
    p.add_argument("--noise", type=float, default=0.1, help="noise added to each motif copy [0.1]")
    p.add_argument("--curriculum", default="100,30,10",
                   help="copies per positive bag of the stages before the target, or 'none' [100,30,10]")
    p.add_argument("--stage-epochs", type=int, default=5, help="epochs of each curriculum stage [5]")
    p.add_argument("--epochs", type=int, default=5, help="training epochs at the target --motifs [5]")
    p.add_argument("--scaling", type=float, default=1.0, help="beta of the association [1.0]")
    p.add_argument("--seed", type=int, default=0, help="random seed [0]")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    a = p.parse_args(argv)
    for name in ("instances", "bags", "motifs", "epochs", "stage_epochs"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.motifs > a.instances or a.bags < 2:
        p.error("--motifs must be <= --instances and --bags >= 2")
    try:
        curriculum = () if a.curriculum == "none" else tuple(int(x) for x in a.curriculum.split(","))
    except ValueError:
        p.error(f"--curriculum must be 'none' or comma-separated copy counts, got {a.curriculum!r}")
    if any(c < 1 for c in curriculum):
        p.error("--curriculum: every count must be >= 1")
    r = run(instances=a.instances, bags=a.bags, motifs=a.motifs, noise=a.noise, epochs=a.epochs, scaling=a.scaling,
            seed=a.seed, curriculum=curriculum, stage_epochs=a.stage_epochs,
            log=(lambda *_: None) if a.json else print)
    if a.json:
        print(json.dumps(r))
    else:
        print(f"held-out accuracy {r['accuracy']:.3f} ({r['bags']} bags of {r['instances']} instances, "
              f"{r['motifs']} motif copies in positives; curriculum {r['curriculum'] or 'none'}); "
              f"{r['seconds_per_epoch']:.2f} s per epoch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
