""""The account's last event at or before T" (PartitionStore.version_at, what
every as-of answer starts from) against a model built from the records the
worker's code path produced: every instant around every recorded time, on
accounts whose events share recorded times, interleaved with another
account's, in a live store and a read-only one. No broker."""

from __future__ import annotations

import random

from ledger import domain
from schemas import codec
from streams import processor
from streams.store import Batch, PartitionStore


def _build(store: PartitionStore, rng: random.Random, accounts: list[str], batches: int):
    """Apply random credits and debits in batches (one stamp per batch, as a
    transaction has); return account -> [(sequence, recorded_at_ms)] and
    account -> [event] from the records the commands yielded."""
    model: dict[str, list[tuple[int, int]]] = {a: [] for a in accounts}
    events: dict[str, list] = {a: [] for a in accounts}
    now_ms, offset, n = 1_000, 0, 0

    def run(batch: Batch, command) -> None:
        records, _legs, _reply = processor.handle_command(batch, command, now_ms)
        for raw in records:
            record = codec.decode_outcome(raw)[0]
            if isinstance(record, domain.Event):
                model[record.account_id].append((record.sequence, record.recorded_at_ms))
                events[record.account_id].append(record)

    batch = Batch(store)
    for a in accounts:
        run(batch, domain.OpenAccount(f"open-{a}", a, "EUR", 1_000))
    store.apply(batch, offset := offset + 1)
    for _ in range(batches):
        now_ms += rng.choice((1, 2, 7))
        batch = Batch(store)
        for _ in range(rng.randrange(1, 6)):  # several events on one stamp
            n += 1
            kind = domain.Credit if rng.random() < 0.6 else domain.Debit
            run(batch, kind(f"c-{n}", rng.choice(accounts), rng.randrange(1, 500), "EUR"))
        store.apply(batch, offset := offset + 1)
    return model, events


def _expected(history: list[tuple[int, int]], t_ms: int) -> int:
    return max((seq for seq, at in history if at <= t_ms), default=0)


def test_version_at_is_the_last_event_at_or_before_t(tmp_path):
    rng = random.Random(7)
    store = PartitionStore(tmp_path / "p0", snapshot_every=4)
    model, events = _build(store, rng, ["a", "ab", "b"], 300)
    assert all(len(h) > 50 for h in model.values())
    reader = PartitionStore(tmp_path / "p0", read_only=True)
    try:
        for account_id, history in model.items():
            times = {at for _seq, at in history}
            instants = sorted({-1, 0, *(t + d for t in times for d in (-1, 0, 1)), 10**15})
            for t_ms in instants:
                want = _expected(history, t_ms)
                assert store.version_at(account_id, t_ms) == want, (account_id, t_ms)
                assert reader.version_at(account_id, t_ms) == want, (account_id, t_ms)
                state = store.state_at(account_id, as_of_ms=t_ms)
                assert state == domain.fold(events[account_id][:want]), (account_id, t_ms)
        assert store.version_at("nobody", 10**15) == 0
    finally:
        reader.close()
        store.close()
