"""Table-driven tests of the pure ledger domain: decide, evolve, command_hash.

Every table row is one story: an account in some state meets one command at
some time, and the outcome is either the events to append or the reason the
command is refused.
"""

from __future__ import annotations

import pytest

from ledger.domain import (
    AMOUNT_MAX_MINOR,
    BALANCE_MAX_MINOR,
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
    EventOutOfOrder,
    OpenAccount,
    Rejection,
    RejectionReason as R,
    Transfer,
    TransferDebited,
    command_hash,
    decide,
    evolve,
    fold,
)

ACC = "acc-1"
NOW = 1_700_000_000_000
EARLIER = NOW - 10_000


def account(
    balance: int = 0,
    *,
    overdraft: int = 0,
    currency: str = "EUR",
    version: int = 1,
    status: AccountStatus = AccountStatus.open,
    updated_at_ms: int = EARLIER,
    account_id: str = ACC,
    pending: int = 0,
    held: int = 0,
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
        held_minor=held,
    )


CLOSED = account(status=AccountStatus.closed, version=2)


def outcome(result):
    """The reason of a rejection, or the events unchanged."""
    if isinstance(result, Rejection):
        assert isinstance(result.reason, R)
        assert isinstance(result.detail, str)
        return result.reason
    assert isinstance(result, tuple) and result, "accepted commands give >= 1 event"
    return result


def credit(amount=100, currency="EUR", account_id=ACC, command_id="cmd-1"):
    return Credit(command_id, account_id, amount, currency)


def debit(amount=100, currency="EUR", account_id=ACC, command_id="cmd-1"):
    return Debit(command_id, account_id, amount, currency)


def open_(currency="EUR", overdraft=0, account_id=ACC, command_id="cmd-1"):
    return OpenAccount(command_id, account_id, currency, overdraft)


def close(account_id=ACC, command_id="cmd-1"):
    return CloseAccount(command_id, account_id)


def transfer(amount=100, currency="EUR", to="acc-2", from_=ACC, command_id="t-1"):
    return Transfer(command_id, from_, to, amount, currency)


# --------------------------------------------------------------------------
# Happy paths
# --------------------------------------------------------------------------

HAPPY = [
    pytest.param(
        None,
        OpenAccount("cmd-1", ACC, "EUR"),
        (AccountOpened(ACC, 1, "cmd-1", "EUR", 0, 0, NOW, 0),),
        id="open-without-overdraft",
    ),
    pytest.param(
        None,
        open_(currency="USD", overdraft=5_000),
        (AccountOpened(ACC, 1, "cmd-1", "USD", 0, 0, NOW, 5_000),),
        id="open-with-overdraft",
    ),
    pytest.param(
        None,
        open_(overdraft=AMOUNT_MAX_MINOR),
        (AccountOpened(ACC, 1, "cmd-1", "EUR", 0, 0, NOW, AMOUNT_MAX_MINOR),),
        id="open-with-max-overdraft",
    ),
    pytest.param(
        None,
        open_(account_id="a" * 64),
        (AccountOpened("a" * 64, 1, "cmd-1", "EUR", 0, 0, NOW, 0),),
        id="open-account-id-64-chars",
    ),
    pytest.param(
        None,
        open_(account_id="Az09._:@-"),
        (AccountOpened("Az09._:@-", 1, "cmd-1", "EUR", 0, 0, NOW, 0),),
        id="open-account-id-all-allowed-punctuation",
    ),
    pytest.param(
        account(250, version=3),
        credit(100),
        (Credited(ACC, 4, "cmd-1", "EUR", 100, 350, NOW),),
        id="credit",
    ),
    pytest.param(
        account(0),
        credit(AMOUNT_MAX_MINOR),
        (Credited(ACC, 2, "cmd-1", "EUR", AMOUNT_MAX_MINOR, BALANCE_MAX_MINOR, NOW),),
        id="credit-max-amount-to-max-balance",
    ),
    pytest.param(
        account(-500, overdraft=500),
        credit(1),
        (Credited(ACC, 2, "cmd-1", "EUR", 1, -499, NOW),),
        id="credit-while-overdrawn",
    ),
    pytest.param(
        account(300),
        debit(100),
        (Debited(ACC, 2, "cmd-1", "EUR", 100, 200, NOW),),
        id="debit-within-balance",
    ),
    pytest.param(
        account(300),
        debit(300),
        (Debited(ACC, 2, "cmd-1", "EUR", 300, 0, NOW),),
        id="debit-to-exactly-zero-without-overdraft",
    ),
    pytest.param(
        account(300, overdraft=200),
        debit(500),
        (Debited(ACC, 2, "cmd-1", "EUR", 500, -200, NOW),),
        id="debit-to-exactly-minus-overdraft-limit",
    ),
    pytest.param(
        account(0, overdraft=AMOUNT_MAX_MINOR),
        debit(AMOUNT_MAX_MINOR),
        (Debited(ACC, 2, "cmd-1", "EUR", AMOUNT_MAX_MINOR, -AMOUNT_MAX_MINOR, NOW),),
        id="debit-max-amount-into-max-overdraft",
    ),
    pytest.param(
        account(0, version=7, currency="USD"),
        close(),
        (AccountClosed(ACC, 8, "cmd-1", "USD", 0, 0, NOW),),
        id="close-at-zero-carries-account-currency",
    ),
    pytest.param(
        account(300, overdraft=200, version=4),
        transfer(500),
        (TransferDebited(ACC, 5, "t-1", "EUR", 500, -200, NOW, "t-1", "acc-2"),),
        id="transfer-to-exactly-minus-overdraft-limit",
    ),
]


