"""assocmem recall over a sharded store under mpirun (OpenMPI from scripts/setup): with 1, 2 and 4 ranks
the result equals the single-process command on the unsharded store (models B and C; top-k ids of
--details identical; model A's synchronous order: identical states, steps and energies); a corrupted shard, too many ranks and a rank killed mid-job end the job non-zero
with the rank and shard named and no output file."""
import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

MPIRUN = shutil.which("mpirun")
pytestmark = pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed (scripts/setup installs openmpi-bin)")
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")


def run(cli, *args, ranks=None, timeout=300):
    cmd = [cli, *map(str, args)]
    if ranks:
        cmd = [MPIRUN, "-np", str(ranks), "--oversubscribe", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, cli):
    d = tmp_path_factory.mktemp("dist")
    rng = np.random.default_rng(11)
    X = rng.standard_normal((6000, 32))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    np.save(d / "x.npy", X.astype(np.float32))
    np.save(d / "q.npy", (X[:40] + 0.1 * rng.standard_normal((40, 32))).astype(np.float32))
    assert run(cli, "store", d / "x.npy", d / "x.amem").returncode == 0
    assert run(cli, "shard", d / "x.amem", d / "s", "--parts", 4).returncode == 0
    return d


def test_it_is_an_mpi_build(cli):
    r = run(cli, "recall", "--help")
    assert "under mpirun each rank holds its shards" in r.stdout


@pytest.mark.parametrize("model,args", [("B", ["--beta", "16", "--steps", "3"]), ("C", ["--steps", "10"])])
@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_ranks_equal_one_process(cli, sharded, model, args, ranks):
    d = sharded
    details = ["--details", d / f"one{model}.json"] if model == "B" else []
    one = run(cli, "recall", d / "x.amem", d / "q.npy", d / f"one{model}.npy", "--model", model, *args, *details)
    assert one.returncode == 0, one.stderr
    out = d / f"mpi{model}{ranks}.npy"
    det = ["--details", d / f"mpi{model}{ranks}.json"] if model == "B" else []
    r = run(cli, "recall", d / "s" / "manifest.json", d / "q.npy", out, "--model", model, *args, *det, ranks=ranks)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("recalled") == 1  # rank 0 alone reports
    a, b = np.load(d / f"one{model}.npy"), np.load(out)
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
    if model == "B":
        x, y = json.loads((d / f"one{model}.json").read_text()), json.loads((d / f"mpi{model}{ranks}.json").read_text())
        assert y["ranks"] == ranks and y["memories"] == 6000
        assert [q["top_ids"] for q in x["results"]] == [q["top_ids"] for q in y["results"]]
    # Without mpirun the shards are read into one process.
    direct = run(cli, "recall", d / "s" / "manifest.json", d / "q.npy", d / "direct.npy", "--model", model, *args)
    assert direct.returncode == 0, direct.stderr
    np.testing.assert_allclose(np.load(d / "direct.npy"), a, rtol=1e-6, atol=1e-6)


def test_a_corrupted_shard_ends_the_job_naming_rank_and_shard(cli, sharded, tmp_path):
    shutil.copytree(sharded / "s", tmp_path / "s")
    f = tmp_path / "s" / "shard-00003.amem"
    b = bytearray(f.read_bytes())
    b[4096 + 11] ^= 1
    f.write_bytes(bytes(b))
    r = run(cli, "recall", tmp_path / "s" / "manifest.json", sharded / "q.npy", tmp_path / "o.npy", ranks=2)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.startswith("assocmem:")]
    assert len(lines) == 1 and "rank 1 (shards 1, 3)" in lines[0] and "shard 3" in lines[0], r.stderr
    assert "payload checksum mismatch" in lines[0]
    assert not (tmp_path / "o.npy").exists()
    too_many = run(cli, "recall", sharded / "s" / "manifest.json", sharded / "q.npy", tmp_path / "o.npy", ranks=5)
    assert too_many.returncode != 0 and "every rank: the job has 5 ranks" in too_many.stderr
    assert not (tmp_path / "o.npy").exists()
    # Model A over shards of memories that are not +-1: every rank refuses its own shards.
    a = run(cli, "recall", sharded / "s" / "manifest.json", sharded / "q.npy", tmp_path / "o.npy", "--model", "A",
            "--order", "sync", ranks=2)
    assert a.returncode == 2 and "rank 0 (shards 0, 2)" in a.stderr and "rank 1 (shards 1, 3)" in a.stderr, a.stderr
    assert "model A needs +1/-1 memories" in a.stderr and not (tmp_path / "o.npy").exists()


