"""Read models: a Faust agent that folds the committed event log into Faust tables.

The money path (streams/processor.py) is exactly-once by Kafka transaction.
The read models here are exactly-once *in effect* by an idempotent fold:
one at-least-once Faust agent over ``<prefix>.events`` (read_committed)
writes two Faust ``Table`` s on RocksDB (rocksdict) with changelog topics, and every
table value carries the last event-log offset folded into it. A record at or
below that offset is skipped, so a replay after a crash, a rebalance or a
restore from the changelog never counts anything twice (DESIGN.md, "The read
side"). Nothing is lost either, by two checks Faust does not make itself:
a batch is acknowledged (so its offsets may be committed) only once its
changelog records are in Kafka (:meth:`ReadModels._whole`), and every
batch is compared with the log, so that a committed record Faust's consumer
did not deliver is folded anyway (:meth:`ReadModels._complete`; the log is
read only for gaps that Faust's consumer did not itself pass over as
transaction markers or aborted records, :class:`SkippedOffsets`).

Two tables, both co-partitioned with the event log (Faust writes a table's
changelog record to the partition of the event being processed, and the
changelog topics have the log's partition count):

``ledger-totals``  key ``p<N>`` (one key per event-log partition)
    value ``{"offset", "records", "currencies": {CUR: {credited, debited,
    transfer_debited, transfer_credited, transfer_refunded,
    transfer_completed}}}``: the sums of amounts by kind of every record of
    partition N up to ``offset`` (``records`` of them, rejections included;
    ``PartitionTick`` records only mark time and are passed over).
    Balances, money in flight and external money derive from them
    (:func:`derived`).

``ledger-statements``  key ``<account_id>|<YYYY-MM-DD>`` (the day in
    ``LEDGER_STATEMENT_TZ``, default UTC)
    value ``{"offset", "currency", "opening_balance", "credited", "debited",
    "transfer_in", "transfer_out", "refunds", "closing_balance", "events",
    "first_sequence", "last_sequence"}``.

A worker serves the read models of the event-log partitions Faust's consumer
group (``<prefix>-faust``) gives it; a worker that gains a partition restores
its tables from their changelogs (or, with a wiped data dir, from offset 0 of
them), then folds from the group's committed offset on.

**The live money check.** Per currency, over the whole ledger:
``balances + in_flight == external_credits - external_debits`` (the fold
keeps this per partition by construction; checked anyway), money still
pending at a source ``transfer_debited - transfer_completed -
transfer_refunded >= 0`` in every partition (exact per partition: a
transfer's debit, completion and refund all happen at its source), and
``in_flight = transfer_debited - transfer_credited - transfer_refunded >= 0``
ledger-wide. The last one needs care: a transfer is credited on the
destination's partition, and partitions are folded (and read) at different
moments, so an instant view may see a credit before its debit. The
:class:`InvariantEvaluator` therefore only compares credits and refunds of an
earlier view ``j`` with debits of a later view ``k`` that is known to have
folded everything committed before view ``j+1`` was taken: every debit
committed before its credit was folded, so ``debits(k) - credits(j) -
refunds(j) < 0`` can only mean money created out of nothing (a credit or
refund with no debit), never lag.

Sums of amounts cannot tell a forged ``credited`` event (one whose balance
follows its amount) from real money coming in: both sides of the equation
move together. ``ledger verify`` checks each account's chain of balances;
what the live check catches is money that moves between accounts without
having left one (a transfer credit or refund without its debit).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from mode import Service

from ledger import domain
from schemas import codec
from streams import metrics
from streams.config import Settings
from streams.topics import consume_ready

log = logging.getLogger("ledger.readmodels")

TOTALS_TABLE = "ledger-totals"
STATEMENTS_TABLE = "ledger-statements"
MODELS = ("totals", "statements")

# Records a Faust agent takes at a time; the tables are written once per key
# per batch (the offset in the value makes a batch as idempotent as a record).
# Each write is a changelog record, so larger batches cost less CPU per event
# (measured: 0.1 s batches cost a third more than 0.5 s ones); a batch is
# folded without yielding the event loop, so it stays bounded.
BATCH_MAX = 2000
BATCH_WITHIN_S = 0.5
# How long Faust's producer gathers changelog records into one request, and
# how many bytes a partition's request may carry (below the broker's 1 MB).
CHANGELOG_LINGER_S = 0.02
CHANGELOG_BATCH_BYTES = 512 * 1024
# Faust holds back every event it consumes while more than 100 records wait
# in its producer's buffer (ProducerBuffer.wait_until_ebb), then flushes them
# one by one; a batch writes up to one record per account and day it holds
# at once and waits for all of them itself, which bounds the buffer.
CHANGELOG_PENDING_MAX = 4 * BATCH_MAX
# How often positions and lag are measured, and the ledger-wide check runs.
TICK_S = 0.25
EVALUATE_EVERY_S = 1.0
# A view joins the in-flight check's history only if its gathering began this
# long after the previous one was complete: the log ends it carries were then
# measured (every TICK_S) after everything in the previous view was folded.
HISTORY_SPACING_S = 2 * TICK_S
# The log is read at most this often per partition to tell whether a model
# is caught up when what lies before the log's end is not known otherwise.
PROBE_EVERY_S = 1.0
# Views kept for the in-flight check (one a second: two minutes of lag).
HISTORY = 120
# Worker-to-worker reads of the totals; a dead owner costs the check this long.
GATHER_TIMEOUT_S = 2.0
STATEMENT_DAYS_MAX = 366
# How long a read of the group's committed offset retries a retriable error.
COMMITTED_TIMEOUT_S = 30
# Stopping waits this long for a batch's changelog records (then exits unacked).
DELIVERY_ON_STOP_S = 5.0
EXIT_READ_MODEL_FAILED = 70  # EX_SOFTWARE, as the core: a supervisor restarts us

TOTALS_KINDS = ("credited", "debited", "transfer_debited", "transfer_credited",
                "transfer_refunded", "transfer_completed")
_TOTALS_KIND_OF = {
    domain.Credited: "credited",
    domain.Debited: "debited",
    domain.TransferDebited: "transfer_debited",
    domain.TransferCredited: "transfer_credited",
    domain.TransferRefunded: "transfer_refunded",
    domain.TransferCompleted: "transfer_completed",
}
# How an event moves its account's balance: +1, -1 or 0 times its amount.
_SIGN = {domain.Credited: 1, domain.Debited: -1, domain.TransferDebited: -1,
         domain.TransferCredited: 1, domain.TransferRefunded: 1}
# Statement columns by event type (transfers apart from external money).
_STATEMENT_COLUMN = {
    domain.Credited: "credited",
    domain.Debited: "debited",
    domain.TransferCredited: "transfer_in",
    domain.TransferDebited: "transfer_out",
    domain.TransferRefunded: "refunds",
}
STATEMENT_COLUMNS = ("credited", "debited", "transfer_in", "transfer_out", "refunds")


def _dumps(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


# --------------------------------------------------------------------------
# The folds (pure)
# --------------------------------------------------------------------------


def empty_totals() -> dict:
    return {"offset": -1, "records": 0, "currencies": {}}


def fold_totals(value: dict, offset: int, record) -> bool:
    """Fold one log record at ``offset`` into a totals value, in place.

    False (and nothing changed) if the value already holds that offset."""
    if offset <= value["offset"]:
        return False
    value["offset"] = offset
    value["records"] += 1
    if record is not None and not isinstance(record, domain.CommandRejected):
        sums = value["currencies"].get(record.currency)
        if sums is None:
            sums = value["currencies"][record.currency] = dict.fromkeys(TOTALS_KINDS, 0)
        kind = _TOTALS_KIND_OF.get(type(record))
        if isinstance(record, domain.HoldCaptured) and not record.to_account_id:
            kind = "debited"  # a capture without a destination leaves like a debit
        if kind is not None:
            sums[kind] += record.amount_minor
    return True


def derived(sums: dict) -> dict:
    """What the sums of one currency (one partition or all) say about money."""
    credited, debited = sums["credited"], sums["debited"]
    t_debited, t_credited = sums["transfer_debited"], sums["transfer_credited"]
    refunded, completed = sums["transfer_refunded"], sums["transfer_completed"]
    return {
        "balances": credited - debited - t_debited + t_credited + refunded,
        "in_flight": t_debited - t_credited - refunded,
        "external_credits": credited,
        "external_debits": debited,
        "pending_out": t_debited - completed - refunded,
    }


def add_sums(into: dict, sums: dict) -> None:
    for kind in TOTALS_KINDS:
        into[kind] = into.get(kind, 0) + int(sums.get(kind, 0))


def statement_day(recorded_at_ms: int, zone) -> date:
    """The calendar day of an instant in ``zone`` (a tzinfo)."""
    return datetime.fromtimestamp(recorded_at_ms // 1000, zone).date()


def statement_key(account_id: str, day: date) -> bytes:
    # '|' is not allowed in account ids: the key is unambiguous.
    return f"{account_id}|{day.isoformat()}".encode()


def fold_statement(value: dict | None, offset: int, event) -> dict | None:
    """Fold one event of the account and day into its statement value.

    Returns the new value (a new dict when ``value`` is None), or None if the
    value already holds that offset."""
    if value is not None and offset <= value["offset"]:
        return None
    signed = _SIGN.get(type(event), 0) * event.amount_minor
    column = _STATEMENT_COLUMN.get(type(event))
    if isinstance(event, domain.HoldCaptured) and not event.to_account_id:
        signed, column = -event.amount_minor, "debited"  # left the ledger, like a debit
    if value is None:
        value = {"offset": -1, "currency": event.currency,
                 # The balance before the day's first event.
                 "opening_balance": event.balance_after_minor - signed,
                 "events": 0, "first_sequence": event.sequence,
                 **dict.fromkeys(STATEMENT_COLUMNS, 0)}
    value["offset"] = offset
    value["events"] += 1
    if column is not None:
        value[column] += event.amount_minor
    value["closing_balance"] = event.balance_after_minor
    value["last_sequence"] = event.sequence
    return value


def statement_json(account_id: str, day: date, value: dict) -> dict:
    return {"date": day.isoformat(), "account_id": account_id,
            "currency": value["currency"],
            "opening_balance": value["opening_balance"],
            **{c: value[c] for c in STATEMENT_COLUMNS},
            "closing_balance": value["closing_balance"],
            "events": value["events"],
            "first_sequence": value["first_sequence"],
            "last_sequence": value["last_sequence"]}


# --------------------------------------------------------------------------
# The ledger-wide check (pure)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionView:
    """One partition's totals as its owner reported them."""

    offset: int  # last record folded (-1: none)
    records: int
    position: int  # every committed record below this is folded
    end: int | None  # the log's end (last stable offset) when reported
    caught_up: bool
    currencies: dict  # currency -> sums by kind
    worker_id: str = ""


