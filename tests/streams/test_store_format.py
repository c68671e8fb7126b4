"""A store of another format version is wiped and rebuilt from the log, never misread.

The store is a cache of the committed event log (streams/store.py): its
``mformat`` key names the layout it was written with. A store whose key
names another layout is wiped at open, with a log line saying so, and the
worker's catch-up rebuilds it from offset 0: balances, outcomes and the
idempotency index come back as they were.
"""

from __future__ import annotations

import logging
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import domain
from schemas import codec
from streams import processor
from streams.client import LedgerClient
from streams.store import _FORMAT_KEY, STORE_FORMAT, Batch, PartitionStore

NOW = 1_700_000_000_000


def fold(store: PartitionStore, commands, offset: int) -> int:
    """Decide and fold ``commands`` into the store as committed log records."""
    batch = Batch(store)
    for i, command in enumerate(commands):
        result = domain.decide(batch.account(command.account_id), command, NOW + i)
        digest = domain.command_hash(command)
        for record in result:
            processor.apply_logged(batch, codec.encode_outcome(record, digest))
            offset += 1
    store.apply(batch, offset)
    return offset


def set_format(path, value: int) -> None:
    store = PartitionStore(path)
    store._db[_FORMAT_KEY] = struct.pack(">I", value)
    store.close()


def test_store_of_another_format_is_wiped_at_open(tmp_path, caplog):
    path = tmp_path / "p0"
    store = PartitionStore(path)
    fold(store, [domain.OpenAccount("o1", "acct-1", "EUR", 100),
                 domain.Credit("c1", "acct-1", 250, "EUR")], 0)
    assert 250 == store.account("acct-1").balance_minor
    store.close()
    set_format(path, 999)

    with caplog.at_level(logging.WARNING, logger="ledger.store"):
        store = PartitionStore(path)
    try:
        assert any("has format 999" in r.getMessage() and "rebuilding" in r.getMessage()
                   for r in caplog.records), caplog.text
        # Nothing of the old layout is read: the catch-up starts from offset 0.
        assert (None, None, 0, 0) == (store.account("acct-1"), store.outcome("acct-1", "c1"),
                                      store.events_offset, store.watermark)
        assert struct.pack(">I", STORE_FORMAT) == store.get(_FORMAT_KEY)
    finally:
        store.close()
    # The current format opens as it is, silently.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ledger.store"):
        PartitionStore(path).close()
    assert not caplog.records


def test_snapshot_every_comes_from_whoever_opens_the_store(tmp_path):
    """Settings.snapshot_every (LEDGER_SNAPSHOT_EVERY) is passed in; the store
    reads no environment."""
    store = PartitionStore(tmp_path / "p0", snapshot_every=2)
    try:
        fold(store, [domain.OpenAccount("o1", "a", "EUR", 0)]
             + [domain.Credit(f"c{i}", "a", 10, "EUR") for i in range(4)], 0)
        snapshots = [k for k, _v in store.items(b"s")]
        assert 2 == len(snapshots)  # after events 2 and 4 of 5
        for version in range(1, 6):
            assert 10 * (version - 1) == store.state_at(
                "a", version=version).balance_minor
    finally:
        store.close()


@pytest.mark.kafka
def test_worker_rebuilds_a_store_of_unknown_format_from_the_log(settings, workers):
    accounts = [f"acct-{i}" for i in range(12)]
    commands = [domain.OpenAccount(f"o-{a}", a, "EUR", 500) for a in accounts]
    for n in range(240):
        a = accounts[n % len(accounts)]
        kind = domain.Credit if n % 3 else domain.Debit
        commands.append(kind(f"c{n}", a, 7 * n + 1, "EUR"))
    commands.append(domain.Debit("too-much", accounts[0], 10**9, "EUR"))  # rejected
    worker = workers.start(settings)
    with LedgerClient(settings) as client:
        for command in commands:
            client.send_nowait(command)
        outcomes = {c.command_id: client.wait_for(c.account_id, c.command_id, 60)
                    for c in commands}
        assert "rejected" == outcomes["too-much"].status
        before = {a: worker.get(f"/v1/accounts/{a}") for a in accounts}
        assert all(status == 200 for status, _body in before.values())
        workers.stop(worker)

        root = settings.data_dir / settings.events_topic
        stores = sorted(root.glob("p*"))
        assert len(stores) == settings.partitions
        for path in stores:
            set_format(path, 999)

        worker = workers.start(settings)  # waits until caught up with the log
        log_text = worker.log_path.read_text()
        assert log_text.count("has format 999") == settings.partitions, worker.log_tail()
        assert {a: worker.get(f"/v1/accounts/{a}") for a in accounts} == before
        # The idempotency index came back from the log: a retry gets its
        # original outcome, marked duplicate, and changes nothing.
        for command_id in ("c5", "c6", "too-much"):
            command = next(c for c in commands if c.command_id == command_id)
            again = client.send(command, wait=True, timeout_s=60)
            first = outcomes[command_id]
            assert (True, first.status, first.reason, first.events) == \
                (again.duplicate, again.status, again.reason, again.events)
        assert {a: worker.get(f"/v1/accounts/{a}") for a in accounts} == before
    workers.stop(worker)