@pytest.mark.parametrize("state, command, expected", HAPPY)
def test_accepted_commands(state, command, expected):
    """A valid command on a suitable account gives exactly the expected event."""
    actual = outcome(decide(state, command, NOW))
    assert expected == actual


@pytest.mark.parametrize("state, command, expected", HAPPY)
def test_accepted_event_folds_into_next_state(state, command, expected):
    """Folding an accepted event advances version and balance as the event says."""
    (event,) = decide(state, command, NOW)
    actual = evolve(state, event)
    assert (event.sequence, event.balance_after_minor, NOW) == (
        actual.version,
        actual.balance_minor,
        actual.updated_at_ms,
    )


# --------------------------------------------------------------------------
# Rejections, in REJECTION_ORDER
# --------------------------------------------------------------------------

REJECTIONS = [
    # invalid_account_id
    pytest.param(None, open_(account_id=""), R.invalid_account_id, id="id-empty"),
    pytest.param(None, open_(account_id="a" * 65), R.invalid_account_id, id="id-65-chars"),
    pytest.param(None, open_(account_id="a/b"), R.invalid_account_id, id="id-slash"),
    pytest.param(None, open_(account_id="a b"), R.invalid_account_id, id="id-space"),
    pytest.param(None, open_(account_id="a\tb"), R.invalid_account_id, id="id-tab"),
    pytest.param(None, open_(account_id="caf\u00e9"), R.invalid_account_id, id="id-non-ascii"),
    pytest.param(None, open_(account_id=None), R.invalid_account_id, id="id-none"),
    pytest.param(None, open_(account_id=42), R.invalid_account_id, id="id-int"),
    pytest.param(account(), credit(account_id="a/b"), R.invalid_account_id, id="id-slash-credit"),
    pytest.param(account(), debit(account_id=""), R.invalid_account_id, id="id-empty-debit"),
    pytest.param(account(), close(account_id="a b"), R.invalid_account_id, id="id-space-close"),
    # version_conflict: checked before anything about the command's shape
    pytest.param(account(500, version=3), Debit("cmd-1", ACC, 100, "EUR", expected_version=2),
                 R.version_conflict, id="debit-expects-older-version"),
    pytest.param(account(500, version=3), Credit("cmd-1", ACC, -1, "eur", expected_version=4),
                 R.version_conflict, id="credit-expects-newer-version-bad-shape"),
    pytest.param(None, Credit("cmd-1", ACC, 100, "EUR", expected_version=1),
                 R.version_conflict, id="credit-unknown-account-expects-1"),
    pytest.param(account(), OpenAccount("cmd-1", ACC, "EUR", expected_version=0),
                 R.version_conflict, id="open-existing-expects-none"),
    pytest.param(account(version=2), CloseAccount("cmd-1", ACC, expected_version=1),
                 R.version_conflict, id="close-expects-older"),
    pytest.param(account(500, version=5),
                 Transfer("t-1", ACC, "acc-2", 10, "EUR", expected_version=4),
                 R.version_conflict, id="transfer-expects-older"),
    # The id and currency patterns must match the whole value: '$' would
    # also match before a trailing newline (a bug, fixed with fullmatch).
    pytest.param(None, open_(account_id="acc\n"), R.invalid_account_id, id="id-trailing-newline"),
    pytest.param(None, open_(account_id="\nacc"), R.invalid_account_id, id="id-leading-newline"),
    pytest.param(account(), credit(account_id="acc-1\n"), R.invalid_account_id,
                 id="id-trailing-newline-credit"),
    pytest.param(account(), close(account_id=ACC + "\n"), R.invalid_account_id,
                 id="id-trailing-newline-close"),
    # invalid_currency
    pytest.param(None, open_(currency="eur"), R.invalid_currency, id="currency-lowercase"),
    pytest.param(None, open_(currency="EU"), R.invalid_currency, id="currency-2-letters"),
    pytest.param(None, open_(currency="EURO"), R.invalid_currency, id="currency-4-letters"),
    pytest.param(None, open_(currency=None), R.invalid_currency, id="currency-none"),
    pytest.param(None, open_(currency=""), R.invalid_currency, id="currency-empty"),
    pytest.param(None, open_(currency="E1R"), R.invalid_currency, id="currency-digit"),
    pytest.param(account(), credit(currency="eur"), R.invalid_currency, id="currency-lowercase-credit"),
    pytest.param(account(), credit(currency="EURO"), R.invalid_currency, id="currency-4-letters-credit"),
    pytest.param(account(), debit(currency="EU"), R.invalid_currency, id="currency-2-letters-debit"),
    pytest.param(account(), debit(currency=None), R.invalid_currency, id="currency-none-debit"),
    pytest.param(None, open_(currency="EUR\n"), R.invalid_currency, id="currency-trailing-newline"),
    pytest.param(account(), credit(currency="EUR\n"), R.invalid_currency,
                 id="currency-trailing-newline-credit"),
    pytest.param(account(), debit(currency="\nEUR"), R.invalid_currency,
                 id="currency-leading-newline-debit"),
    # amount_must_be_positive
    pytest.param(account(), credit(0), R.amount_must_be_positive, id="amount-zero-credit"),
    pytest.param(account(), credit(-1), R.amount_must_be_positive, id="amount-negative-credit"),
    pytest.param(account(), credit(1.0), R.amount_must_be_positive, id="amount-float-credit"),
    pytest.param(account(), credit(True), R.amount_must_be_positive, id="amount-bool-credit"),
    pytest.param(account(), credit("100"), R.amount_must_be_positive, id="amount-str-credit"),
    pytest.param(account(), credit(None), R.amount_must_be_positive, id="amount-none-credit"),
    pytest.param(account(500), debit(0), R.amount_must_be_positive, id="amount-zero-debit"),
    pytest.param(account(500), debit(-100), R.amount_must_be_positive, id="amount-negative-debit"),
    pytest.param(account(500), debit(1.0), R.amount_must_be_positive, id="amount-float-debit"),
    pytest.param(account(500), debit(True), R.amount_must_be_positive, id="amount-bool-debit"),
    pytest.param(account(500), debit("1"), R.amount_must_be_positive, id="amount-str-debit"),
    # amount_too_large
    pytest.param(account(), credit(2**63), R.amount_too_large, id="amount-2**63-credit"),
    pytest.param(
        account(overdraft=AMOUNT_MAX_MINOR), debit(2**63), R.amount_too_large,
        id="amount-2**63-debit",
    ),
    pytest.param(None, open_(overdraft=2**63), R.amount_too_large, id="overdraft-2**63-open"),
    # overdraft_limit_must_not_be_negative
    pytest.param(None, open_(overdraft=-1), R.overdraft_limit_must_not_be_negative, id="overdraft-negative"),
    pytest.param(None, open_(overdraft=1.0), R.overdraft_limit_must_not_be_negative, id="overdraft-float"),
    pytest.param(None, open_(overdraft=True), R.overdraft_limit_must_not_be_negative, id="overdraft-bool"),
    pytest.param(None, open_(overdraft="5"), R.overdraft_limit_must_not_be_negative, id="overdraft-str"),
    # same_account
    pytest.param(account(500), transfer(to=ACC), R.same_account, id="transfer-to-itself"),
    # account_exists
    pytest.param(account(), open_(), R.account_exists, id="open-twice"),
    pytest.param(CLOSED, open_(), R.account_exists, id="reopen-closed"),
    # unknown_account
    pytest.param(None, credit(), R.unknown_account, id="credit-unknown"),
    pytest.param(None, debit(), R.unknown_account, id="debit-unknown"),
    pytest.param(None, close(), R.unknown_account, id="close-unknown"),
    # account_closed
    pytest.param(CLOSED, credit(), R.account_closed, id="credit-closed"),
    pytest.param(CLOSED, debit(), R.account_closed, id="debit-closed"),
    pytest.param(CLOSED, close(), R.account_closed, id="close-closed"),
    # currency_mismatch
    pytest.param(account(), credit(currency="USD"), R.currency_mismatch, id="credit-wrong-currency"),
    pytest.param(account(500), debit(currency="USD"), R.currency_mismatch, id="debit-wrong-currency"),
    # insufficient_funds
    pytest.param(account(0), debit(1), R.insufficient_funds, id="debit-empty-no-overdraft"),
    pytest.param(account(300), debit(301), R.insufficient_funds, id="debit-one-past-balance"),
    pytest.param(
        account(300, overdraft=200), debit(501), R.insufficient_funds,
        id="debit-one-past-overdraft",
    ),
    pytest.param(
        account(-200, overdraft=200), debit(1), R.insufficient_funds,
        id="debit-at-overdraft-limit",
    ),
    pytest.param(
        account(-AMOUNT_MAX_MINOR, overdraft=AMOUNT_MAX_MINOR), debit(AMOUNT_MAX_MINOR),
        R.insufficient_funds, id="debit-past-max-overdraft-below-int64",
    ),
    # balance_overflow
    pytest.param(
        account(BALANCE_MAX_MINOR), credit(1), R.balance_overflow, id="credit-one-past-int64",
    ),
    pytest.param(
        account(1), credit(AMOUNT_MAX_MINOR), R.balance_overflow, id="credit-max-onto-one",
    ),
    # balance_not_zero
    pytest.param(account(1), close(), R.balance_not_zero, id="close-positive-balance"),
    pytest.param(
        account(-1, overdraft=10), close(), R.balance_not_zero, id="close-negative-balance",
    ),
    # transfers_pending: a refund may still come back to this account
    pytest.param(account(0, pending=100), close(), R.transfers_pending, id="close-while-pending"),
    pytest.param(account(0, pending=1), close(), R.transfers_pending, id="close-pending-one-cent"),
    # holds_active: an active hold may still be captured from this account
    pytest.param(account(0, held=1, overdraft=5), close(), R.holds_active, id="close-while-held"),
]