@pytest.fixture(scope="module")
def binary(tmp_path_factory, cli):
    """+-1 memories beyond the classical capacity (K = 70 > 0.14 N at N = 64) as a bits store and a float32
    store, each in 3 shards, and cues with 0 to 14 flipped bits."""
    d = tmp_path_factory.mktemp("binary")
    rng = np.random.default_rng(13)
    X = rng.choice([-1.0, 1.0], size=(70, 64)).astype(np.float32)
    np.save(d / "x.npy", X)
    Q = X[:12].copy()
    for b in range(12):
        Q[b, rng.choice(64, size=b + b // 4, replace=False)] *= -1
    np.save(d / "q.npy", Q)
    for t in ["bits", "float32"]:
        assert run(cli, "store", d / "x.npy", d / f"{t}.amem", "--dtype", t).returncode == 0
        assert run(cli, "shard", d / f"{t}.amem", d / t, "--parts", 3).returncode == 0
    return d


@pytest.mark.parametrize("dtype", ["bits", "float32"])
@pytest.mark.parametrize("F", [["--F", "power", "--n", "2"], ["--F", "power", "--n", "4"], ["--F", "exp", "--beta", "5"]])
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_model_a_on_ranks_equals_one_process(cli, binary, dtype, F, ranks):
    """Model A, synchronous order, fields summed over the ranks: the same states, steps and energies as one
    process over the unsharded store."""
    d = binary
    args = ["--model", "A", "--order", "sync", "--steps", "50", *F]
    one = run(cli, "recall", d / f"{dtype}.amem", d / "q.npy", d / "one.npy", *args, "--details", d / "one.json")
    assert one.returncode == 0, one.stderr
    out, det = d / f"mpi-{dtype}-{ranks}.npy", d / f"mpi-{dtype}-{ranks}.json"
    r = run(cli, "recall", d / dtype / "manifest.json", d / "q.npy", out, *args, "--details", det, ranks=ranks)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("recalled") == 1
    np.testing.assert_array_equal(np.load(out), np.load(d / "one.npy"))
    x, y = json.loads((d / "one.json").read_text())["results"], json.loads(det.read_text())["results"]
    assert [q["steps"] for q in x] == [q["steps"] for q in y] and [q["stop"] for q in x] == [q["stop"] for q in y]
    np.testing.assert_allclose([q["energy"] for q in y], [q["energy"] for q in x], rtol=1e-12)
    # The retrieval did work: the lightly corrupted cues of the power-4 network end at their memories.
    if F[-1] == "4":
        assert (np.load(out)[:4] == np.load(d / "x.npy")[:4]).all()


def test_model_a_on_ranks_runs_the_synchronous_order_only(cli, binary, tmp_path):
    for order in [[], ["--order", "random"], ["--order", "fixed"]]:
        r = run(cli, "recall", binary / "bits" / "manifest.json", binary / "q.npy", tmp_path / "o.npy", "--model", "A",
                *order, ranks=2)
        assert r.returncode == 2 and "--order sync only" in r.stderr and not (tmp_path / "o.npy").exists(), r.stderr
    # Without mpirun the shards are read into one process, where every order runs.
    r = run(cli, "recall", binary / "bits" / "manifest.json", binary / "q.npy", tmp_path / "o.npy", "--model", "A")
    assert r.returncode == 0, r.stderr


def test_a_killed_rank_ends_the_job_and_leaves_no_output(cli, tmp_path):
    rng = np.random.default_rng(12)
    X = rng.standard_normal((100_000, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "q.npy", X[:1000])
    assert run(cli, "shard", tmp_path / "x.npy", tmp_path / "s", "--parts", 2).returncode == 0
    # Model C with tiny Euler steps: thousands of passes, far longer than the kill below.
    job = subprocess.Popen([MPIRUN, "-np", "2", "--oversubscribe", cli, "recall", str(tmp_path / "s" / "manifest.json"),
                            str(tmp_path / "q.npy"), str(tmp_path / "o.npy"), "--model", "C", "--steps", "100000",
                            "--step", "1e-4", "--tol", "0"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        victim = None
        for _ in range(200):  # wait until both ranks run
            time.sleep(0.1)
            kids = subprocess.run(["pgrep", "-P", str(job.pid), "-f", "recall"], capture_output=True, text=True).stdout.split()
            if len(kids) == 2:
                victim = int(kids[1])
                break
        assert victim, "the ranks did not start"
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)
        _, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0
    assert "signal 9" in err or "killed" in err.lower(), err[-2000:]
    assert not (tmp_path / "o.npy").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".assocmem-tmp")]


def points_of(path):
    d = json.loads(path.read_text())
    for p in d["points"]:
        p.pop("seconds")  # the only thing allowed to differ
    return d


@pytest.mark.parametrize("ranks", [2, 4])
def test_capacity_sweeps_share_their_trials_and_keep_every_number(cli, tmp_path, ranks):
    """mpirun -np P assocmem capacity: trial t on rank t mod P; the points (recalled fractions, their
    standard errors over trials, bit errors) equal the serial run's with the same seeds, exactly (model A
    always; models B and C with the same --threads, their float sums depend on it)."""
    sweep = ["capacity", "--n", "3", "--one-step", "--values", "150,360,700", "--trials", "7"]
    assert run(cli, *sweep, "-o", tmp_path / "serial.json").returncode == 0
    r = run(cli, "--json", *sweep, "-o", tmp_path / "mpi.json", ranks=ranks)
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout)  # one report (rank 0's)
    assert points_of(tmp_path / "mpi.json") == points_of(tmp_path / "serial.json")
    # Model B sums in float32: equal numbers need equal thread counts (mpirun binds a rank to one core).
    bisect = ["capacity", "--model", "B", "--protocol", "basin", "--rho", "0.1", "--beta", "8", "--N", "24",
              "--bisect", "0.9", "--K-range", "10", "3000", "--trials", "3", "--threads", "1"]
    assert run(cli, *bisect, "-o", tmp_path / "bs.json").returncode == 0
    assert run(cli, *bisect, "-o", tmp_path / "bm.json", ranks=ranks).returncode == 0
    assert points_of(tmp_path / "bm.json") == points_of(tmp_path / "bs.json")
    bad = run(cli, "capacity", "--values", "0", "--trials", "2", ranks=ranks)
    assert bad.returncode == 2 and bad.stderr.count("assocmem: error") == 1


PY_RANK = r"""
import json, sys
import numpy as np
import assocmem as am
import assocmem.distributed as ad
manifest, whole, queries, out = sys.argv[1:5]
q = np.load(queries)
mem = ad.ShardedMemory(manifest)
b = mem.retrieve_details(q, "B", steps=3, beta=16.0, top_k=5)
c = mem.retrieve(q, "C", steps=10)
try:
    mem.retrieve(q[:, :5])
except ValueError as e:
    bad = str(e)
if mem.rank == 0:
    X = np.load(whole)
    one_b = am.ModelB(X, beta=16.0).retrieve_details(q, steps=3, top_k=5)
    one_c = am.ModelC(X).retrieve(q, steps=10)
    json.dump({"ranks": mem.ranks, "shards": mem.local_shards, "K": mem.n_memories,
               "b": float(np.abs(b.states - one_b.states).max()), "c": float(np.abs(c - one_c).max()),
               "ids": bool((b.top_ids == one_b.top_ids).all()), "steps": b.steps.tolist() == one_b.steps.tolist(),
               "bad": bad}, open(out, "w"))
"""


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_python_front_on_mpi4py(cli, sharded, tmp_path, ranks):
    pytest.importorskip("mpi4py")
    d = sharded
    script = tmp_path / "rank.py"
    script.write_text(PY_RANK)
    r = subprocess.run([MPIRUN, "-np", str(ranks), "--oversubscribe", "/usr/bin/python3", str(script),
                        str(d / "s" / "manifest.json"), str(d / "x.npy"), str(d / "q.npy"), str(tmp_path / "r.json")],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["ranks"] == ranks and res["K"] == 6000 and res["shards"] == list(range(0, 4, ranks))
    assert res["b"] < 1e-6 and res["c"] < 1e-5 and res["ids"] and res["steps"]
    assert "dimension" in res["bad"]


PY_RANK_A = r"""
import json, sys
import numpy as np
import assocmem as am
import assocmem.distributed as ad
manifest, whole, cues, out = sys.argv[1:5]
q = np.load(cues)
mem = ad.ShardedMemory(manifest)
res = {}
for F, n, beta in [("power", 4, 1.0), ("exp", 2, 5.0)]:
    a = mem.retrieve_details(q, "A", steps=50, F=F, n=n, beta=beta)
    one = am.ModelA(np.load(whole), F=F, n=n, beta=beta).retrieve_details(q, steps=50, order="sync")
    res[F] = bool((a.states == one.states).all()) and a.steps.tolist() == one.steps.tolist()
    res[F + "_energy"] = float(np.abs(a.energy - one.energy).max() / np.abs(one.energy).max())
bad = q.copy()
bad[0, 0] = 0.5
try:
    mem.retrieve(bad, "A")
except ValueError as e:
    res["bad"] = str(e)
if mem.rank == 0:
    json.dump(res, open(out, "w"))
"""


@pytest.mark.parametrize("ranks", [1, 3])
def test_python_front_model_a(cli, binary, tmp_path, ranks):
    pytest.importorskip("mpi4py")
    script = tmp_path / "rank_a.py"
    script.write_text(PY_RANK_A)
    r = subprocess.run([MPIRUN, "-np", str(ranks), "--oversubscribe", "/usr/bin/python3", str(script),
                        str(binary / "float32" / "manifest.json"), str(binary / "x.npy"), str(binary / "q.npy"),
                        str(tmp_path / "r.json")], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["power"] and res["exp"], res
    assert res["power_energy"] < 1e-12 and res["exp_energy"] < 1e-12, res
    assert "cues: row 0 element 0 is 0.5" in res["bad"], res


PY_DISAGREE = r"""
import json, sys
import numpy as np
import assocmem.distributed as ad
manifest, queries, out = sys.argv[1:4]
q = np.load(queries)
mem = ad.ShardedMemory(manifest)
last = mem.ranks - 1   # the one rank that goes wrong
cases = {
    "empty": lambda: mem.retrieve(q[:0] if mem.rank == last else q),
    "dimension": lambda: mem.retrieve(q[:, :5] if mem.rank == last else q),
    "top_k": lambda: mem.retrieve_details(q, top_k=-1 if mem.rank == last else 3),
    "batch": lambda: mem.retrieve(q[:3] if mem.rank == last else q),
    "steps": lambda: mem.retrieve(q, steps=1e38 if mem.rank == last else 2),
}
res = {}
for name, call in cases.items():
    try:
        call()
        res[name] = "no error"
    except (ValueError, TypeError) as e:
        res[name] = str(e)
res["after"] = float(np.abs(mem.retrieve(q)).sum())   # the ranks still work together
json.dump(res, open(out + str(mem.rank), "w"))
"""


def test_python_front_agrees_before_any_collective(cli, sharded, tmp_path):
    """Issue 23: a check failing on one rank only (an empty batch, a wrong dimension, top_k = -1, another
    batch size) left the other ranks blocked for ever. Every rank raises the same error, naming the rank,
    and the job goes on."""
    pytest.importorskip("mpi4py")
    script = tmp_path / "disagree.py"
    script.write_text(PY_DISAGREE)
    r = subprocess.run([MPIRUN, "-np", "2", "--oversubscribe", "/usr/bin/python3", str(script),
                        str(sharded / "s" / "manifest.json"), str(sharded / "q.npy"), str(tmp_path / "r")],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    res = [json.loads((tmp_path / f"r{k}").read_text()) for k in range(2)]
    assert res[0] == res[1], res
    assert "rank 1: queries: the batch is empty" in res[0]["empty"]
    assert "rank 1: queries have dimension 5" in res[0]["dimension"]
    assert "rank 1: top_k must be in" in res[0]["top_k"]
    assert "rank 1 passed other queries or options than rank 0" in res[0]["batch"]
    assert "rank 1: steps must be in" in res[0]["steps"]
    assert res[0]["after"] > 0
