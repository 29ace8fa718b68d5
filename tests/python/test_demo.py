"""The Kanji demo at a small K: model B recalls half-hidden glyphs, the report is written."""
import json
import subprocess

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
