"""Rebuild, verify and snapshot the whole ledger from the committed event log.

    ledger replay --as-of T --out FILE [--from-scratch]
    ledger verify [--data-dir DIR]
    ledger snapshot

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
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ledger import domain
from streams import metrics
from streams.config import Settings
from streams.eventlog import read_log
from streams.shapes import account_json
from streams.store import decode_state, encode_state

log = logging.getLogger("ledger.replay")
SNAPSHOT_FORMAT = 1


@dataclass
class Ledger:
    """Every account's state, the log position reached, and the newest event time."""

    accounts: dict[str, domain.AccountState]
    offsets: dict[int, int]  # partition -> next offset to read
    max_recorded_at_ms: int
    in_flight: Counter  # currency -> money debited by transfers, not yet credited/refunded
    external: Counter  # currency -> external credits - external debits

    @classmethod
    def empty(cls, partitions: int) -> "Ledger":
        return cls({}, {p: 0 for p in range(partitions)}, 0, Counter(), Counter())

    def apply(self, partition: int, offset: int, record) -> None:
        self.offsets[partition] = offset + 1
        if isinstance(record, domain.CommandRejected):
            return
        state = self.accounts.get(record.account_id)
        if state is not None and record.sequence <= state.version:
            return  # replayed twice: idempotent by sequence
        self.accounts[record.account_id] = domain.evolve(state, record)
        self.max_recorded_at_ms = max(self.max_recorded_at_ms, record.recorded_at_ms)
        if isinstance(record, domain.Credited):
            self.external[record.currency] += record.amount_minor
        elif isinstance(record, domain.Debited):
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
    folder = settings.snapshot_dir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"snapshot-{ledger.max_recorded_at_ms:013d}-{header['sha256'][:8]}.json.gz"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    assert read_snapshot(tmp, settings.partitions).accounts == ledger.accounts
    os.replace(tmp, path)
    return path


class SnapshotInvalid(ValueError):
    pass