@dataclass
class Snapshot:
    """Every partition's totals that could be gathered at one moment."""

    partitions: dict[int, PartitionView]
    taken_at: float = field(default_factory=time.monotonic)  # when gathered
    started_at: float | None = None  # when gathering began (default: taken_at)

    def __post_init__(self):
        if self.started_at is None:
            self.started_at = self.taken_at

    def currencies(self) -> set[str]:
        return {c for view in self.partitions.values() for c in view.currencies}

    def sums(self, currency: str) -> dict:
        total = dict.fromkeys(TOTALS_KINDS, 0)
        for view in self.partitions.values():
            if currency in view.currencies:
                add_sums(total, view.currencies[currency])
        return total


@dataclass
class Verdict:
    ok: bool = True
    problems: list[str] = field(default_factory=list)


class InvariantEvaluator:
    """The money invariant per currency from successive ledger-wide snapshots.

    Exact per snapshot (any subset of partitions, each exact at its own
    offset): balances + in_flight == external credits - debits, and pending
    money at every source partition >= 0. Ledger-wide in flight >= 0 is
    judged from a pair of complete snapshots j < k such that, for every
    partition, k's position reaches the log end that snapshot j+1 saw; its
    verdict stands until the next such pair."""

    def __init__(self, partitions: int, history: int = HISTORY,
                 spacing_s: float = HISTORY_SPACING_S):
        self.partitions = partitions
        self.spacing_s = spacing_s
        self._history: deque[Snapshot] = deque(maxlen=history)
        self._in_flight: dict[str, Verdict] = {}
        self.last_paired_at: float | None = None

    def complete(self, snapshot: Snapshot) -> bool:
        return len(snapshot.partitions) == self.partitions and all(
            v.end is not None for v in snapshot.partitions.values())

    def observe(self, snapshot: Snapshot) -> dict[str, Verdict]:
        verdicts: dict[str, Verdict] = {}
        for currency in sorted(snapshot.currencies() | set(self._in_flight)):
            verdict = verdicts[currency] = Verdict()
            money = derived(snapshot.sums(currency))
            if money["balances"] + money["in_flight"] != \
                    money["external_credits"] - money["external_debits"]:
                verdict.ok = False
                verdict.problems.append(
                    f"balances {money['balances']} + in flight {money['in_flight']} != "
                    f"external credits {money['external_credits']} - debits "
                    f"{money['external_debits']}")
            for p, view in sorted(snapshot.partitions.items()):
                if currency in view.currencies:
                    pending = derived(view.currencies[currency])["pending_out"]
                    if pending < 0:
                        verdict.ok = False
                        verdict.problems.append(
                            f"partition {p}: transfers completed or refunded exceed what "
                            f"they debited by {-pending} (up to offset {view.offset})")
        if self.complete(snapshot):
            self._check_in_flight(snapshot)
            if not self._history or \
                    snapshot.started_at - self._history[-1].taken_at >= self.spacing_s:
                self._history.append(snapshot)
        for currency, verdict in verdicts.items():
            held = self._in_flight.get(currency)
            if held is not None and not held.ok:
                verdict.ok = False
                verdict.problems.extend(held.problems)
        return verdicts

    def _check_in_flight(self, k: Snapshot) -> None:
        chain = list(self._history) + ([k] if not self._history or
                                       self._history[-1] is not k else [])
        for index in range(len(chain) - 2, -1, -1):
            j, j1 = chain[index], chain[index + 1]
            if all(k.partitions[p].position >= (j1.partitions[p].end or 0) and
                   j1.partitions[p].end is not None for p in range(self.partitions)):
                break
        else:
            return  # no earlier view is covered yet: keep the last verdict
        self.last_paired_at = k.taken_at
        for currency in k.currencies() | j.currencies():
            later, earlier = k.sums(currency), j.sums(currency)
            low = (later["transfer_debited"] - earlier["transfer_credited"]
                   - earlier["transfer_refunded"])
            if low < 0:
                self._in_flight[currency] = Verdict(False, [
                    f"money in flight below zero: transfers credited or refunded "
                    f"({earlier['transfer_credited'] + earlier['transfer_refunded']}) exceed "
                    f"everything transfers debited ({later['transfer_debited']}), even "
                    f"counting debits folded later: {-low} created out of nothing"])
            else:
                self._in_flight[currency] = Verdict()


