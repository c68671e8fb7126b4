"""RocksDB (rocksdict) state of one partition: a cache of the committed log.

One RocksDB directory per partition of the ledger topics, under the worker's
data dir: ``<data_dir>/<events topic>/p<N>``. It holds

    b"a" account_id                      -> account state (JSON)
    b"c" account_id 0x00 command_id      -> outcome of that command
                                            (Outcome.encode: binary when applied,
                                            else JSON): the idempotency index,
                                            kept forever; command ids are scoped
                                            per account
    b"e" account_id 0x00 sequence(u64be) -> the event's log bytes (Avro):
                                            per-account history, byte order is
                                            sequence order
    b"s" account_id 0x00 sequence(u64be) -> snapshot of the state right after
                                            that event (checksummed), every
                                            snapshot_every events
    b"t" from_account_id 0x00 transfer_id -> transfer status (JSON), on the
                                            source account's partition
    b"h" account_id 0x00 hold_id         -> the hold (JSON): status, amounts,
                                            expiry, its event sequences
    b"x" expires_at_ms(u64be) account_id 0x00 hold_id -> b"": the expiry index
                                            of active holds (removed when a
                                            hold ends): due holds are one seek
    b"m" b"events_offset"                -> u64be: next event-log offset to
                                            read when catching up
    b"m" b"format"                       -> u32be: STORE_FORMAT of the layout
    b"m" b"watermark"                    -> u64be: the partition's watermark, the
                                            newest recorded_at_ms of any record
                                            (event, rejection, tick) applied
                                            here; written with the data it
                                            covers, in the same WriteBatch

Nothing outside this module knows a key or a stored field: readers use the
typed read API (:meth:`PartitionStore.outcome`, :meth:`~PartitionStore.transfer`,
:meth:`~PartitionStore.events`, :meth:`~PartitionStore.state_at`). A store of
another format (or none) is wiped at open and rebuilt from the log, with a
log line saying so: it is a cache of the log, never misread.

Rule: nothing is written here before the Kafka transaction that holds the
same change has committed. A batch stages its changes in a :class:`Batch`
(an in-memory overlay that reads fall through to RocksDB); only after
``commit_transaction`` returns does :meth:`PartitionStore.apply` write them,
with the new ``events_offset``, in one atomic ``WriteBatch``. A crash before
that loses only the overlay; catch-up from ``events_offset`` (idempotent by
sequence and command_id) brings the store back to the log.

**Completeness.** Every record of a partition is stamped later than every
record committed on that partition before it (``domain.stamp_after``,
``streams/processor.py``), and the store applies whole committed batches in
log order. So once the store holds a record stamped W, it holds every record
of the partition stamped at or before W, and no record it does not hold will
ever be stamped at or before W: any question "as of T" with T <= W
(:attr:`PartitionStore.watermark`) has its final answer here.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from pathlib import Path

from rocksdict import (AccessType, BlockBasedOptions, Checkpoint, DBCompressionType, Options, Rdict,
                       WriteBatch)

from ledger import domain
from ledger.frozen import frozen
from schemas import codec
from streams import metrics
from streams.config import Settings

# The layout above. Bump it with any change of keys or values: a store of
# another format is rebuilt from the log at open.
# 3: the watermark; 4: holds (held in the state, b"h", b"x"); 5: no time index
# (b"r"): "last event at or before T" is a binary search of the history;
# 6: an applied command's outcome is binary (Outcome.encode).
STORE_FORMAT = 6
_FORMAT_KEY = b"mformat"
_EVENTS_OFFSET_KEY = b"mevents_offset"
_WATERMARK_KEY = b"mwatermark"
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
# An account state is snapshotted after every ``snapshot_every`` of its
# events (Settings.snapshot_every, LEDGER_SNAPSHOT_EVERY, passed in by whoever
# opens the store), so an as-of query folds at most snapshot_every - 1 events
# after one seek. Stores rebuilt with another value differ only in which
# snapshots they hold, never in an answer.
log = logging.getLogger("ledger.store")


class SnapshotCorrupt(ValueError):
    """A snapshot's checksum does not match its bytes."""


