"""The `assocmem` command of a pip installation: pip's console script `assocmem` runs main(), which
replaces the Python process by the compiled command shipped inside the package (assocmem/_bin/assocmem,
built by setup.py from the same CMakeLists.txt as the module). Its arguments, exit status, signals and
output are the command's own. Installations from the Debian package or `cmake --install` put the command
on PATH directly and do not use this."""
from __future__ import annotations

import os
import sys

COMMAND = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bin", "assocmem")


def main() -> None:
    if not os.access(COMMAND, os.X_OK):
        sys.exit(f"assocmem: the command is not part of this installation ({COMMAND} is missing); it is built by "
                 "`pip install .` from the source tree, or installed with the Debian package")
    os.execv(COMMAND, [COMMAND, *sys.argv[1:]])
