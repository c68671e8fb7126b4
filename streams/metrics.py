"""Prometheus metrics of a worker. Names follow Prometheus conventions: base
units (`_seconds`, `_bytes`), `_total` for counters, labels of low cardinality.
"""

from __future__ import annotations

import functools

from prometheus_client import Counter, Gauge, Histogram

COMMANDS = Counter(
    "ledger_commands_total", "Commands handled, by type and outcome",
    ["type", "outcome"],  # outcome: applied | rejected | duplicate
)
REJECTIONS = Counter(
    "ledger_command_rejections_total", "Rejected commands by reason", ["reason"]
)
EVENTS = Counter("ledger_events_appended_total",
                 "Records appended to the event log (events and rejection records)")
DEAD_LETTERS = Counter(
    "ledger_dead_letters_total", "Records parked on the dead-letter topic"
)
TRANSACTIONS = Counter(
    "ledger_transactions_total", "Kafka transactions by outcome", ["outcome"]
)
TRANSACTION_SECONDS = Histogram(
    "ledger_transaction_seconds", "Time from begin to commit of one batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_SIZE = Histogram(
    "ledger_batch_commands", "Commands per transaction",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
)
RECOVERY_SECONDS = Histogram(
    "ledger_recovery_seconds", "Time to catch a partition's store up with the log",
    buckets=(0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
RECOVERED_EVENTS = Counter(
    "ledger_recovered_records_total", "Log records read while catching up"
)
CORE_REBUILDS = Counter(
    "ledger_core_rebuilds_total",
    "Times the transactional core dropped its Kafka clients after a fatal error and made new ones")
ASSIGNED_PARTITIONS = Gauge("ledger_assigned_partitions", "Partitions this worker owns")
SNAPSHOT_FALLBACKS = Counter(
    "ledger_snapshot_fallbacks_total",
    "Corrupt or unusable snapshots skipped for an older one or a full replay",
)
HTTP_REQUESTS = Counter(
    "ledger_http_requests_total", "HTTP requests by method, route and status",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "ledger_http_request_seconds", "HTTP request latency by method and route",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CONSUMER_LAG = Gauge(
    "ledger_consumer_lag", "Commands and legs not yet consumed, by partition",
    ["partition"],
)
SNAPSHOT_AGE_SECONDS = Gauge(
    "ledger_snapshot_age_seconds",
    "Seconds since the newest event in the newest ledger-wide snapshot (NaN: none)",
)
SNAPSHOT_BYTES = Gauge("ledger_snapshot_bytes", "Size of the newest ledger-wide snapshot file")


# labels() costs several microseconds a call; the hot path counts through
# these cached children instead.
@functools.lru_cache(maxsize=None)
def command_counter(command_type: str, outcome: str):
    return COMMANDS.labels(command_type, outcome)


@functools.lru_cache(maxsize=None)
def rejection_counter(reason: str):
    return REJECTIONS.labels(reason)