def encode_snapshot(state: domain.AccountState) -> bytes:
    """State bytes behind a CRC32 of them: checked on every read."""
    body = encode_state(state)
    return _U32.pack(zlib.crc32(body)) + body


def decode_snapshot(raw: bytes) -> domain.AccountState:
    body = raw[4:]
    if len(raw) < 4 or _U32.unpack(raw[:4])[0] != zlib.crc32(body):
        raise SnapshotCorrupt("snapshot checksum mismatch")
    return decode_state(body)


def store_path(settings: Settings, partition: int, data_dir: Path | None = None) -> Path:
    """Where a worker keeps the store of one partition:
    ``<data_dir>/<events topic>/p<N>`` (data_dir: the settings' by default)."""
    return Path(data_dir or settings.data_dir) / settings.events_topic / f"p{partition}"


def open_store(settings: Settings, partition: int) -> "PartitionStore":
    """A worker's store of one partition, opened for writing."""
    return PartitionStore(store_path(settings, partition),
                          snapshot_every=settings.snapshot_every)


def _account_prefix(tag: bytes, account_id: str) -> bytes:
    """The first bytes of every key of ``tag`` for the account (a prefix scan's)."""
    return tag + account_id.encode() + b"\x00"


# The keys below spell _account_prefix out: history and command-index keys are
# built once or twice per event on every path (one join and one encode, or a
# pad byte in the struct, cost half of the call and three concatenations).
# str.join, not an f-string: it takes a str subclass's own value (an f-string
# would call its __format__) and refuses anything that is not a str.
_SEP_U64 = struct.Struct(">xQ")  # b"\x00" and a u64be


def snapshot_key(account_id: str, sequence: int) -> bytes:
    return b"s" + account_id.encode() + _SEP_U64.pack(sequence)


def account_key(account_id: str) -> bytes:
    return b"a" + account_id.encode()


def command_key(account_id: str, command_id: str) -> bytes:
    return "".join(("c", account_id, "\x00", command_id)).encode()


def transfer_key(from_account_id: str, transfer_id: str) -> bytes:
    return "".join(("t", from_account_id, "\x00", transfer_id)).encode()


def hold_key(account_id: str, hold_id: str) -> bytes:
    return "".join(("h", account_id, "\x00", hold_id)).encode()


def expiry_key(expires_at_ms: int, account_id: str, hold_id: str) -> bytes:
    return b"x" + _U64.pack(expires_at_ms) + "".join((account_id, "\x00", hold_id)).encode()


def history_key(account_id: str, sequence: int) -> bytes:
    return b"e" + account_id.encode() + _SEP_U64.pack(sequence)


