"""RocksDB (rocksdict) state of one partition: a cache of the committed log.

One RocksDB directory per partition of the ledger topics, under the worker's
data dir: ``<data_dir>/<events topic>/p<N>``. It holds

    b"a" account_id                      -> account state (JSON)
    b"c" command_id                      -> outcome of that command (JSON):
                                            the idempotency index, kept forever
    b"e" account_id 0x00 sequence(u64be) -> the event's log bytes (Avro):
                                            per-account history, byte order is
                                            sequence order
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
import shutil
import struct
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch

from ledger import domain

_EVENTS_OFFSET_KEY = b"mevents_offset"
_U64 = struct.Struct(">Q")


def account_key(account_id: str) -> bytes:
    return b"a" + account_id.encode()


def command_key(command_id: str) -> bytes:
    return b"c" + command_id.encode()


def transfer_key(transfer_id: str) -> bytes:
    return b"t" + transfer_id.encode()


def history_key(account_id: str, sequence: int) -> bytes:
    return b"e" + account_id.encode() + b"\x00" + _U64.pack(sequence)


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
    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
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

    def items(self, prefix: bytes):
        """(key, value) pairs whose key starts with ``prefix``, in byte order."""
        it = self._db.iter()
        it.seek(prefix)
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            yield key, it.value()
            it.next()
        del it

    def history(self, account_id: str):
        """The account's log records (Avro bytes) in sequence order."""
        for _key, value in self.items(b"e" + account_id.encode() + b"\x00"):
            yield value

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

    def put_history(self, account_id: str, sequence: int, record: bytes) -> None:
        self.writes[history_key(account_id, sequence)] = record

    def __len__(self) -> int:
        return len(self.writes)