def test_store_values_are_the_json_they_always_were():
    """encode_state, Outcome.encode (its JSON form) and TransferEntry.encode
    build their JSON by hand for speed (issue 10): the bytes are
    json.dumps's, so a store's layout is unchanged."""
    import json

    from streams.store import Outcome, TransferEntry, decode_state, encode_state

    def dumps(value) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    for account_id in ("acct-1", "a.b:c@d_e", 'quote"d', "back\\slash", "caf\u00e9", "tab\t"):
        state = domain.AccountState(account_id, "EUR", -5, 100, 7, domain.AccountStatus.closed,
                                    1, 2, 30, 40, 5, 6)
        assert dumps([account_id, "EUR", -5, 100, 7, "closed", 1, 2, 30, 40, 5, 6]) == \
            encode_state(state)
        assert state == decode_state(encode_state(state))
    for outcome in (Outcome("c", "a", "ab12", "applied", None, (3, 4)),
                    Outcome("c", "a", "ab12", "rejected", "insufficient_funds", None),
                    Outcome("c", "a", "ab12", "rejected", 'odd "reason"', None)):
        assert b"J" + dumps([outcome.command_hash, outcome.status, outcome.reason,
                             list(outcome.sequences) if outcome.sequences else None]) == \
            outcome.encode()
        assert outcome == Outcome.decode("a", "c", outcome.encode())
    for entry in (TransferEntry("t", "a", "b", 5, "EUR", "pending", None, (3,)),
                  TransferEntry("t", "a", "b", 5, "EUR", "completed", None, (3, 9, 12)),
                  TransferEntry("t", "a", None, None, None, "failed", "insufficient_funds", ()),
                  TransferEntry("t", "a", 'b"q', 2**70, "caf\u00e9", "failed", "back\\slash",
                                (1,)),
                  TransferEntry("t", "a", "b", True, "EUR", "pending", "tab\t", (1, 2))):
        assert dumps([entry.to_account_id, entry.amount_minor, entry.currency, entry.status,
                      entry.reason, list(entry.sequences)]) == entry.encode()
        assert entry == TransferEntry.decode("a", "t", entry.encode())


_hex64 = st.binary(min_size=32, max_size=32).map(bytes.hex)
_hashes = st.one_of(_hex64, _hex64.map(str.upper), st.text(max_size=70),
                    st.text("0123456789abcdef", min_size=62, max_size=66))
_sequences = st.one_of(st.none(), st.tuples(st.integers(0, 2**64 + 5), st.integers(0, 2**64 + 5)))


@settings(max_examples=500, deadline=None)
@given(h=_hashes, status=st.sampled_from(["applied", "rejected"]),
       reason=st.one_of(st.none(), st.text(max_size=20)), q=_sequences)
def test_an_outcome_reads_back_as_it_was_written(h, status, reason, q):
    """Outcome.encode is binary for what nearly every command has (applied,
    a lowercase hex SHA-256, sequences within u64), the JSON list for
    anything else; either way decode gives back the same entry."""
    import json

    from streams.store import Outcome

    outcome = Outcome("c", "a", h, status, reason, q)
    raw = outcome.encode()
    assert Outcome.decode("a", "c", raw) == outcome
    binary = (status == "applied" and reason is None and q is not None and len(h) == 64
              and h == h.lower() and all(c in "0123456789abcdef" for c in h)
              and max(q) < 2**64)
    if binary:
        assert raw == b"A" + struct.pack(">QQ", *q) + bytes.fromhex(h)
    else:
        assert raw == b"J" + json.dumps([h, status, reason, list(q) if q else None],
                                        separators=(",", ":")).encode()


def test_an_outcome_of_no_known_form_is_refused():
    from streams.store import Outcome

    for raw in (b"", b"X[]", b'["h","applied",null,[1,1]]', b"A" + bytes(47)):
        with pytest.raises(ValueError):
            Outcome.decode("a", "c", raw)


_ids = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(account=_ids, other=_ids, n=st.integers(0, 2**64 - 1))
def test_every_key_is_the_layout_of_the_module_docstring(account, other, n):
    """The key builders are written out for speed; their bytes are the
    documented layout, which a store of this STORE_FORMAT was written with."""
    from streams import store

    a, o, u64 = account.encode(), other.encode(), struct.pack(">Q", n)
    assert store.account_key(account) == b"a" + a
    assert store.command_key(account, other) == b"c" + a + b"\x00" + o
    assert store.history_key(account, n) == b"e" + a + b"\x00" + u64
    assert store.snapshot_key(account, n) == b"s" + a + b"\x00" + u64
    assert store.transfer_key(account, other) == b"t" + a + b"\x00" + o
    assert store.hold_key(account, other) == b"h" + a + b"\x00" + o
    assert store.expiry_key(n, account, other) == b"x" + u64 + a + b"\x00" + o
    for tag in (b"c", b"e", b"s", b"t", b"h"):  # a prefix scan finds the account's keys
        assert store._account_prefix(tag, account) == tag + a + b"\x00"


def test_a_key_takes_a_str_subclass_by_its_value_and_refuses_what_is_no_str():
    import enum

    from streams import store

    class Odd(str, enum.Enum):  # formats as "Odd.A", is "acct-1"
        A = "acct-1"

    for build in (store.command_key, store.transfer_key, store.hold_key):
        assert build(Odd.A, Odd.A) == build("acct-1", "acct-1")
        with pytest.raises((TypeError, AttributeError)):
            build("acct-1", 7)
    assert store.expiry_key(1, Odd.A, Odd.A) == store.expiry_key(1, "acct-1", "acct-1")
    with pytest.raises((TypeError, AttributeError)):
        store.expiry_key(1, "acct-1", None)
