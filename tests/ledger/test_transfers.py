"""Transfers in the pure domain: the debit at the source, the credit leg at the
destination, the settle leg back at the source.

A transfer is applied in three steps, each a ``decide`` on ONE account:

1. ``Transfer`` at the source: refused (a Rejection, in REJECTION_ORDER) or
   ``TransferDebited``: the balance goes down, ``pending_out_minor`` goes up.
2. ``credit_leg(transfer)`` at the destination: ``TransferCredited``, or a
   Rejection whose reason travels back in the settle leg.
3. ``settle_leg(leg, completed, reason)`` at the source: ``TransferCompleted``
   (balance unchanged, pending down) or ``TransferRefunded`` (money back,
   pending down, reason kept). Never refused; without a pending debit it is a
   bug upstream and raises ValueError.

The tables pin each path; the property at the end runs random credits,
debits, closes and transfers over a few accounts, delivers each transfer's
legs later and in random order, and checks that no money is created or lost.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.domain import (
    AMOUNT_MAX_MINOR,
    BALANCE_MAX_MINOR,
    BALANCE_MIN_MINOR,
    REJECTION_ORDER,
    AccountClosed,
    AccountOpened,
    AccountState,
    AccountStatus,
    CloseAccount,
    Credit,
    Credited,
    Debit,
    Debited,
    OpenAccount,
    Rejection,
    RejectionReason as R,
    Transfer,
    TransferCompleted,
    TransferCreditLeg,
    TransferCredited,
    TransferDebited,
    TransferRefunded,
    TransferSettleLeg,
    command_hash,
    credit_leg,
    decide,
    evolve,
    fold,
    settle_leg,
)

SRC = "acc-1"
DST = "acc-2"
NOW = 1_700_000_000_000
EARLIER = NOW - 10_000
META = (("invoice", "F-17"), ("note", "rent"))


def account(
    balance: int = 0,
    *,
    overdraft: int = 0,
    currency: str = "EUR",
    version: int = 1,
    status: AccountStatus = AccountStatus.open,
    pending: int = 0,
    account_id: str = SRC,
    updated_at_ms: int = EARLIER,
) -> AccountState:
    """An account state built directly, without replaying events."""
    return AccountState(
        account_id=account_id,
        currency=currency,
        balance_minor=balance,
        overdraft_limit_minor=overdraft,
        version=version,
        status=status,
        opened_at_ms=EARLIER,
        updated_at_ms=updated_at_ms,
        pending_out_minor=pending,
    )


def dest(balance: int = 0, **kw) -> AccountState:
    return account(balance, account_id=DST, **kw)


CLOSED_SRC = account(status=AccountStatus.closed, version=2)
CLOSED_DST = dest(status=AccountStatus.closed, version=2)


def transfer(amount=100, currency="EUR", *, from_=SRC, to=DST, transfer_id="t-1", metadata=()):
    return Transfer(transfer_id, from_, to, amount, currency, metadata)


def leg_of(amount=100, currency="EUR", **kw) -> TransferCreditLeg:
    return credit_leg(transfer(amount, currency, **kw))


def outcome(result):
    """The reason of a rejection, or the events unchanged."""
    if isinstance(result, Rejection):
        assert isinstance(result.reason, R)
        assert isinstance(result.detail, str)
        # bounded: a detail never carries an unbounded input (ids are cut at 80)
        assert len(result.detail) <= 200
        return result.reason
    assert isinstance(result, tuple) and len(result) == 1, "one event per step"
    return result


# --------------------------------------------------------------------------
# Commands and legs
# --------------------------------------------------------------------------


def test_transfer_is_applied_at_its_source():
    t = transfer(metadata=META)
    assert t.account_id == SRC
    assert t.type == "transfer"
    assert t.metadata == META


def test_legs_are_built_from_the_transfer():
    t = transfer(250, "USD", transfer_id="t-9")
    leg = credit_leg(t)
    assert leg == TransferCreditLeg(
        command_id=f"t-9#credit:{SRC}", account_id=DST, transfer_id="t-9",
        from_account_id=SRC, amount_minor=250, currency="USD",
    )
    assert settle_leg(leg, completed=True) == TransferSettleLeg(
        command_id="t-9#settle", account_id=SRC, transfer_id="t-9", to_account_id=DST,
        amount_minor=250, currency="USD", completed=True, reason="",
    )
    assert settle_leg(leg, False, "account_closed") == TransferSettleLeg(
        command_id="t-9#settle", account_id=SRC, transfer_id="t-9", to_account_id=DST,
        amount_minor=250, currency="USD", completed=False, reason="account_closed",
    )


def test_leg_ids_are_outside_the_id_alphabet():
    """Leg ids contain '#', which the id pattern refuses: a well-formed client
    id can never be a leg's id."""
    leg = leg_of()
    settle = settle_leg(leg, True)
    assert "#" in leg.command_id and "#" in settle.command_id
    for leg_id in (leg.command_id, settle.command_id):
        # a command carrying the leg id as its account id is refused as malformed
        assert outcome(decide(None, OpenAccount("c", leg_id, "EUR"), NOW)) == R.invalid_account_id


