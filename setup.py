"""Builds the Python package with CMake: the compiled module assocmem._core and the `assocmem` command
(shipped as assocmem/_bin/assocmem, run by the console script of the same name: assocmem._cli) come from
the same CMakeLists.txt as everything else, and the version is read from its project(VERSION), the one
place it is written. Metadata: pyproject.toml."""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
    VERSION = re.search(r"project\(assocmem VERSION ([0-9.]+)", f.read()).group(1)


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build = os.path.abspath(os.path.join(self.build_temp, "cmake"))
        flags = ["-DCMAKE_BUILD_TYPE=Release", f"-DPython3_EXECUTABLE={sys.executable}", "-DASSOCMEM_BUILD_PYTHON=ON",
                 "-DASSOCMEM_BUILD_CLI=ON", "-DASSOCMEM_BUILD_TESTS=OFF", "-DASSOCMEM_BUILD_BENCH=OFF",
                 "-DASSOCMEM_BUILD_EXAMPLES=OFF", "-DASSOCMEM_INSTALL=OFF"]
        if shutil.which("ninja"):
            flags += ["-G", "Ninja"]
        subprocess.run(["cmake", "-S", ROOT, "-B", build, *flags], check=True)
        subprocess.run(["cmake", "--build", build, "--target", "_core", "assocmem_cli", "-j", str(os.cpu_count() or 1)],
                       check=True)
        built = glob.glob(os.path.join(build, "python", "assocmem", "_core*.so"))
        if len(built) != 1:
            raise RuntimeError(f"CMake built {built!r}, expected one assocmem/_core*.so")
        dest = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(built[0], dest)
        # The command, inside the package (assocmem/_bin/assocmem): pip's console script `assocmem` runs it
        # (assocmem._cli).
        command = os.path.join(os.path.dirname(dest), "_bin", "assocmem")
        os.makedirs(os.path.dirname(command), exist_ok=True)
        shutil.copy2(os.path.join(build, "cli", "assocmem"), command)


setup(
    version=VERSION,
    package_dir={"": "python"},
    packages=["assocmem", "assocmem.demos"],
    package_data={"assocmem": ["*.pyi", "py.typed"]},
    ext_modules=[Extension("assocmem._core", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
