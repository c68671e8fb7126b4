"""A worker is meant to run under a supervisor: the shipped ones say so.

The worker mends broker faults in-process and exits non-zero only on what it
cannot mend (a full disk); docker-compose.yml and the systemd unit must then
restart it, stop it within their grace period, and keep its leg secret.
"""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from streams import app

REPO = Path(__file__).resolve().parent.parent


def test_compose_restarts_the_worker_and_checks_its_health():
    yaml = pytest.importorskip("yaml")
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    worker = services["worker"]
    assert "unless-stopped" == worker["restart"]
    assert "/v1/health" in " ".join(worker["healthcheck"]["test"])
    grace_s = int(worker["stop_grace_period"].rstrip("s"))
    assert app.STOP_DEADLINE_S < grace_s
    assert "/secrets/leg.key" == worker["environment"]["LEDGER_LEG_KEY_FILE"]
    assert "ledger-secrets:/secrets:ro" in worker["volumes"]
    # The write API needs a token; the tokens file comes from the secrets volume.
    assert "/secrets/api.tokens" == worker["environment"]["LEDGER_API_TOKENS"]
    assert "api.tokens" in " ".join(services["leg-key"]["command"])
    # No unauthenticated write API on every interface.
    assert all(str(p).startswith("127.0.0.1:") for p in worker["ports"])


def test_systemd_unit_restarts_on_failure_within_its_stop_timeout():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(REPO / "deploy/systemd/ledger-worker@.service")
    service = unit["Service"]
    assert "on-failure" == service["Restart"]
    assert app.STOP_DEADLINE_S < int(service["TimeoutStopSec"])
    assert "0" == unit["Unit"]["StartLimitIntervalSec"]
    assert "ledger worker" in service["ExecStart"]


def test_a_quiet_worker_keeps_its_root_logger_quiet():
    """Faust's terminal spinner would set the root logger to DEBUG at
    --loglevel warning, so every library debug record is built and dropped."""
    import logging

    worker = object.__new__(app.LedgerWorker)
    worker.spinner = object()
    root = logging.Logger("probe")
    root.addHandler(logging.StreamHandler())
    root.setLevel(logging.WARNING)
    worker.on_setup_root_logger(root, logging.WARNING)
    assert worker.spinner is None
    assert root.level == logging.WARNING and len(root.handlers) == 1
