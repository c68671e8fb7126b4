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
# Where a batch's time goes (scripts/bench reads it): waiting for commands,
# deciding and producing them, flushing (acks), sending offsets, committing.
PHASE_SECONDS = Counter(
    "ledger_batch_phase_seconds", "Seconds of the worker loop by phase", ["phase"]
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
HUNG_CALLS = Counter(
    "ledger_hung_kafka_calls_total",
    "Transactional calls still blocked HUNG_CALL_S after their timeout, given up with their clients")
ASSIGNED_PARTITIONS = Gauge("ledger_assigned_partitions", "Partitions this worker owns")
SNAPSHOT_FALLBACKS = Counter(
    "ledger_snapshot_fallbacks_total",
    "Corrupt or unusable snapshots skipped for an older one or a full replay",
)
CHECKPOINTS_WRITTEN = Counter(
    "ledger_checkpoints_written_total",
    "Store checkpoints copied to LEDGER_CHECKPOINT_DIR (streams/checkpoints.py)")
CHECKPOINTS_FAILED = Counter(
    "ledger_checkpoints_failed_total",
    "Store checkpoints that could not be taken or copied (retried later)")
CHECKPOINTS_RESTORED = Counter(
    "ledger_checkpoints_restored_total",
    "Stores replaced by a checkpoint at a takeover, before the log after it was folded")
CHECKPOINTS_REJECTED = Counter(
    "ledger_checkpoints_rejected_total",
    "Checkpoints not used at a takeover: malformed, of another topic or format, "
    "outside the log, or a file that does not match its hash")
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


class Tally:
    """Increments of counter children, added up in a dict and passed on
    together: a child's inc() takes a lock and cost the worker about a
    microsecond per command (a py-spy profile: 4% of its core thread)."""

    def __init__(self):
        self._counts: dict = {}

    def add(self, child, amount: int = 1) -> None:
        self._counts[child] = self._counts.get(child, 0) + amount

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        for child, amount in counts.items():
            child.inc(amount)

    def drop(self) -> None:
        self._counts = {}


# The worker's per-command counts, flushed once per transaction, just before
# its commit (streams/processor.py); a batch given up before that is dropped
# with them, and counted when it is decided again.
PER_COMMAND = Tally()


# labels() costs several microseconds a call; the hot path counts through
# these cached children instead.
@functools.lru_cache(maxsize=None)
def command_counter(command_type: str, outcome: str):
    return COMMANDS.labels(command_type, outcome)


@functools.lru_cache(maxsize=None)
def rejection_counter(reason: str):
    return REJECTIONS.labels(reason)


# -- Read models (streams/readmodels.py): Faust agents over the event log ------
LEDGER_MONEY = Gauge(
    "ledger_money_minor",
    "Money in minor units by currency and kind (balances, in_flight, external_credits, "
    "external_debits) over the event-log partitions whose read models this worker "
    "holds: sum over workers for the ledger",
    ["currency", "kind"],
)
INVARIANT_OK = Gauge(
    "ledger_invariant_ok",
    "1 while the money invariant holds for the currency over the whole ledger (as this "
    "worker gathers it from every read-model owner), 0 once it is broken",
    ["currency"],
)
READ_MODEL_LAG = Gauge(
    "ledger_read_model_lag_events",
    "Committed event-log offsets a read model has not folded yet, by model and partition",
    ["model", "partition"],
)
READ_MODEL_EVENTS = Counter(
    "ledger_read_model_events_total", "Event-log records folded into a read model", ["model"]
)
READ_MODEL_REPLAYED = Counter(
    "ledger_read_model_replayed_total",
    "Event-log records read again and skipped: the table value already held their offset",
    ["model"],
)
READ_MODEL_RECOVERED = Counter(
    "ledger_read_model_recovered_records_total",
    "Committed event-log records Faust's consumer did not deliver, read from the log "
    "instead (checked for every batch)",
    ["model"],
)
READ_MODEL_UNDECODABLE = Counter(
    "ledger_read_model_undecodable_total",
    "Event-log records that did not decode (folded as moving no money)",
)
READ_MODEL_MISSING_PARTITIONS = Gauge(
    "ledger_read_model_missing_partitions",
    "Event-log partitions whose totals no worker gave in this worker's last ledger-wide check",
)


@functools.lru_cache(maxsize=None)
def read_model_events(model: str):
    return READ_MODEL_EVENTS.labels(model)


@functools.lru_cache(maxsize=None)
def read_model_replayed(model: str):
    return READ_MODEL_REPLAYED.labels(model)


@functools.lru_cache(maxsize=None)
def read_model_lag(model: str, partition: int):
    return READ_MODEL_LAG.labels(model, str(partition))


# -- Final answers as of a time (issue 15): partition watermarks ---------------
WATERMARK_LAG = Gauge(
    "ledger_watermark_lag_seconds",
    "How far the partition's final watermark (every record recorded at or before it "
    "is committed and applied to this worker's store) trails this worker's clock, by "
    "event-log partition; NaN for a partition this worker does not serve. Negative: "
    "the worker's clock is behind the watermark a previous owner published",
    ["partition"],
)
TICKS = Counter(
    "ledger_partition_ticks_total",
    "PartitionTick records written: time marked on an event-log partition where "
    "nothing else was recorded for LEDGER_TICK_MS",
)
STAMPED_AFTER_WATERMARK = Counter(
    "ledger_stamped_after_watermark_total",
    "Batches (per partition) stamped 1 ms after the partition's watermark instead of "
    "the worker's clock, because the clock was at or behind the watermark",
)
AS_OF_WAIT_SECONDS = Histogram(
    "ledger_as_of_wait_seconds",
    "Time an as-of read (as_of=T, events to=T) waited for the watermark to pass T",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
AS_OF_NOT_FINAL = Counter(
    "ledger_as_of_not_final_total",
    "As-of reads answered 503 as_of_not_final: T not final within timeout_ms",
)


@functools.lru_cache(maxsize=None)
def read_model_recovered(model: str):
    return READ_MODEL_RECOVERED.labels(model)
