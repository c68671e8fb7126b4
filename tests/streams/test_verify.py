"""``ledger verify`` names forged or broken money, and tells a store that is
ahead of its recorded offset from one that is wrong (issue 8).

Each test writes a hand-made event log straight to the events topic (no
worker): well-formed records, each account's sequences and balance chain
right, so that the only thing wrong is the problem under test. Then verify
must exit 1 and report exactly the expected problem kinds, with the expected
counts; a clean log with completed, refunded and pending transfers (two of
them sharing a transfer id from two different sources) must exit 0.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace

import pytest
from confluent_kafka import Producer

from ledger import domain
from schemas import codec
from streams import replay
from streams.partitioner import partition_for

pytestmark = pytest.mark.kafka

T0 = 1_790_000_000_000  # 2026-09-21T...Z: a fixed clock, so reports are the same every run


@dataclass
class Placed:
    """One produced record; partition and offset once delivered."""

    event: object
    raw: bytes
    partition: int
    offset: int = -1

    @property
    def where(self) -> str:
        return f"p{self.partition}@{self.offset}"


class LogBuilder:
    """Writes well-formed events to the events topic, as a worker would:
    keyed by account, on the account's murmur2 partition, in order
    (idempotent producer), each with the account's next sequence and the
    balance that follows from its amount."""

    def __init__(self, settings):
        self.settings = settings
        self.producer = Producer({"bootstrap.servers": settings.bootstrap_servers,
                                  "enable.idempotence": True, "acks": "all"})
        self.accounts: dict[str, list] = {}  # account -> [version, balance, currency]
        self.now = T0
        self.placed: list[Placed] = []

    def _emit(self, cls, account_id: str, amount: int, balance_change: int, at: int | None,
              command_id: str, **extra) -> Placed:
        if at is None:
            self.now += 10
            at = self.now
        else:
            self.now = max(self.now, at)
        version, balance, currency = self.accounts[account_id]
        event = cls(account_id=account_id, sequence=version + 1, command_id=command_id,
                    currency=currency, amount_minor=amount,
                    balance_after_minor=balance + balance_change, recorded_at_ms=at, **extra)
        self.accounts[account_id] = [version + 1, balance + balance_change, currency]
        return self._produce(event)

    def _produce(self, record) -> Placed:
        raw = codec.encode_outcome(record, hashlib.sha256(record.command_id.encode()).hexdigest())
        key = record.account_id.encode()
        placed = Placed(record, raw, partition_for(key, self.settings.partitions))

        def delivered(err, msg):
            assert err is None, err
            placed.offset = msg.offset()

        self.producer.produce(self.settings.events_topic, raw, key, partition=placed.partition,
                              on_delivery=delivered)
        self.placed.append(placed)
        return placed

    def open(self, account_id: str, currency: str = "EUR", at: int | None = None) -> Placed:
        self.accounts[account_id] = [0, 0, currency]
        return self._emit(domain.AccountOpened, account_id, 0, 0, at, f"open-{account_id}",
                          overdraft_limit_minor=0)

    def credit(self, account_id: str, amount: int, at: int | None = None) -> Placed:
        return self._emit(domain.Credited, account_id, amount, amount, at,
                          f"credit-{account_id}-{self.now}")

    def debited(self, source: str, dest: str, transfer_id: str, amount: int,
                at: int | None = None) -> Placed:
        return self._emit(domain.TransferDebited, source, amount, -amount, at, transfer_id,
                          transfer_id=transfer_id, counterparty_account_id=dest)

    def credited(self, dest: str, source: str, transfer_id: str, amount: int,
                 at: int | None = None) -> Placed:
        return self._emit(domain.TransferCredited, dest, amount, amount, at,
                          f"{transfer_id}#credit:{source}",
                          transfer_id=transfer_id, counterparty_account_id=source)

    def completed(self, source: str, dest: str, transfer_id: str, amount: int,
                  at: int | None = None) -> Placed:
        return self._emit(domain.TransferCompleted, source, amount, 0, at,
                          f"{transfer_id}#settle",
                          transfer_id=transfer_id, counterparty_account_id=dest)

    def refunded(self, source: str, dest: str, transfer_id: str, amount: int,
                 at: int | None = None) -> Placed:
        return self._emit(domain.TransferRefunded, source, amount, amount, at,
                          f"{transfer_id}#settle", transfer_id=transfer_id,
                          counterparty_account_id=dest, reason="account_closed")

    def rejected(self, account_id: str, command_id: str, command_type: str,
                 reason: str) -> Placed:
        self.now += 10
        return self._produce(domain.CommandRejected(
            account_id=account_id, command_id=command_id, command_type=command_type,
            reason=reason, detail="", recorded_at_ms=self.now))

    def done(self) -> None:
        assert 0 == self.producer.flush(30)
        assert all(p.offset >= 0 for p in self.placed)


def counts(report: str) -> dict[str, int]:
    """The per-kind counts at the end of a FAILED report (empty if OK)."""
    if "problems by kind:" not in report:
        return {}
    tail = report.split("problems by kind:", 1)[1]
    return {kind: int(n) for kind, n in re.findall(r"^  (\w+): (\d+)$", tail, re.M)}


def lines(report: str, kind: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith(f"  - {kind}: ")]


def run_verify(settings, capsys, data_dir=None, **kwargs) -> tuple[int, str]:
    capsys.readouterr()
    code = replay.verify(settings, data_dir, **kwargs)
    return code, capsys.readouterr().out


def funded(log: LogBuilder, *accounts: str, amount: int = 100_000) -> None:
    for account_id in accounts:
        log.open(account_id)
        log.credit(account_id, amount)


# --------------------------------------------------------------------------
# A clean log
# --------------------------------------------------------------------------


def test_clean_log_with_completed_refunded_pending_and_shared_ids_passes(settings, ledger_cli):
    log = LogBuilder(settings)
    funded(log, "src-1", "src-2")
    log.open("dst")
    log.open("gone")
    # Completed, from two sources under the same transfer id, to the same destination.
    log.debited("src-1", "dst", "t-1", 300)
    log.debited("src-2", "dst", "t-1", 200)
    log.credited("dst", "src-2", "t-1", 200)
    log.credited("dst", "src-1", "t-1", 300)
    log.completed("src-2", "dst", "t-1", 200)
    log.completed("src-1", "dst", "t-1", 300)
    # Refused at the destination, refunded at the source.
    log.debited("src-1", "gone", "t-2", 100)
    log.rejected("gone", "t-2#credit:src-1", "transfer_credit", "account_closed")
    log.refunded("src-1", "gone", "t-2", 100)
    # Pending, credited and not: recent, so not too long.
    log.debited("src-2", "dst", "t-3", 50)
    log.debited("src-2", "dst", "t-4", 60)
    log.credited("dst", "src-2", "t-4", 60)
    log.credit("dst", 1, at=log.now + 299_000)  # the newest event: 299 s later
    log.done()

    done = ledger_cli(settings, "verify")
    assert (0, "verify: OK") == (done.returncode, done.stdout[:10]), done.stdout + done.stderr
    assert {} == counts(done.stdout)


# --------------------------------------------------------------------------
# Forged or broken transfer legs
# --------------------------------------------------------------------------


def test_forged_credit_is_credit_without_debit_and_negative_in_flight(settings, ledger_cli):
    """Issue 8: a credit leg produced to the legs topic by hand was applied
    as transfer_credited, and verify said OK (EUR -3,000,000 in flight)."""
    log = LogBuilder(settings)
    funded(log, "victim")
    log.open("thief")
    forged = log.credited("thief", "victim", "forged-1", 3_000_000)
    log.done()

    done = ledger_cli(settings, "verify")
    assert 1 == done.returncode, done.stdout + done.stderr
    assert {"credit_without_debit": 1, "negative_in_flight": 1} == counts(done.stdout)
    [line] = lines(done.stdout, "credit_without_debit")
    assert "'forged-1' from victim to thief" in line
    assert f"thief@2 ({forged.where})" in line and "EUR 3000000" in line
    [line] = lines(done.stdout, "negative_in_flight")
    assert "EUR: in flight -3000000" in line and forged.where in line


def test_transfer_ids_are_scoped_per_source(settings, capsys):
    """A credit naming source B cannot borrow source A's debit of the same transfer id."""
    log = LogBuilder(settings)
    funded(log, "a", "b")
    log.open("d")
    log.debited("a", "d", "t-1", 100)
    log.credited("d", "a", "t-1", 100)
    log.completed("a", "d", "t-1", 100)
    forged = log.credited("d", "b", "t-1", 100)  # b never debited t-1
    log.done()

    code, out = run_verify(settings, capsys)
    assert 1 == code
    assert {"credit_without_debit": 1, "negative_in_flight": 1} == counts(out)
    [line] = lines(out, "credit_without_debit")
    assert "'t-1' from b to d" in line and forged.where in line
    assert "no transfer_debited at b" in line


