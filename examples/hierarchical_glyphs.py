#!/usr/bin/python3
"""A hierarchical associative memory trained to complete glyphs (issue 25): three layers - the image, a
convolutional feature layer and a dense layer of softmax memories - whose weights are learned end to end
through the dynamics (eq. 1 for L layers), compared with the two-layer modern Hopfield network (model B)
storing the same glyphs.

The data are the first --glyphs CJK ideographs of Debian's IPA Gothic font, rendered --size x --size as
+-1 images by the Kanji demo's renderer (assocmem.render_glyphs). A cue hides the lower half (its pixels
0). The network (assocmem.torch.LayeredMemory):

    image     (1, S, S)             log_cosh(1): g = tanh(x); starts at 3 x the cue's pixels; a bias
    features  (C, S/s, S/s)         log_cosh(1): g = tanh(x) (zero-centred: with sigmoid features every
                                    memory saw the same mean activity and one memory won every cue); a
                                    convolution from the image (kernel 2s, stride s, padding s/2), its
                                    feedback the transposed convolution; a bias
    memories  (K,)                  log_sum_exp(beta): g = softmax; a dense synapse from the features,
                                    each row starting as one glyph's feature activations (memories that
                                    start alike collapse into one during training)

runs --steps Euler steps of size --dt from the cue; the loss is the squared error between the image
layer's activations and the glyph, backpropagated through every step (assocmem.torch, products in C++).
Model B stores the glyphs themselves (K = glyphs memories of S^2 numbers) and recalls with one update
of eq. (16) from the same cue. The script reports, for both, for the network before training and for
the cue itself, the fraction of hidden pixels recalled with the right sign and the glyphs recalled
exactly (every pixel), the parameter counts, the loss curve, and the energy (eq. 2 for L layers) along
the trained network's recall, which never increases for these convex Lagrangians in continuous time
(eq. 4); the Euler steps' largest rise is reported.

    /usr/bin/python3 examples/hierarchical_glyphs.py                     # 64 x 64, 32 glyphs
    /usr/bin/python3 examples/hierarchical_glyphs.py --size 16 --glyphs 8 --iterations 400 --json
"""
import argparse
import json
import sys
import time

import numpy as np
import torch

import assocmem as am
import assocmem.torch as at

L = am.lagrangians