def test_transfer_metadata_is_part_of_the_command_hash():
    plain = transfer()
    assert command_hash(plain) == command_hash(transfer())
    assert command_hash(plain) != command_hash(transfer(metadata=META))
    assert command_hash(transfer(metadata=META)) == command_hash(transfer(metadata=META))
    assert command_hash(plain) != command_hash(leg_of())


# --------------------------------------------------------------------------
# Step 1: the transfer at the source
# --------------------------------------------------------------------------

ACCEPTED = [
    pytest.param(
        account(300, version=3), transfer(100),
        TransferDebited(SRC, 4, "t-1", "EUR", 100, 200, NOW, "t-1", DST, ()),
        id="within-balance",
    ),
    pytest.param(
        account(300, version=3), transfer(100, metadata=META),
        TransferDebited(SRC, 4, "t-1", "EUR", 100, 200, NOW, "t-1", DST, META),
        id="metadata-carried-into-the-event",
    ),
    pytest.param(
        account(300), transfer(300),
        TransferDebited(SRC, 2, "t-1", "EUR", 300, 0, NOW, "t-1", DST, ()),
        id="to-exactly-zero-without-overdraft",
    ),
    pytest.param(
        account(300, overdraft=200), transfer(500),
        TransferDebited(SRC, 2, "t-1", "EUR", 500, -200, NOW, "t-1", DST, ()),
        id="to-exactly-minus-overdraft-limit",
    ),
    pytest.param(
        account(-100, overdraft=200), transfer(100),
        TransferDebited(SRC, 2, "t-1", "EUR", 100, -200, NOW, "t-1", DST, ()),
        id="from-overdrawn-to-exactly-the-limit",
    ),
    pytest.param(
        account(0, overdraft=AMOUNT_MAX_MINOR), transfer(AMOUNT_MAX_MINOR),
        TransferDebited(SRC, 2, "t-1", "EUR", AMOUNT_MAX_MINOR, -AMOUNT_MAX_MINOR, NOW,
                        "t-1", DST, ()),
        id="max-amount-into-max-overdraft",
    ),
    pytest.param(
        account(300, pending=50, version=5), transfer(100),
        TransferDebited(SRC, 6, "t-1", "EUR", 100, 200, NOW, "t-1", DST, ()),
        id="with-another-transfer-pending",
    ),
    pytest.param(
        account(500, currency="USD"), transfer(1, "USD", to="Az09._:@-"),
        TransferDebited(SRC, 2, "t-1", "USD", 1, 499, NOW, "t-1", "Az09._:@-", ()),
        id="to-id-with-all-allowed-punctuation",
    ),
    pytest.param(
        account(500), transfer(1, to="b" * 64),
        TransferDebited(SRC, 2, "t-1", "EUR", 1, 499, NOW, "t-1", "b" * 64, ()),
        id="to-id-64-chars",
    ),
    pytest.param(
        account(500, updated_at_ms=NOW + 5), transfer(1),
        TransferDebited(SRC, 2, "t-1", "EUR", 1, 499, NOW + 5, "t-1", DST, ()),
        id="clock-behind-account-time",
    ),
]


@pytest.mark.parametrize("state, command, expected", ACCEPTED)
def test_accepted_transfer(state, command, expected):
    """The source is debited at once; the destination is not known here."""
    actual = outcome(decide(state, command, NOW))
    assert (expected,) == actual


@pytest.mark.parametrize("state, command, expected", ACCEPTED)
def test_transfer_debited_folds_into_pending_out(state, command, expected):
    (event,) = decide(state, command, NOW)
    expected_state = replace(
        state,
        balance_minor=state.balance_minor - command.amount_minor,
        pending_out_minor=state.pending_out_minor + command.amount_minor,
        version=state.version + 1,
        updated_at_ms=max(NOW, state.updated_at_ms),
    )
    assert expected_state == evolve(state, event)