@pytest.mark.parametrize("state, command, expected", REJECTIONS)
def test_rejected_commands(state, command, expected):
    """A command that breaks exactly one rule is refused with that rule's reason."""
    actual = outcome(decide(state, command, NOW))
    assert expected == actual


def first_seen(reasons) -> list:
    seen = []
    for reason in reasons:
        if reason not in seen:
            seen.append(reason)
    return seen


def test_rejection_table_covers_rejection_order_in_order():
    """This table and the holds' (tests/ledger/test_holds.py) name every
    reason decide can give, each table in REJECTION_ORDER."""
    from tests.ledger.test_holds import HOLD_REJECTIONS

    ours = first_seen(param.values[2] for param in REJECTIONS)
    holds = first_seen(param.values[3] for param in HOLD_REJECTIONS)
    for table in (ours, holds):
        assert [r for r in REJECTION_ORDER if r in table] == table
    assert set(REJECTION_ORDER) == set(ours) | set(holds)


def test_command_id_reused_is_not_decided_here():
    """command_id_reused belongs to the command index, never to decide."""
    assert R.command_id_reused not in REJECTION_ORDER
    assert set(R) == set(REJECTION_ORDER) | {R.command_id_reused}


# --------------------------------------------------------------------------
# Several faults at once: the first in REJECTION_ORDER wins
# --------------------------------------------------------------------------

