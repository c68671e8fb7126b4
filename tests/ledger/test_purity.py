"""The domain package stays pure: importing it pulls in no streaming or storage library."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("faust", "confluent_kafka", "rocksdict", "fastavro", "aiokafka")

SCRIPT = """
import importlib, json, sys
modules = json.loads(sys.argv[1])
for name in modules:
    importlib.import_module(name)
forbidden = set(json.loads(sys.argv[2]))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
print(json.dumps({"imported": sorted(modules), "loaded": loaded}))
"""


def ledger_modules() -> list[str]:
    """Every importable module under ledger/, as dotted names."""
    names = []
    for path in sorted((REPO / "ledger").rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def test_ledger_imports_no_infrastructure():
    """A fresh interpreter that imports all of ledger/ has none of the forbidden libraries loaded."""
    modules = ledger_modules()
    assert {"ledger", "ledger.domain"} <= set(modules)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(modules), json.dumps(FORBIDDEN)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(modules) == report["imported"]
    expected = []
    actual = report["loaded"]
    assert expected == actual
