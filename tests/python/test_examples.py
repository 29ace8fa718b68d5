"""The training examples (examples/*.py) at small size: the DeepRC-style HopfieldPooling classifier learns
to detect a planted motif in bags of instances (held-out accuracy, two seeds), and memory learning through
the retrieval recovers the stored patterns (loss, exact recall from noisy cues, two seeds), and the
three-layer hierarchical memory (image, convolutional features, softmax memories) learns to complete glyphs
from half-hidden cues (two seeds), its energy never increasing along the recall (eq. 4)."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "..", "examples")
sys.path.insert(0, EXAMPLES)

import hierarchical_glyphs  # noqa: E402
import immune_repertoire  # noqa: E402
import memory_learning  # noqa: E402


@pytest.mark.parametrize("seed", [0, 1])
def test_hopfield_pooling_classifies_repertoires(seed):
    # 1000 instances per bag, one motif copy in each positive bag (a 0.1% witness rate) after the
    # curriculum 30, 10, 3 copies; a classifier that could not find the motif would be at chance (0.5) on
    # the held-out bags, which hold exactly one copy.
    r = immune_repertoire.run(instances=1000, bags=96, motifs=1, curriculum=(30, 10, 3), stage_epochs=5, epochs=5,
                              seed=seed, log=lambda *_: None)
    assert r["curriculum"] == [30, 10, 3] and r["epochs"] == 20
    assert r["accuracy"] >= 0.9, r


def test_immune_repertoire_command_line():
    env = dict(os.environ)
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, "immune_repertoire.py"), "--instances", "200",
                          "--bags", "8", "--epochs", "1", "--curriculum", "20",
                          "--stage-epochs", "1", "--json"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["instances"] == 200 and 0 <= r["accuracy"] <= 1
    bad = subprocess.run([sys.executable, os.path.join(EXAMPLES, "immune_repertoire.py"), "--bags", "0"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "--bags must be >= 1" in bad.stderr
    bad = subprocess.run([sys.executable, os.path.join(EXAMPLES, "immune_repertoire.py"), "--curriculum", "5,x"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "--curriculum must be" in bad.stderr


@pytest.mark.parametrize("seed", [0, 1])
def test_memory_learning_recovers_the_patterns(seed):
    r = memory_learning.run(patterns=32, dim=64, memories=64, seed=seed, log=lambda *_: None)
    assert r["final_loss"] < 0.05 * r["initial_loss"], r
    assert r["exact_recall"] >= 0.9, r


@pytest.mark.parametrize("seed", [0, 1])
def test_hierarchical_glyphs_learns_to_complete_half_hidden_glyphs(seed):
    pytest.importorskip("torch")
    import numpy as np
    r = hierarchical_glyphs.run(size=16, glyphs=8, iterations=400, seed=seed, threads=2, log=lambda *_: None,
                                keep_model=True)
    right = r["hidden_pixels_right"]
    # The cue's hidden pixels are 0 (never the right sign); ~90% of a glyph's pixels are background, so
    # "all background" would score ~0.9: the trained recall must beat that, and the network before training.
    assert r["final_loss"] < 0.1 * r["initial_loss"], r
    assert right["cue"] == 0.0 and right["layered"] >= 0.97 and right["layered"] > right["before_training"] + 0.3, right
    assert r["exact_recall"]["layered"] >= 0.5, r["exact_recall"]
    assert r["parameters"]["layered"] < r["parameters"]["model_b"] * 2
    # eq. (4) for L layers on the trained weights: along the continuous dynamics from each cue (rk45), the
    # energy never increases (convex Lagrangians), to the integrator's rounding.
    net = r["model"].network()
    for x0 in r["cues"][:3].double().numpy():
        tr = net.simulate(x0, t_end=4.0, rtol=1e-9, atol=1e-12)
        assert tr.reason in ("reached t_end", "fixed point"), tr.reason
        assert np.all(np.diff(tr.energy) <= 1e-10 * (1 + np.abs(tr.energy[1:])))
    # Bounded activations everywhere (tanh, sigmoid, softmax): the energy is bounded below (Section 2).
    assert net.energy_bound()[0] == "bounded"


def test_hierarchical_glyphs_command_line(tmp_path):
    pytest.importorskip("torch")
    env = dict(os.environ)
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, "hierarchical_glyphs.py"), "--size", "8", "--glyphs", "4",
                          "--stride", "2", "--channels", "2", "--iterations", "3", "--seeds", "0,1"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "| glyphs recalled exactly: model B |" in out.stdout and "+-" in out.stdout
    bad = subprocess.run([sys.executable, os.path.join(EXAMPLES, "hierarchical_glyphs.py"), "--size", "30"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "--size must be a multiple of --stride" in bad.stderr