def _plain(text: str) -> bool:
    """Whether json.dumps writes ``text`` as itself between quotes."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


def _json_item(value) -> str | None:
    """What json.dumps writes for None, an int or a plain string; None for
    anything else (the caller then uses json.dumps)."""
    if value is None:
        return "null"
    if type(value) is int:
        return str(value)
    if type(value) is str and _plain(value):
        return f'"{value}"'
    return None


def encode_state(state: domain.AccountState) -> bytes:
    if _plain(state.account_id) and _plain(state.currency):
        # The same bytes as json.dumps below, without its machinery: this runs
        # once per account per batch, on the hot path and in every catch-up.
        return (f'["{state.account_id}","{state.currency}",{state.balance_minor},'
                f'{state.overdraft_limit_minor},{state.version},"{state.status.value}",'
                f'{state.opened_at_ms},{state.updated_at_ms},{state.credits_minor},'
                f'{state.debits_minor},{state.pending_out_minor},{state.held_minor}]').encode()
    return json.dumps(
        [state.account_id, state.currency, state.balance_minor,
         state.overdraft_limit_minor, state.version, state.status.value,
         state.opened_at_ms, state.updated_at_ms, state.credits_minor,
         state.debits_minor, state.pending_out_minor, state.held_minor],
        separators=(",", ":"),
    ).encode()


def decode_state(raw: bytes) -> domain.AccountState:
    f = json.loads(raw)
    # Every field positional, in the order domain._STATE_FIELDS pins: the C
    # __init__ (ledger/_frozen.c), which leaves the state out of the cyclic
    # collector; with keywords the Python __init__ builds a tracked one.
    return domain.AccountState(f[0], f[1], f[2], f[3], f[4], domain.AccountStatus(f[5]),
                               f[6], f[7], f[8], f[9], f[10], f[11])


def encode_hold(hold: domain.Hold) -> bytes:
    return json.dumps([hold.amount_minor, hold.currency, hold.to_account_id,
                       hold.expires_at_ms, hold.status.value, hold.captured_minor,
                       hold.placed_at_ms, hold.ended_at_ms, list(hold.sequences)],
                      separators=(",", ":")).encode()


def decode_hold(account_id: str, hold_id: str, raw: bytes) -> domain.Hold:
    f = json.loads(raw)
    return domain.Hold(hold_id, account_id, f[0], f[1], f[2], f[3], domain.HoldStatus(f[4]),
                       f[5], f[6], f[7], tuple(f[8]))


@frozen
class Outcome:
    """What became of one command: the idempotency index's entry."""

    command_id: str
    account_id: str
    command_hash: str
    status: str  # "applied" | "rejected"
    reason: str | None
    sequences: tuple[int, int] | None  # first and last event of an applied command

    def encode(self) -> bytes:
        """An applied command's entry whose hash is a SHA-256 in lowercase
        hex (every command's: domain.command_hash) is ``b"A"``, its first
        and last sequence (u64be each) and the hash's 32 bytes; any other
        entry is ``b"J"`` and the JSON list [hash, status, reason,
        sequences]. One entry per command, on the hot path and in every
        catch-up: the binary one costs a third of the JSON's CPU and RocksDB
        stores 49 bytes instead of 92."""
        q = self.sequences
        if q is not None and self.reason is None and self.status == "applied":
            h = self.command_hash
            try:
                digest = bytes.fromhex(h)
                if len(digest) == 32 and digest.hex() == h:  # exactly this text back
                    return _APPLIED_TAG + _APPLIED.pack(q[0], q[1]) + digest
            except (TypeError, ValueError, struct.error):
                pass  # not hex, or sequences outside u64: the JSON form below
        return _JSON_TAG + self._json()

    def _json(self) -> bytes:
        reason, q = self.reason, self.sequences
        if _plain(self.command_hash) and _plain(self.status) and (reason is None
                                                                  or _plain(reason)):
            # The same bytes as json.dumps below, without its machinery.
            return (f'["{self.command_hash}","{self.status}",'
                    f'{"null" if reason is None else f"{chr(34)}{reason}{chr(34)}"},'
                    f'{f"[{q[0]},{q[1]}]" if q else "null"}]').encode()
        return json.dumps([self.command_hash, self.status, reason, list(q) if q else None],
                          separators=(",", ":")).encode()

    @classmethod
    def decode(cls, account_id: str, command_id: str, raw: bytes) -> "Outcome":
        tag = raw[:1]
        if tag == _APPLIED_TAG and len(raw) == _APPLIED_BYTES:
            first, last = _APPLIED.unpack_from(raw, 1)
            return cls(command_id, account_id, raw[1 + _APPLIED.size:].hex(), "applied", None,
                       (first, last))
        if tag != _JSON_TAG:
            raise ValueError(f"outcome of {command_id!r} on {account_id!r}: not an entry "
                             f"of store format {STORE_FORMAT}")
        h, status, reason, q = json.loads(raw[1:])
        return cls(command_id, account_id, h, status, reason, tuple(q) if q else None)


_APPLIED = struct.Struct(">QQ")
_APPLIED_TAG, _JSON_TAG = b"A", b"J"
_APPLIED_BYTES = 1 + _APPLIED.size + 32