def build(size, channels, memories, beta, seed, stride=4):
    """The network; the convolution's kernel is 2 x stride, padded by stride / 2: features size / stride."""
    torch.manual_seed(seed)
    f = size // stride
    return at.LayeredMemory([at.Neurons("image", (1, size, size), L.log_cosh(1.0), tau=1.0, bias=True),
                             at.Neurons("features", (channels, f, f), L.log_cosh(1.0), tau=0.5, bias=True),
                             at.Neurons("memories", memories, L.log_sum_exp(beta), tau=0.5)],
                            [at.Conv2dSynapse("image", "features", 2 * stride, stride=stride, padding=stride // 2),
                             at.DenseSynapse("features", "memories", std=0.01)])


def cues(glyphs):
    """The glyphs (P, S, S) with the lower half hidden (0)."""
    c = glyphs.clone()
    c[:, glyphs.shape[1] // 2:, :] = 0
    return c


def scores(recalled, glyphs):
    """(fraction of hidden pixels with the glyph's sign, fraction of glyphs whose every pixel has it)."""
    S = glyphs.shape[1]
    right = torch.sign(recalled) == glyphs
    return float(right[:, S // 2:, :].float().mean()), float(right.reshape(len(glyphs), -1).all(1).float().mean())


DEFAULTS = dict(size=64, glyphs=32, channels=16, stride=4, memories=None, beta=1.0, steps=12, dt=0.25, iterations=1000,
                lr=0.005, batch=None, seed=0, threads=0)


def run(size=64, glyphs=32, channels=16, stride=4, memories=None, beta=1.0, steps=12, dt=0.25, iterations=1000, lr=0.005,
        batch=None, seed=0, threads=0, log=print, keep_model=False):
    if stride not in (2, 4):
        raise ValueError(f"--stride must be 2 or 4, got {stride}")
    if size % stride or size < 2 * stride:
        raise ValueError(f"--size must be a multiple of --stride and >= 2 x stride, got {size}")
    memories = memories or glyphs
    _, images = am.render_glyphs("", glyphs, size)
    if len(images) < glyphs:
        raise RuntimeError("too few glyphs rendered: is fonts-ipafont-gothic installed?")
    data = torch.tensor(images, dtype=torch.float32)
    P, N = len(data), size * size
    net = build(size, channels, memories, beta, seed, stride)
    net.threads = threads

    def recall(x_cues, grad=True):
        x0 = net.join({"image": 3.0 * x_cues.reshape(len(x_cues), N)})
        with torch.set_grad_enabled(grad):
            x = net(x0, steps=steps, dt=dt)
            return net.split(net.activations(x))["image"].reshape(len(x_cues), size, size), x0

    # Each memory starts as one glyph's feature-layer activations (the untrained network's, from the whole
    # glyph), as model B stores the glyphs themselves: memories that start alike collapse into one.
    with torch.no_grad():
        x = net(net.join({"image": 3.0 * data.reshape(P, N)}), steps=steps, dt=dt)
        f = net.split(net.activations(x))["features"].reshape(P, -1)
        W = net.synapses[1]
        k = min(memories, P)
        W[:k] = f[:k] / f[:k].norm(dim=1, keepdim=True)
    before = scores(recall(cues(data), grad=False)[0], data)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iterations)
    g = torch.Generator().manual_seed(seed)
    losses, t0 = [], time.perf_counter()
    for it in range(iterations):
        idx = torch.randperm(P, generator=g)[:batch] if batch else torch.arange(P)
        out, _ = recall(cues(data[idx]))
        loss = ((out - data[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(loss.item())
        if it % 25 == 0 or it == iterations - 1:
            log(f"iteration {it:4d}  loss {loss.item():.4f}  ({time.perf_counter() - t0:.0f} s)")
    train_s = time.perf_counter() - t0

    out, x0 = recall(cues(data), grad=False)
    trained = scores(out, data)
    _, energies = net.trajectory(x0, steps=steps, dt=dt)  # (steps + 1, P)
    rises = (energies[1:] - energies[:-1]).max().item()

    # Model B on the same glyphs: one update of eq. (16) from the same cue.
    b = am.ModelB(images.reshape(P, N).astype(np.float32), beta=2.0)
    recalled_b = b.retrieve(cues(data).reshape(P, N).numpy(), steps=1)
    model_b = scores(torch.tensor(recalled_b).reshape(P, size, size), data)
    cue = scores(cues(data), data)  # hidden pixels 0: sign 0 is never right

    layered_params = sum(p.numel() for p in net.parameters())
    result = {
        "seed": seed, "size": size, "glyphs": P, "channels": channels, "stride": stride, "memories": memories, "steps": steps, "dt": dt,
        "iterations": iterations, "train_seconds": round(train_s, 1),
        "initial_loss": losses[0], "final_loss": losses[-1], "losses": losses[::max(1, iterations // 50)],
        "hidden_pixels_right": {"cue": cue[0], "before_training": before[0], "layered": trained[0], "model_b": model_b[0]},
        "exact_recall": {"before_training": before[1], "layered": trained[1], "model_b": model_b[1]},
        "parameters": {"layered": layered_params, "model_b": P * N},
        "energy_mean": energies.mean(1).tolist(),
        "largest_energy_rise_per_step": rises,
        "energy_scale": energies.abs().max().item(),
    }
    if keep_model:
        result["model"], result["cues"] = net, x0
    log(f"hidden pixels right: cue {cue[0]:.3f}, before training {before[0]:.3f}, layered {trained[0]:.3f}, "
        f"model B {model_b[0]:.3f}")
    log(f"glyphs recalled exactly: layered {trained[1]:.3f}, model B {model_b[1]:.3f}")
    log(f"parameters: layered {layered_params}, model B {P * N}")
    log(f"energy along the recall (mean over glyphs): {result['energy_mean'][0]:.2f} -> "
        f"{result['energy_mean'][-1]:.2f}; largest rise in one step {rises:.2e}")
    return result


def summary(results):
    """A markdown table of the results of several seeds: each figure's mean and sample standard deviation."""
    import statistics

    def stat(values):
        m = statistics.mean(values)
        return f"{m:.4f} +- {statistics.stdev(values):.4f}" if len(values) > 1 else f"{m:.4f}"

    r0 = results[0]
    rows = [("hidden pixels right: cue (hidden pixels 0)", [r["hidden_pixels_right"]["cue"] for r in results]),
            ("hidden pixels right: before training", [r["hidden_pixels_right"]["before_training"] for r in results]),
            ("hidden pixels right: layered, trained", [r["hidden_pixels_right"]["layered"] for r in results]),
            ("hidden pixels right: model B", [r["hidden_pixels_right"]["model_b"] for r in results]),
            ("glyphs recalled exactly: layered, trained", [r["exact_recall"]["layered"] for r in results]),
            ("glyphs recalled exactly: model B", [r["exact_recall"]["model_b"] for r in results]),
            ("final loss / initial loss", [r["final_loss"] / r["initial_loss"] for r in results]),
            ("energy along the recall: first", [r["energy_mean"][0] for r in results]),
            ("energy along the recall: last", [r["energy_mean"][-1] for r in results]),
            ("largest energy rise in one Euler step", [r["largest_energy_rise_per_step"] for r in results])]
    out = [f"{r0['glyphs']} glyphs of {r0['size']} x {r0['size']}; features {r0['channels']} channels, stride "
           f"{r0['stride']}; {r0['memories']} memories; {r0['iterations']} iterations; seeds "
           f"{', '.join(str(r['seed']) for r in results)}; parameters: layered {r0['parameters']['layered']}, "
           f"model B {r0['parameters']['model_b']}", "", "| figure | mean +- sd over the seeds |", "|---|---:|"]
    out += [f"| {name} | {stat(values)} |" for name, values in rows]
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Defaults: " + ", ".join(f"{k} {v}" for k, v in DEFAULTS.items()))
    p.add_argument("--size", type=int, default=DEFAULTS["size"], help="glyph images are size x size (a multiple of 4)")
    p.add_argument("--glyphs", type=int, default=DEFAULTS["glyphs"], help="how many glyphs to store")
    p.add_argument("--channels", type=int, default=DEFAULTS["channels"], help="feature layer channels")
    p.add_argument("--stride", type=int, default=DEFAULTS["stride"], help="the convolution's stride, 2 or 4 (kernel 2 x stride)")
    p.add_argument("--memories", type=int, default=DEFAULTS["memories"], help="memory layer neurons (default: --glyphs)")
    p.add_argument("--beta", type=float, default=DEFAULTS["beta"], help="the memory layer's softmax beta")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="Euler steps of the recall")
    p.add_argument("--dt", type=float, default=DEFAULTS["dt"], help="Euler step size")
    p.add_argument("--iterations", type=int, default=DEFAULTS["iterations"], help="training iterations")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="Adam learning rate")
    p.add_argument("--batch", type=int, default=DEFAULTS["batch"], help="glyphs per iteration (default: all)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--seeds", default=None, help="comma-separated seeds: run each, print a summary table (mean +- sd)")
    p.add_argument("--threads", type=int, default=DEFAULTS["threads"], help="threads (default: every CPU)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    a = p.parse_args(argv)
    if a.seeds is not None:
        try:
            seeds = [int(x) for x in a.seeds.split(",")]
        except ValueError:
            print(f"hierarchical_glyphs: --seeds must be comma-separated whole numbers, got {a.seeds!r}", file=sys.stderr)
            return 2
        try:
            results = [run(a.size, a.glyphs, a.channels, a.stride, a.memories, a.beta, a.steps, a.dt, a.iterations,
                           a.lr, a.batch, seed, a.threads, log=lambda *_: None) for seed in seeds]
        except (ValueError, RuntimeError) as e:
            print(f"hierarchical_glyphs: {e}", file=sys.stderr)
            return 2
        print(json.dumps(results) if a.json else summary(results))
        return 0
    try:
        r = run(a.size, a.glyphs, a.channels, a.stride, a.memories, a.beta, a.steps, a.dt, a.iterations, a.lr, a.batch, a.seed,
                a.threads, log=(lambda *_: None) if a.json else print)
    except (ValueError, RuntimeError) as e:
        print(f"hierarchical_glyphs: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