def parse_view(body: dict, worker_id: str = "") -> dict[int, PartitionView]:
    """The partitions of a worker's ``/v1/ledger/totals/local`` answer;
    anything malformed is left out (counts as missing)."""
    out: dict[int, PartitionView] = {}
    partitions = body.get("partitions") if isinstance(body, dict) else None
    if not isinstance(partitions, dict):
        return out
    for key, view in partitions.items():
        try:
            p = int(key)
            currencies = {}
            for currency, sums in view["currencies"].items():
                if not isinstance(currency, str):
                    raise ValueError(currency)
                currencies[currency] = {k: _int(sums[k]) for k in TOTALS_KINDS}
            end = view.get("end")
            out[p] = PartitionView(offset=_int(view["offset"]), records=_int(view["records"]),
                                   position=_int(view["position"]),
                                   end=None if end is None else _int(end),
                                   caught_up=view.get("caught_up") is True,
                                   currencies=currencies,
                                   worker_id=str(body.get("worker_id", worker_id)))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return out


def _int(value) -> int:
    if type(value) is not int:  # noqa: E721 - never a bool or float
        raise ValueError(value)
    return value


def view_json(view: PartitionView) -> dict:
    return {"offset": view.offset, "records": view.records, "position": view.position,
            "end": view.end, "caught_up": view.caught_up, "currencies": view.currencies}


def totals_json(snapshot: Snapshot, verdicts: dict[str, Verdict], partitions: int) -> dict:
    """The answer of GET /v1/ledger/totals."""
    currencies = {}
    for currency in sorted(snapshot.currencies() | set(verdicts)):
        verdict = verdicts.get(currency, Verdict())
        money = derived(snapshot.sums(currency))
        currencies[currency] = {**money, "invariant_ok": verdict.ok,
                                "problems": list(verdict.problems)}
    missing = [p for p in range(partitions) if p not in snapshot.partitions]
    return {
        "currencies": currencies,
        "invariant_ok": all(v["invariant_ok"] for v in currencies.values()),
        "partitions": {str(p): {"offset": v.offset, "records": v.records,
                                "lag": max(0, (v.end or 0) - v.position),
                                "caught_up": v.caught_up, "worker_id": v.worker_id}
                       for p, v in sorted(snapshot.partitions.items())},
        "missing_partitions": missing,
        "complete": not missing,
    }


# --------------------------------------------------------------------------
# Faust wiring
# --------------------------------------------------------------------------


def _transport_classes():
    """Faust's aiokafka transport, reading read_committed.

    faust-streaming 0.15.3 makes its consumer read_committed only under
    ``processing_guarantee="exactly_once"`` (transport/drivers/aiokafka.py,
    ``_create_worker_consumer``), which brings Faust's transaction manager
    with it (DESIGN.md: not what we want). aiokafka reads the level when the
    consumer starts (its Fetcher is made in ``start()``), so the consumer is
    made as Faust makes it and switched before it starts. ``highwater`` then
    answers the last stable offset: the end of what a read_committed consumer
    can read, which is what lag is measured against."""
    from faust.transport.drivers import aiokafka as driver

    class ReadCommittedThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport):
            consumer = super()._create_worker_consumer(transport)
            if getattr(consumer, "_isolation_level", None) not in (
                    "read_uncommitted", "read_committed"):
                raise RuntimeError("aiokafka changed: cannot make Faust's consumer "
                                   "read_committed")
            consumer._isolation_level = "read_committed"
            return consumer

        def highwater(self, tp):
            consumer = self._ensure_consumer()
            lso = consumer.last_stable_offset(tp)
            return consumer.highwater(tp) if lso is None or lso < 0 else lso

    class ReadCommittedConsumer(driver.Consumer):
        def _new_consumer_thread(self):
            return ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)

    class ReadCommittedTransport(driver.Transport):
        Consumer = ReadCommittedConsumer

    return ReadCommittedTransport