def test_credit_of_another_amount_than_debited(settings, capsys):
    log = LogBuilder(settings)
    funded(log, "s")
    log.open("d")
    debit = log.debited("s", "d", "t-5", 100)
    credit = log.credited("d", "s", "t-5", 150)
    log.done()

    code, out = run_verify(settings, capsys)
    assert 1 == code
    assert {"credit_without_debit": 1, "negative_in_flight": 1} == counts(out)
    [line] = lines(out, "credit_without_debit")
    assert credit.where in line and debit.where in line and "EUR 150" in line


def test_completed_without_credit(settings, capsys):
    log = LogBuilder(settings)
    funded(log, "s")
    log.open("d")
    log.debited("s", "d", "t-6", 100)
    done = log.completed("s", "d", "t-6", 100)
    log.done()

    code, out = run_verify(settings, capsys)
    assert 1 == code
    assert {"settle_without_credit": 1} == counts(out)
    [line] = lines(out, "settle_without_credit")
    assert "'t-6' from s to d" in line and done.where in line
    assert "no transfer_credited at d" in line


def test_refund_without_debit(settings, capsys):
    log = LogBuilder(settings)
    funded(log, "s")
    log.open("d")
    refund = log.refunded("s", "d", "ghost", 500)
    log.done()

    code, out = run_verify(settings, capsys)
    assert 1 == code
    assert {"settle_without_debit": 1, "negative_in_flight": 1} == counts(out)
    assert refund.where in lines(out, "settle_without_debit")[0]