# Each row breaks exactly one rule; rows are in REJECTION_ORDER.
TRANSFER_REJECTIONS = [
    # invalid_account_id: the source first, then the destination
    pytest.param(None, transfer(from_=""), R.invalid_account_id, id="from-empty"),
    pytest.param(None, transfer(from_="a/b"), R.invalid_account_id, id="from-slash"),
    pytest.param(None, transfer(from_="a" * 65), R.invalid_account_id, id="from-65-chars"),
    pytest.param(None, transfer(from_="acc-1\n"), R.invalid_account_id, id="from-trailing-newline"),
    pytest.param(None, transfer(from_=None), R.invalid_account_id, id="from-none"),
    pytest.param(account(500), transfer(to=""), R.invalid_account_id, id="to-empty"),
    pytest.param(account(500), transfer(to="a b"), R.invalid_account_id, id="to-space"),
    pytest.param(account(500), transfer(to="b" * 65), R.invalid_account_id, id="to-65-chars"),
    pytest.param(account(500), transfer(to="acc-2\n"), R.invalid_account_id, id="to-trailing-newline"),
    pytest.param(account(500), transfer(to="caf\u00e9"), R.invalid_account_id, id="to-non-ascii"),
    pytest.param(account(500), transfer(to=None), R.invalid_account_id, id="to-none"),
    pytest.param(account(500), transfer(to=7), R.invalid_account_id, id="to-int"),
    # invalid_currency
    pytest.param(account(500), transfer(currency="eur"), R.invalid_currency, id="currency-lowercase"),
    pytest.param(account(500), transfer(currency="EURO"), R.invalid_currency, id="currency-4-letters"),
    pytest.param(account(500), transfer(currency="EUR\n"), R.invalid_currency,
                 id="currency-trailing-newline"),
    pytest.param(account(500), transfer(currency=None), R.invalid_currency, id="currency-none"),
    # amount_must_be_positive
    pytest.param(account(500), transfer(0), R.amount_must_be_positive, id="amount-zero"),
    pytest.param(account(500), transfer(-1), R.amount_must_be_positive, id="amount-negative"),
    pytest.param(account(500), transfer(1.0), R.amount_must_be_positive, id="amount-float"),
    pytest.param(account(500), transfer(True), R.amount_must_be_positive, id="amount-bool"),
    pytest.param(account(500), transfer("1"), R.amount_must_be_positive, id="amount-str"),
    pytest.param(account(500), transfer(None), R.amount_must_be_positive, id="amount-none"),
    # amount_too_large
    pytest.param(account(0, overdraft=AMOUNT_MAX_MINOR), transfer(2**63), R.amount_too_large,
                 id="amount-2**63"),
    # same_account
    pytest.param(account(500), transfer(to=SRC), R.same_account, id="to-itself"),
    # unknown_account
    pytest.param(None, transfer(), R.unknown_account, id="source-unknown"),
    # account_closed
    pytest.param(CLOSED_SRC, transfer(), R.account_closed, id="source-closed"),
    # currency_mismatch
    pytest.param(account(500), transfer(currency="USD"), R.currency_mismatch,
                 id="currency-mismatch"),
    # insufficient_funds
    pytest.param(account(0), transfer(1), R.insufficient_funds, id="empty-no-overdraft"),
    pytest.param(account(300), transfer(301), R.insufficient_funds, id="one-past-balance"),
    pytest.param(account(300, overdraft=200), transfer(501), R.insufficient_funds,
                 id="one-past-overdraft"),
    pytest.param(account(-200, overdraft=200), transfer(1), R.insufficient_funds,
                 id="at-overdraft-limit"),
    pytest.param(account(100, pending=900), transfer(101), R.insufficient_funds,
                 id="pending-money-is-already-gone"),
    pytest.param(
        account(-AMOUNT_MAX_MINOR, overdraft=AMOUNT_MAX_MINOR), transfer(AMOUNT_MAX_MINOR),
        R.insufficient_funds, id="past-max-overdraft-below-int64",
    ),
]

# The reasons a transfer can be refused with, in the order they are checked.
TRANSFER_REASONS = [
    R.invalid_account_id, R.invalid_currency, R.amount_must_be_positive, R.amount_too_large,
    R.same_account, R.unknown_account, R.account_closed, R.currency_mismatch,
    R.insufficient_funds,
]


@pytest.mark.parametrize("state, command, expected", TRANSFER_REJECTIONS)
def test_rejected_transfer(state, command, expected):
    actual = outcome(decide(state, command, NOW))
    assert expected == actual


def test_transfer_rejection_table_is_in_rejection_order():
    seen = []
    for param in TRANSFER_REJECTIONS:
        if param.values[2] not in seen:
            seen.append(param.values[2])
    assert TRANSFER_REASONS == seen
    assert [r for r in REJECTION_ORDER if r in TRANSFER_REASONS] == seen


TRANSFER_PRECEDENCE = [
    pytest.param(None, transfer(from_="a/b", to="c d", currency="x", amount=0),
                 R.invalid_account_id, id="bad-from+bad-to+bad-currency+zero"),
    pytest.param(account(), transfer(to="c d", currency="x"), R.invalid_account_id,
                 id="bad-to+bad-currency"),
    pytest.param(account(), transfer(to=SRC, currency="x", amount=0), R.invalid_currency,
                 id="bad-currency+zero+same-account"),
    pytest.param(None, transfer(to=SRC, amount=-5), R.amount_must_be_positive,
                 id="negative+same-account+unknown"),
    pytest.param(CLOSED_SRC, transfer(to=SRC, amount=2**63), R.amount_too_large,
                 id="too-large+same-account+closed"),
    pytest.param(None, transfer(to=SRC), R.same_account, id="same-account+unknown"),
    pytest.param(CLOSED_SRC, transfer(to=SRC, currency="USD"), R.same_account,
                 id="same-account+closed+mismatch"),
    pytest.param(CLOSED_SRC, transfer(currency="USD", amount=10**6), R.account_closed,
                 id="closed+mismatch+insufficient"),
    pytest.param(account(0), transfer(currency="USD", amount=10**6), R.currency_mismatch,
                 id="mismatch+insufficient"),
]


