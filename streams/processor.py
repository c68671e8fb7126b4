"""The transactional core: where a command is applied and committed.

This is design B of ``DESIGN.md``: a confluent-kafka consume-process-produce
loop with one transactional producer per worker process, run inside the Faust
worker (see :mod:`streams.app`). Faust's own ``exactly_once`` mode is not used
for the money path; DESIGN.md lists why (per-destination transactions,
changelog writes outside the committing transaction, RocksDB writes of aborted
transactions, acked exceptions, no abort).

One loop iteration (one batch, one Kafka transaction):

1. ``consume`` up to ``batch_size_max`` commands (read_committed);
2. for each: decode (or park on the dead-letter topic), look up its
   ``command_id`` (a retry produces nothing new; a reused id with another
   body is rejected as ``command_id_reused``), ``decide`` against the state
   seen through the batch's overlay, produce the events (or the rejection
   record) to the event-log partition with the *same number* as the command's
   partition;
3. ``send_offsets_to_transaction`` with the consumer's group metadata
   (KIP-447: a zombie of an older generation cannot commit), then
   ``commit_transaction``;
4. only then write the overlay to RocksDB, one WriteBatch per partition.

If the transaction aborts, the overlay is dropped and the consumer is sought
back to the batch's first offsets: nothing happened. If the process dies at
any point, the next owner of the partition catches its store up from the
event log (read_committed) before it handles a command; that replay is
idempotent by per-account sequence and by command_id.

**Recorded time never goes backwards on a partition.** Each partition's
*watermark* W is the newest ``recorded_at`` committed on its event-log
partition (events, rejections and ticks alike), kept in the store with the
data (``PartitionStore.watermark``) and rebuilt from the log on catch-up. A
batch stamps every record it writes to partition p with
``max(now, W_p + 1)`` (``domain.stamp_after``), and batches of a partition
commit one after another, whoever owns it: so recorded times strictly
increase from one transaction to the next on each partition, and once a
store has applied the record stamped W, no record stamped at or before W
will ever be added. That is what makes an answer "as of T" with T <= W final.
A worker whose clock is behind a partition's watermark (it took the
partition from a worker with a faster clock) stamps W + 1 ms, batch after
batch, and logs a warning when it is more than CLOCK_BEHIND_WARN_MS behind.

**Ticks.** A partition where nothing is recorded would keep an old
watermark, and questions about recent instants would wait. So each owned
partition where nothing was recorded for ``tick_ms`` (LEDGER_TICK_MS) gets a
``PartitionTick`` record (empty key, the partition's number, stamped like
any record): inside the batch's transaction when there is one, else in a
transaction of its own. And when a reader waits for an instant the clock has
passed (``want_final``, from the HTTP API), the partition gets one as soon as
nothing was recorded on it for ``tick_ms / 5``: a read "as of now" waits a
loop turn and a commit, not a tick interval, so LEDGER_TICK_MS can be raised
to write fewer ticks to the log without slowing such reads. A tick-only transaction
still sends the consumer's committed offsets with the group metadata, so a
worker that lost the partition (a zombie) is fenced and cannot commit a tick
with its clock after the new owner took over.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import logging
import queue
import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from ledger import domain
from schemas import codec
from streams import catchup, checkpoints, gcpause, metrics, replies, routing, topics
from streams.config import Settings
from streams.eventlog import CommittedLog
from streams.legauth import LegAuth
from streams.partitioner import partition_for
from streams.store import Batch, Outcome, PartitionStore, TransferEntry, open_store

log = logging.getLogger("ledger.processor")

CATCH_UP_FLUSH_RECORDS = 20_000  # bound the overlay while replaying the log
CATCH_UP_REPORT_S = 10.0  # a catch-up that takes longer says where it is
# A clock this far behind a partition's watermark is logged (at most every
# CLOCK_WARN_EVERY_S per partition): the worker stamps watermark + 1 ms
# instead of its clock, so recent as-of questions wait for it.
CLOCK_BEHIND_WARN_MS = 1_000
# Owned partitions are searched for due holds this often (and at once after
# a partition is taken over): a hold expires within this plus a loop turn and
# a commit of its expires_at, well inside the 5 s.
EXPIRY_CHECK_S = 0.25
CLOCK_WARN_EVERY_S = 10.0
# The loop's phases, as counted in ledger_batch_phase_seconds{phase}.
PHASES = {name: metrics.PHASE_SECONDS.labels(name)
          for name in ("wait", "decide", "offsets", "commit", "apply")}


# --------------------------------------------------------------------------
# Applying commands and logged records to a batch (no Kafka here)
# --------------------------------------------------------------------------


def handle_command(batch: Batch, command, now_ms: int) -> tuple[list[bytes], list, bytes | None]:
    """Apply one command (or transfer leg) to the batch.

    Returns the log records it yields, the legs to send on, as
    ``(leg, bytes)``, and its reply (streams/replies.py; None for a credit
    leg, which no client waits for), all to be produced in the current
    transaction. A retry of an already-handled command yields no record and
    no leg, only a reply: its original outcome, marked duplicate.
    """
    digest = domain.command_hash(command)
    prior = batch.outcome(command.account_id, command.command_id)
    if prior is not None:
        if prior.command_hash == digest:
            metrics.PER_COMMAND.add(metrics.command_counter(command.type, "duplicate"))
            return [], [], _duplicate_reply(batch, command, prior)
        if isinstance(command, (domain.TransferCreditLeg, domain.TransferSettleLeg)):
            # Leg ids name the transfer and its source, and a worker makes the
            # same leg every time: another body under a leg id was not made by
            # a worker's transfer. Park it; no settle is owed for it.
            raise LegConflict(f"leg id {command.command_id!r} already used by another leg")
        rejection = domain.Rejection(
            domain.RejectionReason.command_id_reused,
            f"command_id already used by another {prior.status} command on this account",
        )
        metrics.PER_COMMAND.add(metrics.command_counter(command.type, "rejected"))
        metrics.PER_COMMAND.add(metrics.rejection_counter(rejection.reason.value))
        # Logged (every send has an outcome) but not indexed: the original stands.
        record = domain.rejected(command, rejection, now_ms)
        return [codec.encode_outcome(record, digest)], [], _reply(
            batch, command, digest, "rejected", rejection.reason.value, rejection.detail, (),
            duplicate=False, transfer=_failed(command, rejection))

    hold_id = getattr(command, "hold_id", None)
    result = domain.decide(batch.account(command.account_id), command, now_ms,
                           batch.hold(command.account_id, hold_id) if hold_id else None)
    if isinstance(result, domain.Rejection):
        records = [domain.rejected(command, result, now_ms)]
        outcome = "rejected"
        metrics.PER_COMMAND.add(metrics.rejection_counter(result.reason.value))
        # A refused credit leg always sends its settle back: no transfer is
        # left pending at its source.
        legs = ([domain.settle_leg(command, completed=False, reason=result.reason.value)]
                if isinstance(command, domain.TransferCreditLeg) else [])
    else:
        records, outcome = list(result), "applied"
        if isinstance(command, domain.Transfer):
            legs = [domain.credit_leg(command)]
        elif isinstance(command, domain.CaptureHold):
            # With a destination, the captured money moves on as a transfer.
            moved = domain.capture_transfer(records)
            legs = [domain.credit_leg(moved)] if moved else []
        elif isinstance(command, domain.TransferCreditLeg):
            legs = [domain.settle_leg(command, completed=True)]
        else:
            legs = []
    # Encode everything before touching the batch, so a failure leaves it clean.
    encoded = [(record, codec.encode_outcome(record, digest)) for record in records]
    encoded_legs = [(leg, codec.encode_leg(leg, now_ms)) for leg in legs]
    for record, raw in encoded:
        fold_record(batch, record, digest, raw, transfer=command)
    metrics.PER_COMMAND.add(metrics.command_counter(command.type, outcome))
    if isinstance(command, (domain.TransferCreditLeg, domain.ExpireHold)):
        reply = None  # no client waits for these
    elif isinstance(command, domain.TransferSettleLeg):
        # The transfer's end, for whoever waits for it: with the transfer's hash.
        transfer = batch.outcome(command.account_id, command.transfer_id)
        reply = _reply(batch, command, transfer.command_hash if transfer else digest,
                       outcome, None, "", [raw for _r, raw in encoded], duplicate=False)
    elif outcome == "rejected":
        reply = _reply(batch, command, digest, outcome, result.reason.value, result.detail,
                       (), duplicate=False)
    else:
        reply = _reply(batch, command, digest, outcome, None, "", [raw for _r, raw in encoded],
                       duplicate=False)
    return [raw for _record, raw in encoded], encoded_legs, reply


def _reply(batch: Batch, command, digest: str, status: str, reason: str | None,
           detail: str, events, duplicate: bool, transfer=None) -> bytes:
    state = batch.account(command.account_id)
    if transfer is None and isinstance(command, (domain.Transfer, domain.TransferSettleLeg)):
        transfer = batch.transfer(command.account_id, getattr(command, "transfer_id",
                                                              command.command_id))
    return replies.encode_reply(
        account_id=command.account_id, command_id=command.command_id,
        command_type=command.type, command_hash=digest, status=status,
        reason=reason, detail=detail, duplicate=duplicate,
        version=state.version if state is not None else None, events=events,
        transfer=transfer)


def _duplicate_reply(batch: Batch, command, prior: Outcome) -> bytes | None:
    """A retry's reply: the original outcome, marked duplicate. A leg seen
    again (replayed) is no client's retry: no reply."""
    if isinstance(command, (domain.TransferCreditLeg, domain.TransferSettleLeg)):
        return None
    events = batch.raw_events(command.account_id,
                              range(prior.sequences[0], prior.sequences[1] + 1)) \
        if prior.sequences else ()
    return _reply(batch, command, prior.command_hash, prior.status, prior.reason, "",
                  events, duplicate=True)