class SkippedOffsets:
    """Offsets of the event log that hold no committed record, as Faust's
    consumer found them while fetching.

    A read_committed fetch walks every batch from the offset asked for:
    aiokafka passes over transaction markers (one after every transaction
    on every partition it wrote) and aborted transactions' batches, and
    yields the rest. Whatever lies between the offset a fetch began at, or a
    record it yielded, and the next record it yielded (or where the fetch
    ended) is such a run: no committed record a reader could fold. Noted here
    (partition -> start -> end, exclusive) by the consumer's thread, before
    the record after the run is yielded, so before any agent can see it.

    A batch whose gaps are all noted runs needs no second look at the log
    (:meth:`ReadModels._complete`): a record Faust's consumer fetched and then
    dropped is no run (it was yielded), so it is still looked for. A run that
    starts where nothing was noted, such as after a seek, counts as not noted
    (the log is read, as it always was)."""

    # Runs kept per partition at most (pruned below each batch's end, so
    # only a stalled agent gets there; then the log is read instead).
    CAP = 100_000

    def __init__(self):
        self.topic: str | None = None
        self._lock = threading.Lock()
        self._runs: dict[int, dict[int, int]] = {}
        # partition -> the offset of the last record a fetch yielded: a
        # committed record (read_committed), so a position below it is behind
        self.fetched: dict[int, int] = {}

    def note(self, partition: int, start: int, end: int) -> None:
        with self._lock:
            runs = self._runs.get(partition)
            if runs is None:
                runs = self._runs[partition] = {}
            elif len(runs) >= self.CAP:
                runs.clear()
            if end > runs.get(start, start):
                runs[start] = end

    def covers(self, partition: int, start: int, offsets, end: int) -> bool:
        """Whether every offset in [start, end) that is not in ``offsets``
        (ascending) lies in a noted run."""
        runs = self._runs.get(partition, {})
        position = start
        for offset in (*offsets, end):
            while position < offset:
                after = runs.get(position)
                if after is None or after <= position:
                    return False
                position = after
            if offset >= position:
                position = offset + 1
        return True

    def forget_below(self, partition: int, offset: int) -> None:
        with self._lock:
            runs = self._runs.get(partition)
            if runs:
                for start in [s for s in runs if s < offset]:
                    del runs[start]

    def keep_only(self, partitions) -> None:
        with self._lock:
            for p in [p for p in self._runs if p not in partitions]:
                del self._runs[p]
            for p in [p for p in self.fetched if p not in partitions]:
                del self.fetched[p]


SKIPPED = SkippedOffsets()  # one per process: the fetcher hook is process-wide


def _note_skipped_runs() -> bool:
    """Make aiokafka's fetcher note runs without committed records of the
    event log in :data:`SKIPPED` (False, and nothing changed, if this aiokafka
    is not the one it was written for: then every gap is looked up in the log)."""
    try:
        from aiokafka.consumer import fetcher
    except ImportError:
        return False
    base = getattr(fetcher, "PartitionRecords", None)
    if base is None or getattr(base, "_ledger_notes_runs", False):
        return base is not None
    if not callable(getattr(base, "_unpack_records", None)) or \
            "next_fetch_offset" not in base.__init__.__code__.co_names:
        log.warning("aiokafka changed: every gap in a read-model batch is read from the log")
        return False

    class RunNotingRecords(base):
        _ledger_notes_runs = True

        def _unpack_records(self):
            records = super()._unpack_records()
            tp = self._tp
            if tp.topic != SKIPPED.topic:
                yield from records
                return
            partition, expected = tp.partition, self.next_fetch_offset
            for record in records:
                if record.offset > expected:
                    SKIPPED.note(partition, expected, record.offset)
                expected = record.offset + 1
                SKIPPED.fetched[partition] = record.offset
                yield record
            if self.next_fetch_offset > expected:
                SKIPPED.note(partition, expected, self.next_fetch_offset)

    fetcher.PartitionRecords = RunNotingRecords
    return True


@contextmanager
def _as_event(event):
    """Make ``event`` Faust's current event: a table write goes to the
    partition of the current event (its store and its changelog record)."""
    from faust import streams as faust_streams

    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)


_TICK = object()  # a decoded PartitionTick, as far as the folds care


def _decode(raw):
    try:
        return codec.decode_outcome(raw)[0]
    except codec.CodecError as exc:
        # Only workers write the log; anything else is folded as a record
        # that moves no money (the offset moves on) and logged.
        log.warning("event log record does not decode, folded as nothing: %s", exc)
        metrics.READ_MODEL_UNDECODABLE.inc()
        return None


def _ranges_text(offsets: list[int]) -> str:
    """[3, 4, 5, 9] -> "3-5, 9"."""
    parts, first, prev = [], None, None
    for o in offsets + [None]:
        if first is not None and (o is None or o != prev + 1):
            parts.append(str(first) if first == prev else f"{first}-{prev}")
            first = None
        if first is None:
            first = o
        prev = o
    return ", ".join(parts)


