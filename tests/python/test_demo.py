"""The Kanji demo at a small K: model B recalls half-hidden glyphs, the report is written."""
import json
import subprocess

import numpy as np

import assocmem.demos.kanji as kanji


def test_kanji_demo_small(tmp_path):
    res = kanji.run(count=300, out=str(tmp_path / "report"), classical_counts=(5, 100), classical_cues=20)
    rows = {(r["model"].split()[0], r["K"], r["cue"]): r for r in res["rows"]}
    assert res["glyphs"] == 300
    assert rows[("B", 300, "half")]["recalled_exactly"] >= 0.99
    assert rows[("B", 300, "noise")]["recalled_exactly"] >= 0.99
    assert rows[("A", 300, "half")]["recalled_exactly"] >= 0.95
    assert rows[("classical", 100, "half")]["recalled_exactly"] <= 0.1  # far past its capacity on Kanji
    for name in ("index.md", "energy.png", "mosaic_B_half.png", "mosaic_A_half.png", "classical.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert "| B (modern Hopfield" in (tmp_path / "report" / "index.md").read_text()


def test_kanji_demo_through_the_cli(cli, tmp_path):
    r = subprocess.run([cli, "--json", "demo", "kanji", "--count", "60", "--no-report"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["glyphs"] == 60 and len(res["rows"]) >= 4


def test_immune_and_colour_demos_small():
    from assocmem.demos import colour, immune
    r = immune.run(count=5000, queries=200, betas=(1, 64))
    assert r["rows"][0]["recalled"] < 0.5 <= r["rows"][1]["recalled"]  # beta decides
    assert all(row["top1"] >= 0.99 for row in r["rows"])
    c = colour.run(sizes=(10,), betas=(1e2, 1e5), queries=200)
    grid = [row for row in c["rows"] if row["colours"].startswith("grid")]
    assert grid[-1]["recalled"] >= 0.99 and grid[0]["recalled"] < grid[-1]["recalled"]


def test_capacity_front(cli, tmp_path):
    import assocmem.capacity as cap
    p = cap.measure(model="A", n=2, N=100, K=20, one_step=True, trials=50)
    assert abs(p["recalled"] - 0.41) < 0.05  # Krotov & Hopfield 2016's table
    K, pts = cap.bisect(0.99, 1, 60, model="A", n=2, N=100, one_step=True, trials=20)
    assert 3 <= K <= 12 and all(q["recalled"] >= 0.99 for q in pts if q["K"] <= K)
    r = subprocess.run([cli, "--json", "capacity", "--n", "3", "--one-step", "--values", "150,700", "--trials", "3",
                        "-o", str(tmp_path / "c.csv")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    pts = json.loads(r.stdout)["points"]
    assert pts[0]["recalled"] > 0.95 > 0.5 > pts[1]["recalled"]
    assert (tmp_path / "c.csv").read_text().startswith("K,N,n")


class _Terminal:
    """A stand-in stderr that says it is a terminal and keeps what is written."""
    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_demos_show_progress_on_a_terminal_one_line_per_row(monkeypatch):
    """Issue 23: `demo colour` ran for minutes with nothing on the terminal. Each demo prints one line per
    finished row on a terminal (and nothing when stderr is not one)."""
    import sys
    from assocmem.demos import colour, immune
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    colour.run(sizes=(10,), betas=(1e2, 1e5), queries=20)
    immune.run(count=2000, queries=20, betas=(1, 64))
    lines = term.text.splitlines()
    assert term.text.endswith("\n")
    assert sum(line.startswith("[colour] grid 10^3") for line in lines) == 2, term.text
    assert sum(line.startswith("[immune] beta") for line in lines) == 2, term.text


def test_demo_help_prints_one_usage_line(cli):
    """Issue 23: `demo colour --help` printed argparse's usage and a second one from the docstring."""
    for name in ("colour", "immune", "kanji"):
        r = subprocess.run([cli, "demo", name, "--help"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.lower().count("usage:") == 1, r.stdout


def test_immune_weight_is_that_of_the_update():
    """Issue 23: the immune table's "median weight" was read at the returned state (the next step's
    weights), not from the update that produced it. The state is sum_mu w_mu xi_mu with the cue's weights,
    so the weight on the pattern must reproduce the state's overlap: an independent numpy softmax."""
    from assocmem.demos import immune
    r = immune.run(count=3000, queries=100, betas=(16,), noise=0.3, seed=3)
    rng = np.random.default_rng(3)  # immune.run's draws, in its order
    X = rng.standard_normal((3000, 32)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    idx = rng.choice(3000, size=100, replace=False)
    E = rng.standard_normal((100, 32)).astype(np.float32)
    E *= 0.3 / np.linalg.norm(E, axis=1, keepdims=True)
    Q = (X[idx] + E).astype(np.float64)
    z = 16.0 * Q @ X.astype(np.float64).T
    w = np.exp(z - z.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    expected = np.median(w[np.arange(100), idx])
    assert abs(r["rows"][0]["median_weight"] - expected) < 1e-4, (r["rows"][0]["median_weight"], expected)
