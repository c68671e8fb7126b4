"""A batch decided while the previous one commits (streams/processor.py
``_Pending``) sees that batch's overlay over the store, exactly as it will be
once that batch is written; no Kafka here (the crash tests cover commit and
abort on a real broker)."""

from __future__ import annotations

from ledger import domain
from streams.processor import _Pending, handle_command
from streams.store import Batch, PartitionStore

T0 = 1_000_000


def decide(batch: Batch, command, now_ms: int = T0):
    records, _legs, _reply = handle_command(batch, command, now_ms)
    batch.advance(now_ms)
    return records


def test_next_batch_reads_the_committing_batch_then_the_store(tmp_path):
    store = PartitionStore(tmp_path / "p0")
    try:
        first = Batch(store)
        decide(first, domain.OpenAccount("open-a", "alice", "EUR"))
        decide(first, domain.Credit("c-1", "alice", 500, "EUR"))

        # Decided while `first` commits: it sees alice's 500 and c-1's outcome.
        second = Batch(_Pending(first))
        assert 500 == second.account("alice").balance_minor
        assert decide(second, domain.Credit("c-1", "alice", 500, "EUR")) == []  # a retry
        decide(second, domain.Debit("d-1", "alice", 200, "EUR"), T0 + 1)
        assert 300 == second.account("alice").balance_minor
        assert store.account("alice") is None  # nothing written yet
        # Its records are stamped after the committing batch's.
        assert T0 == _Pending(first).watermark

        # `first` commits and is written; `second` now reads the store itself.
        store.apply(first, None)
        second.store = store
        assert 500 == store.account("alice").balance_minor
        store.apply(second, None)
        assert 300 == store.account("alice").balance_minor
        assert 3 == store.account("alice").version
        assert T0 + 1 == store.watermark
    finally:
        store.close()


def test_raw_events_and_store_settings_go_through_the_overlay(tmp_path):
    store = PartitionStore(tmp_path / "p0")
    try:
        first = Batch(store)
        decide(first, domain.OpenAccount("open-b", "bob", "EUR"))
        view = _Pending(first)
        second = Batch(view)
        # The committing batch's history is readable (a retry's reply carries it).
        assert len(second.raw_events("bob", [1])) == 1
        assert view.get(b"no such key") is None
        # Anything else is the store's (e.g. its snapshot interval).
        assert view.snapshot_every == store.snapshot_every
    finally:
        store.close()