class LogReader:
    """The event log's committed records, read with librdkafka (read_committed).

    Used from one thread (ReadModels runs it on a single-thread executor):
    to list what a batch must hold, and to tell whether anything committed
    lies between a read model's position and the log's end. It only assigns
    partitions: it never joins Faust's group, whose committed offsets it reads."""

    READ_TIMEOUT_S = 30.0

    def __init__(self, settings: Settings, group_id: str):
        self.settings = settings
        self.group_id = group_id
        self.topic = settings.events_topic
        self._consumer = None

    def _open(self):
        if self._consumer is None:
            from confluent_kafka import Consumer

            self._consumer = Consumer(self.settings.kafka(**{
                "group.id": self.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "isolation.level": "read_committed",
                # The end of a partition is an EOF event (a trailing marker
                # never moves the position: see streams/eventlog.py).
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 20,
            }))
        return self._consumer

    def committed(self, partition: int) -> int:
        """Where Faust's group resumes the partition: its committed offset,
        else the log's start."""
        from confluent_kafka import KafkaError, KafkaException, TopicPartition

        coordinator_moving = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE,
                              KafkaError.COORDINATOR_LOAD_IN_PROGRESS}
        consumer = self._open()
        tp = TopicPartition(self.topic, partition)
        deadline = time.monotonic() + COMMITTED_TIMEOUT_S
        while True:
            try:
                offset = consumer.committed([tp], timeout=10)[0].offset
                break
            except KafkaException as exc:
                # NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS: the group's
                # coordinator is moving or loading; ask again, do not fail
                # the batch (which would end the worker).
                error = exc.args[0] if exc.args else None
                if not isinstance(error, KafkaError) or time.monotonic() > deadline or not (
                        error.retriable() or error.code() in coordinator_moving):
                    raise
                time.sleep(0.2)
        if offset >= 0:
            return offset
        return consumer.get_watermark_offsets(tp, timeout=10)[0]

    def missing(self, ranges: dict) -> dict[int, dict[int, bytes]]:
        """partition -> {offset: value} of the committed records with
        ``start <= offset <= last`` not in ``delivered``, for ranges given as
        partition -> (start, last, delivered); ``last`` is a committed record."""
        from confluent_kafka import KafkaError, TopicPartition

        consumer = self._open()
        consumer.assign([TopicPartition(self.topic, p, start)
                         for p, (start, _last, _d) in ranges.items()])
        todo = dict(ranges)
        found: dict[int, dict[int, bytes]] = {p: {} for p in ranges}
        deadline = time.monotonic() + self.READ_TIMEOUT_S
        try:
            while todo:
                for msg in consume_ready(consumer, 5000, 0.1):
                    p = msg.partition()
                    if p not in todo:
                        continue
                    start, last, delivered = todo[p]
                    error = msg.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF and msg.offset() > last:
                            del todo[p]
                        continue
                    offset = msg.offset()
                    if offset < start:
                        continue
                    if offset <= last and offset not in delivered:
                        found[p][offset] = msg.value()
                    if offset >= last:
                        del todo[p]
                if todo and time.monotonic() > deadline:
                    raise TimeoutError(f"event log partitions {sorted(todo)} not read "
                                       f"within {self.READ_TIMEOUT_S:.0f}s")
        finally:
            consumer.unassign()
        return found

    def first_record(self, partition: int, start: int, end: int) -> int | None:
        """The offset of the first committed record in [start, end), or None."""
        from confluent_kafka import KafkaError, TopicPartition

        consumer = self._open()
        consumer.assign([TopicPartition(self.topic, partition, start)])
        deadline = time.monotonic() + self.READ_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                for msg in consumer.consume(1, timeout=0.1):
                    error = msg.error()
                    if error is None:
                        return msg.offset() if msg.offset() < end else None
                    if error.code() == KafkaError._PARTITION_EOF:
                        return None
            raise TimeoutError(f"event log partition {partition} not read in time")
        finally:
            consumer.unassign()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