@pytest.mark.parametrize("state, command, expected", TRANSFER_PRECEDENCE)
def test_first_failing_transfer_check_wins(state, command, expected):
    actual = outcome(decide(state, command, NOW))
    assert expected == actual


def test_transfer_to_an_unknown_or_closed_destination_is_accepted_at_the_source():
    """The source cannot see the destination: its credit leg decides."""
    for to in ("never-opened", "closed-one"):
        (event,) = decide(account(100), transfer(10, to=to), NOW)
        assert (type(event), event.counterparty_account_id) == (TransferDebited, to)


# --------------------------------------------------------------------------
# Step 2: the credit leg at the destination
# --------------------------------------------------------------------------

CREDIT_ACCEPTED = [
    pytest.param(
        dest(50, version=2), leg_of(100),
        TransferCredited(DST, 3, f"t-1#credit:{SRC}", "EUR", 100, 150, NOW, "t-1", SRC),
        id="credited",
    ),
    pytest.param(
        dest(-500, overdraft=500), leg_of(100),
        TransferCredited(DST, 2, f"t-1#credit:{SRC}", "EUR", 100, -400, NOW, "t-1", SRC),
        id="credited-while-overdrawn",
    ),
    pytest.param(
        dest(BALANCE_MAX_MINOR - 100), leg_of(100),
        TransferCredited(DST, 2, f"t-1#credit:{SRC}", "EUR", 100, BALANCE_MAX_MINOR, NOW, "t-1", SRC),
        id="credited-to-exactly-max-balance",
    ),
    pytest.param(
        dest(0, pending=70, currency="USD"), leg_of(5, "USD"),
        TransferCredited(DST, 2, f"t-1#credit:{SRC}", "USD", 5, 5, NOW, "t-1", SRC),
        id="destination-own-pending-untouched",
    ),
    pytest.param(
        dest(0, updated_at_ms=NOW + 9), leg_of(1),
        TransferCredited(DST, 2, f"t-1#credit:{SRC}", "EUR", 1, 1, NOW + 9, "t-1", SRC),
        id="clock-behind-account-time",
    ),
]


@pytest.mark.parametrize("state, leg, expected", CREDIT_ACCEPTED)
def test_credit_leg_accepted(state, leg, expected):
    actual = outcome(decide(state, leg, NOW))
    assert (expected,) == actual


@pytest.mark.parametrize("state, leg, expected", CREDIT_ACCEPTED)
def test_transfer_credited_folds_into_balance_only(state, leg, expected):
    (event,) = decide(state, leg, NOW)
    expected_state = replace(
        state,
        balance_minor=state.balance_minor + leg.amount_minor,
        version=state.version + 1,
        updated_at_ms=max(NOW, state.updated_at_ms),
    )
    assert expected_state == evolve(state, event)


CREDIT_REJECTIONS = [
    pytest.param(None, leg_of(), R.unknown_account, id="destination-unknown"),
    pytest.param(CLOSED_DST, leg_of(), R.account_closed, id="destination-closed"),
    pytest.param(dest(0, currency="USD"), leg_of(), R.currency_mismatch,
                 id="destination-other-currency"),
    pytest.param(dest(BALANCE_MAX_MINOR), leg_of(1), R.balance_overflow,
                 id="one-past-int64"),
    pytest.param(dest(1), leg_of(AMOUNT_MAX_MINOR), R.balance_overflow,
                 id="max-amount-onto-one"),
    # precedence
    pytest.param(replace(CLOSED_DST, currency="USD", balance_minor=BALANCE_MAX_MINOR),
                 leg_of(1), R.account_closed, id="closed+mismatch+overflow"),
    pytest.param(dest(BALANCE_MAX_MINOR, currency="USD"), leg_of(1), R.currency_mismatch,
                 id="mismatch+overflow"),
]


@pytest.mark.parametrize("state, leg, expected", CREDIT_REJECTIONS)
def test_credit_leg_rejected(state, leg, expected):
    actual = outcome(decide(state, leg, NOW))
    assert expected == actual


# --------------------------------------------------------------------------
# Step 3: the settle leg at the source
# --------------------------------------------------------------------------