def read_snapshot(path: Path, partitions: int) -> Ledger:
    try:
        header_line, _, body = gzip.decompress(path.read_bytes()).partition(b"\n")
        header = json.loads(header_line)
    except (OSError, EOFError, ValueError) as exc:
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
    """A progress line on a terminal (stderr); silent otherwise."""

    def __init__(self, label: str, enabled: bool | None = None):
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.count = 0
        self.started = time.monotonic()
        self._shown = 0.0

    def tick(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if self.enabled and now - self._shown > 0.2:
            self._shown = now
            rate = self.count / max(now - self.started, 1e-9)
            print(f"\r{self.label}: {self.count:,} records ({rate:,.0f}/s)", end="",
                  file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.enabled:
            print(f"\r{self.label}: {self.count:,} records in "
                  f"{time.monotonic() - self.started:.1f}s", file=sys.stderr)


def rebuild(settings: Settings, as_of_ms: int | None = None, use_snapshots: bool = True,
            until_offsets: dict[int, int] | None = None, progress: bool | None = None) -> Ledger:
    """The whole ledger as of ``as_of_ms`` (None: now), from snapshot + log.

    ``until_offsets`` stops each partition at an offset (used by verify to
    compare with a store that has reached exactly that point).
    """
    base = newest_snapshot(settings, as_of_ms) if use_snapshots and until_offsets is None \
        else None
    ledger = base or Ledger.empty(settings.partitions)
    bar = Progress("replay", progress)
    for partition, offset, record in read_log(settings, start_offsets=ledger.offsets,
                                               stop_offsets=until_offsets):
        bar.tick()
        if as_of_ms is not None and record.recorded_at_ms > as_of_ms:
            # Later than T. Per account recorded_at never decreases, so this
            # skips exactly the account's events after T.
            ledger.offsets[partition] = offset + 1
            continue
        ledger.apply(partition, offset, record)
    bar.done()
    return ledger


def account_line(state: domain.AccountState) -> str:
    return json.dumps(account_json(state), sort_keys=True, separators=(",", ":"))


def write_accounts(ledger: Ledger, out: Path) -> int:
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w") as f:
        for account_id in sorted(ledger.accounts):
            f.write(account_line(ledger.accounts[account_id]) + "\n")
    os.replace(tmp, out)
    return len(ledger.accounts)


# --------------------------------------------------------------------------
# Verify
# --------------------------------------------------------------------------


def check_invariants(settings: Settings) -> list[str]:
    """Replay the log from scratch, checking every rule on the way."""
    problems: list[str] = []
    ledger = Ledger.empty(settings.partitions)
    limits: dict[str, int] = {}
    for partition, offset, record in read_log(settings):
        if isinstance(record, domain.CommandRejected):
            continue
        where = f"{record.account_id}@{record.sequence} (p{partition}@{offset})"
        state = ledger.accounts.get(record.account_id)
        expected = 1 if state is None else state.version + 1
        if record.sequence != expected:
            problems.append(f"{where}: sequence gap or repeat, expected {expected}")
            continue
        previous = 0 if state is None else state.balance_minor
        delta = {domain.Credited: 1, domain.Debited: -1, domain.TransferDebited: -1,
                 domain.TransferCredited: 1, domain.TransferRefunded: 1}.get(type(record), 0)
        if record.balance_after_minor != previous + delta * record.amount_minor:
            problems.append(f"{where}: balance_after {record.balance_after_minor} != "
                            f"{previous} + {delta * record.amount_minor}")
        if isinstance(record, domain.AccountOpened):
            limits[record.account_id] = record.overdraft_limit_minor
        if record.balance_after_minor < -limits.get(record.account_id, 0):
            problems.append(f"{where}: balance {record.balance_after_minor} below "
                            f"-overdraft_limit {limits.get(record.account_id, 0)}")
        ledger.apply(partition, offset, record)
    totals = Counter()
    for state in ledger.accounts.values():
        totals[state.currency] += state.balance_minor
    for currency in sorted(set(totals) | set(ledger.external) | set(ledger.in_flight)):
        left = totals[currency] + ledger.in_flight[currency]
        if left != ledger.external[currency]:
            problems.append(f"{currency}: balances {totals[currency]} + in flight "
                            f"{ledger.in_flight[currency]} != external credits - debits "
                            f"{ledger.external[currency]}")
    return problems


def compare_stores(settings: Settings, data_dir: Path) -> tuple[list[str], int]:
    """Compare every local partition store with the log up to that store's offset."""
    from streams.store import PartitionStore

    problems: list[str] = []
    checked = 0
    root = data_dir / settings.events_topic
    stores = {}
    for p in range(settings.partitions):
        if (root / f"p{p}").is_dir():
            stores[p] = PartitionStore(root / f"p{p}", read_only=True)
    try:
        if not stores:
            return [], 0
        # Read the stores first: the log is then at or past them.
        live = {p: {k[1:].decode(): decode_state(v) for k, v in store.items(b"a")}
                for p, store in stores.items()}
        offsets = {p: store.events_offset for p, store in stores.items()}
        ledger = rebuild(settings, until_offsets={p: offsets.get(p, 0)
                                                  for p in range(settings.partitions)},
                         progress=False)
        for p, accounts in live.items():
            expected = {a: s for a, s in ledger.accounts.items()
                        if _partition_of(a, settings) == p}
            for account_id in sorted(set(accounts) | set(expected)):
                checked += 1
                if accounts.get(account_id) != expected.get(account_id):
                    problems.append(
                        f"p{p} {account_id}: store has {accounts.get(account_id)}, "
                        f"log gives {expected.get(account_id)}")
    finally:
        for store in stores.values():
            store.close()
    return problems, checked


def _partition_of(account_id: str, settings: Settings) -> int:
    from streams.partitioner import partition_for

    return partition_for(account_id.encode(), settings.partitions)


def verify(settings: Settings, data_dir: Path | None) -> int:
    problems = check_invariants(settings)
    checked = 0
    if data_dir is not None:
        store_problems, checked = compare_stores(settings, data_dir)
        problems += store_problems
    if problems:
        print(f"verify: FAILED, {len(problems)} problem(s):")
        for line in problems[:200]:
            print(f"  - {line}")
        if len(problems) > 200:
            print(f"  ... and {len(problems) - 200} more")
        return 1
    print(f"verify: OK (sequences gap-free, balances follow amounts, overdraft limits "
          f"held, money conserved per currency; {checked} account states in "
          f"{data_dir} match the log)" if data_dir else "verify: OK")
    return 0


def take_snapshot(settings: Settings) -> Path:
    ledger = rebuild(settings)
    return write_snapshot(settings, ledger)