def test_credited_and_refunded(settings, capsys):
    log = LogBuilder(settings)
    funded(log, "s")
    log.open("d")
    log.debited("s", "d", "t-7", 100)
    credit = log.credited("d", "s", "t-7", 100)
    refund = log.refunded("s", "d", "t-7", 100)
    log.done()

    code, out = run_verify(settings, capsys)
    assert 1 == code
    assert {"credited_and_refunded": 1, "negative_in_flight": 1} == counts(out)
    [line] = lines(out, "credited_and_refunded")
    assert credit.where in line and refund.where in line


@pytest.mark.parametrize("second", ["completed", "refunded"])
def test_settled_twice(settings, capsys, second):
    log = LogBuilder(settings)
    funded(log, "s")
    log.open("d")
    log.debited("s", "d", "t-8", 100)
    if second == "completed":
        log.credited("d", "s", "t-8", 100)
        first = log.completed("s", "d", "t-8", 100)
        again = log.completed("s", "d", "t-8", 100)
        expected = {"transfer_settled_twice": 1}
    else:
        first = log.refunded("s", "d", "t-8", 100)
        again = log.refunded("s", "d", "t-8", 100)
        expected = {"transfer_settled_twice": 1, "negative_in_flight": 1}
    log.done()

    code, out = run_verify(settings, capsys)
    assert 1 == code
    assert expected == counts(out)
    [line] = lines(out, "transfer_settled_twice")
    assert first.where in line and again.where in line and "2 times" in line


def test_credited_twice(settings, capsys):
    log = LogBuilder(settings)
    funded(log, "s")
    log.open("d")
    log.debited("s", "d", "t-9", 100)
    first = log.credited("d", "s", "t-9", 100)
    again = log.credited("d", "s", "t-9", 100)
    log.completed("s", "d", "t-9", 100)
    log.done()

    code, out = run_verify(settings, capsys)
    assert 1 == code
    assert {"transfer_credited_twice": 1, "negative_in_flight": 1} == counts(out)
    [line] = lines(out, "transfer_credited_twice")
    assert first.where in line and again.where in line