PRECEDENCE = [
    pytest.param(
        None, open_(account_id="a/b", currency="eur", overdraft=-1), R.invalid_account_id,
        id="bad-id+bad-currency+bad-overdraft",
    ),
    pytest.param(
        CLOSED, credit(account_id="", currency="EU", amount=0), R.invalid_account_id,
        id="bad-id+bad-currency+bad-amount+closed",
    ),
    pytest.param(
        account(), credit(currency="eur", amount=1.0), R.invalid_currency,
        id="bad-currency+float-amount",
    ),
    pytest.param(
        None, debit(currency="EURO", amount=-5), R.invalid_currency,
        id="bad-currency+negative-amount+unknown",
    ),
    pytest.param(
        account(), open_(currency="EU", overdraft=-1), R.invalid_currency,
        id="bad-currency+bad-overdraft+exists",
    ),
    pytest.param(
        None, credit(amount=0), R.amount_must_be_positive, id="zero-amount+unknown",
    ),
    pytest.param(
        CLOSED, debit(amount=True, currency="USD"), R.amount_must_be_positive,
        id="bool-amount+closed+wrong-currency",
    ),
    pytest.param(
        CLOSED, credit(amount=2**63), R.amount_too_large, id="too-large+closed",
    ),
    pytest.param(
        account(BALANCE_MAX_MINOR, currency="USD"), credit(amount=2**63), R.amount_too_large,
        id="too-large+wrong-currency+overflow",
    ),
    pytest.param(
        account(), open_(overdraft=-1), R.overdraft_limit_must_not_be_negative,
        id="bad-overdraft+exists",
    ),
    pytest.param(
        account(), open_(overdraft=2**63), R.amount_too_large,
        id="overdraft-too-large+exists",
    ),
    pytest.param(
        None, debit(currency="USD"), R.unknown_account, id="unknown+any-currency",
    ),
    pytest.param(
        CLOSED, debit(amount=10**6, currency="USD"), R.account_closed,
        id="closed+wrong-currency+insufficient",
    ),
    pytest.param(
        account(0), debit(amount=1, currency="USD"), R.currency_mismatch,
        id="wrong-currency+insufficient",
    ),
    pytest.param(
        account(BALANCE_MAX_MINOR), credit(amount=1, currency="USD"), R.currency_mismatch,
        id="wrong-currency+overflow",
    ),
    pytest.param(
        account(5, status=AccountStatus.closed), close(), R.account_closed,
        id="closed+balance-not-zero",
    ),
    pytest.param(
        None, transfer(to=ACC, amount=10**6), R.same_account,
        id="same-account+unknown",
    ),
    pytest.param(
        account(), transfer(to=ACC, currency="eur"), R.invalid_currency,
        id="bad-currency+same-account",
    ),
    pytest.param(
        account(), transfer(to=ACC, amount=0), R.amount_must_be_positive,
        id="zero-amount+same-account",
    ),
    pytest.param(
        account(-5, overdraft=10, pending=5), close(), R.balance_not_zero,
        id="balance-not-zero+pending",
    ),
    pytest.param(
        account(0, status=AccountStatus.closed, pending=5), close(), R.account_closed,
        id="closed+pending",
    ),
]


