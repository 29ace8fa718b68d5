"""The .pyi stubs agree with the module (mypy's stubtest, Debian's python3-mypy): every public name,
signature, default and property of the stubs is checked against the imported package."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_stubs_match_the_module():
    cmd = [sys.executable, "-m", "mypy.stubtest", "--mypy-config-file", os.path.join(HERE, "stubtest.ini"),
           "--allowlist", os.path.join(HERE, "stubtest-allowlist.txt"), "assocmem"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