def test_in_flight_below_zero_for_a_while(settings, capsys):
    """Every leg matches, but the credit was recorded a second before the
    debit: as of that second, in flight was negative (replay --as-of shows it)."""
    log = LogBuilder(settings)
    funded(log, "s")
    log.open("d")
    credit = log.credited("d", "s", "t-10", 100, at=T0 + 60_000)
    log.debited("s", "d", "t-10", 100, at=T0 + 61_000)
    log.completed("s", "d", "t-10", 100, at=T0 + 62_000)
    log.done()

    code, out = run_verify(settings, capsys)
    assert 1 == code
    assert {"negative_in_flight": 1} == counts(out)
    [line] = lines(out, "negative_in_flight")
    assert "EUR: in flight -100 as of" in line and credit.where in line
    assert line.endswith("at the end of the log 0")


def test_transfer_pending_too_long(settings, ledger_cli):
    log = LogBuilder(settings)
    funded(log, "s")
    log.open("d")
    uncredited = log.debited("s", "d", "t-11", 100, at=T0 + 10_000)
    credited = log.debited("s", "d", "t-12", 200, at=T0 + 10_000)
    log.credited("d", "s", "t-12", 200, at=T0 + 11_000)
    log.credit("d", 1, at=T0 + 10_000 + 301_000)  # the newest event
    log.done()

    done = ledger_cli(settings, "verify")
    assert 1 == done.returncode, done.stdout + done.stderr
    assert {"transfer_pending_too_long": 2} == counts(done.stdout)
    found = lines(done.stdout, "transfer_pending_too_long")
    assert uncredited.where in found[0] and "301.0 s later" in found[0]
    assert credited.where in found[1]
    # The limit is an option; relative to the newest event, not the clock.
    relaxed = ledger_cli(settings, "verify", "--pending-max-s", "400")
    assert (0, "verify: OK") == (relaxed.returncode, relaxed.stdout[:10]), relaxed.stdout


# --------------------------------------------------------------------------
# A worker's RocksDB store against the log up to its recorded offset
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["ahead", "behind", "tampered"])
def test_store_compared_with_log_at_its_recorded_offset(settings, capsys, case):
    from streams.processor import apply_logged
    from streams.store import Batch, PartitionStore, account_key, encode_state

    log = LogBuilder(settings)
    events = [log.open("acct"), log.credit("acct", 100), log.credit("acct", 50)]
    log.done()
    p = events[0].partition
    store = PartitionStore(settings.data_dir / settings.events_topic / f"p{p}")
    batch = Batch(store)
    applied, offset = {"ahead": (3, events[1].offset + 1), "behind": (2, events[2].offset + 1),
                       "tampered": (3, events[2].offset + 1)}[case]
    for placed in events[:applied]:
        apply_logged(batch, placed.raw)
    store.apply(batch, offset)
    if case == "tampered":
        state = store.account("acct")
        store._db[account_key("acct")] = encode_state(
            replace(state, balance_minor=state.balance_minor + 1))
    store.close()

    code, out = run_verify(settings, capsys, data_dir=settings.data_dir)
    assert 1 == code, out
    if case == "ahead":
        assert {"store_ahead_of_recorded_offset": 1} == counts(out)
        [line] = lines(out, "store_ahead_of_recorded_offset")
        assert f"p{p} acct: store version 3, log version 2 up to the store's recorded " \
               f"offset p{p}@{offset}" in line
        assert events[2].where in line
    elif case == "behind":
        assert {"store_behind_recorded_offset": 1} == counts(out)
        [line] = lines(out, "store_behind_recorded_offset")
        assert f"p{p} acct: store version 2, log version 3" in line and events[2].where in line
    else:
        assert {"store_mismatch": 1} == counts(out)
        [line] = lines(out, "store_mismatch")
        assert f"p{p} acct: store version 3, log version 3" in line
        assert "balance_minor store 151 log 150" in line
    # The same store at the right offset is fine.
    if case != "tampered":
        store = PartitionStore(settings.data_dir / settings.events_topic / f"p{p}")
        batch = Batch(store)
        for placed in events:
            apply_logged(batch, placed.raw)
        store.apply(batch, events[2].offset + 1)
        store.close()
        code, out = run_verify(settings, capsys, data_dir=settings.data_dir)
        assert 0 == code, out
        assert "1 account states in" in out