@pytest.mark.parametrize("state, command, expected", PRECEDENCE)
def test_first_failing_check_in_rejection_order_wins(state, command, expected):
    """When several rules are broken, the reason is the earliest in REJECTION_ORDER."""
    actual = outcome(decide(state, command, NOW))
    assert expected == actual


# --------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------

TIME = [
    pytest.param(account(100, updated_at_ms=NOW), credit(), NOW - 5_000, NOW, id="credit-clock-behind"),
    pytest.param(account(100, updated_at_ms=NOW), debit(), NOW - 1, NOW, id="debit-clock-1ms-behind"),
    pytest.param(account(0, updated_at_ms=NOW), close(), 0, NOW, id="close-clock-at-epoch"),
    pytest.param(account(100, updated_at_ms=NOW), credit(), NOW, NOW, id="credit-clock-equal"),
    pytest.param(account(100, updated_at_ms=NOW), debit(), NOW + 7, NOW + 7, id="debit-clock-ahead"),
    pytest.param(None, open_(), 3, 3, id="open-takes-now-as-is"),
]


@pytest.mark.parametrize("state, command, now_ms, expected", TIME)
def test_time_does_not_run_backwards(state, command, now_ms, expected):
    """An event is stamped max(now_ms, state.updated_at_ms)."""
    (event,) = decide(state, command, now_ms)
    actual = event.recorded_at_ms
    assert expected == actual


# --------------------------------------------------------------------------
# evolve
# --------------------------------------------------------------------------

OPENED = AccountOpened(ACC, 1, "c1", "EUR", 0, 0, 10, 50)
CREDITED_2 = Credited(ACC, 2, "c2", "EUR", 100, 100, 20)
DEBITED_3 = Debited(ACC, 3, "c3", "EUR", 130, -30, 30)
CREDITED_4 = Credited(ACC, 4, "c4", "EUR", 30, 0, 40)
CLOSED_5 = AccountClosed(ACC, 5, "c5", "EUR", 0, 0, 50)