@frozen
class TransferEntry:
    """A transfer as its source partition knows it."""

    transfer_id: str
    from_account_id: str
    to_account_id: str | None
    amount_minor: int | None
    currency: str | None
    status: str  # "pending" | "completed" | "failed"
    reason: str | None
    sequences: tuple[int, ...]  # its events at the source

    def encode(self) -> bytes:
        items = [_json_item(v) for v in (self.to_account_id, self.amount_minor, self.currency,
                                         self.status, self.reason)]
        if None not in items and all(type(q) is int for q in self.sequences):
            # The same bytes as json.dumps below: each step of a transfer
            # writes its entry (json.dumps was 5% of a transfer's CPU).
            return f'[{",".join(items)},[{",".join(map(str, self.sequences))}]]'.encode()
        return json.dumps([self.to_account_id, self.amount_minor, self.currency,
                           self.status, self.reason, list(self.sequences)],
                          separators=(",", ":")).encode()

    @classmethod
    def decode(cls, from_account_id: str, transfer_id: str, raw: bytes) -> "TransferEntry":
        to, amount, currency, status, reason, seqs = json.loads(raw)
        return cls(transfer_id, from_account_id, to, amount, currency, status, reason,
                   tuple(seqs))


# Each partition's store writes three or four keys per command. RocksDB's
# default 64 MiB memtable made each batch's write cost 5.5-6.5 us per command
# (a deep skiplist); with 8 MiB, 3.0 (more, smaller flushes on RocksDB's own
# thread). The command-index lookup of every new command misses: a bloom
# filter keeps those misses off the extra SST files (2.2 us, as before).
# Measured with rocksdict alone on 400 batches of 1,000 commands.
STORE_WRITE_BUFFER_BYTES = 8 << 20
STORE_BLOOM_BITS_PER_KEY = 10
# Committed account states kept decoded, per partition store: a batch reads
# each account it touches once, and decoding the state from RocksDB again on
# every batch was a tenth of the worker's CPU per command (issue 10). The
# states are immutable; apply() keeps those it writes, after the write.
# About 0.45 KB each (measured with tracemalloc): 23 MB per partition at most.
STATE_CACHE_ACCOUNTS = 50_000


def _options() -> Options:
    options = Options(raw_mode=True)
    options.set_write_buffer_size(STORE_WRITE_BUFFER_BYTES)
    table = BlockBasedOptions()
    table.set_bloom_filter(STORE_BLOOM_BITS_PER_KEY, False)
    options.set_block_based_table_factory(table)
    # No block compression: snappy made a store 10% smaller (31.7 against 35.3 MiB
    # of SST files for the 144,460 records of a catch-up's partition: Avro with hex
    # ids and hashes, little for it to find) for 5% of the instructions of a
    # catch-up (callgrind: 84.8k -> 80.8k per record), spent on every flush and
    # compaction, on the worker's two cores.
    options.set_compression_type(DBCompressionType.none())
    return options


