"""The pure ledger domain: commands, events, account state, decide and evolve.

Assumptions, stated once:

- Money is an ``int`` count of minor units (cents for EUR) plus an ISO 4217
  code. No float ever enters this module; ``decide`` refuses a non-int amount
  rather than rounding it.
- Time is passed in (``now_ms``, epoch milliseconds). Nothing here reads a
  clock, a disk or a network, so every function is deterministic and a replay
  of the same events gives the same state.
- An account's events are numbered 1, 2, 3, ... (``sequence``) with no gaps.
  ``evolve`` refuses an event whose sequence is not the next one: the caller
  is expected to skip duplicates (sequence <= version) before folding.
- A refused command is a value (:class:`Rejection`) with a named reason, not an
  exception. The checks run in the fixed order of :data:`REJECTION_ORDER`.

``decide(state, command, now_ms) -> tuple[Event, ...] | Rejection`` and
``evolve(state, event) -> AccountState`` are the whole contract; everything
Kafka, Faust, RocksDB or Avro lives in ``streams/`` and ``schemas/``.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from typing import Union

# Avro ``long`` is a signed 64-bit integer; no amount or balance may leave it.
AMOUNT_MAX_MINOR = 2**63 - 1
BALANCE_MIN_MINOR = -(2**63)
BALANCE_MAX_MINOR = 2**63 - 1
ACCOUNT_ID_LENGTH_MAX = 64
COMMAND_ID_LENGTH_MAX = 128
_CURRENCY_RE = re.compile(r"[A-Z]{3}")
# Printable ASCII without spaces or '/': ids appear in URLs and RocksDB keys.
# '#' is not in it: leg ids ("<transfer_id>#credit:<source>") use it, so no
# client command_id can ever collide with a leg's.
#
# The idempotency rule: a command is identified by (account_id, command_id),
# account_id being the account it is addressed to (a transfer's source).
# The same command_id sent again to the same account is the same command
# (applied once; a different body is refused as command_id_reused); sent to
# another account it is another command, wherever the accounts live.
_ID_RE = re.compile(r"[A-Za-z0-9._:@-]+")
COMMAND_ID_PATTERN = "[A-Za-z0-9._:@-]{1,128}"


def valid_command_id(value) -> bool:
    return _valid_id(value, COMMAND_ID_LENGTH_MAX)


def valid_account_id(value) -> bool:
    # "." and ".." would be path segments in /v1/accounts/{id}: never an account.
    return _valid_id(value, ACCOUNT_ID_LENGTH_MAX) and value not in (".", "..")


class RejectionReason(str, enum.Enum):
    """Why a command was refused. Values are the wire names."""

    invalid_account_id = "invalid_account_id"
    invalid_currency = "invalid_currency"
    amount_must_be_positive = "amount_must_be_positive"
    amount_too_large = "amount_too_large"
    overdraft_limit_must_not_be_negative = "overdraft_limit_must_not_be_negative"
    account_exists = "account_exists"
    unknown_account = "unknown_account"
    account_closed = "account_closed"
    currency_mismatch = "currency_mismatch"
    insufficient_funds = "insufficient_funds"
    balance_overflow = "balance_overflow"
    balance_not_zero = "balance_not_zero"
    same_account = "same_account"
    transfers_pending = "transfers_pending"
    # Decided outside ``decide`` (by the command index), listed here so that
    # every reason a client can see has one home.
    command_id_reused = "command_id_reused"


# The order in which ``decide`` checks; the first failing check names the
# rejection. Shape of the command first, then the account it meets.
REJECTION_ORDER = (
    RejectionReason.invalid_account_id,
    RejectionReason.invalid_currency,
    RejectionReason.amount_must_be_positive,
    RejectionReason.amount_too_large,
    RejectionReason.overdraft_limit_must_not_be_negative,
    RejectionReason.same_account,
    RejectionReason.account_exists,
    RejectionReason.unknown_account,
    RejectionReason.account_closed,
    RejectionReason.currency_mismatch,
    RejectionReason.insufficient_funds,
    RejectionReason.balance_overflow,
    RejectionReason.balance_not_zero,
    RejectionReason.transfers_pending,
)


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenAccount:
    command_id: str
    account_id: str
    currency: str
    overdraft_limit_minor: int = 0
    type = "open_account"


@dataclass(frozen=True, slots=True)
class _ExternalMoney:
    """Money entering (credit) or leaving (debit) the ledger through one account."""

    command_id: str
    account_id: str
    amount_minor: int
    currency: str


@dataclass(frozen=True, slots=True)
class Credit(_ExternalMoney):
    type = "credit"


@dataclass(frozen=True, slots=True)
class Debit(_ExternalMoney):
    type = "debit"


@dataclass(frozen=True, slots=True)
class CloseAccount:
    command_id: str
    account_id: str
    type = "close_account"


@dataclass(frozen=True, slots=True)
class Transfer:
    """Move money from one account to another; ``command_id`` is the transfer id.

    Applied in steps (DESIGN.md, Transfers): debited at the source here, then
    a :class:`TransferCreditLeg` at the destination, then a
    :class:`TransferSettleLeg` back at the source that completes it or
    refunds it.
    """

    command_id: str
    from_account_id: str
    to_account_id: str
    amount_minor: int
    currency: str
    # Sorted (key, value) pairs: canonical, hashable, and a dict at the edges.
    metadata: tuple[tuple[str, str], ...] = ()
    type = "transfer"

    @property
    def account_id(self) -> str:
        # Where the command is applied, routed and ordered: the source.
        return self.from_account_id


@dataclass(frozen=True, slots=True)
class TransferCreditLeg:
    """Internal: credit the destination of a debited transfer (workers only)."""

    command_id: str  # "<transfer_id>#credit:<from_account_id>": one per transfer
    account_id: str  # the destination
    transfer_id: str
    from_account_id: str
    amount_minor: int
    currency: str
    type = "transfer_credit"


@dataclass(frozen=True, slots=True)
class TransferSettleLeg:
    """Internal: tell the source how its transfer ended (workers only)."""

    command_id: str  # "<transfer_id>#settle" (the source's own scope)
    account_id: str  # the source
    transfer_id: str
    to_account_id: str
    amount_minor: int
    currency: str
    completed: bool
    reason: str  # why the destination refused; "" when completed
    type = "transfer_settle"


def credit_leg(transfer: Transfer) -> TransferCreditLeg:
    # The destination's idempotency scope holds legs from every source, and
    # two sources may choose the same transfer id: the source names the leg.
    return TransferCreditLeg(
        command_id=f"{transfer.command_id}#credit:{transfer.from_account_id}",
        account_id=transfer.to_account_id,
        transfer_id=transfer.command_id,
        from_account_id=transfer.from_account_id,
        amount_minor=transfer.amount_minor,
        currency=transfer.currency,
    )


def settle_leg(leg: TransferCreditLeg, completed: bool, reason: str = "") -> TransferSettleLeg:
    return TransferSettleLeg(
        command_id=f"{leg.transfer_id}#settle",
        account_id=leg.from_account_id,
        transfer_id=leg.transfer_id,
        to_account_id=leg.account_id,
        amount_minor=leg.amount_minor,
        currency=leg.currency,
        completed=completed,
        reason=reason,
    )


Command = Union[OpenAccount, Credit, Debit, CloseAccount, Transfer]
Leg = Union[TransferCreditLeg, TransferSettleLeg]
COMMAND_TYPES: dict[str, type] = {
    c.type: c for c in (OpenAccount, Credit, Debit, CloseAccount, Transfer)
}


def command_hash(command: Command) -> str:
    """Hex SHA-256 of the command's canonical form (type plus sorted fields).

    Two sends with the same ``command_id`` are the same request only if their
    hashes match; otherwise the second is ``command_id_reused``.
    """
    # A shallow field dict (not dataclasses.asdict, which deep-copies and was
    # a tenth of the worker's time); same JSON, so the same hash.
    fields = {name: getattr(command, name) for name in command.__dataclass_fields__}
    canonical = json.dumps(
        {"type": command.type, **fields},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


# --------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _AccountEvent:
    """The fields every event has: which account, its sequence, the command
    that caused it, the money it moved and the balance after it, and when
    the worker recorded it."""

    account_id: str
    sequence: int
    command_id: str
    currency: str
    amount_minor: int
    balance_after_minor: int
    recorded_at_ms: int


@dataclass(frozen=True, slots=True)
class AccountOpened(_AccountEvent):
    overdraft_limit_minor: int
    type = "account_opened"


@dataclass(frozen=True, slots=True)
class Credited(_AccountEvent):
    type = "credited"


@dataclass(frozen=True, slots=True)
class Debited(_AccountEvent):
    type = "debited"


@dataclass(frozen=True, slots=True)
class AccountClosed(_AccountEvent):
    type = "account_closed"


@dataclass(frozen=True, slots=True)
class _TransferEvent(_AccountEvent):
    transfer_id: str
    counterparty_account_id: str


@dataclass(frozen=True, slots=True)
class TransferDebited(_TransferEvent):
    """Money left the source; it is pending until settled."""

    metadata: tuple[tuple[str, str], ...] = ()
    type = "transfer_debited"


@dataclass(frozen=True, slots=True)
class TransferCredited(_TransferEvent):
    """Money reached the destination."""

    type = "transfer_credited"


@dataclass(frozen=True, slots=True)
class TransferCompleted(_TransferEvent):
    """The source learns the destination was credited; nothing is pending."""

    type = "transfer_completed"


@dataclass(frozen=True, slots=True)
class TransferRefunded(_TransferEvent):
    """The destination refused; the money is back at the source."""

    reason: str
    type = "transfer_refunded"


Event = Union[AccountOpened, Credited, Debited, AccountClosed, TransferDebited,
              TransferCredited, TransferCompleted, TransferRefunded]
EVENT_TYPES: dict[str, type] = {
    e.type: e for e in (AccountOpened, Credited, Debited, AccountClosed, TransferDebited,
                        TransferCredited, TransferCompleted, TransferRefunded)
}


def transfer_of(record) -> tuple[str, str] | None:
    """(source account, transfer id) of a transfer's event or of a refused
    transfer's record; None for anything else. Transfer ids are scoped per
    source account, so this pair names one transfer."""
    if isinstance(record, TransferCredited):
        return record.counterparty_account_id, record.transfer_id
    if isinstance(record, _TransferEvent):
        return record.account_id, record.transfer_id
    if isinstance(record, CommandRejected) and record.command_type == Transfer.type:
        return record.account_id, record.command_id
    return None


@dataclass(frozen=True, slots=True)
class CommandRejected:
    """The log record of a refused command: its one outcome, with no sequence.

    It changes no account state; it is recorded so that every command has
    exactly one outcome in the log and a retry can be answered with it.
    """

    account_id: str
    command_id: str
    command_type: str
    reason: str
    detail: str
    recorded_at_ms: int
    type = "command_rejected"


def rejected(command: Command, rejection: "Rejection", now_ms: int) -> CommandRejected:
    return CommandRejected(
        account_id=command.account_id,
        command_id=command.command_id,
        command_type=command.type,
        reason=rejection.reason.value,
        detail=rejection.detail,
        recorded_at_ms=now_ms,
    )


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused command: nothing about the account changes."""

    reason: RejectionReason
    detail: str = ""