def test_fold_of_a_full_life():
    """Open, credit, debit into overdraft, credit back to zero, close."""
    expected = AccountState(
        account_id=ACC,
        currency="EUR",
        balance_minor=0,
        overdraft_limit_minor=50,
        version=5,
        status=AccountStatus.closed,
        opened_at_ms=10,
        updated_at_ms=50,
        credits_minor=130,
        debits_minor=130,
    )
    actual = fold([OPENED, CREDITED_2, DEBITED_3, CREDITED_4, CLOSED_5])
    assert expected == actual


OUT_OF_ORDER = [
    pytest.param(None, CREDITED_2, id="first-event-is-sequence-2"),
    pytest.param(None, AccountOpened(ACC, 0, "c0", "EUR", 0, 0, 10, 0), id="sequence-0"),
    pytest.param(fold([OPENED]), DEBITED_3, id="gap-1-to-3"),
    pytest.param(fold([OPENED]), OPENED, id="repeat-open"),
    pytest.param(fold([OPENED, CREDITED_2]), CREDITED_2, id="repeat-credit"),
    pytest.param(fold([OPENED, CREDITED_2]), OPENED, id="older-event"),
    pytest.param(fold([OPENED, CREDITED_2, DEBITED_3]), CLOSED_5, id="gap-3-to-5"),
]


@pytest.mark.parametrize("state, event", OUT_OF_ORDER)
def test_evolve_refuses_gaps_and_repeats(state, event):
    """evolve raises EventOutOfOrder unless the event is exactly the next one."""
    with pytest.raises(EventOutOfOrder):
        evolve(state, event)


def test_event_out_of_order_is_a_value_error():
    """Callers catching ValueError also catch EventOutOfOrder."""
    assert issubclass(EventOutOfOrder, ValueError)


# --------------------------------------------------------------------------
# command_hash
# --------------------------------------------------------------------------

BASE_COMMANDS = [
    pytest.param(OpenAccount("c", ACC, "EUR", 10), id="open"),
    pytest.param(Credit("c", ACC, 10, "EUR"), id="credit"),
    pytest.param(Debit("c", ACC, 10, "EUR"), id="debit"),
    pytest.param(CloseAccount("c", ACC), id="close"),
    pytest.param(Transfer("c", ACC, "acc-2", 10, "EUR", (("k", "v"),)), id="transfer"),
]


@pytest.mark.parametrize("command", BASE_COMMANDS)
def test_command_hash_is_stable_for_equal_commands(command):
    """Two separately built equal commands hash the same 64-hex-digit value."""
    twin = type(command)(**{k: getattr(command, k) for k in command.__dataclass_fields__})
    expected = command_hash(command)
    actual = command_hash(twin)
    assert expected == actual
    assert len(actual) == 64 and int(actual, 16) >= 0


def test_command_hash_known_value():
    """The canonical form is pinned: a hash change breaks stored idempotency keys."""
    import hashlib

    canonical = (
        '{"account_id":"acc-1","amount_minor":10,"command_id":"c",'
        '"currency":"EUR","type":"credit"}'
    )
    expected = hashlib.sha256(canonical.encode()).hexdigest()
    actual = command_hash(Credit("c", ACC, 10, "EUR"))
    assert expected == actual


def test_open_default_overdraft_hashes_like_explicit_zero():
    """OpenAccount without an overdraft is the same request as overdraft 0."""
    expected = command_hash(OpenAccount("c", ACC, "EUR", 0))
    actual = command_hash(OpenAccount("c", ACC, "EUR"))
    assert expected == actual