class PartitionStore:
    def __init__(self, path: Path, read_only: bool = False,
                 snapshot_every: int = Settings.snapshot_every):
        self.path = path
        self.snapshot_every = max(1, snapshot_every)
        self._states: dict[str, domain.AccountState] = {}  # STATE_CACHE_ACCOUNTS
        options = _options()
        if read_only:
            # RocksDB read-only mode takes no lock: safe beside a running worker.
            # It is also a point-in-time view: what was written when it opened.
            self._db = Rdict(str(path), options, access_type=AccessType.read_only())
            self._watermark = self._read_watermark()
            return
        path.mkdir(parents=True, exist_ok=True)
        options.create_if_missing(True)
        self._db = Rdict(str(path), options)
        found = self.format
        if found != STORE_FORMAT:
            empty = self._is_empty()
            if not empty:
                log.warning("store %s has format %s, not %d: rebuilding it from the log",
                            path, "none" if found is None else found, STORE_FORMAT)
                self._db.close()
                Rdict.destroy(str(path))
                self._db = Rdict(str(path), options)
            self._db.put(_FORMAT_KEY, _U32.pack(STORE_FORMAT))
        self._watermark = self._read_watermark()

    def _read_watermark(self) -> int:
        raw = self._db.get(_WATERMARK_KEY)
        return 0 if raw is None else _U64.unpack(raw)[0]

    def _is_empty(self) -> bool:
        it = self._db.iter()
        it.seek_to_first()
        empty = not it.valid()
        del it
        return empty

    def close(self) -> None:
        self._db.close()

    # -- reads (committed state only) --------------------------------------

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def account(self, account_id: str) -> domain.AccountState | None:
        try:
            return self._states[account_id]
        except KeyError:
            pass
        # A miss is not kept: the HTTP API reads on its own threads, and a
        # state it read just before a batch applied would be kept over the
        # batch's. Only apply() fills the cache, after its write.
        raw = self._db.get(account_key(account_id))
        return None if raw is None else decode_state(raw)

    def _remember(self, account_id: str, state: domain.AccountState) -> None:
        """Keep a state just written decoded; once STATE_CACHE_ACCOUNTS are
        kept, the one written longest ago goes."""
        states = self._states
        states.pop(account_id, None)
        states[account_id] = state
        if len(states) > STATE_CACHE_ACCOUNTS:
            del states[next(iter(states))]

    def outcome(self, account_id: str, command_id: str) -> Outcome | None:
        raw = self._db.get(command_key(account_id, command_id))
        return None if raw is None else Outcome.decode(account_id, command_id, raw)

    def transfer(self, from_account_id: str, transfer_id: str) -> TransferEntry | None:
        raw = self._db.get(transfer_key(from_account_id, transfer_id))
        return None if raw is None else TransferEntry.decode(from_account_id, transfer_id, raw)

    def hold(self, account_id: str, hold_id: str) -> domain.Hold | None:
        raw = self._db.get(hold_key(account_id, hold_id))
        return None if raw is None else decode_hold(account_id, hold_id, raw)

    def due_holds(self, now_ms: int, limit: int = 1000) -> list[tuple[str, str]]:
        """(account_id, hold_id) of active holds whose expiry is at or before
        ``now_ms``, soonest first (at most ``limit``)."""
        out = []
        for key, _value in self.items(b"x"):
            if _U64.unpack(key[1:9])[0] > now_ms or len(out) >= limit:
                break
            account_id, _, hold_id = key[9:].partition(b"\x00")
            out.append((account_id.decode(), hold_id.decode()))
        return out

    def events(self, account_id: str, sequences) -> list:
        """The account's events with these sequence numbers (those that exist), decoded."""
        out = []
        for sequence in sequences:
            raw = self._db.get(history_key(account_id, sequence))
            if raw is not None:
                out.append(codec.decode_outcome(raw)[0])
        return out

    def state_at(self, account_id: str, *, as_of_ms: int | None = None,
                 version: int | None = None) -> domain.AccountState | None:
        """The account right after its last event recorded at or before
        ``as_of_ms``, or right after event ``version`` (the last one, if the
        account has fewer); None if there is no such event."""
        if as_of_ms is not None:
            current = self.account(account_id)
            version = self._version_at(current, account_id, as_of_ms)
            if current is not None and version == current.version:
                return current  # as of its last event: no fold to make it again
        return self.state_at_version(account_id, version or 0)

    @property
    def watermark(self) -> int:
        """Epoch ms: every record of the partition recorded at or before it is
        here, and none recorded at or before it will ever be added (module
        doc, Completeness). 0 before the first record. Kept in memory, set
        only after the WriteBatch that carries it is written: a reader that
        reads the watermark first and then the data sees at least what it
        promises."""
        return self._watermark

    @property
    def format(self) -> int | None:
        """The STORE_FORMAT the store says it has (None: it says none)."""
        raw = self._db.get(_FORMAT_KEY)
        return None if raw is None else _U32.unpack(raw)[0]

    @property
    def events_offset(self) -> int:
        raw = self._db.get(_EVENTS_OFFSET_KEY)
        return 0 if raw is None else _U64.unpack(raw)[0]

    def items(self, prefix: bytes, start: bytes | None = None):
        """(key, value) pairs whose key starts with ``prefix``, in byte order."""
        it = self._db.iter()
        it.seek(start or prefix)
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            yield key, it.value()
            it.next()
        del it

    def history(self, account_id: str, first_sequence: int = 1):
        """The account's log records (Avro bytes) from ``first_sequence`` on."""
        prefix = _account_prefix(b"e", account_id)
        for _key, value in self.items(prefix, start=history_key(account_id, first_sequence)):
            yield value

    def _last_at_or_before(self, prefix: bytes, bound: bytes) -> bytes | None:
        """The greatest key with ``prefix`` that is <= ``bound``: one reverse seek."""
        it = self._db.iter()
        it.seek_for_prev(bound)
        key = it.key() if it.valid() else None
        del it
        return key if key is not None and key.startswith(prefix) else None

    def version_at(self, account_id: str, t_ms: int) -> int:
        """The sequence of the account's last event recorded at or before t_ms (0: none).

        A binary search of the history (about log2(version) reads): an
        account's events are recorded in sequence order, and recorded times
        never decrease along it (every transaction on a partition is stamped
        after the one before, module doc). One key per event fewer than a
        time index, on every command and in every catch-up (issue 10)."""
        return self._version_at(self.account(account_id), account_id, t_ms)

    def _version_at(self, state: domain.AccountState | None, account_id: str,
                    t_ms: int) -> int:
        """version_at, given the account's current ``state``."""
        if state is None or t_ms < state.opened_at_ms:
            return 0
        if state.updated_at_ms <= t_ms:  # the account's last event
            return state.version
        # Invariant: event lo is recorded at or before t_ms, event hi after it.
        lo, hi = 1, state.version
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._recorded_at(account_id, mid) <= t_ms:
                lo = mid
            else:
                hi = mid
        return lo

    def _recorded_at(self, account_id: str, sequence: int) -> int:
        raw = self._db.get(history_key(account_id, sequence))
        if raw is None:  # the state says the event exists: a store torn apart
            raise LookupError(f"event {sequence} of {account_id} missing from {self.path}")
        return codec.decode_outcome(raw)[0].recorded_at_ms

    def state_at_version(self, account_id: str, version: int) -> domain.AccountState | None:
        """The account right after its event ``version``: newest snapshot at or
        before it plus at most snapshot_every - 1 events. A corrupt snapshot
        is skipped (with a warning and a metric) for an older one, or a fold
        from the first event: slower, never wrong."""
        if version < 1:
            return None
        prefix = _account_prefix(b"s", account_id)
        bound = snapshot_key(account_id, version)
        state = None
        while True:
            key = self._last_at_or_before(prefix, bound)
            if key is None:
                break
            try:
                state = decode_snapshot(self._db.get(key))
                break
            except SnapshotCorrupt:
                seq = _U64.unpack(key[-8:])[0]
                log.warning("corrupt snapshot of %s at %d; using an older one", account_id, seq)
                metrics.SNAPSHOT_FALLBACKS.inc()
                if seq <= 1:
                    break
                bound = snapshot_key(account_id, seq - 1)
        start = 1 if state is None else state.version + 1
        for sequence in range(start, version + 1):
            raw = self._db.get(history_key(account_id, sequence))
            if raw is None:
                break  # version is past the account's last event
            state = domain.evolve(state, codec.decode_outcome(raw)[0])
        return state

    def checkpoint(self, path: Path) -> None:
        """A consistent copy of the store in ``path`` (which must not exist):
        RocksDB's checkpoint, hard links to its files after a flush of the
        memtable, so on the same file system it costs the flush."""
        Checkpoint(self._db).create_checkpoint(str(path))

    # -- writes ------------------------------------------------------------

    def apply(self, batch: "Batch", events_offset: int | None) -> None:
        """Write a committed batch and the log position it reaches, atomically."""
        wb = WriteBatch(raw_mode=True)
        for key, value in batch.writes.items():
            if value is None:
                wb.delete(key)
            else:
                wb.put(key, value)
        states = batch._states
        for account_id in batch.changed_accounts:
            # Encoded here, once per account per batch, not once per event.
            wb.put(account_key(account_id), encode_state(states[account_id]))
        if events_offset is not None:
            wb.put(_EVENTS_OFFSET_KEY, _U64.pack(events_offset))
        watermark = batch.watermark
        if watermark > self._watermark:
            wb.put(_WATERMARK_KEY, _U64.pack(watermark))
        self._db.write(wb)
        for account_id in batch.changed_accounts:
            self._remember(account_id, states[account_id])
        if watermark > self._watermark:
            self._watermark = watermark