# --------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------


class AccountStatus(str, enum.Enum):
    open = "open"
    closed = "closed"


@dataclass(frozen=True, slots=True)
class AccountState:
    account_id: str
    currency: str
    balance_minor: int
    overdraft_limit_minor: int
    version: int
    status: AccountStatus
    opened_at_ms: int
    updated_at_ms: int
    credits_minor: int = field(default=0)
    debits_minor: int = field(default=0)
    # Outgoing transfers debited here and not yet settled.
    pending_out_minor: int = field(default=0)


class EventOutOfOrder(ValueError):
    """``evolve`` was given an event that is not the account's next one."""


def evolve(state: AccountState | None, event: Event) -> AccountState:
    """Fold one event into the account state. Pure; raises on a gap."""
    expected = 1 if state is None else state.version + 1
    if event.sequence != expected:
        raise EventOutOfOrder(
            f"{event.account_id}: expected sequence {expected}, got {event.sequence}"
        )
    if isinstance(event, AccountOpened):
        return AccountState(
            account_id=event.account_id,
            currency=event.currency,
            balance_minor=0,
            overdraft_limit_minor=event.overdraft_limit_minor,
            version=event.sequence,
            status=AccountStatus.open,
            opened_at_ms=event.recorded_at_ms,
            updated_at_ms=event.recorded_at_ms,
        )
    assert state is not None  # sequence check above guarantees an open came first
    # What each kind of event changes besides balance, version and time.
    if isinstance(event, Credited):
        extra = {"credits_minor": state.credits_minor + event.amount_minor}
    elif isinstance(event, Debited):
        extra = {"debits_minor": state.debits_minor + event.amount_minor}
    elif isinstance(event, AccountClosed):
        extra = {"status": AccountStatus.closed}
    elif isinstance(event, TransferDebited):
        extra = {"pending_out_minor": state.pending_out_minor + event.amount_minor}
    elif isinstance(event, (TransferCompleted, TransferRefunded)):
        extra = {"pending_out_minor": state.pending_out_minor - event.amount_minor}
    elif isinstance(event, TransferCredited):
        extra = {}
    else:
        raise TypeError(f"not an event: {event!r}")
    # Every event carries the balance after it (unchanged for a close, which
    # only happens at 0, and for a completed transfer).
    return replace(
        state,
        balance_minor=event.balance_after_minor,
        version=event.sequence,
        updated_at_ms=event.recorded_at_ms,
        **extra,
    )