HASH_DIFFERS = [
    pytest.param(Credit("c", ACC, 10, "EUR"), Debit("c", ACC, 10, "EUR"), id="credit-vs-debit"),
    pytest.param(Credit("c", ACC, 10, "EUR"), Credit("d", ACC, 10, "EUR"), id="credit-command-id"),
    pytest.param(Credit("c", ACC, 10, "EUR"), Credit("c", "acc-2", 10, "EUR"), id="credit-account-id"),
    pytest.param(Credit("c", ACC, 10, "EUR"), Credit("c", ACC, 11, "EUR"), id="credit-amount"),
    pytest.param(Credit("c", ACC, 10, "EUR"), Credit("c", ACC, 10, "USD"), id="credit-currency"),
    pytest.param(Credit("c", ACC, 1, "EUR"), Credit("c", ACC, True, "EUR"), id="credit-amount-int-vs-bool"),
    pytest.param(Credit("c", ACC, 1, "EUR"), Credit("c", ACC, 1.0, "EUR"), id="credit-amount-int-vs-float"),
    pytest.param(Debit("c", ACC, 10, "EUR"), Debit("d", ACC, 10, "EUR"), id="debit-command-id"),
    pytest.param(Debit("c", ACC, 10, "EUR"), Debit("c", "acc-2", 10, "EUR"), id="debit-account-id"),
    pytest.param(Debit("c", ACC, 10, "EUR"), Debit("c", ACC, 11, "EUR"), id="debit-amount"),
    pytest.param(Debit("c", ACC, 10, "EUR"), Debit("c", ACC, 10, "USD"), id="debit-currency"),
    pytest.param(OpenAccount("c", ACC, "EUR", 10), OpenAccount("d", ACC, "EUR", 10), id="open-command-id"),
    pytest.param(OpenAccount("c", ACC, "EUR", 10), OpenAccount("c", "acc-2", "EUR", 10), id="open-account-id"),
    pytest.param(OpenAccount("c", ACC, "EUR", 10), OpenAccount("c", ACC, "USD", 10), id="open-currency"),
    pytest.param(OpenAccount("c", ACC, "EUR", 10), OpenAccount("c", ACC, "EUR", 11), id="open-overdraft"),
    pytest.param(CloseAccount("c", ACC), CloseAccount("d", ACC), id="close-command-id"),
    pytest.param(CloseAccount("c", ACC), CloseAccount("c", "acc-2"), id="close-account-id"),
    pytest.param(Debit("c", ACC, 10, "EUR"), Transfer("c", ACC, "acc-2", 10, "EUR"),
                 id="debit-vs-transfer"),
    pytest.param(Transfer("t", ACC, "acc-2", 10, "EUR"), Transfer("u", ACC, "acc-2", 10, "EUR"),
                 id="transfer-id"),
    pytest.param(Transfer("t", ACC, "acc-2", 10, "EUR"), Transfer("t", "acc-3", "acc-2", 10, "EUR"),
                 id="transfer-from"),
    pytest.param(Transfer("t", ACC, "acc-2", 10, "EUR"), Transfer("t", ACC, "acc-3", 10, "EUR"),
                 id="transfer-to"),
    pytest.param(Transfer("t", ACC, "acc-2", 10, "EUR"), Transfer("t", "acc-2", ACC, 10, "EUR"),
                 id="transfer-direction"),
    pytest.param(Transfer("t", ACC, "acc-2", 10, "EUR"), Transfer("t", ACC, "acc-2", 11, "EUR"),
                 id="transfer-amount"),
    pytest.param(Transfer("t", ACC, "acc-2", 10, "EUR"), Transfer("t", ACC, "acc-2", 10, "USD"),
                 id="transfer-currency"),
    pytest.param(Transfer("t", ACC, "acc-2", 10, "EUR"),
                 Transfer("t", ACC, "acc-2", 10, "EUR", (("note", "rent"),)),
                 id="transfer-metadata-added"),
    pytest.param(Transfer("t", ACC, "acc-2", 10, "EUR", (("note", "rent"),)),
                 Transfer("t", ACC, "acc-2", 10, "EUR", (("note", "Rent"),)),
                 id="transfer-metadata-value"),
    pytest.param(Transfer("t", ACC, "acc-2", 10, "EUR", (("note", "rent"),)),
                 Transfer("t", ACC, "acc-2", 10, "EUR", (("memo", "rent"),)),
                 id="transfer-metadata-key"),
]


@pytest.mark.parametrize("left, right", HASH_DIFFERS)
def test_command_hash_differs_when_any_field_differs(left, right):
    """Changing the type or any one field changes the hash."""
    assert command_hash(left) != command_hash(right)


def test_command_hash_distinct_across_all_variants():
    """No two distinct commands in the table above share a hash."""
    commands = [c for p in HASH_DIFFERS for c in p.values]
    # repr, not ==: Credit(amount=1) == Credit(amount=True) as dataclasses.
    expected = len({repr(c) for c in commands})
    actual = len({command_hash(c) for c in commands})
    assert expected == actual