SETTLE = [
    pytest.param(
        account(200, pending=100, version=4), settle_leg(leg_of(100), completed=True),
        TransferCompleted(SRC, 5, "t-1#settle", "EUR", 100, 200, NOW, "t-1", DST),
        id="completed",
    ),
    pytest.param(
        account(200, pending=100, version=4), settle_leg(leg_of(100), False, "account_closed"),
        TransferRefunded(SRC, 5, "t-1#settle", "EUR", 100, 300, NOW, "t-1", DST,
                         "account_closed"),
        id="refunded",
    ),
    pytest.param(
        account(0, pending=300), settle_leg(leg_of(100), completed=True),
        TransferCompleted(SRC, 2, "t-1#settle", "EUR", 100, 0, NOW, "t-1", DST),
        id="completed-one-of-several-pending",
    ),
    pytest.param(
        account(-200, overdraft=200, pending=500), settle_leg(leg_of(500), False, "x"),
        TransferRefunded(SRC, 2, "t-1#settle", "EUR", 500, 300, NOW, "t-1", DST, "x"),
        id="refund-out-of-overdraft",
    ),
    pytest.param(
        account(5, pending=7, updated_at_ms=NOW + 3), settle_leg(leg_of(7), completed=True),
        TransferCompleted(SRC, 2, "t-1#settle", "EUR", 7, 5, NOW + 3, "t-1", DST),
        id="clock-behind-account-time",
    ),
]


@pytest.mark.parametrize("state, leg, expected", SETTLE)
def test_settle_leg(state, leg, expected):
    actual = outcome(decide(state, leg, NOW))
    assert (expected,) == actual


@pytest.mark.parametrize("state, leg, expected", SETTLE)
def test_settle_folds_pending_down(state, leg, expected):
    """Completed: balance unchanged. Refunded: the money is back. Pending down both ways."""
    (event,) = decide(state, leg, NOW)
    back = 0 if leg.completed else leg.amount_minor
    expected_state = replace(
        state,
        balance_minor=state.balance_minor + back,
        pending_out_minor=state.pending_out_minor - leg.amount_minor,
        version=state.version + 1,
        updated_at_ms=max(NOW, state.updated_at_ms),
    )
    assert expected_state == evolve(state, event)


@pytest.mark.parametrize("reason", [r.value for r in (
    R.unknown_account, R.account_closed, R.currency_mismatch, R.balance_overflow,
)])
def test_refund_keeps_the_destination_reason(reason):
    (event,) = decide(account(0, pending=100), settle_leg(leg_of(100), False, reason), NOW)
    assert (type(event), event.reason, event.balance_after_minor) == (
        TransferRefunded, reason, 100,
    )


SETTLE_WITHOUT_PENDING = [
    pytest.param(None, id="source-unknown"),
    pytest.param(account(500), id="nothing-pending"),
    pytest.param(account(500, pending=99), id="less-pending-than-the-amount"),
]


@pytest.mark.parametrize("completed", [True, False], ids=["completed", "failed"])
@pytest.mark.parametrize("state", SETTLE_WITHOUT_PENDING)
def test_settle_without_a_pending_debit_raises(state, completed):
    """A bug upstream, not a client error: ValueError, never a Rejection."""
    leg = settle_leg(leg_of(100, transfer_id="t-42"), completed, "" if completed else "x")
    with pytest.raises(ValueError, match="t-42"):
        decide(state, leg, NOW)


# --------------------------------------------------------------------------
# Stories: several steps on two accounts
# --------------------------------------------------------------------------


def step(state, command, now_ms=NOW):
    result = decide(state, command, now_ms)
    assert not isinstance(result, Rejection), result
    (event,) = result
    return evolve(state, event), event


def opened(account_id, balance=0, currency="EUR", overdraft=0):
    state, _ = step(None, OpenAccount(f"open-{account_id}", account_id, currency, overdraft))
    if balance:
        state, _ = step(state, Credit(f"fund-{account_id}", account_id, balance, currency))
    return state


def test_close_refused_while_pending_then_allowed_after_completion():
    src, dst = opened(SRC, 100), opened(DST)
    t = transfer(100)
    src, _ = step(src, t)
    assert (src.balance_minor, src.pending_out_minor) == (0, 100)
    assert outcome(decide(src, CloseAccount("close-1", SRC), NOW)) == R.transfers_pending

    leg = credit_leg(t)
    dst, credited = step(dst, leg)
    assert (type(credited), dst.balance_minor) == (TransferCredited, 100)
    # still pending: the source has not heard back yet
    assert outcome(decide(src, CloseAccount("close-2", SRC), NOW)) == R.transfers_pending

    src, completed = step(src, settle_leg(leg, completed=True))
    assert type(completed) is TransferCompleted
    assert (src.balance_minor, src.pending_out_minor) == (0, 0)
    src, closed = step(src, CloseAccount("close-3", SRC))
    assert type(closed) is AccountClosed and src.status is AccountStatus.closed
    # the destination keeps the money and cannot close with it
    assert outcome(decide(dst, CloseAccount("close-4", DST), NOW)) == R.balance_not_zero