def fold(events, state: AccountState | None = None) -> AccountState | None:
    for event in events:
        state = evolve(state, event)
    return state


# --------------------------------------------------------------------------
# decide
# --------------------------------------------------------------------------


def _show(value) -> str:
    """A bounded repr for rejection details: they are logged, never unbounded."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _valid_id(value, length_max: int) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= length_max
        and _ID_RE.fullmatch(value) is not None
    )


def _check_amount(amount) -> Rejection | None:
    # bool is an int subclass; True is not one cent.
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        return Rejection(RejectionReason.amount_must_be_positive, f"amount {_show(amount)}")
    if amount > AMOUNT_MAX_MINOR:
        return Rejection(RejectionReason.amount_too_large, f"amount {amount} > 2^63-1")
    return None


def _check_currency(currency) -> Rejection | None:
    if not isinstance(currency, str) or not _CURRENCY_RE.fullmatch(currency):
        return Rejection(RejectionReason.invalid_currency, f"currency {_show(currency)}")
    return None


def _check_live_account(state: AccountState | None, command) -> Rejection | None:
    if state is None:
        return Rejection(RejectionReason.unknown_account, command.account_id)
    if state.status is AccountStatus.closed:
        return Rejection(RejectionReason.account_closed, command.account_id)
    return None


def _check_same_currency(state: AccountState, currency: str, what: str) -> Rejection | None:
    if currency != state.currency:
        return Rejection(RejectionReason.currency_mismatch,
                         f"account is {state.currency}, {what} is {currency}")
    return None


def _check_funds(state: AccountState, amount: int) -> Rejection | None:
    """Money may leave only down to -overdraft_limit (which also keeps the
    balance far above the int64 floor)."""
    if state.balance_minor - amount < -state.overdraft_limit_minor:
        return Rejection(
            RejectionReason.insufficient_funds,
            f"balance {state.balance_minor} + overdraft "
            f"{state.overdraft_limit_minor} < {amount}",
        )
    return None


def _check_room(state: AccountState, amount: int) -> Rejection | None:
    """Money may arrive only while balance + pending stays within int64:
    money pending in outgoing transfers may come back as a refund, and a
    refund is never refused."""
    balance_after = state.balance_minor + amount
    if balance_after + state.pending_out_minor > BALANCE_MAX_MINOR:
        return Rejection(RejectionReason.balance_overflow, str(balance_after))
    return None


def decide(
    state: AccountState | None, command: Command, now_ms: int
) -> tuple[Event, ...] | Rejection:
    """What ``command`` does to the account in ``state`` at time ``now_ms``.

    Returns the events to append (never empty) or a :class:`Rejection`.
    ``state`` is None for an account that has never been opened.
    """
    if not valid_account_id(command.account_id):
        return Rejection(RejectionReason.invalid_account_id, _show(command.account_id))
    if state is not None and state.updated_at_ms > now_ms:
        # Time never runs backwards inside an account; the caller's clock did.
        now_ms = state.updated_at_ms
    next_sequence = 1 if state is None else state.version + 1

    if isinstance(command, OpenAccount):
        rejection = _check_currency(command.currency)
        if rejection:
            return rejection
        limit = command.overdraft_limit_minor
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            return Rejection(
                RejectionReason.overdraft_limit_must_not_be_negative, _show(limit)
            )
        if limit > AMOUNT_MAX_MINOR:
            return Rejection(RejectionReason.amount_too_large, f"overdraft {limit}")
        if state is not None:
            return Rejection(RejectionReason.account_exists, command.account_id)
        return (
            AccountOpened(
                account_id=command.account_id,
                sequence=next_sequence,
                command_id=command.command_id,
                currency=command.currency,
                amount_minor=0,
                balance_after_minor=0,
                recorded_at_ms=now_ms,
                overdraft_limit_minor=limit,
            ),
        )

    if isinstance(command, (Credit, Debit)):
        rejection = (
            _check_currency(command.currency)
            or _check_amount(command.amount_minor)
            or _check_live_account(state, command)
        )
        if rejection:
            return rejection
        if isinstance(command, Credit):
            rejection = (_check_same_currency(state, command.currency, "command")
                         or _check_room(state, command.amount_minor))
            balance_after, event_type = state.balance_minor + command.amount_minor, Credited
        else:
            rejection = (_check_same_currency(state, command.currency, "command")
                         or _check_funds(state, command.amount_minor))
            balance_after, event_type = state.balance_minor - command.amount_minor, Debited
        if rejection:
            return rejection
        return (
            event_type(
                account_id=command.account_id,
                sequence=next_sequence,
                command_id=command.command_id,
                currency=command.currency,
                amount_minor=command.amount_minor,
                balance_after_minor=balance_after,
                recorded_at_ms=now_ms,
            ),
        )

    if isinstance(command, CloseAccount):
        rejection = _check_live_account(state, command)
        if rejection:
            return rejection
        if state.balance_minor != 0:
            return Rejection(
                RejectionReason.balance_not_zero, f"balance {state.balance_minor}"
            )
        if state.pending_out_minor != 0:
            # A refund may still come back to this account.
            return Rejection(
                RejectionReason.transfers_pending, f"pending {state.pending_out_minor}"
            )
        return (
            AccountClosed(
                account_id=command.account_id,
                sequence=next_sequence,
                command_id=command.command_id,
                currency=state.currency,
                amount_minor=0,
                balance_after_minor=0,
                recorded_at_ms=now_ms,
            ),
        )

    if isinstance(command, Transfer):
        return _decide_transfer(state, command, now_ms, next_sequence)
    if isinstance(command, TransferCreditLeg):
        return _decide_credit_leg(state, command, now_ms, next_sequence)
    if isinstance(command, TransferSettleLeg):
        return _decide_settle_leg(state, command, now_ms, next_sequence)
    raise TypeError(f"not a command: {command!r}")


def _decide_transfer(state, command: Transfer, now_ms: int, next_sequence: int):
    if not valid_account_id(command.to_account_id):
        return Rejection(RejectionReason.invalid_account_id, _show(command.to_account_id))
    rejection = _check_currency(command.currency) or _check_amount(command.amount_minor)
    if rejection:
        return rejection
    if command.from_account_id == command.to_account_id:
        return Rejection(RejectionReason.same_account, command.to_account_id)
    rejection = (_check_live_account(state, command)
                 or _check_same_currency(state, command.currency, "command")
                 or _check_funds(state, command.amount_minor))
    if rejection:
        return rejection
    balance_after = state.balance_minor - command.amount_minor
    return (
        TransferDebited(
            account_id=command.from_account_id,
            sequence=next_sequence,
            command_id=command.command_id,
            currency=command.currency,
            amount_minor=command.amount_minor,
            balance_after_minor=balance_after,
            recorded_at_ms=now_ms,
            transfer_id=command.command_id,
            counterparty_account_id=command.to_account_id,
            metadata=command.metadata,
        ),
    )


def _decide_credit_leg(state, leg: TransferCreditLeg, now_ms: int, next_sequence: int):
    """The destination's side: accept the money, or refuse with a reason."""
    rejection = (_check_live_account(state, leg)
                 or _check_same_currency(state, leg.currency, "transfer")
                 or _check_room(state, leg.amount_minor))
    if rejection:
        return rejection
    balance_after = state.balance_minor + leg.amount_minor
    return (
        TransferCredited(
            account_id=leg.account_id,
            sequence=next_sequence,
            command_id=leg.command_id,
            currency=leg.currency,
            amount_minor=leg.amount_minor,
            balance_after_minor=balance_after,
            recorded_at_ms=now_ms,
            transfer_id=leg.transfer_id,
            counterparty_account_id=leg.from_account_id,
        ),
    )