class Batch:
    """Uncommitted changes to one partition's store, readable before commit."""

    __slots__ = ("store", "writes", "watermark", "changed_accounts", "_states", "_outcomes",
                 "_transfers", "_holds", "_last_applied")

    def __init__(self, store: PartitionStore):
        self.store = store
        self.writes: dict[bytes, bytes | None] = {}  # None: delete the key
        # The newest recorded_at_ms of the records in this batch (0: none).
        self.watermark = 0
        self._states: dict[str, domain.AccountState | None] = {}
        self._outcomes: dict[str, dict | None] = {}
        self._transfers: dict[str, dict | None] = {}
        self._holds: dict[tuple[str, str], domain.Hold | None] = {}
        # Accounts whose state this batch changed: written at apply.
        self.changed_accounts: set[str] = set()
        # account -> the outcome of the last command applied to it in this batch.
        self._last_applied: dict[str, Outcome] = {}

    def account(self, account_id: str) -> domain.AccountState | None:
        try:
            return self._states[account_id]
        except KeyError:
            state = self._states[account_id] = self.store.account(account_id)
            return state

    def outcome(self, account_id: str, command_id: str) -> Outcome | None:
        key = (account_id, command_id)
        try:
            return self._outcomes[key]
        except KeyError:
            entry = self._outcomes[key] = self.store.outcome(account_id, command_id)
            return entry

    def transfer(self, from_account_id: str, transfer_id: str) -> TransferEntry | None:
        key = (from_account_id, transfer_id)
        try:
            return self._transfers[key]
        except KeyError:
            entry = self._transfers[key] = self.store.transfer(from_account_id, transfer_id)
            return entry

    def raw_events(self, account_id: str, sequences) -> list[bytes]:
        """The log bytes of the account's events with these sequences, this
        batch's included."""
        out = []
        for sequence in sequences:
            raw = self.writes.get(history_key(account_id, sequence)) or \
                self.store.get(history_key(account_id, sequence))
            if raw is not None:
                out.append(raw)
        return out

    def hold(self, account_id: str, hold_id: str) -> domain.Hold | None:
        key = (account_id, hold_id)
        try:
            return self._holds[key]
        except KeyError:
            entry = self._holds[key] = self.store.hold(account_id, hold_id)
            return entry

    def put_hold(self, hold: domain.Hold) -> None:
        """Store the hold; keep the expiry index to its active holds."""
        self._holds[(hold.account_id, hold.hold_id)] = hold
        self.writes[hold_key(hold.account_id, hold.hold_id)] = encode_hold(hold)
        index = expiry_key(hold.expires_at_ms, hold.account_id, hold.hold_id)
        self.writes[index] = b"" if hold.status is domain.HoldStatus.active else None

    def advance(self, recorded_at_ms: int) -> None:
        """A record stamped ``recorded_at_ms`` is part of this batch."""
        if recorded_at_ms > self.watermark:
            self.watermark = recorded_at_ms

    def put_transfer(self, entry: TransferEntry) -> None:
        self._transfers[(entry.from_account_id, entry.transfer_id)] = entry
        self.writes[transfer_key(entry.from_account_id, entry.transfer_id)] = entry.encode()

    def put_account(self, state: domain.AccountState) -> None:
        self._states[state.account_id] = state
        self.changed_accounts.add(state.account_id)

    def put_outcome(self, outcome: Outcome) -> None:
        self._outcomes[(outcome.account_id, outcome.command_id)] = outcome
        self.writes[command_key(outcome.account_id, outcome.command_id)] = outcome.encode()
        if outcome.sequences:
            self._last_applied[outcome.account_id] = outcome

    def last_applied(self, account_id: str) -> Outcome | None:
        """The outcome of the last command this batch applied to the account
        (None if it applied none)."""
        return self._last_applied.get(account_id)

    def put_history(self, event, record: bytes, state: domain.AccountState) -> None:
        """Index one event by sequence; snapshot ``state`` (the account right
        after it) every ``store.snapshot_every`` events."""
        self.writes[history_key(event.account_id, event.sequence)] = record
        if event.sequence % self.store.snapshot_every == 0:
            # Derived from committed events only, and the same bytes every
            # time it is rebuilt: writing it again is harmless.
            self.writes[snapshot_key(event.account_id, event.sequence)] = encode_snapshot(state)
