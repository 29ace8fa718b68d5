"""The training examples (examples/*.py) at small size: the DeepRC-style HopfieldPooling classifier learns
to detect a planted motif in bags of instances (held-out accuracy, two seeds), and memory learning through
the retrieval recovers the stored patterns (loss, exact recall from noisy cues, two seeds)."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "..", "examples")
sys.path.insert(0, EXAMPLES)

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
