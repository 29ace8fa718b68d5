"""pytest configuration: the package under test comes from PYTHONPATH (scripts/test points it at
build/python); the command-line tool from $ASSOCMEM_CLI or build/cli/assocmem."""
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cli():
    path = os.environ.get("ASSOCMEM_CLI", str(ROOT / "build" / "cli" / "assocmem"))
    if not os.path.exists(path):
        pytest.fail(f"the assocmem command was not built: {path}")
    return path
