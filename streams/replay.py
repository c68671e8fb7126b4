"""Rebuild, verify and snapshot the whole ledger from the committed event log.

    ledger replay --as-of T --out FILE [--from-scratch]
    ledger verify [--data-dir DIR] [--no-store] [--pending-max-s S]
    ledger snapshot

**Verify** replays the log from offset 0 and reports every problem it finds,
one line each, named by its kind (the constants in the Verify section below:
sequence gaps, broken balance chains, overdrafts exceeded, money not
conserved, money in flight below zero, transfer legs that match no debit or
credit, transfers settled or credited twice, transfers pending too long),
then compares each worker's RocksDB store with the log up to the offset that
store recorded. Exit 0 only if nothing was found.

**Ledger-wide snapshots** are files in ``LEDGER_SNAPSHOT_DIR`` (default
``./snapshots``), so they survive the loss of any worker's disk; copy that
directory like a backup. One file per snapshot,
``<events topic>/snapshot-<max_recorded_at_ms>-<sha8>.json.gz``: a header
line, then one account state per line, sorted by account id. The header
records the event-log offset of every partition the snapshot covers, the
newest ``recorded_at_ms`` inside it, and a SHA-256 of the body. A snapshot is
derived from committed events only (read_committed) and is idempotent:
the same log gives the same bytes (gzip with mtime 0).

**State as of T** = the newest snapshot whose newest event is at or before T,
plus every later event with ``recorded_at_ms <= T``. A snapshot that is late
(newer than T), unreadable or whose checksum does not match is skipped, with
a warning and ``ledger_snapshot_fallbacks_total``, for an older one or for
offset 0: slower, never wrong. ``--from-scratch`` ignores snapshots; both
give the same file.

**Final.** Recorded times strictly increase from one transaction to the next
on each partition (``streams/processor.py``), so the state as of T is final
once every partition has a committed record stamped after T: nothing
stamped at or before T can be added there any more. ``ledger replay --as-of
T`` reads each partition to its end and then waits (``--timeout-ms``) for
the partitions that are not final as of T yet, taking in what they still
record at or before T; if one stays short it exits non-zero naming it,
rather than write a ledger that may change. Idle partitions get a
``PartitionTick`` every LEDGER_TICK_MS, so a T a moment ago is final within
about that long while workers run.

**Groups.** Every account lives on one partition, so the fold of one
partition needs no other. A long read (``Settings.catch_up_parallel_records``
records or more, on two partitions or more) is split into groups of
partitions balanced by records to read; this process folds the first and a
spawned helper process each other one, and the results are merged (money
counters added up): the same Ledger, on every core (:func:`rebuild`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ledger import domain
from streams import metrics
from streams.config import Settings
from streams.eventlog import read_log
from streams.files import atomic_file
from streams.gcpause import no_collections
from streams.shapes import account_json
from streams.store import decode_state, encode_state

log = logging.getLogger("ledger.replay")
SNAPSHOT_FORMAT = 2  # 2: account states carry held (holds)


@dataclass
class Ledger:
    """Every account's state, the log position reached, and the newest event time."""

    accounts: dict[str, domain.AccountState]
    offsets: dict[int, int]  # partition -> next offset to read
    max_recorded_at_ms: int
    in_flight: Counter  # currency -> money debited by transfers, not yet credited/refunded
    external: Counter  # currency -> external credits - external debits
    # partition -> newest recorded_at read on it, ticks included (not in snapshots)
    watermarks: dict[int, int] = field(default_factory=dict)

    def saw(self, partition: int, recorded_at_ms: int) -> None:
        if recorded_at_ms > self.watermarks.get(partition, -1):
            self.watermarks[partition] = recorded_at_ms

    def complete_up_to(self, partitions: int) -> int | None:
        """The instant up to which every partition read has all its records
        here (None if a partition had no record read)."""
        if len(self.watermarks) < partitions:
            return None
        return min(self.watermarks.values())

    @classmethod
    def empty(cls, partitions: int) -> "Ledger":
        return cls({}, {p: 0 for p in range(partitions)}, 0, Counter(), Counter())

    def apply(self, partition: int, offset: int, record) -> None:
        # Once per record of every replay: saw() and max() written inline.
        self.offsets[partition] = offset + 1
        recorded_at_ms = record.recorded_at_ms
        if recorded_at_ms > self.watermarks.get(partition, -1):
            self.watermarks[partition] = recorded_at_ms
        if isinstance(record, domain.CommandRejected):
            return
        account_id = record.account_id
        state = self.accounts.get(account_id)
        if state is not None and record.sequence <= state.version:
            return  # replayed twice: idempotent by sequence
        self.accounts[account_id] = domain.evolve(state, record)
        if recorded_at_ms > self.max_recorded_at_ms:
            self.max_recorded_at_ms = recorded_at_ms
        if isinstance(record, domain.Credited):
            self.external[record.currency] += record.amount_minor
        elif isinstance(record, domain.Debited) or (
                isinstance(record, domain.HoldCaptured) and not record.to_account_id):
            # A capture without a destination leaves the ledger like a debit.
            self.external[record.currency] -= record.amount_minor
        elif isinstance(record, domain.TransferDebited):
            self.in_flight[record.currency] += record.amount_minor
        elif isinstance(record, (domain.TransferCredited, domain.TransferRefunded)):
            self.in_flight[record.currency] -= record.amount_minor