def _failed(command, rejection: domain.Rejection):
    """A transfer refused before anything was indexed (command_id_reused)."""
    if not isinstance(command, domain.Transfer):
        return None
    return TransferEntry(command.command_id, command.account_id, command.to_account_id,
                         command.amount_minor, command.currency, domain.TRANSFER_FAILED,
                         rejection.reason.value, ())


class LegConflict(ValueError):
    """A leg whose id was used by another leg: not a worker's (dead-lettered)."""


def apply_logged(batch: Batch, raw: bytes) -> None:
    """Fold one committed log record into the batch while catching up: an
    account record into state, any record (ticks too) into the watermark."""
    record, digest = codec.decode_record(raw)
    batch.advance(record.recorded_at_ms)
    if digest is not None:  # None: a PartitionTick
        fold_record(batch, record, digest, raw)


def fold_record(batch: Batch, record, digest: str, raw: bytes, transfer=None) -> None:
    """Fold one log record into state, history, command index and transfer index.

    The one place both paths go through: a live command's fresh records, and
    committed records replayed while catching up. Idempotent: an event at or
    below the account's version, or an already-indexed rejection, changes
    nothing. ``transfer`` is the live command, when there is one, to give a
    rejected transfer's index entry its details (replay has only the record).
    """
    if isinstance(record, domain.CommandRejected):
        if record.reason == domain.RejectionReason.command_id_reused.value:
            return
        if batch.outcome(record.account_id, record.command_id) is None:
            batch.put_outcome(Outcome(record.command_id, record.account_id, digest,
                                      "rejected", record.reason, None))
            status = domain.transfer_status(record)
            if status is not None:
                t = transfer if isinstance(transfer, domain.Transfer) else None
                batch.put_transfer(TransferEntry(
                    record.command_id, record.account_id,
                    t.to_account_id if t else None, t.amount_minor if t else None,
                    t.currency if t else None, *status, ()))
        return
    state = batch.account(record.account_id)
    if state is not None and record.sequence <= state.version:
        return
    state = domain.evolve(state, record)
    batch.put_account(state)
    batch.put_history(record, raw, state)
    if isinstance(record, domain.HoldEvent):
        batch.put_hold(domain.evolve_hold(batch.hold(record.account_id, record.hold_id), record))
    last = batch.last_applied(record.account_id)
    if last is not None and last.sequences[1] == record.sequence - 1:
        # The account's previous event is this batch's: a command's events
        # are consecutive, so this one continues that command or starts its
        # own (no index lookup: a RocksDB read per event in a catch-up).
        first = last.sequences[0] if last.command_id == record.command_id else record.sequence
    else:
        prior = batch.outcome(record.account_id, record.command_id)
        first = prior.sequences[0] if prior and prior.status == "applied" else record.sequence
    batch.put_outcome(Outcome(record.command_id, record.account_id, digest, "applied",
                              None, (first, record.sequence)))
    status = domain.transfer_status(record)
    if status is None:
        pass
    elif isinstance(record, domain.TransferDebited):
        batch.put_transfer(TransferEntry(
            record.transfer_id, record.account_id, record.counterparty_account_id,
            record.amount_minor, record.currency, *status, (record.sequence,)))
    else:
        entry = batch.transfer(record.account_id, record.transfer_id)
        batch.put_transfer(dataclasses.replace(
            entry, sequences=entry.sequences + (record.sequence,), status=status[0],
            reason=status[1]))


def routing_problem(key: bytes | None, command, partition: int,
                    partitions: int) -> str | None:
    """Why a decoded command may not be applied on this partition, if it may not."""
    if isinstance(command, (domain.TransferCreditLeg, domain.TransferSettleLeg)):
        pass  # legs are made by workers; their ids contain '#' on purpose
    elif not domain.valid_command_id(command.command_id):
        # '#' is reserved for leg ids ("<transfer>#credit:<source>"), so no client
        # command can take a leg's place in the idempotency index.
        return f"command_id must match {domain.COMMAND_ID_PATTERN}"
    if len(command.account_id) > domain.ACCOUNT_ID_LENGTH_MAX:
        return f"account_id longer than {domain.ACCOUNT_ID_LENGTH_MAX} characters"
    expected_key = command.account_id.encode()
    if key != expected_key:
        return f"record key {key!r} is not the command's account_id {command.account_id!r}"
    home = partition_for(expected_key, partitions)
    if home != partition:
        # A producer with another partitioner (librdkafka's CRC32 default):
        # applying it here would split the account across two partitions.
        return f"key hashes to partition {home} (murmur2), record is on {partition}"
    return None


# --------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------


class Rebuild(Exception):
    """The Kafka clients cannot go on (fatal error, fenced, a transaction that
    neither commits nor aborts): drop them and the stores, make new ones."""


class Hung(Rebuild):
    """A producer call did not return within HUNG_CALL_S. Before the commit
    only the producer is replaced (Processor._replace_producer); anywhere else
    it is a Rebuild."""


class Stopping(Exception):
    """stop() was called while a Kafka call was being retried."""


