"""The store's decoded account states (streams/store.py, STATE_CACHE_ACCOUNTS)
answer what RocksDB holds: only committed states, the newest one, after
eviction and after a reopen. No broker."""

from __future__ import annotations

import dataclasses

import pytest

from ledger import domain
from streams import store as store_module
from streams.store import Batch, PartitionStore


def _state(account_id: str, balance: int, version: int) -> domain.AccountState:
    return domain.AccountState(account_id, "EUR", balance, 0, version,
                               domain.AccountStatus.open, 1, 1 + version)


def _apply(store: PartitionStore, *states: domain.AccountState, offset: int = 1) -> None:
    batch = Batch(store)
    for state in states:
        batch.put_account(state)
    store.apply(batch, offset)


def _on_disk(path, account_id: str) -> domain.AccountState | None:
    fresh = PartitionStore(path, read_only=True)
    try:
        return fresh.account(account_id)
    finally:
        fresh.close()


def test_the_newest_committed_state_is_read_back(tmp_path):
    store = PartitionStore(tmp_path / "s")
    assert store.account("a") is None
    _apply(store, _state("a", 10, 1))
    assert store.account("a") == _state("a", 10, 1)
    _apply(store, _state("a", 25, 2))
    assert store.account("a") == _state("a", 25, 2) == _on_disk(tmp_path / "s", "a")
    store.close()
    reopened = PartitionStore(tmp_path / "s")
    assert reopened.account("a") == _state("a", 25, 2)
    reopened.close()


def test_a_batch_not_applied_changes_nothing(tmp_path):
    store = PartitionStore(tmp_path / "s")
    _apply(store, _state("a", 10, 1))
    batch = Batch(store)
    batch.put_account(_state("a", 99, 2))
    assert batch.account("a").balance_minor == 99
    del batch  # its transaction aborted
    assert store.account("a") == _state("a", 10, 1)
    store.close()


def test_a_failed_write_leaves_the_committed_state(tmp_path):
    store = PartitionStore(tmp_path / "s")
    _apply(store, _state("a", 10, 1))
    db = store._db

    class FullDisk:
        def __getattr__(self, name):
            return getattr(db, name)

        def write(self, _wb):
            raise OSError(28, "No space left on device")

    store._db = FullDisk()
    with pytest.raises(OSError):
        _apply(store, _state("a", 99, 2))
    store._db = db
    assert store.account("a") == _state("a", 10, 1) == _on_disk(tmp_path / "s", "a")
    store.close()


def test_evicted_states_are_read_from_rocksdb(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "STATE_CACHE_ACCOUNTS", 3)
    store = PartitionStore(tmp_path / "s")
    states = {f"acct-{i}": _state(f"acct-{i}", i * 100, 1) for i in range(10)}
    _apply(store, *states.values())
    assert len(store._states) == 3
    for round_ in range(3):
        for account_id, state in states.items():
            assert store.account(account_id) == state
            assert len(store._states) <= 3
        states = {a: dataclasses.replace(s, balance_minor=s.balance_minor + 1,
                                         version=s.version + 1) for a, s in states.items()}
        _apply(store, *list(states.values())[::2], offset=round_ + 2)
        _apply(store, *list(states.values())[1::2], offset=round_ + 2)
    for account_id, state in states.items():
        assert store.account(account_id) == state == _on_disk(tmp_path / "s", account_id)
    store.close()


def test_a_read_that_races_an_apply_is_not_kept_over_it(tmp_path, monkeypatch):
    """The HTTP API reads on its own threads: a read that got the old bytes
    from RocksDB just before a batch applied must not be what is kept."""
    path = tmp_path / "s"
    store = PartitionStore(path)
    _apply(store, _state("a", 10, 1))
    store.close()
    store = PartitionStore(path)  # nothing kept yet
    decode = store_module.decode_state
    raced = []

    def decode_then_apply(raw):
        if not raced:  # the worker's batch lands between the read and the decode
            raced.append(True)
            _apply(store, _state("a", 25, 2), offset=2)
        return decode(raw)

    monkeypatch.setattr(store_module, "decode_state", decode_then_apply)
    assert store.account("a") == _state("a", 10, 1)  # what the reader read
    monkeypatch.setattr(store_module, "decode_state", decode)
    assert store.account("a") == _state("a", 25, 2) == _on_disk(path, "a")
    store.close()
