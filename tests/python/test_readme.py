"""The README's recall example, run as written on data where the answer is known: K = 10^4 random unit
memories in d = 64, noisy queries. beta = 32 retrieves every query (top weight ~1), beta = 8 (the old
example) sends every query to the metastable average (top weight ~1/K)."""
import json
import os
import subprocess

import numpy as np

CLI = os.environ.get("ASSOCMEM_CLI", "assocmem")


def test_readme_recall_example_retrieves_and_beta_8_does_not(tmp_path):
    rng = np.random.default_rng(0)
    K, d = 10_000, 64
    X = rng.standard_normal((K, d)).astype(np.float32)  # `store --normalize l2` makes them unit
    answers = rng.choice(K, 100, replace=False)
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    Q = unit[answers] + 0.3 / np.sqrt(d) * rng.standard_normal((100, d)).astype(np.float32)
    np.save(tmp_path / "patterns.npy", X)
    np.save(tmp_path / "queries.npy", Q)
    store, out, top = tmp_path / "memories.amem", tmp_path / "recalled.npy", tmp_path / "top.json"
    subprocess.run([CLI, "store", str(tmp_path / "patterns.npy"), str(store), "--dtype", "bfloat16",
                    "--normalize", "l2"], check=True, capture_output=True)

    def recall(beta):
        subprocess.run([CLI, "recall", str(store), str(tmp_path / "queries.npy"), str(out), "--model", "B",
                        "--beta", beta, "--steps", "10", "--tol", "1e-5", "--details", str(top)],
                       check=True, capture_output=True)
        res = json.load(open(top))["results"]
        return (np.array([r["top_ids"][0] for r in res]), np.array([r["top_weights"][0] for r in res]),
                np.array([r["stop"] for r in res]))

    ids, w, stop = recall("32")  # the README's example
    assert (ids == answers).all()
    assert np.median(w) > 0.999 and w.min() > 0.9
    recalled = np.load(out)
    assert np.abs(recalled - unit[answers]).max() < 0.05  # the stored memory, up to bfloat16
    ids, w, stop = recall("8")   # too small for unit memories: the average of all of them
    assert np.median(w) < 10.0 / K
    assert (stop == "converged").all()  # a fixed point, but not a memory: why --details matters


def test_readme_cpp_blocks_are_the_compiled_example_verbatim():
    """Every ```cpp block of the README stands in examples/readme.cpp (compiled and run as the ctest
    Examples.Readme), line for line up to indentation, so the README's C++ cannot rot."""
    import re
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    readme = open(os.path.join(root, "README.md")).read()
    example = [line.strip() for line in open(os.path.join(root, "examples", "readme.cpp"))]
    blocks = re.findall(r"```cpp\n(.*?)```", readme, re.S)
    assert len(blocks) >= 3
    for block in blocks:
        lines = [line.strip() for line in block.strip("\n").splitlines()]
        starts = [i for i, line in enumerate(example) if line == lines[0]]
        assert any(example[i:i + len(lines)] == lines for i in starts), f"not in examples/readme.cpp:\n{block}"
