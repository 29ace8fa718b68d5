"""Nothing lost, nothing crashes (issue 8, docs/reliability.md): the command and the module run as a
careless or hostile user would run them. Crashes are observed as subprocesses (a negative return
code is a signal)."""
import json
import os
import pathlib
import random
import resource
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

import assocmem as am


def run(cli, *args, timeout=120, **kw):
    return subprocess.run([cli, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)


def bad(r, *needles):
    """Exit 2 with one line on stderr naming the problem."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("assocmem: error:"), r.stderr
    for n in needles:
        assert n in r.stderr, (n, r.stderr)


@pytest.fixture()
def d(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((50, 8)).astype(np.float32)
    np.save(tmp_path / "p.npy", X)
    np.save(tmp_path / "q.npy", X[:3])
    return tmp_path


def make_store(cli, d, name="m.amem", *extra):
    r = run(cli, "store", d / "p.npy", d / name, *extra)
    assert r.returncode == 0, r.stderr
    return d / name


# ---- 1, 13, 14: numbers ----------------------------------------------------------------------------
@pytest.mark.parametrize("args, needle", [
    (["--N", "100", "--values", "nan"], "--values"),
    (["--N", "100", "--values", "2.7"], "whole number"),
    (["--N", "100", "--values", "-5"], "whole number"),
    (["--N", "100", "--sweep", "beta", "--model", "B", "--values", "nan"], "beta"),
    (["--bisect", "-1", "--K-range", "2", "10"], "--bisect"),
    (["--bisect", "nan", "--K-range", "2", "10"], "--bisect"),
    (["--bisect", "0.9", "--K-range", "10", "2"], "--K-range"),
    (["--N", "-3"], "--N"),
    (["--trials", "-1"], "--trials"),
    (["--threads", "10000"], "threads"),
    (["--N", "4", "--values", "4611686018427387904"], "whole number"),
    (["--N", "1000000", "--values", "1000000"], "memory"),
])
def test_capacity_numbers_give_clear_errors(cli, args, needle):
    bad(run(cli, "capacity", *args), needle)


def test_recall_numbers_give_clear_errors(cli, d):
    m = make_store(cli, d)
    bad(run(cli, "recall", m, d / "q.npy", d / "o.npy", "--top-k", "-1"), "--top-k")
    bad(run(cli, "recall", m, d / "q.npy", d / "o.npy", "--threads", "10000"), "threads")
    bad(run(cli, "recall", m, d / "q.npy", d / "o.npy", "--beta", "1e38"), "beta")
    bad(run(cli, "recall", m, d / "q.npy", d / "o.npy", "--beta", "nan"), "beta")
    np.save(d / "huge.npy", np.full((4, 8), 3e38, np.float32))
    for kernel in ("generic", "auto"):
        bad(run(cli, "recall", m, d / "huge.npy", d / "o.npy", "--kernel", kernel), "queries: row 0")
    # A top-k above K reports K memories, none padded.
    r = run(cli, "recall", m, d / "q.npy", d / "o.npy", "--top-k", "1000", "--details", d / "det.json")
    assert r.returncode == 0, r.stderr
    assert len(json.loads((d / "det.json").read_text())["results"][0]["top_ids"]) == 50


def test_integer_options_past_their_type_are_refused_not_saturated(cli, d):
    """Issue 23: CLI11 read integers with strtoll/strtoull in base 0, so a value past the type's range
    saturated (--top-k 1e23 digits ran, --seed silently became 2^64 - 1), "-1" wrapped into a huge unsigned
    and "010" was octal 8. Every integer option now takes decimal whole numbers in its range only."""
    m = make_store(cli, d)
    huge = "9" * 23
    for opt in ("--top-k", "--seed", "--steps", "--threads"):
        bad(run(cli, "recall", m, d / "q.npy", d / "o.npy", opt, huge), opt, "whole number", huge)
    bad(run(cli, "recall", m, d / "q.npy", d / "o.npy", "--seed", "-1"), "--seed", "whole number")
    bad(run(cli, "recall", m, d / "q.npy", d / "o.npy", "--steps", "0x10"), "--steps", "whole number")
    for opt in ("--N", "--trials", "--cues", "--seed", "--hidden", "--max-steps", "--threads"):
        bad(run(cli, "capacity", opt, huge), opt, "whole number")
    bad(run(cli, "shard", m, d / "sh", "--parts", huge), "--parts", "whole number")
    bad(run(cli, "index", m, "--threads", huge), "--threads", "whole number")
    # A leading zero is decimal: 010 trials of 5 cues are 50 cues, not octal 8 trials (40).
    r = run(cli, "--json", "capacity", "--n", "2", "--N", "50", "--values", "5", "--trials", "010", "--one-step")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["points"][0]["cues"] == 50


def test_masks_hold_bool_or_zero_one_everywhere(cli, d):
    """Issue 23: Python cast masks to uint8 (0.5 and 256 left a memory in, the CLI treated any non-zero as
    masked). One rule on every face: bool, or the numbers 0 and 1; anything else is refused naming it.
    The CLI names a 1-D mask's shape as given ((49,), not (1, 49))."""
    m = make_store(cli, d)
    X = np.load(d / "p.npy")
    q = np.load(d / "q.npy")
    B = am.ModelB(X, beta=4.0)
    for odd in (0.5, 256.0, np.nan, -np.inf, 2):
        with pytest.raises(ValueError, match="a mask holds bool or 0/1"):
            B.retrieve(q, mask=np.full(50, odd))
        np.save(d / "odd.npy", np.full(50, odd, np.float32))
        bad(run(cli, "recall", m, d / "q.npy", d / "o.npy", "--mask", d / "odd.npy"), "a mask holds bool or 0/1")
    with pytest.raises(ValueError, match="clamp holds 3"):
        B.retrieve(q, clamp=np.full(8, 3))
    one = np.zeros(50, np.int64)
    one[7] = 1
    np.testing.assert_array_equal(B.retrieve(q, mask=one), B.retrieve(q, mask=one.astype(bool)))
    np.save(d / "short.npy", np.zeros(49, bool))
    bad(run(cli, "recall", m, d / "q.npy", d / "o.npy", "--mask", d / "short.npy"), "has shape (49,); expected (50,)")
    for steps, err in ((1e38, ValueError), (1.5, ValueError), (True, TypeError)):
        with pytest.raises(err, match="steps must be"):
            B.retrieve(q, steps=steps)
    bad(run(cli, "recall", m, d / "q.npy", d / "o.npy", "--steps", "2000000"), "--steps", "[1, 1000000]")


def test_flat_associations_and_blow_ups_are_not_silent(cli, d, tmp_path):
    """Issue 23: at beta = 1 the README's --values example returned nearly the mean of all values with
    exit 0 and no word; model C over memories of norm 1e18 exited 0 with the queries unchanged (blew_up
    only in --details). Both now warn on stderr (Python: RuntimeWarning), and a retrieving beta does not."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((2000, 16)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "q.npy", X[:4] + 0.05 * rng.standard_normal((4, 16)).astype(np.float32))
    assert run(cli, "store", tmp_path / "x.npy", tmp_path / "x.amem").returncode == 0
    r = run(cli, "recall", tmp_path / "x.amem", tmp_path / "q.npy", tmp_path / "o.npy", "--beta", "1")
    assert r.returncode == 0 and "warning: for 4 of 4 queries no memory carries more than 10/K" in r.stderr, r.stderr
    r = run(cli, "--json", "recall", tmp_path / "x.amem", tmp_path / "q.npy", tmp_path / "o.npy", "--beta", "64")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    assert json.loads(r.stdout)["nearly_uniform"] == 0
    B = am.ModelB(X, beta=1.0)
    with pytest.warns(RuntimeWarning, match="nearly the mean of the memories"):
        B.retrieve(X[:4])
    r1 = B.retrieve_details(X[:4], beta=64.0)
    assert np.all(r1.max_weight > 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        am.ModelB(X, beta=64.0).retrieve(X[:4])
    np.save(tmp_path / "big.npy", X[:50] * np.float32(1e18))
    assert run(cli, "store", tmp_path / "big.npy", tmp_path / "big.amem").returncode == 0
    r = run(cli, "--json", "recall", tmp_path / "big.amem", tmp_path / "q.npy", tmp_path / "o.npy", "--model", "C")
    assert r.returncode == 0 and "warning: 4 of 4 queries blew up" in r.stderr, r.stderr
    assert json.loads(r.stdout)["blew_up"] == 4
    with pytest.warns(RuntimeWarning, match="blew up"):
        am.ModelC(X[:50] * np.float32(1e18)).retrieve(X[:4])


def test_small_defects_of_issue_23(cli, d):
    """The small defects issue 23 lists, each as the user met it."""
    m = make_store(cli, d)
    bad(run(cli, "recal", m, d / "q.npy", d / "o.npy"), "unknown command 'recal'; did you mean 'recall'?")
    bad(run(cli, "capacity", "--N", "8", "--values", "4", "-o", d / "x.npy"), "must end in .csv or .json")
    assert "->check" not in run(cli, "capacity", "--help").stdout
    r = run(cli, "capacity", "--model", "B", "--N", "8", "--values", "4", "--trials", "2", "--beta", "8")
    assert r.returncode == 0 and "beta=8" in r.stdout and " n=" not in r.stdout, r.stdout
    empty = d / "empty.amem"
    am.MemoryStore(8).save(str(empty))
    bad(run(cli, "index", empty), "holds no memories")
    # A byte between the header and the payload (no checksum covers it) is corruption too.
    raw = bytearray(m.read_bytes())
    raw[100] = 1
    (d / "gap.amem").write_bytes(bytes(raw))
    bad(run(cli, "recall", d / "gap.amem", d / "q.npy", d / "o.npy"), "byte 100 between the header and the payload")
    # float16 and integer .npy files are converted, not refused.
    X = np.load(d / "p.npy")
    np.save(d / "h.npy", X.astype(np.float16))
    np.save(d / "i.npy", np.round(X * 100).astype(np.int32))
    for f in ("h.npy", "i.npy"):
        r = run(cli, "store", d / f, d / (f + ".amem"))
        assert r.returncode == 0, r.stderr
    assert np.array_equal(am.MemoryStore.open(str(d / "i.npy.amem")).to_array(), np.round(X * 100).astype(np.float32))
    # Arrays that are not real numbers, and ids that are not non-negative integers, are refused.
    s = am.MemoryStore(8)
    for odd in (X.astype(complex), X.astype(str), np.zeros((2, 8), "datetime64[s]")):
        with pytest.raises(TypeError, match="real numbers"):
            s.append(odd)
    with pytest.raises(ValueError, match="non-negative"):
        s.append(X[:1], np.array([-1]))
    with pytest.raises(TypeError, match="ids must be integers"):
        s.append(X[:1], np.array([1.7]))
    with pytest.raises(TypeError, match="real numbers"):
        am.ModelB(X.astype(complex))
    # A finite float64 beyond float32 is named as such, not as "NaN or Inf".
    with pytest.raises(ValueError, match="does not fit in float32"):
        am.ModelB(X).retrieve(np.full(8, 1e39))
    # A store's own file is an input of export_npy (it replaced the store with a .npy).
    opened = am.MemoryStore.open(str(m))
    with pytest.raises(ValueError, match="same file as the store"):
        opened.export_npy(str(m))
    assert am.MemoryStore.open(str(m)).to_array().shape == (50, 8)
    # simulate says so on stderr (also in text mode) when steps leave the convex region (footnote 2).
    rng = np.random.default_rng(12)
    np.save(d / "xi6.npy", rng.standard_normal((6, 5)))
    (d / "odd.json").write_text(json.dumps({"xi": "xi6.npy", "feature": {"name": "log_cosh", "beta": 1},
                                            "hidden": {"name": "power", "n": 3}, "v0": rng.standard_normal(5).tolist(),
                                            "method": "rk4", "dt": 1e-3, "t_end": 2.0}))
    r = run(cli, "simulate", d / "odd.json")
    assert r.returncode == 0 and "warning:" in r.stderr and "footnote 2" in r.stderr, r.stderr
    # Control bytes in a file name are not echoed to the terminal.
    r = run(cli, "recall", d / "no\x1b[31mfile.amem", d / "q.npy", d / "o.npy")
    bad(r, "no?[31mfile.amem")
    assert "\x1b" not in r.stderr
    # Values of another float type than the keys are converted.
    keys = am.MemoryStore(8, "bfloat16")
    keys.append(X)
    vals = am.MemoryStore(3)
    vals.append(X[:, :3])
    assert am.ModelB(keys, beta=16.0, values=vals).retrieve(X[:2]).shape == (2, 3)


def test_huge_beta_recalls_the_nearest_memory(cli, d):
    m = make_store(cli, d)
    r = run(cli, "recall", m, d / "q.npy", d / "o.npy", "--beta", "1e31")
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(d / "o.npy"), np.load(d / "q.npy"), atol=1e-6)


def test_store_values_that_do_not_fit(cli, d):
    np.save(d / "big.npy", np.array([[3.4e38, 1.0]], np.float32))
    bad(run(cli, "store", d / "big.npy", d / "b.amem", "--dtype", "bfloat16"), "overflows bfloat16")
    assert not (d / "b.amem").exists()
    np.save(d / "f64.npy", np.array([[1e300, 1.0]]))
    bad(run(cli, "store", d / "f64.npy", d / "b.amem"), "does not fit in float32")
    np.save(d / "nan.npy", np.array([[np.nan, 1.0]], np.float32))
    bad(run(cli, "store", d / "nan.npy", d / "b.amem", "--normalize", "sign"), "NaN")
    np.save(d / "wide.npy", np.zeros((0, 10**15), np.float32))
    bad(run(cli, "store", d / "wide.npy", d / "b.amem"), "dim")


def test_append_with_another_dtype_is_refused(cli, d):
    m = make_store(cli, d)
    before = m.read_bytes()
    bad(run(cli, "store", d / "p.npy", m, "--append", "--dtype", "bits", "--normalize", "sign"), "float32")
    assert m.read_bytes() == before
    r = run(cli, "store", d / "p.npy", m, "--append", "--json")  # no --dtype: the store's own
    assert r.returncode == 0 and json.loads(r.stdout)["count"] == 100


def test_npy_header_is_parsed_strictly(cli, d):
    good = (d / "p.npy").read_bytes()
    hacked = good.replace(b"'shape': (50, 8)", b"'shape': (5 0, 8)")
    assert hacked != good
    (d / "h.npy").write_bytes(hacked)
    bad(run(cli, "store", d / "h.npy", d / "x.amem"), "shape")
    hacked = good.replace(b"'fortran_order': False", b"'fortran_order': Falsey")
    (d / "h.npy").write_bytes(hacked)
    bad(run(cli, "store", d / "h.npy", d / "x.amem"), "fortran_order")


def test_simulate_refuses_unknown_keys_and_catches_blow_up(cli, d):
    np.save(d / "xi.npy", np.random.default_rng(1).standard_normal((5, 4)))
    cfg = {"xi": "xi.npy", "feature": {"name": "identity"}, "hidden": {"name": "log_sum_exp"}, "v0": [1, 0, 0, 0]}
    (d / "c.json").write_text(json.dumps({**cfg, "t_edn": 5}))
    bad(run(cli, "simulate", d / "c.json"), "t_edn")
    (d / "c.json").write_text(json.dumps({**cfg, "feature": {"name": "identity", "bta": 2}}))
    bad(run(cli, "simulate", d / "c.json"), "bta")
    (d / "c.json").write_text(json.dumps({**cfg, "method": "euler", "dt": 10, "t_end": 1000}))
    r = run(cli, "simulate", d / "c.json", "-o", d / "t.csv")
    assert r.returncode == 1 and "energy" in r.stderr and not (d / "t.csv").exists(), r.stderr
    (d / "c.json").write_text(json.dumps({**cfg, "hidden": {"name": "power", "n": 1e300}}))
    r = run(cli, "simulate", d / "c.json")
    assert r.returncode in (1, 2) and "assocmem:" in r.stderr, r.stderr


def test_json_errors_are_json(cli, d):
    r = run(cli, "--json", "recall", d / "missing.amem", d / "q.npy", d / "o.npy")
    assert r.returncode == 2
    assert "missing.amem" in json.loads(r.stdout)["error"]
    r = run(cli, "capacity", "--json", "--values", "nan")
    assert r.returncode == 2 and json.loads(r.stdout)["exit_code"] == 2


def test_json_output_survives_bytes_that_are_not_utf8(cli, d):
    """File names and option values are arbitrary bytes (found by the fuzz target: dump() threw)."""
    r = subprocess.run([cli, "--json", "capacity", "--values", b"\xff"], capture_output=True, timeout=60)
    assert r.returncode == 2 and "error" in json.loads(r.stdout)
    name = os.fsencode(str(d)) + b"/\xff.amem"
    r = subprocess.run([cli, "--json", "store", os.fsencode(str(d / "p.npy")), name], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["count"] == 50 and os.path.exists(name)


def test_paths_errors_exit_2_naming_the_path(cli, d):
    make_store(cli, d)
    os.symlink(d / "loop2", d / "loop1")
    os.symlink(d / "loop1", d / "loop2")
    bad(run(cli, "recall", d / "loop1", d / "q.npy", d / "o.npy"), "loop1")
    bad(run(cli, "recall", d / "m.amem", d / "q.npy", d / "loop1"), "loop1")
    bad(run(cli, "store", d / "p.npy", d / "no-such-folder" / "x.amem"), "no-such-folder")


@pytest.fixture()
def shared_dir():
    """A folder under /tmp that an unprivileged user can reach (pytest's tmp_path is root's, 0700)."""
    import tempfile
    path = tempfile.mkdtemp()
    os.chmod(path, 0o777)
    yield pathlib.Path(path)
    shutil.rmtree(path)


def as_nobody():
    os.setgid(65534)
    os.setuid(65534)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
def test_permission_denied_exits_2(cli, d, shared_dir):
    m = make_store(cli, d)
    shutil.copy(m, shared_dir / "m.amem")
    shutil.copy(d / "q.npy", shared_dir / "q.npy")
    os.chmod(shared_dir / "q.npy", 0o644)
    os.chmod(shared_dir / "m.amem", 0)
    r = run(cli, "recall", shared_dir / "m.amem", shared_dir / "q.npy", shared_dir / "o.npy", preexec_fn=as_nobody)
    bad(r, "m.amem", "Permission denied")
    os.chmod(shared_dir / "m.amem", 0o644)
    os.mkdir(shared_dir / "ro", 0o555)
    r = run(cli, "recall", shared_dir / "m.amem", shared_dir / "q.npy", shared_dir / "ro" / "o.npy",
            preexec_fn=as_nobody)
    bad(r, "o.npy", "Permission denied")
    # Issue 23: a 0444 output in a folder the user may write was replaced through the rename.
    (shared_dir / "kept.npy").write_bytes(b"keep")
    os.chmod(shared_dir / "kept.npy", 0o444)
    r = run(cli, "recall", shared_dir / "m.amem", shared_dir / "q.npy", shared_dir / "kept.npy", preexec_fn=as_nobody)
    bad(r, "kept.npy", "permission denied: the file is not writable for you")
    assert (shared_dir / "kept.npy").read_bytes() == b"keep"


@pytest.mark.parametrize("demo, args", [("immune", ["--noise", "nan"]), ("immune", ["--queries", "-1"]),
                                        ("colour", ["--sigma", "inf"]), ("kanji", ["--count", "0"])])
def test_demos_refuse_bad_options_without_traceback(cli, demo, args):
    r = run(cli, "demo", demo, *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "error" in r.stderr, r.stderr


# ---- 5, 6, 7, 9: output paths -------------------------------------------------------------------------
def test_dash_and_dev_stdout(cli, d):
    """`-` is an ordinary file name; /dev/stdout (a pipe or terminal here) is refused like any device."""
    m = make_store(cli, d)
    assert run(cli, "recall", m, d / "q.npy", "-", cwd=d).returncode == 0 and (d / "-").is_file()
    bad(run(cli, "recall", m, d / "q.npy", "/dev/stdout"), "/dev/stdout")


def test_an_output_that_is_an_input_is_refused(cli, d):
    m = make_store(cli, d)
    before = m.read_bytes()
    bad(run(cli, "recall", m, d / "q.npy", m), "same file")
    os.link(m, d / "hard.amem")
    bad(run(cli, "recall", m, d / "q.npy", d / "hard.amem"), "same file")
    bad(run(cli, "recall", m, d / "q.npy", d / "o.npy", "--details", d / "o.npy"), "same file")
    bad(run(cli, "recall", m, d / "q.npy", d / "q.npy"), "same file")
    p = (d / "p.npy").read_bytes()
    bad(run(cli, "store", d / "p.npy", d / "p.npy"), "same file")
    assert m.read_bytes() == before and (d / "p.npy").read_bytes() == p


def test_files_read_through_another_are_inputs_too(cli, d):
    """Issue 23: the shards of a manifest, the codes beside a store that --certify reads and the arrays a
    simulation description names were not known as inputs: `recall manifest.json q.npy <a shard>` exited 0
    and overwrote the shard, `simulate cfg.json -o <its v0.npy>` replaced the input, `recall s.amem q.npy
    s.amem.codes --certify` replaced the codes it read. Every file a command reads is known before any
    write and cannot be an output; nothing is changed."""
    m = make_store(cli, d)
    assert run(cli, "shard", m, d / "sh", "--parts", "2").returncode == 0
    shard = sorted(p for p in (d / "sh").iterdir() if p.suffix == ".amem")[1]
    before = {p: p.read_bytes() for p in (d / "sh").iterdir()}
    bad(run(cli, "recall", d / "sh" / "manifest.json", d / "q.npy", shard), "same file as the shard")
    bad(run(cli, "recall", d / "sh" / "manifest.json", d / "q.npy", d / "o.npy", "--details", shard), "the shard")
    assert {p: p.read_bytes() for p in (d / "sh").iterdir()} == before
    assert run(cli, "index", m).returncode == 0
    codes = pathlib.Path(str(m) + ".codes")
    c = codes.read_bytes()
    bad(run(cli, "recall", m, d / "q.npy", codes, "--certify", "1e-3"), "same file as the codes")
    bad(run(cli, "recall", m, d / "q.npy", d / "o.npy", "--certify", "1e-3", "--details", codes), "the codes")
    assert codes.read_bytes() == c
    X = np.load(d / "p.npy")
    np.save(d / "xi.npy", X[:5].astype(np.float64))
    np.save(d / "v0.npy", X[0].astype(np.float64))
    np.save(d / "cur.npy", np.zeros(8))
    (d / "cfg.json").write_text(json.dumps({"xi": "xi.npy", "feature": {"name": "identity"}, "hidden": {"name": "softplus"},
                                            "v0": "v0.npy", "current": "cur.npy", "t_end": 1.0}))
    v0, cur = (d / "v0.npy").read_bytes(), (d / "cur.npy").read_bytes()
    bad(run(cli, "simulate", d / "cfg.json", "-o", d / "v0.npy"), "same file as the v0")
    bad(run(cli, "simulate", d / "cfg.json", "-o", d / "out.npy", "--plot", d / "cur.npy"), "same file as the current")
    assert (d / "v0.npy").read_bytes() == v0 and (d / "cur.npy").read_bytes() == cur
    assert run(cli, "simulate", d / "cfg.json", "-o", d / "out.npy").returncode == 0


def test_outputs_are_committed_together_or_not_at_all(cli, d):
    """Issue 23: commands with two outputs replaced the first and then failed on the second (--details into
    a missing folder). Every output of a command is staged and committed together when it succeeds."""
    m = make_store(cli, d)
    (d / "o.npy").write_bytes(b"old")
    r = run(cli, "recall", m, d / "q.npy", d / "o.npy", "--details", d / "missing" / "det.json")
    assert r.returncode == 2 and "missing" in r.stderr, r.stderr
    assert (d / "o.npy").read_bytes() == b"old"
    assert not [f for f in os.listdir(d) if f.startswith(".assocmem-tmp.")]
    (d / "new.amem.codes").write_bytes(b"old codes")
    os.chmod(d, 0o755)
    r = run(cli, "store", d / "p.npy", d / "new.amem", "--codes")
    assert r.returncode == 0, r.stderr
    assert (d / "new.amem.codes").read_bytes() != b"old codes"   # written with the store
    assert run(cli, "recall", d / "new.amem", d / "q.npy", d / "o2.npy", "--certify", "1e-3").returncode == 0
    r = run(cli, "recall", m, d / "q.npy", d / "o.npy", "--details", d / "det.json")
    assert r.returncode == 0 and (d / "o.npy").read_bytes() != b"old" and (d / "det.json").is_file()
    # `store --append` under mpirun appended once per rank: a command that writes one store runs as one
    # process (mpirun sets OMPI_COMM_WORLD_SIZE in every rank).
    n = len(am.MemoryStore.open(str(m)))
    r = run(cli, "store", d / "p.npy", m, "--append", env=dict(os.environ, OMPI_COMM_WORLD_SIZE="2"))
    bad(r, "run it as one process")
    assert len(am.MemoryStore.open(str(m))) == n


def test_special_files_are_refused_and_not_replaced(cli, d):
    m = make_store(cli, d)
    fifo = d / "fifo"
    os.mkfifo(fifo)
    t0 = time.time()
    bad(run(cli, "recall", fifo, d / "q.npy", d / "o.npy", timeout=20), "FIFO")
    bad(run(cli, "recall", m, fifo, d / "o.npy", timeout=20), "FIFO")
    bad(run(cli, "recall", m, d / "q.npy", fifo, timeout=20), "FIFO")
    bad(run(cli, "simulate", fifo, timeout=20), "FIFO")
    assert time.time() - t0 < 20 and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    bad(run(cli, "recall", m, d / "q.npy", d), "directory")
    if os.geteuid() == 0:  # as root a regular-file write would replace the device
        for dev in ("/dev/null", "/dev/zero"):
            bad(run(cli, "recall", m, d / "q.npy", dev), "character device")
            assert stat.S_ISCHR(os.stat(dev).st_mode)


def test_symlinks_are_written_through(cli, d):
    m = make_store(cli, d)
    (d / "real").mkdir()
    shutil.move(m, d / "real" / "m.amem")
    os.symlink("real/m.amem", d / "link.amem")
    r = run(cli, "store", d / "p.npy", d / "link.amem", "--append")
    assert r.returncode == 0, r.stderr
    assert os.path.islink(d / "link.amem")
    assert len(am.MemoryStore.open(str(d / "real" / "m.amem"))) == 100
    os.symlink(d / "real" / "out.npy", d / "out-link.npy")
    assert run(cli, "recall", d / "link.amem", d / "q.npy", d / "out-link.npy").returncode == 0
    assert os.path.islink(d / "out-link.npy") and (d / "real" / "out.npy").is_file()


def test_modes_follow_the_umask_and_are_kept(cli, d):
    m = make_store(cli, d)
    os.chmod(m, 0o600)
    assert run(cli, "store", d / "p.npy", m, "--append").returncode == 0
    assert stat.S_IMODE(os.stat(m).st_mode) == 0o600
    r = run(cli, "recall", m, d / "q.npy", d / "o.npy", preexec_fn=lambda: os.umask(0o077))
    assert r.returncode == 0 and stat.S_IMODE(os.stat(d / "o.npy").st_mode) == 0o600
    r = run(cli, "store", d / "p.npy", d / "n.amem", preexec_fn=lambda: os.umask(0o022))
    assert r.returncode == 0 and stat.S_IMODE(os.stat(d / "n.amem").st_mode) == 0o644


def test_long_names_work(cli, d):
    name = "s" * 248 + ".amem"  # 253 characters
    assert run(cli, "store", d / "p.npy", d / name).returncode == 0
    assert len(am.MemoryStore.open(str(d / name))) == 50


# ---- 2: threads -----------------------------------------------------------------------------------
def test_a_thread_that_cannot_start_is_an_error(cli, d, shared_dir):
    rng = np.random.default_rng(0)
    np.save(d / "many.npy", rng.standard_normal((200 * 256, 16)).astype(np.float32))
    assert run(cli, "store", d / "many.npy", d / "many.amem").returncode == 0

    def small_address_space():
        resource.setrlimit(resource.RLIMIT_AS, (500 << 20, resource.RLIM_INFINITY))
    np.save(d / "q16.npy", rng.standard_normal((2, 16)).astype(np.float32))
    r = run(cli, "recall", d / "many.amem", d / "q16.npy", d / "o.npy", "--threads", "200",
            preexec_fn=small_address_space)
    assert r.returncode in (0, 1), (r.returncode, r.stderr)  # never SIGABRT (-6)
    if r.returncode == 1:
        assert "worker thread" in r.stderr or "memory" in r.stderr, r.stderr
    if os.geteuid() == 0:  # the issue's case: `ulimit -u 64` as an unprivileged user, --threads 200
        shared = shared_dir
        for f in ("many.amem", "q16.npy"):
            shutil.copy(d / f, shared)
            os.chmod(shared / f, 0o644)

        def few_processes():
            # 1: no thread at all (threads count as processes; with a higher limit, workers that
            # finish before the next one starts keep the count below it and the test is luck)
            resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))
            as_nobody()
        r = run(cli, "recall", shared / "many.amem", shared / "q16.npy", shared / "o2.npy", "--threads", "200",
                preexec_fn=few_processes)
        assert r.returncode == 1 and "worker thread" in r.stderr, (r.returncode, r.stderr)


# ---- 4: concurrent appends --------------------------------------------------------------------------
def test_concurrent_appends_are_all_kept(cli, d):
    """4 writers x 20 appends of distinct rows: every row is in the store afterwards."""
    writers, appends = 4, 20
    for w in range(writers):
        for i in range(appends):
            np.save(d / f"r{w}_{i}.npy", np.array([[w, i, 1.0]], np.float32))

    def writer(w, codes):
        for i in range(appends):
            codes.append(run(cli, "store", d / f"r{w}_{i}.npy", d / "s.amem", "--append").returncode)
    codes = []
    threads = [threading.Thread(target=writer, args=(w, codes)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [0] * (writers * appends)
    rows = am.MemoryStore.open(str(d / "s.amem")).to_array()
    assert sorted(map(tuple, rows[:, :2].astype(int).tolist())) == [(w, i) for w in range(writers) for i in range(appends)]
    assert not [f for f in os.listdir(d) if f.startswith(".assocmem-tmp.")]


# ---- 3: a store overwritten under a reader ------------------------------------------------------------
def test_recall_while_the_store_is_overwritten_in_place(cli, d):
    rng = np.random.default_rng(1)
    np.save(d / "a.npy", rng.standard_normal((200_000, 32)).astype(np.float32))
    np.save(d / "b.npy", rng.standard_normal((1000, 32)).astype(np.float32))
    np.save(d / "q32.npy", rng.standard_normal((8, 32)).astype(np.float32))
    assert run(cli, "store", d / "a.npy", d / "big.amem").returncode == 0
    assert run(cli, "store", d / "b.npy", d / "other.amem").returncode == 0
    big = (d / "big.amem").read_bytes()
    for _ in range(10):
        (d / "big.amem").write_bytes(big)
        p = subprocess.Popen([cli, "recall", d / "big.amem", d / "q32.npy", d / "o.npy"], stderr=subprocess.PIPE)
        time.sleep(random.uniform(0.0, 0.05))
        shutil.copyfile(d / "other.amem", d / "big.amem")  # in place: truncate, then write
        _, err = p.communicate(timeout=60)
        assert p.returncode in (0, 2), (p.returncode, err)


def test_python_store_that_shrinks(tmp_path):
    X = np.random.default_rng(0).standard_normal((20000, 16)).astype(np.float32)
    s = am.MemoryStore(16)
    s.append(X)
    s.save(str(tmp_path / "s.amem"))
    copy = am.MemoryStore.open(str(tmp_path / "s.amem"))
    mapped = am.MemoryStore.open(str(tmp_path / "s.amem"), access="map")
    os.truncate(tmp_path / "s.amem", 5000)
    np.testing.assert_array_equal(copy.to_array(), X)
    with pytest.raises(OSError, match="shrank"):
        mapped.to_array()
    with pytest.raises(OSError):
        am.MemoryStore.open(str(tmp_path / "s.amem"))


def test_a_store_in_use_cannot_change_under_its_model(tmp_path):
    """Issue 23: append() on a store a model used crashed the interpreter (certified codes sized for the
    old K, keys grown while the values were not, an append during a retrieval in another thread). A
    store refuses to change while any model over it lives; after `del model` it appends again."""
    rng = np.random.default_rng(4)
    keys = am.MemoryStore(8)
    keys.append(rng.standard_normal((300, 8)).astype(np.float32))
    values = am.MemoryStore(3)
    values.append(rng.standard_normal((300, 3)).astype(np.float32))
    q = rng.standard_normal((4, 8)).astype(np.float32)
    more = rng.standard_normal((5, 8)).astype(np.float32)
    models = [am.ModelB(keys, beta=4.0), am.ModelB(keys, beta=4.0, values=values), am.ModelC(keys, F="exp", beta=2.0)]
    models[0].retrieve(q, certify=1e-3)   # codes built for K = 300
    models[2].retrieve(q, certify=1e-3)
    for store, rows in ((keys, more), (values, more[:, :3])):
        with pytest.raises(ValueError, match="in use by"):
            store.append(rows)
    assert len(keys) == 300 and len(values) == 300
    for m in models:                       # they still work, on the store as it was
        m.retrieve(q)
    # An append racing retrievals in another thread: refused, and the retrievals complete.
    errors, done = [], threading.Event()
    def retrieve_loop():
        while not done.is_set():
            models[0].retrieve(q, certify=1e-3)
    t = threading.Thread(target=retrieve_loop)
    t.start()
    try:
        for _ in range(50):
            try:
                keys.append(more)
            except ValueError as e:
                errors.append(str(e))
    finally:
        done.set()
        t.join()
    assert len(errors) == 50 and len(keys) == 300
    del models, m
    keys.append(more)
    values.append(more[:, :3])
    assert len(keys) == 305
    r = am.ModelB(keys, beta=4.0).retrieve(q, certify=1e-3)   # new codes for K = 305
    assert np.asarray(r).shape == (4, 8) and np.all(np.isfinite(r))


def test_python_never_loses_the_interpreter():
    import assocmem.capacity
    with pytest.raises(ValueError, match="K x N"):
        assocmem.capacity.measure(N=2**20, K=2**39, trials=1)   # more memory than any machine
    with pytest.raises(ValueError, match="K must be a whole number"):
        assocmem.capacity.measure(N=4, K=2**62, trials=1)
    with pytest.raises(ValueError, match="threads"):
        am.ModelB(np.eye(4, dtype=np.float32), threads=10000)
    with pytest.raises(ValueError, match="dim"):
        am.MemoryStore(2**62).save("/nonexistent/x.amem")
    g = am.lagrangians.log_sum_exp(1e308).activation(np.array([1.0, 2.0, -3.0]))
    assert np.all(np.isfinite(g)) and abs(g.sum() - 1) < 1e-12


# ---- 8: signals and kill -9 ---------------------------------------------------------------------------
def wait_for_temporary(folder, proc, timeout=30):
    """Waits until a writer's temporary exists in folder (the write is under way)."""
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        if [f for f in os.listdir(folder) if f.startswith(".assocmem-tmp.")]:
            return True
        time.sleep(0.001)
    return False


def temporaries(folder):
    return [f for f in os.listdir(folder) if f.startswith(".assocmem-tmp.")]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_saves_leave_no_temporaries(cli, tmp_path, sig):
    np.save(tmp_path / "x.npy", np.ones((400_000, 64), np.float32))  # a 100 MB store
    rng = random.Random(int(sig))
    interrupted = 0
    for _ in range(4):
        p = subprocess.Popen([cli, "store", tmp_path / "x.npy", tmp_path / "s.amem"], stderr=subprocess.PIPE)
        if wait_for_temporary(tmp_path, p):
            time.sleep(rng.uniform(0.0, 0.02))
            p.send_signal(sig)
        p.communicate(timeout=60)
        assert p.returncode in (0, -sig), p.returncode
        interrupted += p.returncode == -sig
        assert temporaries(tmp_path) == []
        if (tmp_path / "s.amem").exists():
            assert len(am.MemoryStore.open(str(tmp_path / "s.amem"))) == 400_000
    assert interrupted > 0


def test_plot_temporaries_are_removed_on_interrupt(cli, tmp_path):
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    p = subprocess.Popen([cli, "capacity", "--values", "5,10", "--trials", "2", "--plot", tmp_path / "c.png"],
                         stderr=subprocess.PIPE, env={**os.environ, "TMPDIR": str(tmp)})
    t0 = time.time()
    while not os.listdir(tmp) and p.poll() is None and time.time() - t0 < 30:
        time.sleep(0.001)  # the plot's private folder exists: the plot is being drawn
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGINT
    time.sleep(0.5)  # the orphaned plotter finds its folder gone
    assert os.listdir(tmp) == []                # the CSV, the PNG and their folder are gone
    assert os.listdir(tmp_path) == ["tmpdir"]   # and no partial c.png


def test_kill_nine_during_store_then_next_writer_cleans(cli, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((400_000, 64), np.float32))
    np.save(tmp_path / "small.npy", np.ones((3, 64), np.float32))
    assert run(cli, "store", tmp_path / "small.npy", tmp_path / "s.amem").returncode == 0
    left = 0
    for _ in range(5):
        p = subprocess.Popen([cli, "store", tmp_path / "x.npy", tmp_path / "s.amem"])
        if wait_for_temporary(tmp_path, p):
            time.sleep(random.uniform(0.0, 0.02))
            p.kill()
        p.wait()
        left = max(left, len(temporaries(tmp_path)))
        assert len(am.MemoryStore.open(str(tmp_path / "s.amem"))) in (3, 400_000)
    assert left > 0  # kill -9 cannot clean up: the next writer must
    assert run(cli, "store", tmp_path / "small.npy", tmp_path / "t.amem").returncode == 0
    assert temporaries(tmp_path) == []


def test_beta_zero_is_refused_everywhere_not_read_as_the_models():
    """Issue 24: ModelB.attention(q, beta=0.0) and energy(s, beta=0.0) silently used the model's beta (0 meant
    "unset" inside), while retrieve(q, beta=0.0) raised. A given beta is now checked the same way by every
    call; None (the default) is the model's beta."""
    X = np.eye(8, dtype=np.float32)
    m = am.ModelB(X, beta=4.0)
    q = X[:2] + 0.1
    for bad_beta in (0.0, -1.0, float("nan"), 1e39):
        for call in (lambda: m.attention(q, 1, beta=bad_beta), lambda: m.energy(q, beta=bad_beta),
                     lambda: m.retrieve(q, beta=bad_beta)):
            with pytest.raises(ValueError, match="beta must be finite, > 0"):
                call()
    ids, w = m.attention(q, 1)
    ids4, w4 = m.attention(q, 1, beta=4.0)
    np.testing.assert_array_equal(w, w4)
    np.testing.assert_array_equal(m.energy(q), m.energy(q, beta=4.0))
    assert not np.array_equal(m.energy(q, beta=2.0), m.energy(q))
