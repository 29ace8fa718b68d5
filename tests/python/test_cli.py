"""The assocmem command, run as a subprocess: success paths and every kind of bad input."""
import json
import subprocess

import numpy as np
import pytest

import assocmem as am


def run(cli, *args, cwd=None):
    return subprocess.run([cli, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture()
def data(tmp_path):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((400, 16)).astype(np.float32)
    np.save(tmp_path / "pats.npy", X)
    np.save(tmp_path / "q.npy", (X[:6] + 0.05 * rng.standard_normal((6, 16))).astype(np.float32))
    P = np.sign(rng.standard_normal((30, 64))).astype(np.int8)
    np.save(tmp_path / "pm.npy", P)
    cue = P[:5].copy()
    cue[:, :6] *= -1
    np.save(tmp_path / "cue.npy", cue)
    np.save(tmp_path / "xi.npy", rng.standard_normal((5, 4)))
    return tmp_path


def test_help_everywhere(cli):
    for args in ([], ["store"], ["recall"], ["simulate"], ["demo"]):
        r = run(cli, *args, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout


def test_store_recall_details(cli, data):
    r = run(cli, "store", data / "pats.npy", data / "m.amem", "--normalize", "l2", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["count"] == 400
    r = run(cli, "recall", data / "m.amem", data / "q.npy", data / "out.npy", "--model", "B", "--beta", "30",
            "--steps", "10", "--tol", "1e-6", "--top-k", "3", "--details", data / "d.json")
    assert r.returncode == 0, r.stderr
    out = np.load(data / "out.npy")
    X = np.load(data / "pats.npy")
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    assert out.shape == (6, 16)
    np.testing.assert_allclose(out, X[:6], atol=1e-2)
    d = json.loads((data / "d.json").read_text())
    assert [q["top_ids"][0] for q in d["results"]] == list(range(6))
    assert all(q["converged"] for q in d["results"])


def test_model_a_from_a_bits_store(cli, data):
    assert run(cli, "store", data / "pm.npy", data / "b.amem", "--dtype", "bits").returncode == 0
    r = run(cli, "recall", data / "b.amem", data / "cue.npy", data / "oa.npy", "--model", "A", "--F", "power", "--n", "3")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(data / "oa.npy"), np.load(data / "pm.npy")[:5])


def test_simulate_writes_trajectory_and_plot(cli, data):
    cfg = {"xi": "xi.npy", "feature": {"name": "log_cosh", "beta": 2}, "hidden": {"name": "log_sum_exp", "beta": 1},
           "v0": [0.1, -0.2, 0.3, 0.4], "tau_h": 0.01, "method": "bdf", "t_end": 5}
    (data / "sim.json").write_text(json.dumps(cfg))
    r = run(cli, "--json", "simulate", data / "sim.json", "-o", data / "t.npy", "--plot", data / "e.png")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    t = np.load(data / "t.npy")
    assert t.shape == (info["records"], 3 + 4 + 5)
    assert np.all(np.diff(t[:, 1]) <= 1e-7)  # energy never increases
    assert (data / "e.png").read_bytes()[:4] == b"\x89PNG"


def test_simulate_runs_a_layered_network_and_its_adiabatic_limit(cli, data):
    """A three-layer network (image, convolutional features, softmax memories) described in JSON: the
    command's trajectory is the Python API's, the energy never increases, and with "fast" the memory
    layer sits at its steady state; a synapse naming an unknown layer exits 2 naming it."""
    rng = np.random.default_rng(21)
    K = rng.normal(0, 0.3, (3, 1, 3, 3))
    W = rng.normal(0, 0.4, (5, 3 * 4 * 4))
    np.save(data / "K.npy", K.reshape(3, -1))
    np.save(data / "W.npy", W)
    x0 = rng.normal(size=36).tolist()
    cfg = {"layers": [{"name": "img", "size": 36, "lagrangian": {"name": "log_cosh", "beta": 1.5}, "x0": x0},
                      {"name": "feat", "size": 48, "lagrangian": {"name": "softplus"}, "tau": 0.5},
                      {"name": "mem", "size": 5, "lagrangian": {"name": "log_sum_exp", "beta": 2}, "tau": 0.25}],
           "synapses": [{"from": "img", "to": "feat",
                         "conv2d": {"kernel": "K.npy", "kernel_size": [3, 3], "in_shape": [1, 6, 6], "stride": 1,
                                    "padding": 0}},
                        {"from": "feat", "to": "mem", "dense": "W.npy"}],
           "t_end": 3, "rtol": 1e-9, "atol": 1e-12}
    (data / "lay.json").write_text(json.dumps(cfg))
    r = run(cli, "--json", "simulate", data / "lay.json", "-o", data / "lay.csv")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["layers"] == 3 and info["fast"] == [] and info["non_psd_steps"] == 0
    assert info["energy_bounded_below"] == "yes"
    header = (data / "lay.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["t", "energy", "energy_rate", "img0"] and header[-1] == "mem4" and len(header) == 3 + 89
    t = np.loadtxt(data / "lay.csv", delimiter=",", skiprows=1)
    assert np.all(np.diff(t[:, 1]) <= 1e-10 * (1 + np.abs(t[1:, 1])))
    L = am.lagrangians
    net = am.LayeredNetwork(
        [am.Layer("img", 36, L.log_cosh(1.5)), am.Layer("feat", 48, L.softplus(1.0), tau=0.5),
         am.Layer("mem", 5, L.log_sum_exp(2.0), tau=0.25)],
        [am.conv2d("img", "feat", K, (1, 6, 6)), am.dense("feat", "mem", W)])
    ref = net.simulate(np.concatenate([x0, np.zeros(53)]), t_end=3, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(t[-1, 3:], ref.x[-1], rtol=0, atol=1e-12)  # the same code: %.17g round trip
    cfg["fast"] = ["mem"]
    (data / "fast.json").write_text(json.dumps(cfg))
    r = run(cli, "--json", "simulate", data / "fast.json", "-o", data / "fast.npy")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["fast"] == ["mem"]
    f = np.load(data / "fast.npy")
    g_feat = 1 / (1 + np.exp(-f[-1, 3 + 36:3 + 84]))
    np.testing.assert_allclose(f[-1, 3 + 84:], W @ g_feat, rtol=1e-12, atol=1e-12)  # x_mem = W g_feat
    cfg["synapses"][1]["to"] = "memories"
    (data / "bad.json").write_text(json.dumps(cfg))
    one_line_error(run(cli, "simulate", data / "bad.json"), "no layer named 'memories'")
    cfg["synapses"][1]["to"] = "mem"
    cfg["fast"] = ["feat", "mem"]
    (data / "bad.json").write_text(json.dumps(cfg))
    one_line_error(run(cli, "simulate", data / "bad.json"), "joins the fast layers")


@pytest.mark.parametrize("model, option, needle", [
    ("C", "--values", "--values: only model B associates keys with values (this is model C)"),
    ("A", "--values", "--values: only model B associates keys with values (this is model A)"),
    ("A", "--certify", "--certify: certified retrieval is for models B and C (this is model A)"),
    ("A", "--mask", "--mask: model A takes no memory mask"),
    ("C", "--order", "order: applies to model A only (model C updates every feature at once)"),
    ("A", "--step", "step: does not apply to model A"),
])
def test_recall_refuses_what_the_model_lacks(cli, data, model, option, needle):
    """Each option a model lacks is refused by the library's one capability table (assocmem::require),
    naming the option: exit 2, one line, no output written."""
    assert run(cli, "store", data / "pats.npy", data / "m.amem").returncode == 0
    np.save(data / "mask.npy", np.zeros(400, dtype=bool))
    value = {"--values": data / "m.amem", "--certify": 0.1, "--mask": data / "mask.npy", "--order": "sync",
             "--step": 0.5}[option]
    one_line_error(run(cli, "recall", data / "m.amem", data / "q.npy", data / "out.npy", "--model", model,
                       option, value), needle)
    assert not (data / "out.npy").exists()


def one_line_error(r, needle):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("assocmem: error:"), r.stderr
    assert needle in lines[0], lines[0]


def test_bad_input_exits_2_with_one_line(cli, data):
    assert run(cli, "store", data / "pats.npy", data / "m.amem").returncode == 0
    one_line_error(run(cli, "recall", data / "m.amem", data / "missing.npy", data / "o.npy"), "missing.npy")
    np.save(data / "wrong.npy", np.ones((3, 5), np.float32))
    one_line_error(run(cli, "recall", data / "m.amem", data / "wrong.npy", data / "o.npy"), "dimension 5")
    q = np.load(data / "q.npy")
    q[2, 3] = np.nan
    np.save(data / "nan.npy", q)
    one_line_error(run(cli, "recall", data / "m.amem", data / "nan.npy", data / "o.npy"), "NaN")
    raw = (data / "m.amem").read_bytes()
    (data / "corrupt.amem").write_bytes(raw[:4200] + bytes([raw[4200] ^ 0xFF]) + raw[4201:])
    one_line_error(run(cli, "recall", data / "corrupt.amem", data / "q.npy", data / "o.npy"), "checksum")
    (data / "short.amem").write_bytes(raw[:100])
    one_line_error(run(cli, "recall", data / "short.amem", data / "q.npy", data / "o.npy"), "truncated")
    one_line_error(run(cli, "recall", data / "m.amem", data / "q.npy", data / "o.npy", "--beta", "-1"), "beta")
    one_line_error(run(cli, "recall", data / "m.amem", data / "q.npy", data / "o.npy", "--model", "Z"), "--model")
    one_line_error(run(cli, "recall", data / "m.amem", data / "q.npy", data / "o.npy", "--model", "A"), "+1/-1")
    one_line_error(run(cli, "store", data / "pats.npy", data / "x.amem", "--dtype", "bits"), "--normalize sign")
    one_line_error(run(cli, "frobnicate"), "error")
    (data / "bad.json").write_text("{not json")
    one_line_error(run(cli, "simulate", data / "bad.json"), "not valid JSON")
    (data / "bad2.json").write_text(json.dumps({"xi": "xi.npy", "feature": {"name": "tanhh"}, "hidden": {"name": "exp"},
                                                "v0": [0, 0, 0, 0]}))
    one_line_error(run(cli, "simulate", data / "bad2.json"), "tanhh")
    # Nesting 100,000 levels deep crashed the process (stack overflow in the JSON value's recursion):
    # every JSON reader refuses more than 64 levels while parsing (src/json_reader.hpp).
    deep = "[" * 100000 + "1" + "]" * 100000
    (data / "deep.json").write_text('{"xi": "xi.npy", "feature": ' + deep + "}")
    one_line_error(run(cli, "simulate", data / "deep.json"), "nested more than 64 levels deep")
    assert run(cli, "shard", data / "m.amem", data / "sh", "--parts", "2").returncode == 0
    manifest = json.loads((data / "sh" / "manifest.json").read_text())
    for field in ("dim", "count", "shards"):
        edited = dict(manifest, **{field: "DEEP"})
        (data / "sh" / "deep.json").write_text(json.dumps(edited).replace('"DEEP"', deep))
        one_line_error(run(cli, "recall", data / "sh" / "deep.json", data / "q.npy", data / "o.npy"), "nested more than 64")
        one_line_error(run(cli, "shard", "--verify", data / "sh" / "deep.json"), "nested more than 64")
    one_line_error(run(cli, "demo", "nope"), "unknown demo")


def test_the_command_finds_python_and_its_package_without_compiled_in_paths(cli, tmp_path):
    """ASSOCMEM_PYTHON names the interpreter (default /usr/bin/python3); a command run from a build tree
    puts the package beside it (<exe dir>/../python) first on PYTHONPATH, an installed one adds nothing."""
    import os
    import shutil
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho \"PYTHONPATH=$PYTHONPATH\"\necho \"ARGS=$*\"\n")
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["ASSOCMEM_PYTHON"] = str(fake)
    r = subprocess.run([cli, "demo", "colour", "--queries", "5"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "ARGS=-m assocmem.demos.colour --queries 5" in r.stdout
    exe = os.path.realpath(shutil.which(cli) or cli)
    beside = os.path.join(os.path.dirname(os.path.dirname(exe)), "python")
    if os.path.exists(os.path.join(beside, "assocmem", "__init__.py")):
        assert f"PYTHONPATH={beside}" in r.stdout
    else:
        assert "PYTHONPATH=\n" in r.stdout + "\n"
    env["ASSOCMEM_PYTHON"] = str(tmp_path / "no-such-python")
    r = subprocess.run([cli, "demo", "colour"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode != 0 and "cannot run" in r.stderr and "ASSOCMEM_PYTHON" in r.stderr


def test_a_finished_progress_bar_is_erased_before_the_summary(cli, tmp_path):
    """Issue 23: on a terminal, the finished bar and the summary line shared one line. The bar (drawn
    after 1 s) is erased ("\\r\\033[K") before the summary is printed."""
    import os
    import pty
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100000, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "q.npy", X[:64])
    assert subprocess.run([cli, "store", tmp_path / "x.npy", tmp_path / "x.amem"]).returncode == 0
    def run_on_a_terminal(steps):
        master, slave = pty.openpty()
        p = subprocess.Popen([cli, "recall", tmp_path / "x.amem", tmp_path / "q.npy", tmp_path / "o.npy", "--model",
                              "B", "--beta", "0.1", "--steps", str(steps), "--step", "0.01", "--threads", "1"],
                             stdout=slave, stderr=slave, close_fds=True)
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        assert p.wait(timeout=300) == 0
        os.close(master)
        return out.decode(errors="replace")
    # The bar is drawn once a run has taken a second: longer runs until one has (a fast CPU needs more steps).
    for steps in (300, 1200, 4800):
        text = run_on_a_terminal(steps)
        if "recall [" in text:
            break
    assert "recall [" in text, text[-500:]
    bar_end = text.rfind("recall [")
    summary = text.find("recalled 64 queries")
    assert summary > bar_end, text[-500:]
    assert "\r\x1b[K" in text[bar_end:summary], repr(text[bar_end:summary + 40])
