"""The package's optional C modules (setup.py) are built and current wherever
a C compiler is.

setup.py builds them optionally, so a failed build or rebuild is only a
warning: without this test the suite could pass on the Python paths alone,
or on a module left over from before a change to its source.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# C source -> (the module that uses it, its flag saying the C is in use)
MODULES = {
    "schemas/_avro.c": ("schemas.codec", "ACCELERATED"),
    "ledger/_frozen.c": ("ledger.frozen", "ACCELERATED"),
}


def test_every_c_source_of_the_package_is_checked_here():
    sources = {str(p.relative_to(REPO)) for d in ("ledger", "schemas", "streams")
               for p in (REPO / d).rglob("*.c")}
    assert sources == set(MODULES)
    assert all(source in (REPO / "setup.py").read_text() for source in sources)


@pytest.mark.parametrize("source", sorted(MODULES))
def test_the_c_module_is_built_and_current_where_a_compiler_is(source):
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler here: the same work is done in Python")
    user, flag = MODULES[source]
    assert getattr(importlib.import_module(user), flag), f"{source} is not built: run scripts/install"
    name = source.replace("/", ".").removesuffix(".c")
    built = Path(importlib.import_module(name).__file__)
    assert built.stat().st_mtime >= (REPO / source).stat().st_mtime, \
        f"{built.name} is older than {source}: run .venv/bin/pip install -e ."
