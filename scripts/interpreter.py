"""Which build of CPython this is, as far as the ledger's speed goes.

    python3.11 scripts/interpreter.py   # linked-in, shared, no-headers or unknown

An interpreter that loads libpython as a shared library (pyenv's default
build) ran the worker's hot path with 8-29% more CPU per command than one
with libpython linked into its executable (README, Performance, "The
interpreter"). scripts/install runs this file with each python3.11 on PATH,
before any venv exists (so: standard library only), and takes the first
"linked-in" one; scripts/bench records :func:`libpython_shared` with each run.
"""

from __future__ import annotations

import os
import sysconfig


def libpython_shared() -> bool | None:
    """Does this interpreter load libpython as a shared library? None: unknown
    (no /proc to look in)."""
    try:
        with open("/proc/self/maps") as maps:
            return "libpython" in maps.read()
    except OSError:
        return None


def kind() -> str:
    """"linked-in": libpython in the executable, and the C headers the
    install needs to build the ledger's two C modules are there."""
    shared = libpython_shared()
    if shared is None:
        return "unknown"
    if shared:
        return "shared"
    if not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        return "no-headers"
    return "linked-in"


if __name__ == "__main__":
    print(kind())