@gcpause.no_collections()
def fold_log(settings: Settings, reader: CommittedLog, stores: dict[int, PartitionStore],
             starts: dict[int, int], ends: dict[int, int], stop: threading.Event,
             watch=None) -> int:
    """Fold the committed log of each partition of ``ends`` into its store,
    from ``starts`` to at least ``ends``; return the number of records read.

    Everything committed is taken (no cut at the end): the end only says when
    a store is caught up. Stores are written in atomic batches with the log
    position they reach, so a fold stopped anywhere is continued by the next.
    Raises :class:`Stopping` when ``stop`` is set and :class:`Rebuild` when
    the log makes no progress for three transaction timeouts. ``watch``, if
    given, is called on every turn (and may raise).
    """
    reader.start(starts, ends, cut=False)
    targets = {p: ends[p] for p in sorted(reader.remaining)}
    if not targets:
        return 0
    log.info("catching up partitions %s to offsets %s", sorted(targets), targets)
    batches = {p: Batch(stores[p]) for p in targets}
    pending = total = 0
    said_at = time.monotonic()
    # An open transaction of a previous owner ends within the
    # transaction timeout (the broker aborts it); far longer without
    # progress means something is stale: start over with new clients.
    stall_s = 3 * settings.transaction_timeout_ms / 1000
    while batches:
        if stop.is_set():
            raise Stopping()
        if watch is not None:
            watch()
        if time.monotonic() - reader.progress_at > stall_s:
            raise Rebuild(f"catch-up made no progress for {stall_s:.0f} s: "
                          f"{reader.positions} of {targets}, end seen {reader.eofs}")
        if time.monotonic() - said_at > CATCH_UP_REPORT_S:
            said_at = time.monotonic()
            # Usually a previous owner's transaction still open: read
            # committed cannot pass it until the broker ends it.
            log.warning("still catching up: %s", {
                p: f"at {reader.positions[p]} of {targets[p]}, "
                   f"end seen {reader.eofs.get(p)}" for p in batches})
        messages = reader.batch(0.2)
        if not messages:
            gcpause.collect_young()  # waiting: the collector is off (gcpause)
        for msg in messages:
            apply_logged(batches[msg.partition()], msg.value())
        pending += len(messages)
        total += len(messages)
        metrics.RECOVERED_EVENTS.inc(len(messages))
        done = [p for p in batches if p in reader.reached]
        if done or pending >= CATCH_UP_FLUSH_RECORDS:
            for p in (list(batches) if pending >= CATCH_UP_FLUSH_RECORDS else done):
                stores[p].apply(batches[p], reader.positions[p])
                batches[p] = Batch(stores[p])
            pending = 0
            gcpause.collect_young()  # the written batches' objects are gone by now
        for p in done:
            reader.stop(p)
            del batches[p]
    return total


# How the worker is doing, for /v1/health. Only "consuming" is healthy.
STARTING, CATCHING_UP, CONSUMING = "starting", "catching_up", "consuming"
BROKER_UNREACHABLE, REBUILDING = "broker_unreachable", "fenced_rebuilding"
STORE_FAILED, STOPPING, STALLED = "store_failed", "stopping", "stalled"
LOOP_STALL_S = 5.0  # a loop turn (one batch) taking longer is not healthy

KAFKA_CALL_S = 2.0  # one bounded call; retried until its deadline, stop-aware
# A transactional call given KAFKA_CALL_S that is still blocked this long
# ignores its timeout: librdkafka's send_offsets_to_transaction waits for a
# group coordinator that has left the cluster's metadata until some other
# broker changes state (confluentinc/librdkafka#5456, #5511): 51 s in one
# broker-loss run, 12 s in another (issue 14). Calls run on a thread of their
# own; one that hangs is given up with its producer (which keeps the thread
# until the call returns), and a new producer fences it and aborts its
# transaction. The case of #5511 is caught sooner, when the broker leaves
# (_bounded); this bound is the net under it, longer than a broker's fencing
# (6-10 s on the local cluster): before the fence nothing can go on, and a
# new producer made then waited 10 s for its predecessor's abort, which
# needs the dead broker's partitions to have new leaders (measured with 8 s).
HUNG_CALL_S = 15.0
HUNG_POLL_S = 0.25  # how often a wait for such a call looks at the clock
# A send_offsets_to_transaction still running after this asks the cluster,
# every SLOW_OFFSETS_S, whether a broker has left it (_bounded).
SLOW_OFFSETS_S = 0.5
REBUILD_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)

# The transactional producer's tuning; scripts/bench_ceiling.py's plain loop
# uses the same, so that the ceiling is the same loop minus the ledger.
PRODUCER_TUNING = {
    "acks": "all",
    "linger.ms": 5,
    # A transaction's first requests are refused with CONCURRENT_TRANSACTIONS
    # while the broker still writes the previous commit's markers (1-3 ms
    # after commit_transaction returns here; more on a busy machine), and
    # AddOffsetsToTxn is retried after retry.backoff.ms, doubling each time
    # up to retry.backoff.max.ms (KIP-580). librdkafka's default of 100 ms
    # was most of each transaction's time (the plain transactional loop ran
    # 2.3x faster with 10 ms). With 1 ms the offsets phase of
    # scripts/bench's latency runs was shorter in 8 of 8 alternating pairs
    # at 2,000 commands/s (2026-12-03: 7.6 against 17.9 ms, 10.7 against
    # 22.9 ms in the slow hours; 1.7-3.8 against 2.2-4.9 ms in the fast
    # ones). The doubling keeps a broker that is gone from a tight loop.
    # (AddPartitionsToTxn is retried after a fixed 20 ms, rdkafka_txnmgr.c.)
    "retry.backoff.ms": 1,
}

# How the worker's consumer fetches; scripts/bench_ceiling.py's plain loop
# fetches the same way.
CONSUMER_TUNING = {
    # With read_committed, records of a transaction still open do not
    # answer a fetch, so the broker holds it for fetch.wait.max.ms
    # (default 500 ms) before the commit marker is seen: each of a
    # transfer's three steps waited that long (scripts/bench_transfers).
    # Below about 20,000 commands/s fetch.min.bytes is not reached within
    # this wait, so every command waits in the broker for up to this long.
    # 10 against 20, alternating (scripts/bench --latency-rates
    # 22000,4500,2400, the bench's outcome reader at 20 in both, 2026-12-04
    # 15:55-16:03 UTC, a quiet machine): p50 14.0-16.1 ms against 21.2-23.4
    # at 4,500/s and 14.0-15.2 against 19.8-21.5 at 2,400/s; p99 27.2-37.5
    # against 35.3-43.3 and 24.6-31.1 against 34.3-39.5. At 22,000/s (half
    # load) p99 was later, 58.9-80.5 against 48.2-58.5 (more, smaller
    # fetches), which leaves more room under its target (150 ms) than 20
    # left under the low load's (50 ms). The reader's own wait (10 or 20)
    # changed nothing. 15 measured between the two.
    "fetch.wait.max.ms": 10,
    # The broker answers a fetch once this much is there (or after
    # fetch.wait.max.ms). With librdkafka's 1 byte every produce request of
    # the clients answered a fetch: at 11,000 records/s from the client's
    # producer, a consumer fetched 808-818 times a second, against 50 with
    # 32 KiB (two probes each; the wait was 20 ms then, so up to 100 now).
    # At 11,000 commands/s, open loop, the worker fell behind (scripts/bench
    # --latency-rates 11000,2300, six
    # alternating pairs, 2026-12-04: p50 66-3,747 ms, median about 1,300,
    # against 59-376, median about 128). Fewer, fuller fetches also made the
    # worker's transactions bigger at 10% load (47-63 commands against
    # 31-51 in five of six pairs), and p99 there was lower in five of six
    # (41-88 ms, one 141, against 62-115). The cost: an idle
    # worker waits up to fetch.wait.max.ms for a lone command (p50 at 100
    # commands/s 22 ms against 11, with the 20 ms wait). A backlog's
    # fetches are full anyway: the backlog and transfer rates did not
    # change (two pairs each).
    # 4, 8, 16 and 128 KiB measured in the same range as 32.
    "fetch.min.bytes": 32 * 1024,
}


class _Caller:
    """One daemon thread that runs calls handed to it, in order, each with a
    Future. Not a ThreadPoolExecutor: the interpreter joins those threads at
    exit, and a call librdkafka never returns from would keep a stopped
    worker alive; this thread is abandoned with its call instead."""

    _STOP = object()

    def __init__(self):
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name="txn-call", daemon=True).start()

    def submit(self, call, *args) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.put((future, call, args))
        return future

    def shutdown(self) -> None:
        """No more calls; the one running, if any, is left to finish alone."""
        self._calls.put(self._STOP)

    def _run(self) -> None:
        while (item := self._calls.get()) is not self._STOP:
            future, call, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call(*args))
            except BaseException as exc:  # handed to the waiting thread
                future.set_exception(exc)


