"""assocmem shard (assocmem/shards.hpp from the command): the shards of a store or of a .npy file put back
together are the store; recall on the shards merged by the log-sum-exp rule equals recall on the whole
store; --verify finds edited manifests and replaced or corrupted shards and names them; bad usage exits 2
with one line and writes nothing."""
import json
import subprocess

import numpy as np

import assocmem as am


def run(cli, *args):
    return subprocess.run([cli, *map(str, args)], capture_output=True, text=True, timeout=300)


def one_line_error(r, needle):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("assocmem: error:"), r.stderr
    assert needle in lines[0], lines[0]


def test_shards_put_back_together_are_the_store(cli, tmp_path):
    X = np.random.default_rng(3).standard_normal((1001, 24)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    assert run(cli, "store", tmp_path / "x.npy", tmp_path / "x.amem", "--dtype", "bfloat16").returncode == 0
    for source, extra in ((tmp_path / "x.amem", []), (tmp_path / "x.npy", ["--dtype", "bfloat16"])):
        out = tmp_path / f"shards-{source.suffix[1:]}"
        r = run(cli, "--json", "shard", source, out, "--parts", 4, *extra)
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        assert info["count"] == 1001 and info["dim"] == 24 and info["dtype"] == "bfloat16"
        assert [s["count"] for s in info["shards"]] == [250, 250, 250, 251]
        whole = am.MemoryStore.open(str(tmp_path / "x.amem"))
        rows, ids = [], []
        for s in info["shards"]:
            with am.MemoryStore.open(s["file"]) as shard:  # each shard is an ordinary store
                rows.append(shard.to_array())
                ids.append(shard.ids)
        np.testing.assert_array_equal(np.concatenate(rows), whole.to_array())
        np.testing.assert_array_equal(np.concatenate(ids), whole.ids)
        assert run(cli, "shard", "--verify", out / "manifest.json", "--payloads").returncode == 0


def test_recall_over_shards_merges_to_the_whole_store(cli, tmp_path):
    """One step of model B over the shards, merged exactly (log-sum-exp weights), equals one step over the
    whole store: the sharding loses and reorders nothing that the attention sees."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((900, 16)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Q = (X[:5] + 0.1 * rng.standard_normal((5, 16))).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    assert run(cli, "shard", tmp_path / "x.npy", tmp_path / "s", "--parts", 3).returncode == 0
    beta = 8.0
    whole = am.ModelB(X, beta=beta).retrieve(Q, steps=1)
    num, den = 0.0, 0.0
    parts = []
    for i in range(3):
        with am.MemoryStore.open(str(tmp_path / "s" / f"shard-{i:05d}.amem")) as s:
            K = s.to_array()
        scores = beta * Q.astype(np.float64) @ K.T.astype(np.float64)
        m = scores.max(axis=1, keepdims=True)
        w = np.exp(scores - m)
        parts.append((m, w.sum(axis=1, keepdims=True), w @ K))
    top = max(p[0].max() for p in parts)
    for m, s, acc in parts:
        f = np.exp(m - top)
        num, den = num + f * acc, den + f * s
    np.testing.assert_allclose(num / den, whole, atol=1e-5)


def test_verify_names_the_bad_shard(cli, tmp_path):
    X = np.random.default_rng(5).standard_normal((40, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    s = tmp_path / "s"
    assert run(cli, "shard", tmp_path / "x.npy", s, "--parts", 4).returncode == 0
    manifest = s / "manifest.json"
    good = manifest.read_text()
    manifest.write_text(good.replace('"count": 40', '"count": 41'))
    one_line_error(run(cli, "shard", "--verify", manifest), "checksum mismatch")
    manifest.write_text(good)
    a, b = (s / "shard-00001.amem").read_bytes(), (s / "shard-00002.amem").read_bytes()
    (s / "shard-00001.amem").write_bytes(b)
    one_line_error(run(cli, "shard", "--verify", manifest), "shard 1 (")
    corrupt = bytearray(a)
    corrupt[4096] ^= 1
    (s / "shard-00001.amem").write_bytes(bytes(corrupt))
    assert run(cli, "shard", "--verify", manifest).returncode == 0  # headers match
    one_line_error(run(cli, "shard", "--verify", manifest, "--payloads"), "payload checksum mismatch")
    (s / "shard-00001.amem").unlink()
    one_line_error(run(cli, "shard", "--verify", manifest), "shard 1")


def test_bad_usage_exits_2_and_writes_nothing(cli, tmp_path):
    X = np.random.default_rng(6).standard_normal((5, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    one_line_error(run(cli, "shard", tmp_path / "x.npy", tmp_path / "a", "--parts", 6), "parts must be in [1, 5]")
    one_line_error(run(cli, "shard", tmp_path / "x.npy", tmp_path / "a"), "--parts must be given")
    one_line_error(run(cli, "shard", tmp_path / "x.npy", "--parts", 2), "needs INPUT and OUT_DIR")
    one_line_error(run(cli, "shard", tmp_path / "missing.npy", tmp_path / "a", "--parts", 2), "missing.npy")
    assert not (tmp_path / "a" / "manifest.json").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("x")
    one_line_error(run(cli, "shard", tmp_path / "x.npy", tmp_path / "full", "--parts", 2), "is not empty")
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["keep"]
    r = run(cli, "--json", "shard", "--verify", tmp_path / "nope.json")
    assert r.returncode == 2 and json.loads(r.stdout)["exit_code"] == 2