# --------------------------------------------------------------------------
# Snapshot files
# --------------------------------------------------------------------------


def _body_lines(ledger: Ledger) -> list[bytes]:
    return [encode_state(ledger.accounts[a]) for a in sorted(ledger.accounts)]


def write_snapshot(settings: Settings, ledger: Ledger) -> Path:
    lines = _body_lines(ledger)
    body = b"\n".join(lines)
    header = {
        "format": SNAPSHOT_FORMAT, "topic": settings.events_topic,
        "offsets": {str(p): o for p, o in sorted(ledger.offsets.items())},
        "max_recorded_at_ms": ledger.max_recorded_at_ms,
        "in_flight": dict(sorted(ledger.in_flight.items())),
        "external": dict(sorted(ledger.external.items())),
        "accounts": len(lines), "sha256": hashlib.sha256(body).hexdigest(),
    }
    # Pair assertion: what we write must read back as what we hold.
    data = gzip.compress(json.dumps(header, sort_keys=True).encode() + b"\n" + body, mtime=0)
    path = settings.snapshot_dir / (
        f"snapshot-{ledger.max_recorded_at_ms:013d}-{header['sha256'][:8]}.json.gz")
    with atomic_file(path, "wb") as f:
        f.write(data)
        f.flush()
        assert read_snapshot(Path(f.name), settings.partitions).accounts == ledger.accounts
    return path


class SnapshotInvalid(ValueError):
    pass


def read_snapshot(path: Path, partitions: int) -> Ledger:
    try:
        header_line, _, body = gzip.decompress(path.read_bytes()).partition(b"\n")
        header = json.loads(header_line)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        # A damaged gzip body fails as zlib.error (not an OSError) when the
        # damage breaks the deflate stream before the CRC is checked.
        raise SnapshotInvalid(f"{path.name}: unreadable: {exc}") from None
    if header.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotInvalid(f"{path.name}: unknown format {header.get('format')}")
    if hashlib.sha256(body).hexdigest() != header["sha256"]:
        raise SnapshotInvalid(f"{path.name}: checksum mismatch")
    if len(header["offsets"]) != partitions:
        raise SnapshotInvalid(f"{path.name}: covers {len(header['offsets'])} partitions")
    states = [decode_state(line) for line in body.split(b"\n")] if body else []
    if len(states) != header["accounts"]:
        raise SnapshotInvalid(f"{path.name}: {len(states)} accounts, header says "
                              f"{header['accounts']}")
    return Ledger({s.account_id: s for s in states},
                  {int(p): o for p, o in header["offsets"].items()},
                  header["max_recorded_at_ms"], Counter(header["in_flight"]),
                  Counter(header["external"]))


def newest_snapshot(settings: Settings, at_or_before_ms: int | None) -> Ledger | None:
    """The newest valid snapshot whose events are all at or before the bound."""
    folder = settings.snapshot_dir
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("snapshot-*.json.gz"), reverse=True):
        newest_ms = int(path.name.split("-")[1])
        if at_or_before_ms is not None and newest_ms > at_or_before_ms:
            continue  # late for this T: an older one will do
        try:
            return read_snapshot(path, settings.partitions)
        except SnapshotInvalid as exc:
            log.warning("skipping snapshot: %s", exc)
            metrics.SNAPSHOT_FALLBACKS.inc()
    return None


# --------------------------------------------------------------------------
# Rebuild
# --------------------------------------------------------------------------