def test_refund_after_the_destination_closed():
    src, dst = opened(SRC, 100), opened(DST)
    dst, _ = step(dst, CloseAccount("close-dst", DST))
    t = transfer(60)
    src, _ = step(src, t)
    leg = credit_leg(t)
    refused = decide(dst, leg, NOW)
    assert outcome(refused) == R.account_closed
    src, refunded = step(src, settle_leg(leg, False, refused.reason.value))
    assert (type(refunded), refunded.reason) == (TransferRefunded, "account_closed")
    assert (src.balance_minor, src.pending_out_minor) == (100, 0)
    # with the money back, close is refused for the balance, not for pending
    assert outcome(decide(src, CloseAccount("close-1", SRC), NOW)) == R.balance_not_zero
    src, _ = step(src, Debit("drain", SRC, 100, "EUR"))
    src, closed = step(src, CloseAccount("close-2", SRC))
    assert type(closed) is AccountClosed


def test_two_transfers_settled_in_the_other_order():
    src = opened(SRC, 100)
    first, second = transfer(30, transfer_id="t-1"), transfer(50, transfer_id="t-2")
    src, _ = step(src, first)
    src, _ = step(src, second)
    assert (src.balance_minor, src.pending_out_minor) == (20, 80)
    src, _ = step(src, settle_leg(credit_leg(second), False, "unknown_account"))
    assert (src.balance_minor, src.pending_out_minor) == (70, 30)
    assert outcome(decide(src, CloseAccount("c", SRC), NOW)) == R.balance_not_zero
    src, _ = step(src, settle_leg(credit_leg(first), True))
    assert (src.balance_minor, src.pending_out_minor) == (70, 0)


def test_refund_never_takes_a_balance_past_int64():
    """Debit 10 by transfer, credit the source up to 2^63-1, then refund 10."""
    src = opened(SRC, 0, overdraft=10)
    t = transfer(10)
    src, _ = step(src, t)                                           # balance -10
    events = []
    for i, amount in enumerate((AMOUNT_MAX_MINOR, 10)):
        result = decide(src, Credit(f"c-{i}", SRC, amount, "EUR"), NOW)
        if not isinstance(result, Rejection):                       # a worker skips refusals
            src = evolve(src, result[0])
            events.append(result[0])
    (refund,) = decide(src, settle_leg(credit_leg(t), False, "account_closed"), NOW)
    events.append(refund)
    assert all(BALANCE_MIN_MINOR <= e.balance_after_minor <= BALANCE_MAX_MINOR for e in events)


# --------------------------------------------------------------------------
# Property: no money is created or lost, whatever order the legs arrive in
# --------------------------------------------------------------------------

ACCOUNTS = ("acc-a", "acc-b", "acc-c", "acc-d")
# Destinations also include an id never opened and a malformed one.
TARGETS = ACCOUNTS + ("acc-never", "bad/id")
_ID = re.compile(r"[A-Za-z0-9._:@-]{1,64}")

currencies = st.sampled_from(("EUR", "EUR", "EUR", "USD"))
# Amounts stay far below 2^63 (see test_refund_never_takes_a_balance_past_int64
# for what happens near it); 0, -1 and 2^63 are refused at the source.
amounts = st.one_of(st.integers(1, 1_000), st.sampled_from((0, -1, 2**63)))
transfer_amounts = st.one_of(amounts, st.just(AMOUNT_MAX_MINOR))
# Per account: opened?, currency, overdraft limit, opening credit.
setups = st.tuples(*[
    st.tuples(st.sampled_from((True, True, True, False)), currencies, st.integers(0, 500),
              st.one_of(st.just(0), st.integers(1, 5_000)))
    for _ in ACCOUNTS
])
accounts = st.sampled_from(ACCOUNTS)
operations = st.one_of(
    st.tuples(st.just("credit"), accounts, amounts, currencies),
    st.tuples(st.just("debit"), accounts, amounts, currencies),
    # any transfer, mostly refused at the source
    st.tuples(st.just("transfer"), accounts, st.sampled_from(TARGETS), transfer_amounts,
              currencies),
    # plausible transfers, mostly accepted at the source
    st.tuples(st.just("transfer"), accounts, accounts, st.integers(1, 300), st.just("EUR")),
    st.tuples(st.just("transfer"), accounts, accounts, st.integers(1, 300), st.just("EUR")),
    st.tuples(st.just("transfer"), accounts, st.sampled_from(TARGETS), st.integers(1, 300),
              currencies),
    # the whole balance away: then a close meets pending money
    st.tuples(st.just("transfer-all"), accounts, st.sampled_from(TARGETS)),
    st.tuples(st.just("sweep"), accounts),
    st.tuples(st.just("close"), accounts),
    st.tuples(st.just("close"), accounts),
    st.tuples(st.just("deliver"), st.integers(0, 1_000)),
    st.tuples(st.just("deliver"), st.integers(0, 1_000)),
    st.tuples(st.just("deliver"), st.integers(0, 1_000)),
)
# A list of short lists, flattened: long runs are common, and a failure still
# shrinks to the few operations that matter.
runs = st.lists(st.lists(operations, max_size=12), max_size=8).map(
    lambda chunks: [op for chunk in chunks for op in chunk]
)


@dataclass
class TransferRecord:
    command: Transfer
    credited: bool = False
    settled: str | None = None  # "completed" or "refunded"
    reason: str = ""