class ReadModels:
    """The read models of one worker: its tables, agents, positions and check."""

    def __init__(self, app, settings: Settings):
        self.app = app
        self.settings = settings
        try:
            self.zone = ZoneInfo(settings.statement_tz)
        except (KeyError, ValueError, OSError) as exc:  # ZoneInfoNotFoundError: a KeyError
            raise ValueError(f"LEDGER_STATEMENT_TZ={settings.statement_tz!r} is not an "
                             f"IANA time zone") from exc
        self.topic_name = settings.events_topic
        topic = app.topic(settings.events_topic, key_type=bytes, value_type=bytes,
                          key_serializer="raw", value_serializer="raw",
                          partitions=settings.partitions)
        # bytes keys and values: raw on the changelog, JSON made here.
        table_options = dict(store="rocksdb://", key_type=bytes, value_type=bytes,
                             partitions=settings.partitions)
        self.totals = app.Table(TOTALS_TABLE, options={"driver": "rocksdict"},
                                help="event-log sums by kind and currency, per partition",
                                **table_options)
        self.statements = app.Table(STATEMENTS_TABLE, options={"driver": "rocksdict"},
                                    help="per account and day: opening, flows, closing",
                                    **table_options)
        # model -> partition -> the offset below which every committed record
        # of the partition has been folded by this worker's agent (verified
        # against the log); unknown after an assignment until the next batch
        self.verified: dict[str, dict[int, int]] = {m: {} for m in MODELS}
        # model -> partition -> (position, end, caught_up), measured every tick
        self.positions: dict[str, dict[int, tuple[int, int | None, bool]]] = \
            {m: {} for m in MODELS}
        self.evaluator = InvariantEvaluator(settings.partitions)
        self.verdicts: dict[str, Verdict] = {}
        self._gather_lock = asyncio.Lock()
        self.log_reader = LogReader(settings, app.conf.id)  # Faust's group
        self._reader_thread = ThreadPoolExecutor(1, thread_name_prefix="ledger-read-log")

        # Where the log holds no committed record, as Faust's consumer saw it
        # (_complete then needs no second look at the log for the gaps).
        self.skipped = SKIPPED
        self.skipped.topic = self.topic_name
        self.runs_noted = _note_skipped_runs()
        # partition -> (when, (position, end), nothing committed between) of
        # the last read of the log to tell whether a model is caught up
        self._probed_at: dict[int, tuple[float, tuple[int, int], bool]] = {}
        self._copartitioned: set[str] = set()  # tables whose changelog was checked
        # One agent folds both tables: each record goes through Faust's
        # per-event machinery, the completeness check and decoding once.
        app.agent(topic, name="ledger-read-models")(self._agent)
        app.timer(TICK_S)(self._tick)
        app.timer(EVALUATE_EVERY_S)(self._evaluate)
        app.on_partitions_assigned.connect(self._on_assigned)
        models = self

        class ReadModelsService(Service):
            """Lets Faust's producer buffer hold a batch's changelog records
            (CHANGELOG_PENDING_MAX); closes the log reader when the worker
            stops (after any read under way: the reader has one thread; a
            later read reopens it)."""

            async def on_start(self) -> None:
                buffer = getattr(models.app.producer, "buffer", None)
                if buffer is not None and hasattr(buffer, "max_messages"):
                    buffer.max_messages = CHANGELOG_PENDING_MAX

            async def on_stop(self) -> None:
                await models._read_log(models.log_reader.close)

        app.service(ReadModelsService)

    async def _on_assigned(self, app, assigned, **kwargs) -> None:
        # What was verified and measured before belongs to the previous
        # assignment (a table restored from its changelog may even be older).
        for model in MODELS:
            self.verified[model].clear()
            self.positions[model].clear()
        self._probed_at.clear()
        self.skipped.keep_only({tp.partition for tp in assigned
                                if tp.topic == self.topic_name})

    async def _read_log(self, method, *args):
        return await asyncio.get_running_loop().run_in_executor(
            self._reader_thread, method, *args)

    # -- agents ----------------------------------------------------------------

    async def _agent(self, stream):
        async for events in stream.take_events(BATCH_MAX, within=BATCH_WITHIN_S):
            await self._whole(events)

    async def _whole(self, events) -> None:
        """Process a batch to the end, whatever happens meanwhile.

        Faust's take acknowledges a batch as soon as the agent's body leaves
        it, also when the body raises or is cancelled (stopping, a
        rebalance), and an acknowledged offset may be committed: a batch
        acknowledged before it was folded and its changelog delivered would
        be lost. So a cancelled body still finishes the batch (up to
        DELIVERY_ON_STOP_S), and a batch that cannot be finished ends the
        process before Faust can acknowledge it, like kill -9: whoever gets
        the partition reads the batch again."""
        work = asyncio.ensure_future(self._process(events))
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            try:
                await asyncio.wait_for(asyncio.shield(work), DELIVERY_ON_STOP_S)
            except BaseException:
                log.exception("read models: a batch could not be finished while stopping; "
                              "exiting before it is acknowledged")
                logging.shutdown()
                os._exit(EXIT_READ_MODEL_FAILED)
            raise
        except Exception:
            log.exception("read models: a batch could not be folded; exiting before it "
                          "is acknowledged (it is read again after the restart)")
            logging.shutdown()
            os._exit(EXIT_READ_MODEL_FAILED)

    async def _process(self, events) -> None:
        batch = await self._complete(events)
        # Decoded once for both folds; a tick keeps its offset (verified) only.
        batch = {p: (event, [(o, _TICK if codec.is_tick(d) else _decode(d)) for o, d in records],
                     from_log)
                 for p, (event, records, from_log) in batch.items()}
        futures = self.fold_totals_batch(batch) + self.fold_statements_batch(batch)
        if futures:
            # In Kafka before the batch may be acknowledged: a committed offset
            # then always has its table changes in the changelog, and a store
            # rebuilt from the changelog alone (a wiped data dir, another
            # worker) resumes exactly there. Faust's own commit does not
            # ensure it: its producer-buffer flush gives up after 0.1 s
            # (faust/transport/producer.py, flush_atmost).
            await asyncio.gather(*futures)
        for model in MODELS:
            self._verified_to(model, batch)
        for p, verified in self.verified["totals"].items():
            self.skipped.forget_below(p, verified)

    async def _complete(self, events) -> dict:
        """The batch per partition, with every committed record Faust did not deliver.

        faust-streaming 0.15.3 can drop fetched records around an assignment
        or a table recovery (``Consumer.getmany`` leaves a fetched batch when
        its flow stops or the generation changes; ``_drain_messages`` then
        takes the jump in offsets for transaction markers and commits past
        it), and a dropped record is never delivered again. An offset-in-
        the-value fold would then skip it for good. So each batch is checked
        against the log: per partition, every committed record from where
        this agent is verified (or, after an assignment, from the group's
        committed offset) up to the batch's last offset must be in it; a
        read_committed librdkafka reader lists them, and the ones missing
        are folded from what it read.

        The log is read only for a gap that Faust's consumer did not note as
        holding no committed record (:class:`SkippedOffsets`): a transaction
        marker or an aborted transaction needs no second look.

        Returns partition -> (an event of that partition, [(offset, raw value)]
        sorted by offset, the offsets read from the log rather than delivered)."""
        by_partition: dict[int, tuple[object, dict[int, bytes]]] = {}
        for event in events:
            message = event.message
            entry = by_partition.setdefault(message.partition, [event, {}])
            entry[0] = event
            entry[1][message.offset] = message.value
        ranges = {}
        for p, (_event, delivered) in by_partition.items():
            start = self.verified["totals"].get(p)  # both models fold the same batches
            if start is None:
                committed = await self._read_log(self.log_reader.committed, p)
                start = min(committed, min(delivered))
            last = max(delivered)
            if last < start:
                continue  # all read again after a seek back: folded before
            inside = sorted(o for o in delivered if o >= start)
            if len(inside) != last - start + 1 and \
                    not self.skipped.covers(p, start, inside, last + 1):
                # a gap not known to hold only markers and aborted records
                ranges[p] = (start, last, frozenset(inside))
        found: dict[int, dict[int, bytes]] = {}
        if ranges:
            found = await self._read_log(self.log_reader.missing, ranges)
            for p, records in found.items():
                by_partition[p][1].update(records)
        return {p: (event, sorted(delivered.items()), frozenset(found.get(p, ())))
                for p, (event, delivered) in by_partition.items()}

    @staticmethod
    def _recovered(model: str, partition: int, offsets: list[int]) -> None:
        """Records Faust did not deliver that the fold had not folded yet."""
        if offsets:
            log.warning("%s: %d committed records of partition %d were not delivered by "
                        "Faust's consumer (offsets %s); folded from the log", model,
                        len(offsets), partition, _ranges_text(sorted(offsets)))
            metrics.read_model_recovered(model).inc(len(offsets))

    def _verified_to(self, model: str, batch: dict) -> None:
        for p, (_event, records, _from_log) in batch.items():
            self.verified[model][p] = max(self.verified[model].get(p, 0), records[-1][0] + 1)

    def _write(self, table, key: bytes, value: dict, event) -> object:
        """Write one table value: the local store at once, the changelog
        record to the event's partition; returns the record's delivery future."""
        raw = _dumps(value)
        partition = event.message.partition
        if table.name not in self._copartitioned:
            self._check_copartitioned(table, event.message.topic)
        with _as_event(event):
            table.data[key] = raw
        return table.send_changelog(partition, key, raw)

    def _check_copartitioned(self, table, source_topic: str) -> None:
        """The changelog must have the log's partitions (a record goes to
        the partition of the event it folds). Faust's own check
        (Table.partition_for_key) takes a changelog its consumer has no
        metadata for yet (0 partitions, just after the topic was made) for
        a mismatch and fails the batch; here that is only not checked yet."""
        consumer = self.app.consumer
        source_n = consumer.topic_partitions(source_topic)
        change_n = consumer.topic_partitions(table.changelog_topic_name)
        if source_n and change_n:
            if source_n != change_n:
                raise RuntimeError(
                    f"the changelog {table.changelog_topic_name} has {change_n} partitions, "
                    f"the event log {source_topic} {source_n}: the read model cannot be "
                    f"co-partitioned with the log")
            self._copartitioned.add(table.name)

    def fold_totals_batch(self, batch: dict) -> list:
        """One table write per partition in the batch. No await inside: the
        batch's reads, folds and writes happen at one moment of the loop.
        Returns the changelog records' delivery futures."""
        futures = []
        folded = replayed = 0
        for partition, (event, records, from_log) in batch.items():
            key = b"p%d" % partition
            with _as_event(event):
                raw = self.totals.get(key)
            value = json.loads(raw) if raw is not None else empty_totals()
            changed, recovered = False, []
            for offset, record in records:
                if record is _TICK:
                    continue  # time passing on the partition: no account record
                if offset <= value["offset"]:
                    replayed += 1
                    continue
                fold_totals(value, offset, record)
                changed = True
                folded += 1
                if offset in from_log:
                    recovered.append(offset)
            self._recovered("totals", partition, recovered)
            if changed:
                futures.append(self._write(self.totals, key, value, event))
        metrics.read_model_events("totals").inc(folded)
        metrics.read_model_replayed("totals").inc(replayed)
        return futures

    def fold_statements_batch(self, batch: dict) -> list:
        """One table write per account and day in the batch; returns the
        changelog records' delivery futures."""
        futures = []
        values: dict[bytes, list] = {}  # key -> [an event of its partition, value, changed]
        folded = replayed = 0
        for partition, (event, records, from_log) in batch.items():
            recovered = []
            for offset, record in records:
                if record is _TICK or record is None or \
                        isinstance(record, domain.CommandRejected):
                    continue
                key = statement_key(record.account_id,
                                    statement_day(record.recorded_at_ms, self.zone))
                entry = values.get(key)
                if entry is None:
                    with _as_event(event):
                        raw = self.statements.get(key)
                    entry = values[key] = [event, json.loads(raw) if raw is not None else None,
                                           False]
                new = fold_statement(entry[1], offset, record)
                if new is None:
                    replayed += 1
                else:
                    entry[1], entry[2] = new, True
                    folded += 1
                    if offset in from_log:
                        recovered.append(offset)
            self._recovered("statements", partition, recovered)
        for key, (event, value, changed) in values.items():
            if changed:
                futures.append(self._write(self.statements, key, value, event))
        metrics.read_model_events("statements").inc(folded)
        metrics.read_model_replayed("statements").inc(replayed)
        return futures

    # -- what this worker serves -------------------------------------------------

    def ready(self) -> bool:
        """False while Faust rebalances or restores tables from changelogs."""
        recovery = self.app.tables.recovery
        return (recovery.completed.is_set() and not self.app.rebalancing
                and not getattr(self.app, "in_recovery", False))

    def active_partitions(self) -> list[int]:
        try:
            actives = self.app.assignor.assigned_actives()
        except Exception:  # before the first assignment
            return []
        return sorted(tp.partition for tp in actives if tp.topic == self.topic_name)

    def serves(self, partition: int) -> bool:
        return self.ready() and partition in self.active_partitions()

    def owners(self) -> dict[int, str]:
        """partition -> "host:port" of the worker whose read models hold it,
        as Faust's group told this worker at the last rebalance."""
        from yarl import URL

        owners = {}
        try:
            distribution = self.app.router.external_topics_metadata()
        except Exception:
            return owners
        for url, topics in distribution.items():
            address = URL(url)
            for p in topics.get(self.topic_name, ()):
                owners[p] = f"{address.host}:{address.port}"
        return owners

    def is_me(self, address: str) -> bool:
        mine = self.app.conf.canonical_url
        return address == f"{mine.host}:{mine.port}"

    def totals_value(self, partition: int) -> dict:
        raw = self.totals.get(b"p%d" % partition)
        return json.loads(raw) if raw is not None else empty_totals()

    def local_views(self) -> dict[int, PartitionView]:
        """This worker's partitions' totals, each exact at its own offset."""
        views = {}
        if not self.ready():
            return views
        for p in self.active_partitions():
            try:
                value = self.totals_value(p)
            except Exception:  # revoked and closed while we read: not ours now
                log.debug("totals of partition %d unreadable", p, exc_info=True)
                continue
            position, end, caught_up = self.positions["totals"].get(
                p, (value["offset"] + 1, None, False))
            views[p] = PartitionView(
                offset=value["offset"], records=value["records"],
                position=max(position, value["offset"] + 1), end=end, caught_up=caught_up,
                currencies=value["currencies"], worker_id=self.settings.worker_id)
        return views

    def local_json(self) -> dict:
        return {"worker_id": self.settings.worker_id,
                "partitions": {str(p): view_json(v)
                               for p, v in sorted(self.local_views().items())}}

    def statements_json(self, account_id: str, first: date, last: date,
                        partition: int) -> dict:
        days = []
        day = first
        while day <= last:
            raw = self.statements.get(statement_key(account_id, day))
            if raw is not None:
                days.append(statement_json(account_id, day, json.loads(raw)))
            day += timedelta(days=1)
        position, end, caught_up = self.positions["statements"].get(
            partition, (self.verified["statements"].get(partition, 0), None, False))
        return {"account_id": account_id, "time_zone": self.settings.statement_tz,
                "from": first.isoformat(), "to": last.isoformat(), "days": days,
                "partition": partition, "position": position, "caught_up": caught_up}

    # -- gathering the ledger-wide view ------------------------------------------

    async def gather(self, shared) -> Snapshot:
        """Every partition's totals: this worker's own, and each other owner's
        (GET /v1/ledger/totals/local, marked as forwarded)."""
        from streams.api.forwarding import Target

        started_at = time.monotonic()
        views = dict(self.local_views())
        by_address: dict[str, list[int]] = {}
        for p, address in self.owners().items():
            if p not in views and not self.is_me(address):
                by_address.setdefault(address, []).append(p)
        target = Target(("v1", "ledger", "totals", "local"))

        async def ask(address):
            try:
                answer = await shared.forward(address, target, timeout_s=GATHER_TIMEOUT_S)
            except Exception:
                log.debug("totals from %s unreadable", address, exc_info=True)
                return {}
            if answer is None or answer.status != 200:
                return {}
            return parse_view(answer.body)

        for remote in await asyncio.gather(*(ask(a) for a in by_address)):
            for p, view in remote.items():
                if 0 <= p < self.settings.partitions and (
                        p not in views or view.position > views[p].position):
                    views[p] = view
        return Snapshot(views, started_at=started_at)

    async def evaluate(self, shared) -> tuple[Snapshot, dict[str, Verdict]]:
        async with self._gather_lock:
            snapshot = await self.gather(shared)
            self.verdicts = self.evaluator.observe(snapshot)
        return snapshot, self.verdicts

    # -- timers ----------------------------------------------------------------

    async def _tick(self) -> None:
        try:
            await self._measure()
        except Exception:  # never let a measurement stop the timer
            log.warning("read-model positions not measured", exc_info=True)

    async def _measure(self) -> None:
        """Position, caught-up and lag of each model on each partition served.

        A model has folded every committed record below ``position``: what
        its agent has verified against the log (after an assignment, until
        its first batch: the totals value's offset + 1, or 0). It is caught up
        when nothing committed lies between its position and the log's end
        (the last stable offset), and its position is then the end: one
        offset there is the commit marker every transaction ends with (all
        writers of the log are transactional); more is asked of the log."""
        served = set(self.active_partitions()) if self.ready() else set()
        for model in MODELS:
            for p in list(self.positions[model]):
                if p not in served:
                    del self.positions[model][p]
                    metrics.read_model_lag(model, p).set(0)
        from faust.types import TP

        consumer = self.app.consumer
        for p in sorted(served):
            try:
                end = consumer.highwater(TP(self.topic_name, p))
            except Exception:  # not fetched yet, or revoked meanwhile
                end = None
            for model in MODELS:
                position = self.verified[model].get(p)
                if position is None:
                    position = 0
                    if model == "totals":
                        try:
                            position = self.totals_value(p)["offset"] + 1
                        except Exception:
                            continue
                caught_up = False
                if end is not None:
                    caught_up = await self._nothing_between(p, position, end)
                    if caught_up:
                        position = max(position, end)
                self.positions[model][p] = (position, end, caught_up)
                metrics.read_model_lag(model, p).set(
                    0 if end is None else max(0, end - position))

    async def _nothing_between(self, p: int, position: int, end: int) -> bool:
        """Whether nothing committed lies in [position, end) of partition p:
        one offset (the commit marker every transaction ends with), runs
        Faust's consumer noted as holding no committed record, or else what
        the log says, asked at most every PROBE_EVERY_S per partition (a
        read_committed read is far dearer than a tick)."""
        if position >= end - 1 or self.skipped.covers(p, position, (), end):
            return True
        if position <= self.skipped.fetched.get(p, -1) < end:
            return False  # a committed record Faust's consumer fetched lies between
        now = time.monotonic()
        probed = self._probed_at.get(p)
        if probed is not None:
            at, probed_range, answer = probed
            if probed_range == (position, end):
                return answer
            if now - at < PROBE_EVERY_S:
                return False  # not known yet: the lag says end - position
        try:
            first = await self._read_log(self.log_reader.first_record, p, position, end)
        except Exception:
            log.debug("cannot read partition %d of the log", p, exc_info=True)
            first = position
        answer = first is None
        self._probed_at[p] = (now, (position, end), answer)
        return answer

    async def _evaluate(self) -> None:
        shared = getattr(self.app, "ledger_api", None)
        if shared is None:
            return
        try:
            snapshot, verdicts = await self.evaluate(shared)
        except Exception:
            log.warning("ledger-wide totals check failed", exc_info=True)
            return
        # This worker's partitions only (0 for a currency it holds none of):
        # summed over workers, Prometheus has the ledger without double counts.
        kinds = ("balances", "in_flight", "external_credits", "external_debits")
        own = {c: dict.fromkeys(kinds, 0) for c in snapshot.currencies()}
        for view in self.local_views().values():
            for currency, sums in view.currencies.items():
                money = derived(sums)
                for kind in kinds:
                    own.setdefault(currency, dict.fromkeys(kinds, 0))[kind] += money[kind]
        for currency, amounts in own.items():
            for kind, amount in amounts.items():
                metrics.LEDGER_MONEY.labels(currency, kind).set(amount)
        for currency, verdict in verdicts.items():
            metrics.INVARIANT_OK.labels(currency).set(1 if verdict.ok else 0)
            if not verdict.ok:
                log.error("money invariant broken for %s: %s", currency,
                          "; ".join(verdict.problems))
        metrics.READ_MODEL_MISSING_PARTITIONS.set(
            self.settings.partitions - len(snapshot.partitions))


