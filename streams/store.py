"""RocksDB (rocksdict) state of one partition: a cache of the committed log.

One RocksDB directory per partition of the ledger topics, under the worker's
data dir: ``<data_dir>/<events topic>/p<N>``. It holds

    b"a" account_id                      -> account state (JSON)
    b"c" command_id                      -> outcome of that command (JSON):
                                            the idempotency index, kept forever
    b"e" account_id 0x00 sequence(u64be) -> the event's log bytes (Avro):
                                            per-account history, byte order is
                                            sequence order
    b"r" account_id 0x00 recorded_at_ms(u64be) sequence(u64be) -> b""
                                            time index: "last event at or
                                            before T" is one reverse seek
    b"s" account_id 0x00 sequence(u64be) -> snapshot of the state right after
                                            that event (checksummed), every
                                            SNAPSHOT_EVERY events
    b"t" transfer_id                     -> transfer status (JSON), on the
                                            source account's partition
    b"m" b"events_offset"                -> u64be: next event-log offset to
                                            read when catching up

Rule: nothing is written here before the Kafka transaction that holds the
same change has committed. A batch stages its changes in a :class:`Batch`
(an in-memory overlay that reads fall through to RocksDB); only after
``commit_transaction`` returns does :meth:`PartitionStore.apply` write them,
with the new ``events_offset``, in one atomic ``WriteBatch``. A crash before
that loses only the overlay; catch-up from ``events_offset`` (idempotent by
sequence and command_id) brings the store back to the log.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import zlib
from pathlib import Path

from rocksdict import AccessType, Options, Rdict, WriteBatch

from ledger import domain


def codec_decode(raw: bytes):
    from schemas import codec

    return codec.decode_outcome(raw)[0]

_EVENTS_OFFSET_KEY = b"mevents_offset"
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
# An account state is snapshotted after every this many of its events, so an
# as-of query folds at most SNAPSHOT_EVERY - 1 events after one seek.
# LEDGER_SNAPSHOT_EVERY changes it; stores rebuilt with another value differ
# only in which snapshots they hold, never in an answer.
SNAPSHOT_EVERY = max(1, int(os.environ.get("LEDGER_SNAPSHOT_EVERY") or 64))
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


def _account_prefix(tag: bytes, account_id: str) -> bytes:
    return tag + account_id.encode() + b"\x00"


def time_key(account_id: str, recorded_at_ms: int, sequence: int) -> bytes:
    return _account_prefix(b"r", account_id) + _U64.pack(recorded_at_ms) + _U64.pack(sequence)


def snapshot_key(account_id: str, sequence: int) -> bytes:
    return _account_prefix(b"s", account_id) + _U64.pack(sequence)


def account_key(account_id: str) -> bytes:
    return b"a" + account_id.encode()


def command_key(command_id: str) -> bytes:
    return b"c" + command_id.encode()


def transfer_key(transfer_id: str) -> bytes:
    return b"t" + transfer_id.encode()


def history_key(account_id: str, sequence: int) -> bytes:
    return _account_prefix(b"e", account_id) + _U64.pack(sequence)


def encode_state(state: domain.AccountState) -> bytes:
    return json.dumps(
        [state.account_id, state.currency, state.balance_minor,
         state.overdraft_limit_minor, state.version, state.status.value,
         state.opened_at_ms, state.updated_at_ms, state.credits_minor,
         state.debits_minor, state.pending_out_minor],
        separators=(",", ":"),
    ).encode()


def decode_state(raw: bytes) -> domain.AccountState:
    f = json.loads(raw)
    return domain.AccountState(
        account_id=f[0], currency=f[1], balance_minor=f[2],
        overdraft_limit_minor=f[3], version=f[4],
        status=domain.AccountStatus(f[5]), opened_at_ms=f[6],
        updated_at_ms=f[7], credits_minor=f[8], debits_minor=f[9],
        pending_out_minor=f[10],
    )


def outcome_entry(command_hash: str, account_id: str, status: str,
                  reason: str | None, sequences: tuple[int, int] | None) -> bytes:
    return json.dumps(
        {"h": command_hash, "a": account_id, "s": status, "r": reason,
         "q": list(sequences) if sequences else None},
        separators=(",", ":"),
    ).encode()


class PartitionStore:
    def __init__(self, path: Path, read_only: bool = False):
        self.path = path
        options = Options(raw_mode=True)
        if read_only:
            # RocksDB read-only mode takes no lock: safe beside a running worker.
            self._db = Rdict(str(path), options, access_type=AccessType.read_only())
            return
        path.mkdir(parents=True, exist_ok=True)
        options.create_if_missing(True)
        self._db = Rdict(str(path), options)

    def close(self) -> None:
        self._db.close()

    # -- reads (committed state only) --------------------------------------

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def account(self, account_id: str) -> domain.AccountState | None:
        raw = self._db.get(account_key(account_id))
        return None if raw is None else decode_state(raw)

    def outcome(self, command_id: str) -> dict | None:
        raw = self._db.get(command_key(command_id))
        return None if raw is None else json.loads(raw)

    def transfer(self, transfer_id: str) -> dict | None:
        raw = self._db.get(transfer_key(transfer_id))
        return None if raw is None else json.loads(raw)

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
        """The sequence of the account's last event recorded at or before t_ms (0: none)."""
        if t_ms < 0:
            return 0
        prefix = _account_prefix(b"r", account_id)
        key = self._last_at_or_before(prefix, prefix + _U64.pack(min(t_ms, 2**64 - 1))
                                      + b"\xff" * 8)
        return 0 if key is None else _U64.unpack(key[-8:])[0]

    def state_at_version(self, account_id: str, version: int) -> domain.AccountState | None:
        """The account right after its event ``version``: newest snapshot at or
        before it plus at most SNAPSHOT_EVERY - 1 events. A corrupt snapshot
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
                from streams import metrics

                metrics.SNAPSHOT_FALLBACKS.inc()
                if seq <= 1:
                    break
                bound = snapshot_key(account_id, seq - 1)
        start = 1 if state is None else state.version + 1
        for sequence in range(start, version + 1):
            raw = self._db.get(history_key(account_id, sequence))
            if raw is None:
                break  # version is past the account's last event
            state = domain.evolve(state, codec_decode(raw))
        return state

    # -- writes ------------------------------------------------------------

    def apply(self, batch: "Batch", events_offset: int | None) -> None:
        """Write a committed batch and the log position it reaches, atomically."""
        wb = WriteBatch(raw_mode=True)
        for key, value in batch.writes.items():
            wb.put(key, value)
        if events_offset is not None:
            wb.put(_EVENTS_OFFSET_KEY, _U64.pack(events_offset))
        self._db.write(wb)


def wipe(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class Batch:
    """Uncommitted changes to one partition's store, readable before commit."""

    __slots__ = ("store", "writes", "_states", "_outcomes", "_transfers")

    def __init__(self, store: PartitionStore):
        self.store = store
        self.writes: dict[bytes, bytes] = {}
        self._states: dict[str, domain.AccountState | None] = {}
        self._outcomes: dict[str, dict | None] = {}
        self._transfers: dict[str, dict | None] = {}

    def account(self, account_id: str) -> domain.AccountState | None:
        try:
            return self._states[account_id]
        except KeyError:
            state = self._states[account_id] = self.store.account(account_id)
            return state

    def outcome(self, command_id: str) -> dict | None:
        try:
            return self._outcomes[command_id]
        except KeyError:
            entry = self._outcomes[command_id] = self.store.outcome(command_id)
            return entry

    def transfer(self, transfer_id: str) -> dict | None:
        try:
            return self._transfers[transfer_id]
        except KeyError:
            entry = self._transfers[transfer_id] = self.store.transfer(transfer_id)
            return entry

    def put_transfer(self, transfer_id: str, entry: dict) -> None:
        self._transfers[transfer_id] = entry
        self.writes[transfer_key(transfer_id)] = json.dumps(
            entry, separators=(",", ":")).encode()

    def put_account(self, state: domain.AccountState) -> None:
        self._states[state.account_id] = state
        self.writes[account_key(state.account_id)] = encode_state(state)

    def put_outcome(self, command_id: str, command_hash: str, account_id: str,
                    status: str, reason: str | None,
                    sequences: tuple[int, int] | None) -> None:
        raw = outcome_entry(command_hash, account_id, status, reason, sequences)
        self._outcomes[command_id] = json.loads(raw)
        self.writes[command_key(command_id)] = raw

    def put_history(self, event, record: bytes, state: domain.AccountState) -> None:
        """Index one event by sequence and by time; snapshot ``state`` (the
        account right after it) every SNAPSHOT_EVERY events."""
        self.writes[history_key(event.account_id, event.sequence)] = record
        self.writes[time_key(event.account_id, event.recorded_at_ms, event.sequence)] = b""
        if event.sequence % SNAPSHOT_EVERY == 0:
            # Derived from committed events only, and the same bytes every
            # time it is rebuilt: writing it again is harmless.
            self.writes[snapshot_key(event.account_id, event.sequence)] = encode_snapshot(state)

    def __len__(self) -> int:
        return len(self.writes)