class Ledger:
    """The worker, simulated: one decide per account, legs queued and
    delivered later in whatever order the test asks for."""

    def __init__(self):
        self.states: dict[str, AccountState | None] = {a: None for a in TARGETS}
        self.events: dict[str, list] = {a: [] for a in TARGETS}
        self.queue: list[TransferCreditLeg | TransferSettleLeg] = []
        self.transfers: dict[str, TransferRecord] = {}
        self.external = Counter()      # currency -> external credits - external debits
        self.in_flight = Counter()     # currency -> debited - credited - refunded
        self.external_by_account = Counter()
        self.now = NOW
        self.count = 0

    def _apply(self, account_id, command):
        self.now += 7
        before = self.states[account_id]
        result = decide(before, command, self.now)
        if isinstance(result, Rejection):
            assert self.states[account_id] is before
            return result
        assert len(result) == 1
        for event in result:
            assert event.account_id == account_id
            self.states[account_id] = evolve(self.states[account_id], event)
            self.events[account_id].append(event)
            assert event.balance_after_minor == self.states[account_id].balance_minor
        return result[0]

    def open(self, account_id, currency, limit, funding):
        event = self._apply(account_id, OpenAccount(f"open-{account_id}", account_id,
                                                    currency, limit))
        assert type(event) is AccountOpened
        if funding:
            self._external(account_id, Credit(f"fund-{account_id}", account_id, funding,
                                              currency), Credited, +1)

    def run(self, op):
        self.count += 1
        kind, *args = op
        if kind == "credit":
            acc, amount, currency = args
            self._external(acc, Credit(f"cmd-{self.count}", acc, amount, currency), Credited, +1)
        elif kind == "debit":
            acc, amount, currency = args
            self._external(acc, Debit(f"cmd-{self.count}", acc, amount, currency), Debited, -1)
        elif kind == "sweep":
            (acc,) = args
            state = self.states[acc]
            if state is not None and state.balance_minor > 0:
                debit = Debit(f"cmd-{self.count}", acc, state.balance_minor, state.currency)
                self._external(acc, debit, Debited, -1)
        elif kind == "close":
            self._close(args[0])
        elif kind == "transfer":
            from_, to, amount, currency = args
            self._transfer(Transfer(f"t-{self.count}", from_, to, amount, currency))
        elif kind == "transfer-all":
            from_, to = args
            state = self.states[from_]
            if state is not None and state.balance_minor > 0:
                self._transfer(Transfer(f"t-{self.count}", from_, to, state.balance_minor,
                                        state.currency, (("kind", "sweep"),)))
        elif kind == "deliver":
            if self.queue:
                self.deliver(args[0] % len(self.queue))
        else:  # pragma: no cover
            raise AssertionError(kind)

    def _external(self, acc, command, event_type, sign):
        result = self._apply(acc, command)
        if isinstance(result, Rejection):
            return
        assert type(result) is event_type
        self.external[command.currency] += sign * command.amount_minor
        self.external_by_account[acc] += sign * command.amount_minor

    def _close(self, acc):
        state = self.states[acc]
        result = self._apply(acc, CloseAccount(f"cmd-{self.count}", acc))
        if state is None:
            expected = R.unknown_account
        elif state.status is AccountStatus.closed:
            expected = R.account_closed
        elif state.balance_minor != 0:
            expected = R.balance_not_zero
        elif state.pending_out_minor != 0:
            expected = R.transfers_pending
        else:
            expected = None
        if expected is None:
            assert type(result) is AccountClosed
        else:
            assert isinstance(result, Rejection) and result.reason == expected

    def _transfer(self, t: Transfer):
        state = self.states[t.from_account_id]
        result = self._apply(t.from_account_id, t)
        expected = expected_transfer_reason(state, t)
        if expected is not None:
            assert isinstance(result, Rejection) and result.reason == expected, (t, state, result)
            return
        assert type(result) is TransferDebited, (t, state, result)
        assert (result.transfer_id, result.counterparty_account_id, result.metadata) == (
            t.command_id, t.to_account_id, t.metadata)
        self.in_flight[t.currency] += t.amount_minor
        self.transfers[t.command_id] = TransferRecord(t)
        self.queue.append(credit_leg(t))

    def deliver(self, index):
        leg = self.queue.pop(index)
        record = self.transfers[leg.transfer_id]
        if isinstance(leg, TransferCreditLeg):
            assert not record.credited and record.settled is None
            state = self.states[leg.account_id]
            result = self._apply(leg.account_id, leg)
            expected = expected_credit_reason(state, leg)
            if expected is None:
                assert type(result) is TransferCredited
                assert (result.transfer_id, result.counterparty_account_id) == (
                    leg.transfer_id, leg.from_account_id)
                self.in_flight[leg.currency] -= leg.amount_minor
                record.credited = True
                self.queue.append(settle_leg(leg, completed=True))
            else:
                assert isinstance(result, Rejection) and result.reason == expected
                self.queue.append(settle_leg(leg, False, result.reason.value))
        else:
            assert record.settled is None
            # Never refused, never raises: the source has this debit pending.
            result = self._apply(leg.account_id, leg)
            if leg.completed:
                assert record.credited
                assert type(result) is TransferCompleted
                record.settled = "completed"
            else:
                assert not record.credited
                assert type(result) is TransferRefunded
                assert result.reason == leg.reason
                self.in_flight[leg.currency] -= leg.amount_minor
                record.settled, record.reason = "refunded", leg.reason

    # -- invariants ---------------------------------------------------------

    def check(self):
        balances = Counter()
        for acc, state in self.states.items():
            events = self.events[acc]
            assert fold(events) == state
            assert [e.sequence for e in events] == list(range(1, len(events) + 1))
            if state is None:
                assert acc not in self.external_by_account or self.external_by_account[acc] == 0
                continue
            balances[state.currency] += state.balance_minor
            assert state.balance_minor >= -state.overdraft_limit_minor
            assert BALANCE_MIN_MINOR <= state.balance_minor <= BALANCE_MAX_MINOR
            # pending out: exactly the transfers from here not settled yet
            assert state.pending_out_minor == sum(
                r.command.amount_minor for r in self.transfers.values()
                if r.command.from_account_id == acc and r.settled is None
            )
            # the balance, from the commands and the legs' outcomes alone
            assert state.balance_minor == (
                self.external_by_account[acc]
                - sum(r.command.amount_minor for r in self.transfers.values()
                      if r.command.from_account_id == acc and r.settled != "refunded")
                + sum(r.command.amount_minor for r in self.transfers.values()
                      if r.command.to_account_id == acc and r.credited)
            )
            if state.status is AccountStatus.closed:
                assert (state.balance_minor, state.pending_out_minor) == (0, 0)
        # per currency: money is neither created nor lost
        for currency in set(balances) | set(self.in_flight) | set(self.external):
            assert balances[currency] + self.in_flight[currency] == self.external[currency], (
                currency, balances, self.in_flight, self.external)
            assert self.in_flight[currency] >= 0