class Progress:
    """A progress line on a terminal (stderr); silent otherwise. ``others``
    counts what other processes read (shown in the total)."""

    def __init__(self, label: str, enabled: bool | None = None, others=None):
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.others = others or (lambda: 0)
        self.count = 0
        self.started = time.monotonic()
        self._shown = 0.0

    def tick(self, n: int = 1) -> None:
        self.count += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._shown > 0.2:
            self._shown = now
            total = self.count + self.others()
            rate = total / max(now - self.started, 1e-9)
            print(f"\r{self.label}: {total:,} records ({rate:,.0f}/s)", end="",
                  file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.enabled:
            print(f"\r{self.label}: {self.count + self.others():,} records in "
                  f"{time.monotonic() - self.started:.1f}s", file=sys.stderr)


def rebuild(settings: Settings, as_of_ms: int | None = None, use_snapshots: bool = True,
            until_offsets: dict[int, int] | None = None, progress: bool | None = None,
            final_wait_s: float | None = None) -> Ledger:
    """The whole ledger as of ``as_of_ms`` (None: now), from snapshot + log.

    ``until_offsets`` stops each partition at an offset (used by verify to
    compare with a store that has reached exactly that point).
    ``final_wait_s`` (with ``as_of_ms``): make it the final answer (module
    doc, Final): wait up to this long for every partition to be final as of
    ``as_of_ms``, else raise :class:`streams.eventlog.NotFinal`.

    With ``Settings.catch_up_parallel_records`` records or more to read on
    two partitions or more, groups of partitions are read by other
    processes at once (one per core, ``Settings.catch_up_processes``), as a
    worker's catch-up does: accounts live on one partition each, so each
    group's fold is independent and the results are merged.
    """
    base = newest_snapshot(settings, as_of_ms) if use_snapshots and until_offsets is None \
        else None
    ledger = base or Ledger.empty(settings.partitions)
    final = as_of_ms is not None and final_wait_s is not None and until_offsets is None
    wait_s = (final_wait_s or 0.0) if final else None
    groups, ends = _groups(settings, ledger.offsets, until_offsets)
    if len(groups) == 1:
        bar = Progress("replay", progress)
        _fold(settings, ledger, None, as_of_ms, until_offsets, wait_s, bar.tick, ends)
    else:
        bar = _fold_parallel(settings, ledger, groups, ends, as_of_ms, until_offsets, wait_s,
                             progress)
    bar.done()
    return ledger


@no_collections()
def _fold(settings: Settings, ledger: Ledger, partitions, as_of_ms: int | None,
          until_offsets: dict[int, int] | None, wait_s: float | None, tick,
          ends: dict[int, int] | None = None) -> None:
    """Fold the log of ``partitions`` (None: all) from ``ledger.offsets``
    into ``ledger``, to ``ends`` (None: the ends when it begins); ``wait_s``
    not None: final as of ``as_of_ms``."""
    for partition, offset, record in read_log(
            settings, start_offsets=ledger.offsets, stop_offsets=until_offsets, ticks=True,
            final_after_ms=as_of_ms if wait_s is not None else None, wait_s=wait_s or 0.0,
            partitions=partitions, ends=ends):
        tick()
        if isinstance(record, domain.PartitionTick):
            ledger.offsets[partition] = offset + 1
            ledger.saw(partition, record.recorded_at_ms)
            continue
        if as_of_ms is not None and record.recorded_at_ms > as_of_ms:
            ledger.saw(partition, record.recorded_at_ms)
            # Later than T. Per account recorded_at never decreases, so this
            # skips exactly the account's events after T.
            ledger.offsets[partition] = offset + 1
            continue
        ledger.apply(partition, offset, record)


def _groups(settings: Settings, starts: dict[int, int], until_offsets: dict[int, int] | None
            ) -> tuple[list[list[int]], dict[int, int] | None]:
    """Partitions in groups, one per process (streams/catchup.py split), and
    the ends they were split by, ``until_offsets`` applied (None: one
    process, not asked)."""
    from streams import catchup
    from streams.eventlog import CommittedLog

    processes = catchup.processes_for(settings)
    every = list(range(settings.partitions))
    if processes < 2:
        return [every], None
    reader = CommittedLog(settings, f"{settings.topic_prefix}-reader")
    try:
        ends = reader.end_offsets(every)
    finally:
        reader.close()
    if until_offsets is not None:
        ends = {p: min(end, until_offsets.get(p, 0)) for p, end in ends.items()}
    return catchup.split(starts, ends, processes, settings.catch_up_parallel_records), ends


_counts = None  # in a helper: the shared array of records read per group


def _helper_start(counts) -> None:
    global _counts
    _counts = counts


def _fold_group(settings: Settings, part: Ledger, partitions: list[int], ends: dict[int, int],
                as_of_ms: int | None, until_offsets: dict[int, int] | None,
                wait_s: float | None, slot: int) -> Ledger:
    """In a helper process: fold one group's partitions into ``part``."""
    read = 0

    def tick() -> None:
        nonlocal read
        read += 1
        if read % 1000 == 0:
            _counts[slot] = read

    _fold(settings, part, partitions, as_of_ms, until_offsets, wait_s, tick, ends)
    _counts[slot] = read
    return part


def _part_of(ledger: Ledger, partitions: list[int], count: int) -> Ledger:
    """The share of ``ledger`` a group of partitions starts from: its
    accounts, offsets and watermarks (money counters start at zero)."""
    from streams.partitioner import partition_for

    wanted = set(partitions)
    return Ledger({a: s for a, s in ledger.accounts.items()
                   if partition_for(a.encode(), count) in wanted},
                  {p: ledger.offsets.get(p, 0) for p in partitions}, 0, Counter(), Counter(),
                  {p: w for p, w in ledger.watermarks.items() if p in wanted})


def _merge(ledger: Ledger, part: Ledger) -> None:
    ledger.accounts.update(part.accounts)
    ledger.offsets.update(part.offsets)
    ledger.max_recorded_at_ms = max(ledger.max_recorded_at_ms, part.max_recorded_at_ms)
    ledger.in_flight.update(part.in_flight)  # Counter.update adds, negatives too
    ledger.external.update(part.external)
    ledger.watermarks.update(part.watermarks)


def _fold_parallel(settings: Settings, ledger: Ledger, groups: list[list[int]],
                   ends: dict[int, int], as_of_ms: int | None,
                   until_offsets: dict[int, int] | None, wait_s: float | None,
                   progress: bool | None) -> Progress:
    """Fold ``groups[0]`` here and every other group in a helper process
    (spawned: this process may hold Kafka clients' threads); merge."""
    import concurrent.futures
    import multiprocessing

    from streams.eventlog import NotFinal

    context = multiprocessing.get_context("spawn")
    counts = context.Array("q", len(groups), lock=False)
    bar = Progress("replay", progress, others=lambda: sum(counts))
    not_final: list[NotFinal] = []
    with concurrent.futures.ProcessPoolExecutor(
            len(groups) - 1, mp_context=context, initializer=_helper_start,
            initargs=(counts,)) as pool:
        futures = [pool.submit(_fold_group, settings, _part_of(ledger, group, settings.partitions),
                               group, ends, as_of_ms, until_offsets, wait_s, slot)
                   for slot, group in enumerate(groups[1:], 1)]
        try:
            _fold(settings, ledger, groups[0], as_of_ms, until_offsets, wait_s, bar.tick, ends)
        except NotFinal as exc:
            not_final.append(exc)
        pending = set(futures)
        while pending:
            done, pending = concurrent.futures.wait(pending, timeout=0.2)
            bar.tick(0)
        for future in futures:
            try:
                _merge(ledger, future.result())
            except NotFinal as exc:
                not_final.append(exc)
    if not_final:
        raise NotFinal(as_of_ms, {p: w for exc in not_final for p, w in exc.watermarks.items()})
    return bar


def account_line(state: domain.AccountState) -> str:
    return json.dumps(account_json(state), sort_keys=True, separators=(",", ":"))


def write_accounts(ledger: Ledger, out: Path) -> int:
    with atomic_file(out) as f:
        for account_id in sorted(ledger.accounts):
            f.write(account_line(ledger.accounts[account_id]) + "\n")
    return len(ledger.accounts)


# --------------------------------------------------------------------------
# Verify
# --------------------------------------------------------------------------

# What ``ledger verify`` can find. Each problem is one line of the report,
# starting with its kind; the report ends with a count per kind.
#
# Of each event, in log order (the checks verify always had):
SEQUENCE_GAP = "sequence_gap"                   # an account's sequence skips or repeats
BALANCE_CHAIN_BROKEN = "balance_chain_broken"   # balance_after != previous +/- amount
OVERDRAFT_EXCEEDED = "overdraft_exceeded"       # balance below -overdraft_limit
# Of each currency:
MONEY_NOT_CONSERVED = "money_not_conserved"     # balances + in flight != external in - out
NEGATIVE_IN_FLIGHT = "negative_in_flight"       # transfers gave out more than they took
# Of each transfer. A transfer is (source account, transfer id): transfer
# ids are chosen per source, so two sources may use the same one.
CREDIT_WITHOUT_DEBIT = "credit_without_debit"   # credited, no matching debit at the source
SETTLE_WITHOUT_DEBIT = "settle_without_debit"   # completed/refunded, no matching debit
SETTLE_WITHOUT_CREDIT = "settle_without_credit"  # completed, no matching credit
CREDITED_AND_REFUNDED = "credited_and_refunded"  # paid at the destination and back
TRANSFER_DEBITED_TWICE = "transfer_debited_twice"
TRANSFER_CREDITED_TWICE = "transfer_credited_twice"
TRANSFER_SETTLED_TWICE = "transfer_settled_twice"  # completed or refunded more than once
TRANSFER_PENDING_TOO_LONG = "transfer_pending_too_long"
# Of each hold, (account, hold id):
HELD_NEGATIVE = "held_negative"                 # an account's held sum below zero
AVAILABLE_NEGATIVE = "available_negative"       # balance + overdraft - held below zero
HOLD_ENDED_TWICE = "hold_ended_twice"           # more than one capture/release/expiry
HOLD_END_WITHOUT_PLACE = "hold_end_without_place"  # ended, never placed
HOLD_CAPTURED_AFTER_EXPIRY = "hold_captured_after_expiry"
HOLD_EXPIRED_EARLY = "hold_expired_early"       # HoldExpired before its expires_at
HOLD_NOT_EXPIRED = "hold_not_expired"           # still active long after its expiry
# Of a worker's RocksDB store, against the log up to the offset the store
# recorded (``--data-dir``):
STORE_AHEAD = "store_ahead_of_recorded_offset"  # the store has the log's next events
STORE_BEHIND = "store_behind_recorded_offset"   # the store lacks events it claims
STORE_MISMATCH = "store_mismatch"               # anything else

PENDING_MAX_S_DEFAULT = 300.0
REPORT_LINES_MAX = 200

_TRANSFER_EVENTS = (domain.TransferDebited, domain.TransferCredited,
                    domain.TransferCompleted, domain.TransferRefunded)


@dataclass(frozen=True)
class Problem:
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class _Seen:
    """One transfer event and where it is in the log."""

    partition: int
    offset: int
    event: object  # one of _TRANSFER_EVENTS

    def __str__(self) -> str:
        e = self.event
        return f"{e.type} {e.account_id}@{e.sequence} (p{self.partition}@{self.offset})"


def _money(event) -> str:
    return f"{event.currency} {event.amount_minor}"


def _same_money(a, b) -> bool:
    return a.amount_minor == b.amount_minor and a.currency == b.currency


class _Transfer:
    """Every event of one transfer, wherever in the log: partitions are read
    in no particular order relative to each other, so legs are matched once
    the whole log has been read."""

    __slots__ = ("debits", "credits", "settles")

    def __init__(self):
        self.debits: list[_Seen] = []
        self.credits: list[_Seen] = []
        self.settles: list[_Seen] = []

    def destination(self) -> str:
        for seen in self.debits + self.settles:
            return seen.event.counterparty_account_id
        return self.credits[0].event.account_id


def _transfer_key(event) -> tuple[str, str]:
    """(source account, transfer id): a credit names its source as counterparty."""
    if isinstance(event, domain.TransferCredited):
        return event.counterparty_account_id, event.transfer_id
    return event.account_id, event.transfer_id


def _listed(seen: list[_Seen]) -> str:
    return ", ".join(str(s) for s in seen)


def _transfer_problems(transfers: dict, newest_ms: int, pending_max_ms: int) -> list[Problem]:
    problems: list[Problem] = []
    for (source, transfer_id), t in sorted(transfers.items()):
        name = f"transfer {transfer_id!r} from {source} to {t.destination()}"
        if len(t.debits) > 1:
            problems.append(Problem(TRANSFER_DEBITED_TWICE,
                                    f"{name}: debited {len(t.debits)} times: {_listed(t.debits)}"))
        for c in t.credits:
            # The debit's counterparty is the account this credit landed on.
            if not any(d.event.counterparty_account_id == c.event.account_id
                       and _same_money(d.event, c.event) for d in t.debits):
                why = (f"no transfer_debited at {source} with this transfer id" if not t.debits
                       else "no debit matches it: " + "; ".join(
                           f"{d} is {_money(d.event)} to {d.event.counterparty_account_id}"
                           for d in t.debits))
                problems.append(Problem(CREDIT_WITHOUT_DEBIT,
                                        f"{name}: {c} credits {_money(c.event)}, but {why}"))
        if len(t.credits) > 1:
            problems.append(Problem(TRANSFER_CREDITED_TWICE,
                                    f"{name}: credited {len(t.credits)} times: "
                                    f"{_listed(t.credits)}"))
        for s in t.settles:
            e = s.event
            if not any(d.event.counterparty_account_id == e.counterparty_account_id
                       and _same_money(d.event, e) for d in t.debits):
                why = (f"no transfer_debited at {source} with this transfer id" if not t.debits
                       else "no debit matches it: " + "; ".join(
                           f"{d} is {_money(d.event)} to {d.event.counterparty_account_id}"
                           for d in t.debits))
                problems.append(Problem(SETTLE_WITHOUT_DEBIT,
                                        f"{name}: {s} settles {_money(e)}, but {why}"))
            if isinstance(e, domain.TransferCompleted):
                if not any(c.event.account_id == e.counterparty_account_id
                           and _same_money(c.event, e) for c in t.credits):
                    why = (f"no transfer_credited at {e.counterparty_account_id}"
                           if not t.credits else "no credit matches it: " + "; ".join(
                               f"{c} is {_money(c.event)}" for c in t.credits))
                    problems.append(Problem(SETTLE_WITHOUT_CREDIT,
                                            f"{name}: {s} completes {_money(e)}, but {why}"))
            elif t.credits:
                problems.append(Problem(
                    CREDITED_AND_REFUNDED,
                    f"{name}: {s} refunds {_money(e)} to {source}, but "
                    f"{_listed(t.credits)} paid it to the destination: paid twice"))
        if len(t.settles) > 1:
            problems.append(Problem(TRANSFER_SETTLED_TWICE,
                                    f"{name}: settled {len(t.settles)} times: "
                                    f"{_listed(t.settles)}"))
        if t.debits and not t.settles:
            d = t.debits[0]
            age_ms = newest_ms - d.event.recorded_at_ms
            if age_ms > pending_max_ms:
                credited = _listed(t.credits) if t.credits else "not credited"
                problems.append(Problem(
                    TRANSFER_PENDING_TOO_LONG,
                    f"{name}: {d} of {_money(d.event)} at {_iso(d.event.recorded_at_ms)} "
                    f"is neither completed nor refunded {age_ms / 1000:.1f} s later "
                    f"(newest event {_iso(newest_ms)}, limit {pending_max_ms / 1000:g} s); "
                    f"{credited}"))
    return problems


def _hold_problems(holds: dict, newest_ms: int, pending_max_ms: int) -> list[Problem]:
    """Every hold ends at most once, in one terminal state, never by a capture
    after its expiry; none stays active long past its expiry."""
    problems: list[Problem] = []
    for (account_id, hold_id), seen in sorted(holds.items()):
        name = f"hold {hold_id!r} of {account_id}"
        placed = [s for s in seen if isinstance(s.event, domain.HoldPlaced)]
        ends = [s for s in seen if not isinstance(s.event, domain.HoldPlaced)]
        if not placed:
            problems.append(Problem(HOLD_END_WITHOUT_PLACE, f"{name}: {_listed(ends)}"))
            continue
        expires_at = placed[0].event.expires_at_ms
        if len(ends) > 1:
            problems.append(Problem(HOLD_ENDED_TWICE, f"{name}: {_listed(ends)}"))
        for end in ends:
            e = end.event
            if isinstance(e, domain.HoldCaptured) and e.recorded_at_ms >= expires_at:
                problems.append(Problem(HOLD_CAPTURED_AFTER_EXPIRY,
                                        f"{name}: {end} at {_iso(e.recorded_at_ms)}, it "
                                        f"expired at {_iso(expires_at)}"))
            if isinstance(e, domain.HoldExpired) and e.recorded_at_ms < expires_at:
                problems.append(Problem(HOLD_EXPIRED_EARLY,
                                        f"{name}: {end} at {_iso(e.recorded_at_ms)}, before "
                                        f"{_iso(expires_at)}"))
        if not ends and newest_ms - expires_at > pending_max_ms:
            problems.append(Problem(HOLD_NOT_EXPIRED,
                                    f"{name}: expired at {_iso(expires_at)}, still active at "
                                    f"the log's newest event {_iso(newest_ms)}"))
    return problems


def _in_flight_problems(flow: dict, lowering: dict) -> list[Problem]:
    """Money in flight per currency as of every instant of the log.

    Partitions have no order relative to each other, so "a point of the log"
    is an instant: as of T, in flight is what transfers debited at or before
    T minus what they credited or refunded at or before T, which is what
    ``ledger replay --as-of T`` holds. Deterministic, whatever order the
    partitions were read in.
    """
    problems: list[Problem] = []
    for currency in sorted(flow):
        running, first, lowest = 0, None, None
        for ms in sorted(flow[currency]):
            running += flow[currency][ms]
            if running < 0:
                if first is None:
                    first = (ms, running)
                if lowest is None or running < lowest[1]:
                    lowest = (ms, running)
        if first is None:
            continue
        ms, amount = first
        by = ", ".join(f"{s} of transfer {s.event.transfer_id!r}"
                       for s in lowering[currency].get(ms, []))
        problems.append(Problem(
            NEGATIVE_IN_FLIGHT,
            f"{currency}: in flight {amount} as of {_iso(ms)} (first instant below zero), "
            f"after {by}; lowest {lowest[1]} as of {_iso(lowest[0])}; at the end of the "
            f"log {running}"))
    return problems


def check_invariants(settings: Settings,
                     pending_max_s: float = PENDING_MAX_S_DEFAULT) -> list[Problem]:
    """Replay the log from scratch, checking every rule on the way."""
    problems: list[Problem] = []
    ledger = Ledger.empty(settings.partitions)
    limits: dict[str, int] = {}
    transfers: dict[tuple[str, str], _Transfer] = {}
    holds: dict[tuple[str, str], list[_Seen]] = {}
    # currency -> recorded_at_ms -> change of money in flight at that instant;
    # and the events that lowered it then (a few, to name in the report).
    flow: dict[str, Counter] = {}
    lowering: dict[str, dict[int, list[_Seen]]] = {}
    for partition, offset, record in read_log(settings):
        if isinstance(record, domain.CommandRejected):
            continue
        where = f"{record.account_id}@{record.sequence} (p{partition}@{offset})"
        state = ledger.accounts.get(record.account_id)
        expected = 1 if state is None else state.version + 1
        if record.sequence != expected:
            problems.append(Problem(SEQUENCE_GAP,
                                    f"{where}: {record.type} has sequence {record.sequence}, "
                                    f"expected {expected}"))
            continue
        previous = 0 if state is None else state.balance_minor
        delta = {domain.Credited: 1, domain.Debited: -1, domain.TransferDebited: -1,
                 domain.TransferCredited: 1, domain.TransferRefunded: 1}.get(type(record), 0)
        if isinstance(record, domain.HoldCaptured) and not record.to_account_id:
            delta = -1  # left the ledger here; with a destination the debit follows
        if record.balance_after_minor != previous + delta * record.amount_minor:
            problems.append(Problem(BALANCE_CHAIN_BROKEN,
                                    f"{where}: {record.type} balance_after "
                                    f"{record.balance_after_minor} != {previous} + "
                                    f"{delta * record.amount_minor}"))
        if isinstance(record, domain.AccountOpened):
            limits[record.account_id] = record.overdraft_limit_minor
        if record.balance_after_minor < -limits.get(record.account_id, 0):
            problems.append(Problem(OVERDRAFT_EXCEEDED,
                                    f"{where}: balance {record.balance_after_minor} below "
                                    f"-overdraft_limit {limits.get(record.account_id, 0)}"))
        if isinstance(record, _TRANSFER_EVENTS):
            seen = _Seen(partition, offset, record)
            t = transfers.get(_transfer_key(record))
            if t is None:
                t = transfers[_transfer_key(record)] = _Transfer()
            change = 0
            if isinstance(record, domain.TransferDebited):
                t.debits.append(seen)
                change = record.amount_minor
            elif isinstance(record, domain.TransferCredited):
                t.credits.append(seen)
                change = -record.amount_minor
            else:
                t.settles.append(seen)
                if isinstance(record, domain.TransferRefunded):
                    change = -record.amount_minor
            if change:
                flow.setdefault(record.currency, Counter())[record.recorded_at_ms] += change
            if change < 0:
                named = lowering.setdefault(record.currency, {}).setdefault(
                    record.recorded_at_ms, [])
                if len(named) < 3:
                    named.append(seen)
        if isinstance(record, domain.HoldEvent):
            holds.setdefault((record.account_id, record.hold_id), []).append(
                _Seen(partition, offset, record))
        ledger.apply(partition, offset, record)
        after = ledger.accounts[record.account_id]
        if after.held_minor < 0:
            problems.append(Problem(HELD_NEGATIVE, f"{where}: {record.type} leaves held "
                                                   f"{after.held_minor}"))
        if after.available_minor < 0:
            problems.append(Problem(AVAILABLE_NEGATIVE,
                                    f"{where}: {record.type} leaves available "
                                    f"{after.available_minor} (balance {after.balance_minor} + "
                                    f"overdraft {after.overdraft_limit_minor} - held "
                                    f"{after.held_minor})"))
    problems += _transfer_problems(transfers, ledger.max_recorded_at_ms,
                                   int(pending_max_s * 1000))
    problems += _hold_problems(holds, ledger.max_recorded_at_ms, int(pending_max_s * 1000))
    problems += _in_flight_problems(flow, lowering)
    totals = Counter()
    for state in ledger.accounts.values():
        totals[state.currency] += state.balance_minor
    for currency in sorted(set(totals) | set(ledger.external) | set(ledger.in_flight)):
        left = totals[currency] + ledger.in_flight[currency]
        if left != ledger.external[currency]:
            problems.append(Problem(MONEY_NOT_CONSERVED,
                                    f"{currency}: balances {totals[currency]} + in flight "
                                    f"{ledger.in_flight[currency]} != external credits - "
                                    f"debits {ledger.external[currency]}"))
    return problems


def compare_stores(settings: Settings, data_dir: Path) -> tuple[list[Problem], int]:
    """Compare every local partition store with the log up to that store's offset.

    Each store is opened read-only: no lock (a worker may be running), and a
    point-in-time view of RocksDB, so the events offset it recorded and the
    account states are read from the same instant. A store's offset and its
    data are written in one WriteBatch, so in that view they agree, unless the
    worker wrote data without moving the offset: that is reported as
    ``store_ahead_of_recorded_offset``, apart from other differences. The
    stores are opened before the log is read, so the log reaches them.
    """
    from streams.store import PartitionStore, store_path

    problems: list[Problem] = []
    checked = 0
    stores: dict[int, PartitionStore] = {}
    try:
        for p in range(settings.partitions):
            if store_path(settings, p, data_dir).is_dir():
                stores[p] = PartitionStore(store_path(settings, p, data_dir), read_only=True)
        if not stores:
            return [], 0
        recorded = {p: store.events_offset for p, store in stores.items()}
        live = {p: {k[1:].decode(): decode_state(v) for k, v in store.items(b"a")}
                for p, store in stores.items()}
        ledger = rebuild(settings, until_offsets={p: recorded.get(p, 0)
                                                  for p in range(settings.partitions)},
                         progress=False)
        expected: dict[int, dict[str, domain.AccountState]] = {}
        for account_id, state in ledger.accounts.items():
            expected.setdefault(_partition_of(account_id, settings), {})[account_id] = state
        differing = []
        for p, accounts in sorted(live.items()):
            logged = expected.get(p, {})
            for account_id in sorted(set(accounts) | set(logged)):
                checked += 1
                if accounts.get(account_id) != logged.get(account_id):
                    differing.append((p, account_id))
        if differing:
            problems = _store_differences(settings, stores, recorded, live, expected,
                                          differing)
    finally:
        for store in stores.values():
            store.close()
    return problems, checked


def _state_diff(store_state, log_state) -> str:
    if store_state is None:
        return "the store has no such account"
    if log_state is None:
        return "the log has no such account up to the recorded offset"
    fields = [f for f in store_state.__dataclass_fields__
              if getattr(store_state, f) != getattr(log_state, f)]
    return "differing: " + ", ".join(
        f"{f} store {getattr(store_state, f)!r} log {getattr(log_state, f)!r}" for f in fields)


def _store_differences(settings, stores, recorded, live, expected, differing) -> list[Problem]:
    """Why each differing account differs: the store's own history against
    every logged event of the account (also those past the recorded offset)."""
    from schemas import codec

    wanted = {account_id for _p, account_id in differing}
    parts = {p for p, _a in differing}
    logged: dict[str, list] = {a: [] for a in wanted}  # account -> [(p, offset, event)]
    for partition, offset, record in read_log(
            settings, stop_offsets={p: 2**63 - 1 if p in parts else 0
                                    for p in range(settings.partitions)}):
        if isinstance(record, domain.CommandRejected) or record.account_id not in logged:
            continue
        events = logged[record.account_id]
        if record.sequence == len(events) + 1:  # gaps and repeats: the log checks report them
            events.append((partition, offset, record))
    problems: list[Problem] = []
    for p, account_id in differing:
        store_state = live[p].get(account_id)
        log_state = expected.get(p, {}).get(account_id)
        sv = 0 if store_state is None else store_state.version
        lv = 0 if log_state is None else log_state.version
        head = (f"p{p} {account_id}: store version {sv}, log version {lv} up to the "
                f"store's recorded offset p{p}@{recorded[p]}")
        history = [codec.decode_outcome(raw)[0] for raw in stores[p].history(account_id)]
        log_events = [event for _p, _o, event in logged[account_id]]

        def at(i: int) -> str:
            part, offset, _event = logged[account_id][i]
            return f"p{part}@{offset}"

        try:
            consistent = domain.fold(history[:sv]) == store_state
        except domain.EventOutOfOrder:
            consistent = False
        if not consistent:
            problems.append(Problem(STORE_MISMATCH, f"{head}: the store's state is not the "
                                    f"fold of its own history; {_state_diff(store_state, log_state)}"))
        elif sv > lv and history[:lv] == log_events[:lv]:
            if history[lv:sv] == log_events[lv:sv]:
                problems.append(Problem(
                    STORE_AHEAD,
                    f"{head}: the store also holds events {lv + 1}..{sv}, which the log "
                    f"has at {at(lv)}..{at(sv - 1)}, past that offset: the store's data is "
                    f"ahead of the offset it recorded"))
            else:
                problems.append(Problem(
                    STORE_MISMATCH,
                    f"{head}: the store's events {lv + 1}..{sv} are not the log's "
                    f"(the log has {len(log_events)} events of the account in all)"))
        elif sv < lv and history[:sv] == log_events[:sv]:
            problems.append(Problem(
                STORE_BEHIND,
                f"{head}: the store lacks events {sv + 1}..{lv} (at {at(sv)}..{at(lv - 1)}), "
                f"which its recorded offset says it holds"))
        else:
            problems.append(Problem(STORE_MISMATCH,
                                    f"{head}: {_state_diff(store_state, log_state)}"))
    return problems


def _partition_of(account_id: str, settings: Settings) -> int:
    from streams.partitioner import partition_for

    return partition_for(account_id.encode(), settings.partitions)


def verify(settings: Settings, data_dir: Path | None,
           pending_max_s: float = PENDING_MAX_S_DEFAULT) -> int:
    """Print the report; 0 if nothing was found, 1 otherwise."""
    problems = check_invariants(settings, pending_max_s)
    checked = 0
    if data_dir is not None:
        store_problems, checked = compare_stores(settings, data_dir)
        problems += store_problems
    if problems:
        print(f"verify: FAILED, {len(problems)} problem(s):")
        for problem in problems[:REPORT_LINES_MAX]:
            print(f"  - {problem}")
        if len(problems) > REPORT_LINES_MAX:
            print(f"  ... and {len(problems) - REPORT_LINES_MAX} more")
        print("problems by kind:")
        for kind, count in sorted(Counter(p.kind for p in problems).items()):
            print(f"  {kind}: {count}")
        return 1
    held = (f"sequences gap-free, balances follow amounts, overdraft limits held, money "
            f"conserved per currency, every transfer leg matches its transfer, in flight "
            f"never below zero, no transfer pending over {pending_max_s:g} s")
    print(f"verify: OK ({held}; {checked} account states in {data_dir} match the log)"
          if data_dir else f"verify: OK ({held})")
    return 0


def take_snapshot(settings: Settings) -> Path:
    ledger = rebuild(settings)
    return write_snapshot(settings, ledger)