def _decide_settle_leg(state, leg: TransferSettleLeg, now_ms: int, next_sequence: int):
    """The source's side of the end of a transfer. Never refused: the money
    was debited here, so the account exists and cannot have been closed
    (close is refused while transfers are pending)."""
    if state is None or state.pending_out_minor < leg.amount_minor:
        raise ValueError(f"settle of {leg.transfer_id} without a pending debit")
    common = dict(
        account_id=leg.account_id,
        sequence=next_sequence,
        command_id=leg.command_id,
        currency=leg.currency,
        amount_minor=leg.amount_minor,
        recorded_at_ms=now_ms,
        transfer_id=leg.transfer_id,
        counterparty_account_id=leg.to_account_id,
    )
    if leg.completed:
        return (TransferCompleted(balance_after_minor=state.balance_minor, **common),)
    return (
        TransferRefunded(
            balance_after_minor=state.balance_minor + leg.amount_minor,
            reason=leg.reason,
            **common,
        ),
    )


# --------------------------------------------------------------------------
# Time on a partition of the log
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartitionTick:
    """Not an account event: a mark that time has passed on one partition of
    the event log.

    The worker that owns a partition writes one, in a transaction of its own
    or beside a batch's events, when nothing else has been recorded on the
    partition for a while. Like every record of the partition it is stamped
    later than everything recorded there before it, so "every record of this
    partition up to ``recorded_at_ms`` is in the log" holds once it is
    committed (the partition's watermark; see ``streams/processor.py``). It
    changes no account and has no key.
    """

    partition: int
    recorded_at_ms: int
    type = "partition_tick"


def stamp_after(watermark_ms: int, now_ms: int) -> int:
    """The ``recorded_at`` for a new record on a partition whose newest
    committed record was recorded at ``watermark_ms``: the clock, but always
    at least 1 ms after the watermark, so time never goes backwards on a
    partition, whoever owns it and whatever its clock says."""
    return now_ms if now_ms > watermark_ms else watermark_ms + 1