class Processor:
    """Runs the consume-decide-produce-commit loop on the calling thread.

    Faults (broker restart, network partition, fenced static member, a
    producer's fatal error) are a normal day: a fatal client error rebuilds
    the core in-process (new consumer and producer, ``init_transactions``,
    catch-up from the log), which needs no supervisor and keeps the HTTP
    server up meanwhile; retriable errors are retried within the transaction
    timeout. Only a store that cannot be written (disk full) stops the
    worker, for its supervisor to restart it. ``health()`` says "consuming"
    only while commands are being applied.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self._stop = threading.Event()
        self._stores: dict[int, PartitionStore] = {}
        # The stores the HTTP API may read: caught up with the log. A store is
        # added only after its catch-up and removed before it is closed.
        self._serving: dict[int, PartitionStore] = {}
        self._event_offsets: dict[int, int] = {}  # partition -> last delivered offset
        self.caught_up = threading.Event()
        self._legs = LegAuth(settings.leg_auth_keys())
        self._state = STARTING
        self._broker_down = False
        self._fatal: KafkaError | None = None
        self._loop_at = time.monotonic()
        self._retrying = False  # a Kafka call failed and is being retried
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        # Runs the producer's transactional calls, so one that hangs can be
        # given up (HUNG_CALL_S); one per producer.
        self._caller: _Caller | None = None
        self._producer_generation = 0
        # Broker ids seen in the cluster's metadata since the producer was
        # made (see _bounded).
        self._producer_nodes: set[int] = set()
        self._committed = False  # a transaction committed since the last _connect
        # (topic, partition) -> next offset committed by our last transaction
        # (or found committed): what a tick-only transaction sends to be fenced.
        self._positions: dict[tuple[str, int], int] = {}
        # Rebalance callbacks served so far (see _next_batch).
        self._rebalances = 0
        self._clock_warned_at: dict[int, float] = {}
        self._expiry_checked_at = 0.0  # monotonic; 0: search at the next turn
        # partition -> the newest instant a reader waits for it to be final as of
        # (written by HTTP threads under the lock, read by the loop).
        self._wanted: dict[int, int] = {}
        self._wanted_lock = threading.Lock()
        self._topic_id: str | None = None
        # Store checkpoints in shared storage (streams/checkpoints.py), if set.
        self._checkpoints = checkpoints.Writer(settings, self._events_topic_id) \
            if settings.checkpoint_root else None
        for p in range(settings.partitions):
            metrics.WATERMARK_LAG.labels(str(p)).set_function(
                functools.partial(self.watermark_lag_s, p))

    def _events_topic_id(self) -> str:
        """The event log's topic id (asked once; any thread)."""
        if self._topic_id is None:
            self._topic_id = topics.topic_id(self.settings, self.settings.events_topic)
        return self._topic_id

    def now_ms(self) -> int:
        """This worker's clock (epoch ms), LEDGER_CLOCK_OFFSET_MS included."""
        return int(time.time() * 1000) + self.settings.clock_offset_ms

    def want_final(self, partition: int, t_ms: int) -> None:
        """A reader waits for ``partition`` to be final as of ``t_ms``: tick
        it as soon as the clock has passed ``t_ms`` and nothing was recorded
        on it for tick_ms / 5 (thread-safe; any thread)."""
        with self._wanted_lock:
            if t_ms > self._wanted.get(partition, -1):
                self._wanted[partition] = t_ms

    def watermark_lag_s(self, partition: int) -> float:
        """Seconds the served partition's watermark trails this worker's
        clock (NaN when not served or nothing recorded yet)."""
        store = self._serving.get(partition)
        if store is None or store.watermark == 0:
            return float("nan")
        return (self.now_ms() - store.watermark) / 1000

    def _connect(self) -> None:
        s = self.settings
        self._fatal, self._retrying, self._committed = None, False, False
        self._consumer = Consumer(s.kafka(**{
            "group.id": s.group_id,
            # Tells other workers where this one serves HTTP (streams.routing).
            "client.id": routing.client_id(s),
            # Static membership: a worker restarted under the same id gets its
            # partitions back without a rebalance of everyone else. After a
            # broker restart the broker may fence it ("static consumer fenced"):
            # a fatal error, handled by rebuilding the clients (run()).
            "group.instance.id": s.worker_id,
            "session.timeout.ms": s.session_timeout_ms,
            # Offsets are committed only inside our transactions.
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # Never see commands of aborted transactions (transfer legs later);
            # also makes OffsetFetch wait for pending transactional offsets.
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "range",
            **CONSUMER_TUNING,
            "error_cb": self._on_error,
            # Once a second, the state of each broker connection: whether any
            # broker is reachable, for health() (served by consume()).
            "statistics.interval.ms": 1000,
            "stats_cb": self._on_stats,
        }))
        self._new_producer()
        # Range assignment gives partition N of both topics to the same worker
        # (they have equal partition counts): the store of partition N sees
        # every command and leg of its accounts.
        self._consumer.subscribe([s.commands_topic, s.legs_topic], on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_revoke)

    def _new_producer(self) -> None:
        """A transactional producer (with its caller thread) that has fenced
        every older one of this worker and aborted its open transaction."""
        s = self.settings
        self._producer_generation += 1
        generation = self._producer_generation

        def on_error(err: KafkaError) -> None:
            if generation == self._producer_generation:  # not one given up
                self._on_error(err)

        self._producer_nodes = set()
        self._caller = _Caller()
        self._producer = Producer(s.kafka(**{
            "transactional.id": s.transactional_id,
            "transaction.timeout.ms": s.transaction_timeout_ms,
            "enable.idempotence": True,  # implied by transactional.id; spelled out
            **PRODUCER_TUNING,
            # Events carry an explicit partition; the DLQ uses the key.
            "partitioner": "murmur2_random",
            "error_cb": on_error,
        }))
        log.info("worker %s: initialising transactions as %s", s.worker_id, s.transactional_id)
        # Fences an older incarnation of this worker and aborts its open transaction.
        self._retry(self._producer.init_transactions, deadline_s=None)
        self._brokers_gone()  # the brokers there are now (see _bounded)

    def _replace_producer(self, exc: Hung, first_offsets: dict) -> None:
        """A call of the open transaction (not its commit) hung: give up the
        producer, which keeps its blocked thread until the call returns, and
        read the batch again with a new one. The new producer's
        init_transactions fences the old one and aborts its transaction, so
        nothing of the batch can reach the log."""
        metrics.TRANSACTIONS.labels("aborted").inc()
        log.warning("%s; a new producer aborts the transaction", exc)
        self._caller.shutdown()
        self._producer = None
        try:
            self._new_producer()
        except Hung as again:
            raise Rebuild(f"init_transactions: {again}") from None
        self._seek_back(first_offsets)

    def _seek_back(self, first_offsets: dict) -> None:
        """Nothing of the batch reached the log or the store; read it again.

        Each offset is the partition's committed one (every record before it
        was applied and committed). A partition whose fetch has not started
        yet (assigned a moment ago: librdkafka refuses the seek with _STATE,
        or _PREV_IN_PROGRESS while the old fetch stops) starts at the
        committed offset anyway. Any other refusal would leave the records
        unread behind the consumer's position: the clients are rebuilt."""
        for (topic, p), offset in first_offsets.items():
            try:
                self._consumer.seek(TopicPartition(topic, p, offset))
            except KafkaException as exc:
                if exc.args[0].code() in (KafkaError._STATE, KafkaError._PREV_IN_PROGRESS):
                    log.info("seek of %s [%d] refused (%s): its fetch starts at the "
                             "committed offset", topic, p, exc.args[0])
                    continue
                raise Rebuild(f"seek: {exc.args[0]}") from None

    # -- public ------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        self._state = STOPPING

    def store_for(self, partition: int) -> PartitionStore | None:
        """The committed store of a partition we own and have caught up, if any."""
        return self._serving.get(partition)

    @property
    def assigned(self) -> list[int]:
        return sorted(self._serving)

    def health(self) -> tuple[bool, str]:
        """(True, "consuming") only while commands are being applied: the loop
        turned recently and a broker is reachable."""
        state = self._state
        if state == CONSUMING and (self._broker_down or self._retrying):
            state = BROKER_UNREACHABLE
        elif state == CONSUMING and time.monotonic() - self._loop_at > LOOP_STALL_S:
            state = STALLED
        return state == CONSUMING, state

    def run(self) -> None:
        backoff = 0
        try:
            while not self._stop.is_set():
                try:
                    self._connect()
                    self._loop()
                except Rebuild as exc:
                    self._state = REBUILDING
                    metrics.CORE_REBUILDS.inc()
                    if self._committed:
                        backoff = 0  # these clients worked: a new fault, not the same one
                    delay = REBUILD_BACKOFF_S[min(backoff, len(REBUILD_BACKOFF_S) - 1)]
                    backoff += 1
                    log.error("Kafka clients unusable (%s); rebuilding them in %.1fs", exc, delay)
                    self._close()
                    self._stop.wait(delay)
                except Stopping:
                    break
        finally:
            self._close()
            if self._checkpoints is not None:
                self._checkpoints.close()

    def _loop(self) -> None:
        lag_measured_at = 0.0
        while not self._stop.is_set():
            self._loop_at = time.monotonic()
            if self._fatal is not None:
                raise Rebuild(f"fatal client error: {self._fatal}")
            messages = self._next_batch()
            if messages:
                self._process(messages)
            else:
                self._tick_idle()
            if time.monotonic() - lag_measured_at > 1.0:
                lag_measured_at = time.monotonic()
                self._measure_lag()

    # -- errors --------------------------------------------------------------

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's error callback (both clients): the broker's reachability
        and fatal errors, which no later call will clear."""
        if err.fatal() or err.code() == KafkaError._FATAL:
            log.error("fatal Kafka error: %s", err)
            self._fatal = err
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            if not self._broker_down:
                log.warning("broker unreachable: %s", err)
            self._broker_down = True

    def _on_stats(self, stats_json: str) -> None:
        """librdkafka's statistics: is any broker connection up?"""
        brokers = json.loads(stats_json).get("brokers", {}).values()
        up = any(b.get("state") == "UP" and b.get("nodeid", -1) >= 0 for b in brokers)
        if up and self._broker_down:
            log.info("broker reachable again")
        elif not up and not self._broker_down:
            log.warning("no broker reachable")
        self._broker_down = not up

    def _retry(self, call, *args, deadline_s: float | None):
        """``call(*args, timeout)`` until it returns, retrying retriable errors.

        A fatal error, or a deadline passed (``deadline_s`` from now; None:
        until stopped), means the clients must be rebuilt. Abortable errors
        are raised to the caller as they are.
        """
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        while True:
            if self._stop.is_set():
                raise Stopping()
            try:
                result = self._bounded(call, *args)
                self._retrying = False
                return result
            except KafkaException as exc:
                self._retrying = True
                error = exc.args[0]
                if error.fatal() or self._fatal is not None:
                    raise Rebuild(f"{call.__name__}: {error}") from None
                if error.txn_requires_abort():
                    self._retrying = False
                    raise
                if not error.retriable() and error.code() != KafkaError._TIMED_OUT:
                    raise Rebuild(f"{call.__name__}: {error}") from None
                if deadline is not None and time.monotonic() > deadline:
                    raise Rebuild(f"{call.__name__} still failing: {error}") from None

    def _bounded(self, call, *args):
        """``call(*args, KAFKA_CALL_S)`` on the caller thread, given up (Hung)
        if it has not returned within HUNG_CALL_S; a slow
        send_offsets_to_transaction sooner, once a broker it knew has left
        the cluster (fenced, gone from the metadata): librdkafka#5456 and
        #5511 say it may wait for that broker, the group coordinator it
        cached, long after another has taken over (measured: 8-51 s), and
        a new producer asks anew."""
        future = self._caller.submit(call, *args, KAFKA_CALL_S)
        started = time.monotonic()
        look_at = started + SLOW_OFFSETS_S
        offsets = call.__name__ == "send_offsets_to_transaction"
        while True:
            try:
                return future.result(timeout=HUNG_POLL_S)
            except concurrent.futures.TimeoutError:
                pass
            if self._stop.is_set():
                raise Stopping()  # the call is left to its thread
            now = time.monotonic()
            if now - started > HUNG_CALL_S:
                raise self._hung(call, f"still blocked {HUNG_CALL_S:.1f} s after it was "
                                       f"given {KAFKA_CALL_S:.0f} s")
            if offsets and now > look_at:
                look_at = now + SLOW_OFFSETS_S
                gone = self._brokers_gone()
                if gone:
                    raise self._hung(call, f"broker {min(gone)} left the cluster "
                                           f"while it was waiting")

    def _brokers_gone(self) -> set[int]:
        """Brokers seen in the cluster's metadata since the producer was made
        that are no longer in it (a KRaft cluster lists no fenced broker);
        learns the ones that are."""
        try:
            # Asked through the consumer, which keeps connections to every
            # broker it fetches from (the waiting producer's metadata requests
            # timed out for 6 s after a fence); one topic asked for: every
            # broker comes with any answer.
            alive = set(self._consumer.list_topics(self.settings.events_topic,
                                                   timeout=KAFKA_CALL_S / 2).brokers)
        except KafkaException:
            return set()  # no answer: nothing learnt
        gone = self._producer_nodes - alive
        self._producer_nodes |= alive
        return gone

    @staticmethod
    def _hung(call, why: str) -> Hung:
        metrics.HUNG_CALLS.inc()
        return Hung(f"{call.__name__}: {why} (librdkafka#5456, #5511)")

    def _next_batch(self) -> list:
        """Whatever is already fetched, up to batch_size_max, without waiting
        for a full batch: consume(n, timeout) blocks until n records or the
        timeout, which cost each step of a transfer 100 ms at low load. Under
        load the fetched queue is deep, so batches stay large by themselves."""
        n = self.settings.batch_size_max
        started = time.perf_counter()
        rebalances = self._rebalances
        try:
            messages = topics.consume_ready(self._consumer, n, 0.1)  # idle: wait a little
        except KafkaException as exc:  # fatal consumer errors are raised here
            raise Rebuild(f"consume: {exc.args[0]}") from None
        if messages and self._rebalances != rebalances:
            messages = self._give_back(messages)
        PHASES["wait"].inc(time.perf_counter() - started)
        return messages

    def _give_back(self, messages) -> list:
        """Records fetched by consume calls that served a rebalance: given
        back whole, none applied.

        consume_ready makes up to three consume calls, and librdkafka serves
        a rebalance callback inside whichever finds it queued, after records
        that call or an earlier one already returned: records of a partition
        revoked meanwhile (its store closed: a KeyError stopped a worker in
        CI when its peer was killed) or, under the eager protocol, of one
        revoked and assigned again, whose fetch restarts at the committed
        offset and delivers the same records a second time. Which records
        came before the callback the list does not say, so none is applied:
        each partition still ours is sought back to its first record here,
        its committed offset, and read on from there. (Were a partition to
        go to another member and back within one list, its first record here
        could be older than that member's commit: those commands would be
        answered as duplicates, by their ids.)
        """
        for msg in messages:
            if msg.error():
                _raise_if_fatal(msg.error())
        first = {key: offset for key, offset in _first_offsets(messages).items()
                 if key[1] in self._stores}
        log.info("a rebalance was served while %d records were fetched; they are read "
                 "again from %s", len(messages), sorted(first.items()) or "their new owners")
        self._seek_back(first)
        return []

    def _measure_lag(self) -> None:
        """Lag from cached high watermarks (no broker round trip) and positions."""
        s = self.settings
        assigned = [TopicPartition(t, p) for p in self._stores
                    for t in (s.commands_topic, s.legs_topic)]
        lag: dict[int, int] = {}
        try:
            positions = self._consumer.position(assigned) if assigned else []
        except KafkaException:
            positions = []
        for tp in positions:
            try:
                _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high >= 0 and tp.offset >= 0:
                lag[tp.partition] = lag.get(tp.partition, 0) + max(0, high - tp.offset)
        for partition in range(s.partitions):
            metrics.CONSUMER_LAG.labels(str(partition)).set(lag.get(partition, 0))

    # -- one batch -----------------------------------------------------------

    def _process(self, messages) -> None:
        started = time.perf_counter()
        wall_ms = self.now_ms()
        stamps: dict[int, int] = {}  # partition -> recorded_at of this batch's records
        produced: set[int] = set()  # partitions this batch writes records to
        batches: dict[int, Batch] = {}
        next_offsets: dict[tuple[str, int], int] = {}
        self._event_offsets.clear()
        metrics.PER_COMMAND.drop()  # counts of a batch given up before its commit
        # A transaction that has not committed within the broker's transaction
        # timeout will be aborted by it: give up on it then and rebuild.
        txn_deadline_s = self.settings.transaction_timeout_ms / 1000
        try:
            self._producer.begin_transaction()
        except KafkaException as exc:
            raise Rebuild(f"begin_transaction: {exc.args[0]}") from None
        try:
            for msg in messages:
                error = msg.error()
                if error:
                    _raise_if_fatal(error)
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("consume error: %s", error)
                    continue
                p = msg.partition()
                next_offsets[(msg.topic(), p)] = msg.offset() + 1
                batch = batches.get(p)
                if batch is None:
                    batch = batches[p] = Batch(self._stores[p])
                    stamps[p] = self._stamp(p, wall_ms)
                if self._handle(msg, p, batch, stamps[p]):
                    produced.add(p)
            # Holds whose time has passed: expired in this same transaction.
            for p, holds in self._expiries_due(wall_ms).items():
                if p not in batches:
                    batches[p] = Batch(self._stores[p])
                    stamps[p] = self._stamp(p, wall_ms)
                if self._expire(p, holds, batches[p], stamps[p]):
                    produced.add(p)
            for p in produced:
                batches[p].advance(stamps[p])
            # Owned partitions where nothing was recorded for tick_ms: mark
            # the time passing, in this same transaction.
            for p in self._ticks_due(wall_ms, skip=produced):
                if p not in batches:
                    batches[p] = Batch(self._stores[p])
                self._produce_tick(p, stamps.get(p) or self._stamp(p, wall_ms), batches[p])
            t_decided = time.perf_counter()
            # The offsets' two round trips (AddOffsetsToTxn, TxnOffsetCommit)
            # while the records are still being acknowledged: waiting for the
            # acks first (a flush) put them one after the other.
            if next_offsets:
                self._retry(
                    self._producer.send_offsets_to_transaction,
                    [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()],
                    self._consumer.consumer_group_metadata(),
                    deadline_s=txn_deadline_s)
            t_offsets = time.perf_counter()
            metrics.PER_COMMAND.flush()  # counted before the outcomes are visible
            self._commit(txn_deadline_s)
        # Given up: the whole batch is read again, the partitions the loop had
        # not reached yet included (their records are fetched already, so the
        # consumer's position is past them, and the next commit would step
        # over them): tests/streams/test_abort_mid_batch.py.
        except KafkaException as exc:  # abortable
            self._abort(exc, _first_offsets(messages))
            return
        except Hung as exc:  # before the commit (_commit raises Rebuild)
            self._replace_producer(exc, _first_offsets(messages))
            return
        self._producer.poll(0)  # any delivery report not served yet
        self._retrying = False
        self._state = CONSUMING
        self._positions.update(next_offsets)
        t_committed = time.perf_counter()
        self._apply(batches)
        done = time.perf_counter()
        PHASES["decide"].inc(t_decided - started)
        PHASES["offsets"].inc(t_offsets - t_decided)
        PHASES["commit"].inc(t_committed - t_offsets)
        PHASES["apply"].inc(done - t_committed)
        self._count_commit()
        metrics.TRANSACTION_SECONDS.observe(done - started)
        metrics.BATCH_SIZE.observe(len(messages))

    def _apply(self, batches: dict[int, Batch]) -> None:
        """Write committed batches to their stores, with the event-log offset
        each reaches and its watermark."""
        for p, batch in batches.items():
            last = self._event_offsets.get(p)
            try:
                self._stores[p].apply(batch, None if last is None else last + 1)
            except Exception:
                # Committed to Kafka but not to disk (disk full, I/O error):
                # the store is now behind the log, which catch-up repairs on
                # the next start. Stop; the supervisor restarts the worker.
                self._state = STORE_FAILED
                raise
            if self._checkpoints is not None and last is not None:
                self._checkpoints.after_apply(p, self._stores[p], last + 1)

    # -- recorded time -------------------------------------------------------

    def _stamp(self, partition: int, wall_ms: int) -> int:
        """recorded_at for this batch's records on ``partition``: the clock,
        but at least 1 ms after the partition's watermark."""
        watermark = self._stores[partition].watermark
        stamp = domain.stamp_after(watermark, wall_ms)
        if stamp != wall_ms:
            metrics.STAMPED_AFTER_WATERMARK.inc()
            self._warn_clock(partition, watermark, wall_ms)
        return stamp

    def _warn_clock(self, partition: int, watermark: int, wall_ms: int) -> None:
        behind = watermark - wall_ms
        if behind <= CLOCK_BEHIND_WARN_MS:
            return
        now = time.monotonic()
        if now - self._clock_warned_at.get(partition, -CLOCK_WARN_EVERY_S) < CLOCK_WARN_EVERY_S:
            return
        self._clock_warned_at[partition] = now
        log.warning("clock of worker %s is %.3f s behind the watermark of event-log "
                    "partition %d (recorded up to %d ms by an earlier owner or a faster "
                    "clock): recording its events 1 ms after the watermark, not at the "
                    "clock, until the clock passes it; check this host's time (NTP)",
                    self.settings.worker_id, behind / 1000, partition, watermark)

    def _ticks_due(self, wall_ms: int, skip=()) -> list[int]:
        """Owned partitions where nothing was recorded for tick_ms, or for
        tick_ms / 5 when a reader waits for an instant the clock has passed."""
        every = self.settings.tick_ms
        soon = max(1, every // 5)
        due = []
        with self._wanted_lock:
            for p, store in self._stores.items():
                wanted = self._wanted.get(p)
                if wanted is not None and store.watermark >= wanted:
                    del self._wanted[p]  # final as of it: the reader has its answer
                    wanted = None
                if p in skip:
                    continue
                idle_ms = wall_ms - store.watermark
                if idle_ms >= every or (wanted is not None and wanted <= wall_ms
                                        and idle_ms >= soon):
                    due.append(p)
        return due

    def _produce_tick(self, partition: int, stamp: int, batch: Batch) -> None:
        raw = codec.encode_tick(domain.PartitionTick(partition, stamp))
        # Empty key: a tick belongs to no account; the partition is explicit.
        self._produce_event(raw, b"", partition)
        batch.advance(stamp)
        metrics.TICKS.inc()

    def _tick_idle(self) -> None:
        """No commands: mark the time on owned partitions where nothing was
        recorded for tick_ms, in a transaction of their own that is fenced
        like a batch (it sends offsets with the group metadata)."""
        wall_ms = self.now_ms()
        expiring = self._expiries_due(wall_ms)
        due = self._ticks_due(wall_ms)
        if not due and not expiring:
            return
        offsets = self._fence_offsets()
        if not offsets:
            self._expiry_checked_at = 0.0  # look again on the next turn
            return  # cannot be fenced yet: try again on the next turn
        txn_deadline_s = self.settings.transaction_timeout_ms / 1000
        self._event_offsets.clear()
        try:
            self._producer.begin_transaction()
        except KafkaException as exc:
            raise Rebuild(f"begin_transaction: {exc.args[0]}") from None
        batches: dict[int, Batch] = {}
        try:
            for p, holds in expiring.items():
                batches[p] = Batch(self._stores[p])
                stamp = self._stamp(p, wall_ms)
                if self._expire(p, holds, batches[p], stamp):
                    batches[p].advance(stamp)  # records on p: no tick needed there
            for p in due:
                if batches.get(p) is not None and batches[p].watermark:
                    continue
                batches.setdefault(p, Batch(self._stores[p]))
                self._produce_tick(p, self._stamp(p, wall_ms), batches[p])
            self._retry(self._producer.send_offsets_to_transaction, offsets,
                        self._consumer.consumer_group_metadata(), deadline_s=txn_deadline_s)
            self._commit(txn_deadline_s)
        except KafkaException as exc:  # abortable (fenced, for one)
            self._abort(exc, {})
            return
        except Hung as exc:  # before the commit (_commit raises Rebuild)
            self._replace_producer(exc, {})
            return
        self._producer.poll(0)
        self._retrying = False
        self._apply(batches)
        self._count_commit()

    def _count_commit(self) -> None:
        """A transaction committed: counted, and the rebuilt clients work
        (the rebuild backoff starts over)."""
        metrics.TRANSACTIONS.labels("committed").inc()
        self._committed = True

    # -- hold expiry -----------------------------------------------------------

    def _expiries_due(self, wall_ms: int) -> dict[int, list[tuple[str, str]]]:
        """Owned partitions' active holds whose expiry is at or before the
        clock (searched every EXPIRY_CHECK_S): partition -> (account, hold)."""
        if time.monotonic() - self._expiry_checked_at < EXPIRY_CHECK_S:
            return {}
        self._expiry_checked_at = time.monotonic()
        due = {}
        for p, store in self._stores.items():
            found = store.due_holds(wall_ms)
            if found:
                due[p] = found
        return due

    def _expire(self, partition: int, holds, batch: Batch, stamp: int) -> bool:
        """Record HoldExpired, at this worker's time ``stamp``, for each hold
        still active and due as the batch sees it; True if any was. Exactly
        once: it commits with the transaction (fenced like any batch), and
        the next owner rebuilds the holds from the log before it looks."""
        produced = False
        for account_id, hold_id in holds:
            hold = batch.hold(account_id, hold_id)
            if hold is None or hold.status is not domain.HoldStatus.active \
                    or hold.expires_at_ms > stamp:
                continue
            try:
                records, _legs, _reply = handle_command(
                    batch, domain.expire_hold(account_id, hold_id), stamp)
            except Exception:  # a bug must not stall the partition
                log.exception("expiring hold %s of %s", hold_id, account_id)
                continue
            for raw in records:
                self._produce_event(raw, account_id.encode(), partition)
            metrics.PER_COMMAND.add(metrics.EVENTS, len(records))
            produced = produced or bool(records)
        return produced

    def _fence_offsets(self) -> list[TopicPartition]:
        """Offsets a tick-only transaction can send: the ones our last
        transactions committed, else the group's committed offsets of the
        partitions we own (unchanged by sending them again), else the start
        of one partition when nothing was ever committed there."""
        s = self.settings
        owned = [(t, p) for p in sorted(self._stores) for t in (s.commands_topic, s.legs_topic)]
        if not owned:
            return []
        known = [TopicPartition(t, p, self._positions[(t, p)]) for t, p in owned
                 if (t, p) in self._positions]
        if known:
            return known
        try:
            committed = self._consumer.committed([TopicPartition(t, p) for t, p in owned],
                                                 timeout=KAFKA_CALL_S)
            for tp in committed:
                if tp.error is None and tp.offset >= 0:
                    self._positions[(tp.topic, tp.partition)] = tp.offset
            if not any(key in self._positions for key in owned):
                # Nothing committed yet: where this consumer starts anyway.
                t, p = owned[0]
                low, _high = self._consumer.get_watermark_offsets(
                    TopicPartition(t, p), timeout=KAFKA_CALL_S)
                self._positions[(t, p)] = low
        except KafkaException as exc:
            log.info("no offsets to fence a tick with yet: %s", exc.args[0])
            return []
        return [TopicPartition(t, p, self._positions[(t, p)]) for t, p in owned
                if (t, p) in self._positions]

    def _flushed_left(self) -> int:
        try:
            return self._producer.flush(KAFKA_CALL_S)
        except SystemError as exc:
            # A fatal error (fenced) raised while a delivery report was being
            # served comes out of flush as SystemError, not KafkaException.
            raise Rebuild(f"flush: {exc.__cause__ or exc}") from None

    def _commit(self, deadline_s: float) -> None:
        """Wait (stop-aware) for the transaction's records to be acknowledged,
        which serves their delivery reports (the event offsets the stores are
        written with), then commit."""
        deadline = time.monotonic() + deadline_s
        while self._flushed_left() > 0:
            self._retrying = True
            if self._stop.is_set():
                raise Stopping()
            if self._fatal is not None:
                raise Rebuild(f"fatal client error: {self._fatal}")
            if time.monotonic() > deadline:
                raise Rebuild("events not delivered within the transaction timeout")
        try:
            self._retry(self._producer.commit_transaction,
                        deadline_s=max(0.0, deadline - time.monotonic()))
        except Hung as exc:  # committed or not: only the log can say (catch-up)
            raise Rebuild(str(exc)) from None

    def _handle(self, msg, partition: int, batch: Batch, now_ms: int) -> bool:
        """Apply one consumed record; True if it wrote records to the event log."""
        try:
            if msg.topic() == self.settings.legs_topic:
                problem = self._legs.problem(msg.key(), msg.value(), msg.headers())
                if problem is None:
                    command, _issued_at_ms = codec.decode_leg(msg.value())
            else:
                problem = None
                command, _issued_at_ms = codec.decode_command(msg.value())
            if problem is None:
                problem = routing_problem(msg.key(), command, partition,
                                          self.settings.partitions)
            if problem is None:
                records, legs, reply = handle_command(batch, command, now_ms)
        except (codec.CodecError, LegConflict) as exc:
            problem = str(exc)
        except Exception as exc:  # a bug must park one record, not stall a partition
            log.exception("unexpected error on %s[%d]@%d", msg.topic(), partition, msg.offset())
            problem = f"internal error: {exc!r}"
        if problem is not None:
            self._dead_letter(msg, problem)
            return False
        key = msg.key()
        for raw in records:
            self._produce_event(raw, key, partition)
        if reply is not None:
            # Same transaction: a reply is committed if and only if its outcome is.
            self._producer.produce(self.settings.replies_topic, reply, key, partition=partition)
        for leg, raw in legs:
            # Same transaction: the leg exists if and only if this outcome does.
            leg_key = leg.account_id.encode()
            self._producer.produce(self.settings.legs_topic, raw, leg_key,
                                   partition=partition_for(leg_key, self.settings.partitions),
                                   headers=self._legs.headers(leg_key, raw))
        metrics.PER_COMMAND.add(metrics.EVENTS, len(records))
        return bool(records)

    def _dead_letter(self, msg, problem: str) -> None:
        log.warning("dead-lettering %s[%d]@%d: %s", msg.topic(), msg.partition(),
                    msg.offset(), problem)
        self._producer.produce(
            self.settings.dead_letter_topic,
            msg.value(),
            msg.key(),
            partition=msg.partition(),
            headers=[
                ("ledger.error", problem.encode()),
                ("ledger.source.topic", msg.topic().encode()),
                ("ledger.source.partition", str(msg.partition()).encode()),
                ("ledger.source.offset", str(msg.offset()).encode()),
            ],
        )
        metrics.DEAD_LETTERS.inc()

    def _produce_event(self, raw: bytes, key: bytes, partition: int) -> None:
        """Produce one event-log record of the open transaction. Only these
        have a delivery report (their offsets are what the stores are
        written with); a report per reply and leg was a Python call that
        did nothing."""
        self._producer.produce(self.settings.events_topic, raw, key, partition=partition,
                               on_delivery=self._on_event_delivered)

    def _on_event_delivered(self, err, msg) -> None:
        if err is None:
            p, offset = msg.partition(), msg.offset()
            if offset > self._event_offsets.get(p, -1):
                self._event_offsets[p] = offset

    def _abort(self, exc: KafkaException, first_offsets: dict) -> None:
        metrics.TRANSACTIONS.labels("aborted").inc()
        log.warning("aborting transaction: %s", exc.args[0])
        try:
            self._retry(self._producer.abort_transaction,
                        deadline_s=self.settings.transaction_timeout_ms / 1000)
        except KafkaException as again:
            raise Rebuild(f"abort_transaction: {again.args[0]}") from None
        except Hung as hung:  # a new producer aborts it instead
            self._replace_producer(hung, first_offsets)
            return
        self._seek_back(first_offsets)

    # -- partitions come and go -------------------------------------------

    def _on_assign(self, consumer, partitions) -> None:
        if consumer is not self._consumer:
            return  # a consumer given up (see _on_revoke)
        self._rebalances += 1
        numbers = [tp.partition for tp in partitions]
        log.info("assigned partitions %s", numbers)
        self._state = CATCHING_UP
        self._expiry_checked_at = 0.0  # expire what is due at once after catch-up
        for p in numbers:
            if p not in self._stores:
                self._stores[p] = open_store(self.settings, p)
        started = time.perf_counter()
        self._catch_up(numbers)
        metrics.RECOVERY_SECONDS.observe(time.perf_counter() - started)
        metrics.ASSIGNED_PARTITIONS.set(len(self._stores))
        gcpause.caught_up()
        wall_ms = self.now_ms()
        for p in numbers:
            self._warn_clock(p, self._stores[p].watermark, wall_ms)
        self._serving.update({p: self._stores[p] for p in numbers})
        self._state = CONSUMING
        self.caught_up.set()

    def _on_revoke(self, consumer, partitions) -> None:
        # consumer.close() serves a pending rebalance too, and _close may
        # leave it running on a thread of its own after 5 s: such a late
        # callback must not touch the stores, which _close closes itself,
        # nor those a rebuilt core has opened since under the same numbers.
        if consumer is not self._consumer:
            return
        self._rebalances += 1
        log.info("revoked partitions %s", [tp.partition for tp in partitions])
        for tp in partitions:
            self._positions.pop((tp.topic, tp.partition), None)
            self._serving.pop(tp.partition, None)
            store = self._stores.pop(tp.partition, None)
            if store is not None:
                store.close()
        metrics.ASSIGNED_PARTITIONS.set(len(self._stores))

    def _catch_up(self, partitions: list[int]) -> None:
        """Bring each partition's store up to the end of the committed event log.

        The end is the high watermark when we took the partition. If a
        previous owner's transaction is still open, read_committed stops
        short of it until the broker commits or aborts it (at the latest after
        ``transaction.timeout.ms``), so we wait rather than act on a state
        that might still change under us. Far behind, groups of partitions
        are caught up by helper processes meanwhile (streams/catchup.py).
        """
        reader = CommittedLog(self.settings, f"{self.settings.group_id}-catch-up")
        helpers: list[catchup.Helper] = []
        lent: list[int] = []  # partitions whose stores a helper has
        try:
            bounds = reader.log_bounds(partitions)
            ends = {p: end for p, (_start, end) in bounds.items()}
            if self._checkpoints is not None:
                self._restore(partitions, bounds)
            starts = {p: self._stores[p].events_offset for p in partitions}
            mine, *theirs = catchup.split(starts, ends, catchup.processes_for(self.settings),
                                          self.settings.catch_up_parallel_records,
                                          keep=set(self._serving))
            for group in theirs:
                for p in group:  # a store is open in one process at a time
                    lent.append(p)
                    self._stores.pop(p).close()
                helpers.append(catchup.Helper(self.settings, {p: ends[p] for p in group}))
            # A helper that fails fails the catch-up at once, not after ours.
            fold_log(self.settings, reader, {p: self._stores[p] for p in mine},
                     starts, {p: ends[p] for p in mine}, self._stop,
                     watch=lambda: catchup.check(helpers))
            for helper in helpers:
                records = helper.wait(self._stop)
                if records is None:
                    raise Stopping()
                metrics.RECOVERED_EVENTS.inc(records)
        except catchup.CatchUpFailed as exc:
            if exc.retry:
                raise Rebuild(str(exc)) from None
            raise
        finally:
            reader.close()
            for helper in helpers:
                helper.end()
            for p in lent:
                self._stores[p] = open_store(self.settings, p)

    def _restore(self, partitions: list[int], bounds: dict[int, tuple[int, int]]) -> None:
        """Replace each store far behind the newest checkpoint of its
        partition with that checkpoint (streams/checkpoints.py)."""
        for p in partitions:
            newest = checkpoints.newest_offset(self.settings, p)
            self._checkpoints.known(p, newest)
            if p in self._serving:
                continue  # served until now: current
            have = self._stores[p].events_offset
            if not checkpoints.worth_restoring(self.settings, have, newest):
                continue
            self._stores.pop(p).close()
            try:
                low, high = bounds[p]
                checkpoints.restore(self.settings, p, have=have, low=low, high=high,
                                    topic_id=self._events_topic_id)
            finally:
                self._stores[p] = open_store(self.settings, p)

    def _close(self) -> None:
        """Drop the clients (bounded: a consumer can hang leaving a group whose
        broker is gone) and close every store."""
        self._serving.clear()
        self._positions.clear()
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = None
        caller, self._caller = self._caller, None
        if caller is not None:
            # A call still blocked on it (HUNG_CALL_S) keeps its thread and
            # producer until it returns; nothing waits for it.
            caller.shutdown()
        if consumer is not None:
            closer = threading.Thread(target=_quietly, args=(consumer.close,),
                                      name="consumer-close", daemon=True)
            closer.start()
            closer.join(5.0)
            if closer.is_alive():
                log.warning("consumer did not close within 5 s; abandoned")
        if producer is not None:
            producer.purge()  # queued records of an unfinished transaction
        for store in self._stores.values():
            store.close()
        self._stores.clear()
        metrics.ASSIGNED_PARTITIONS.set(0)


def _first_offsets(messages) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the offset of its first record in ``messages``:
    where each is sought back to, to read them all again."""
    first: dict[tuple[str, int], int] = {}
    for msg in messages:
        if not msg.error():
            first.setdefault((msg.topic(), msg.partition()), msg.offset())
    return first


def _raise_if_fatal(error: KafkaError) -> None:
    """A consumed message's error that is fatal (e.g. "static consumer
    fenced", code _FATAL): left alone, the consumer never fetches again."""
    if error.fatal() or error.code() == KafkaError._FATAL:
        raise Rebuild(f"consumer: {error}")


def _quietly(call) -> None:
    try:
        call()
    except Exception as exc:  # closing a broken client: nothing left to do
        log.info("while closing: %r", exc)