def expected_transfer_reason(state, t: Transfer):
    """The rules for a transfer at its source, stated independently."""
    for account_id in (t.from_account_id, t.to_account_id):
        if not (isinstance(account_id, str) and _ID.fullmatch(account_id)):
            return R.invalid_account_id
    if t.amount_minor <= 0:
        return R.amount_must_be_positive
    if t.amount_minor > AMOUNT_MAX_MINOR:
        return R.amount_too_large
    if t.from_account_id == t.to_account_id:
        return R.same_account
    if state is None:
        return R.unknown_account
    if state.status is AccountStatus.closed:
        return R.account_closed
    if t.currency != state.currency:
        return R.currency_mismatch
    if state.balance_minor - t.amount_minor < -state.overdraft_limit_minor:
        return R.insufficient_funds
    return None


def expected_credit_reason(state, leg: TransferCreditLeg):
    if state is None:
        return R.unknown_account
    if state.status is AccountStatus.closed:
        return R.account_closed
    if leg.currency != state.currency:
        return R.currency_mismatch
    if state.balance_minor + leg.amount_minor > BALANCE_MAX_MINOR:
        return R.balance_overflow
    return None


@settings(max_examples=300, deadline=None)
@given(setup=setups, ops=runs, data=st.data())
def test_money_is_conserved_with_legs_delivered_in_any_order(setup, ops, data):
    ledger = Ledger()
    for acc, (is_open, currency, limit, funding) in zip(ACCOUNTS, setup, strict=True):
        if is_open:
            ledger.open(acc, currency, limit, funding)
    ledger.check()

    for op in ops:
        ledger.run(op)
        ledger.check()

    # Deliver whatever is still on its way, in an order hypothesis picks.
    while ledger.queue:
        ledger.deliver(data.draw(st.integers(0, len(ledger.queue) - 1), label="deliver"))
        ledger.check()

    assert sum(ledger.in_flight.values()) == 0
    for acc, state in ledger.states.items():
        if state is not None:
            assert state.pending_out_minor == 0, acc
            assert state.balance_minor >= -state.overdraft_limit_minor, acc
    for transfer_id, record in ledger.transfers.items():
        assert record.settled in ("completed", "refunded"), transfer_id
        src_events = [e for e in ledger.events[record.command.from_account_id]
                      if getattr(e, "transfer_id", None) == transfer_id]
        dst_events = [e for e in ledger.events[record.command.to_account_id]
                      if getattr(e, "transfer_id", None) == transfer_id]
        if record.settled == "completed":
            assert [type(e) for e in src_events] == [TransferDebited, TransferCompleted]
            assert [type(e) for e in dst_events] == [TransferCredited]
        else:
            assert [type(e) for e in src_events] == [TransferDebited, TransferRefunded]
            assert dst_events == []
            assert record.reason in {r.value for r in (
                R.unknown_account, R.account_closed, R.currency_mismatch, R.balance_overflow)}