def register(app, settings: Settings) -> ReadModels | None:
    """Add the read models to the Faust ``app`` (nothing if LEDGER_READ_MODELS=0).

    Call before anything uses ``app.transport``: the app's consumer is made
    read_committed here."""
    if not settings.read_models:
        app.ledger_read_models = None
        return None
    if getattr(app, "_transport", None) is not None:
        raise RuntimeError("readmodels.register must run before the app's transport exists")
    transport = _transport_classes()
    app.transport = transport(app.conf.broker_consumer, app)
    # A worker that gains a partition restores its tables from the
    # changelogs; no hot standby copies (each other worker would read every
    # changelog record all the time, on these small machines a real cost).
    app.conf.table_standby_replicas = 0
    app.conf.topic_replication_factor = _replication(settings)
    # Faust's producer only writes the changelogs, a batch's records all at
    # once, each batch waiting for all of them: lingering lets them go in a
    # few produce requests instead of one or two records each (Faust's
    # default linger is 0; measured, the requests cost more than the fold).
    app.conf.producer_linger = CHANGELOG_LINGER_S
    app.conf.producer_max_batch_size = CHANGELOG_BATCH_BYTES
    models = ReadModels(app, settings)
    app.ledger_read_models = models
    return models


def _replication(settings: Settings) -> int:
    """Changelog topics get the ledger topics' replication: min(3, brokers)."""
    from streams.topics import connect_admin, replication

    try:
        admin, metadata = connect_admin(settings)
        return replication(settings, len(metadata.brokers))[0]
    except Exception:
        log.warning("cannot count brokers; changelog topics get replication 1",
                    exc_info=True)
        return settings.replication_factor or 1
