"""GET /metrics after a small load: every counter moved by exactly what was done."""

from __future__ import annotations

import time
import urllib.request

import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from streams.client import LedgerClient
from streams.partitioner import partition_for

pytestmark = pytest.mark.kafka


def scrape(worker) -> dict[tuple, float]:
    with urllib.request.urlopen(worker.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_move_by_the_right_amounts(settings, workers, ledger_cli):
    worker = workers.start(settings)
    with LedgerClient(settings) as client:
        client.open_account("m", "EUR", command_id="m-open")
        for i in range(10):
            client.credit("m", 100, "EUR", command_id=f"m-c{i}")
        client.credit("m", 100, "EUR", command_id="m-c0")          # a retry
        client.debit("m", 5_000, "EUR", command_id="m-too-much")    # insufficient funds
        client.debit("m", 1, "USD", command_id="m-usd")             # currency mismatch
        client.debit("m", 1, "EUR", command_id="m-last", wait=True)
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    producer.produce(settings.commands_topic, b"poison", b"m",
                     partition=partition_for(b"m", settings.partitions))
    producer.flush(10)
    assert 0 == ledger_cli(settings, "snapshot").returncode
    for _ in range(3):
        worker.get("/v1/accounts/m")
    worker.get("/v1/accounts/nobody")
    deadline = time.monotonic() + 30
    while True:
        samples = scrape(worker)
        if value(samples, "ledger_dead_letters_total") == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)

    assert 1 == value(samples, "ledger_commands_total", type="open_account", outcome="applied")
    assert 10 == value(samples, "ledger_commands_total", type="credit", outcome="applied")
    assert 1 == value(samples, "ledger_commands_total", type="credit", outcome="duplicate")
    assert 1 == value(samples, "ledger_commands_total", type="debit", outcome="applied")
    assert 2 == value(samples, "ledger_commands_total", type="debit", outcome="rejected")
    assert 1 == value(samples, "ledger_command_rejections_total", reason="insufficient_funds")
    assert 1 == value(samples, "ledger_command_rejections_total", reason="currency_mismatch")
    # 12 events (open, 10 credits, 1 debit) and 2 rejection records
    assert 14 == value(samples, "ledger_events_appended_total")
    assert 1 == value(samples, "ledger_dead_letters_total")
    assert value(samples, "ledger_transactions_total", outcome="committed") >= 1
    assert 0 == value(samples, "ledger_transactions_total", outcome="aborted")
    assert 3 == value(samples, "ledger_http_requests_total", method="GET",
                      route="/v1/accounts/{account_id}", status="200")
    assert 1 == value(samples, "ledger_http_requests_total", method="GET",
                      route="/v1/accounts/{account_id}", status="404")
    assert 4 == value(samples, "ledger_http_request_seconds_count", method="GET",
                      route="/v1/accounts/{account_id}")
    assert 1 <= value(samples, "ledger_recovery_seconds_count")
    assert 6 == value(samples, "ledger_assigned_partitions")
    assert 0 == sum(value(samples, "ledger_consumer_lag", partition=str(p)) for p in range(6))
    assert value(samples, "ledger_snapshot_bytes") > 0
    assert 0 <= value(samples, "ledger_snapshot_age_seconds") < 120
