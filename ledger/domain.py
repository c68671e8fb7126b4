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
import functools
import hashlib
import json
import re
from dataclasses import field, replace
from typing import Union

from ledger.frozen import frozen

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
    # Optimistic concurrency: the command's expected_version is not the account's.
    version_conflict = "version_conflict"
    # Holds (PlaceHold, CaptureHold, ReleaseHold).
    expiry_out_of_range = "expiry_out_of_range"
    unknown_hold = "unknown_hold"
    hold_captured = "hold_captured"
    hold_released = "hold_released"
    hold_expired = "hold_expired"
    capture_exceeds_hold = "capture_exceeds_hold"
    hold_destination_mismatch = "hold_destination_mismatch"
    holds_active = "holds_active"
    # Decided outside ``decide`` (by the command index), listed here so that
    # every reason a client can see has one home.
    command_id_reused = "command_id_reused"


# The order in which ``decide`` checks; the first failing check names the
# rejection. Shape of the command first, then the account it meets.
REJECTION_ORDER = (
    RejectionReason.invalid_account_id,
    RejectionReason.version_conflict,
    RejectionReason.invalid_currency,
    RejectionReason.amount_must_be_positive,
    RejectionReason.amount_too_large,
    RejectionReason.overdraft_limit_must_not_be_negative,
    RejectionReason.same_account,
    RejectionReason.expiry_out_of_range,
    RejectionReason.account_exists,
    RejectionReason.unknown_account,
    RejectionReason.account_closed,
    RejectionReason.currency_mismatch,
    RejectionReason.unknown_hold,
    RejectionReason.hold_captured,
    RejectionReason.hold_released,
    RejectionReason.hold_expired,
    RejectionReason.capture_exceeds_hold,
    RejectionReason.hold_destination_mismatch,
    RejectionReason.insufficient_funds,
    RejectionReason.balance_overflow,
    RejectionReason.balance_not_zero,
    RejectionReason.transfers_pending,
    RejectionReason.holds_active,
)

# ``expected_version`` of a command that expects nothing (any version will do).
# Any other value is the account version the command was decided against by
# its sender (0: the account does not exist yet); another version at decide
# time rejects it as version_conflict. An int, not None: Avro longs carry it.
ANY_VERSION = -1

# Holds: when none is given, a hold expires after HOLD_EXPIRY_DEFAULT_MS;
# never later than HOLD_EXPIRY_MAX_MS after it is placed.
HOLD_EXPIRY_DEFAULT_MS = 7 * 24 * 3600 * 1000
HOLD_EXPIRY_MAX_MS = 30 * 24 * 3600 * 1000


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------


@frozen
class OpenAccount:
    command_id: str
    account_id: str
    currency: str
    overdraft_limit_minor: int = 0
    expected_version: int = ANY_VERSION
    type = "open_account"


@frozen
class _ExternalMoney:
    """Money entering (credit) or leaving (debit) the ledger through one account."""

    command_id: str
    account_id: str
    amount_minor: int
    currency: str
    expected_version: int = ANY_VERSION


@frozen
class Credit(_ExternalMoney):
    type = "credit"


@frozen
class Debit(_ExternalMoney):
    type = "debit"


@frozen
class CloseAccount:
    command_id: str
    account_id: str
    expected_version: int = ANY_VERSION
    type = "close_account"


@frozen
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
    expected_version: int = ANY_VERSION
    type = "transfer"

    @property
    def account_id(self) -> str:
        # Where the command is applied, routed and ordered: the source.
        return self.from_account_id


@frozen
class TransferCreditLeg:
    """Internal: credit the destination of a debited transfer (workers only)."""

    command_id: str  # "<transfer_id>#credit:<from_account_id>": one per transfer
    account_id: str  # the destination
    transfer_id: str
    from_account_id: str
    amount_minor: int
    currency: str
    type = "transfer_credit"


@frozen
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


@frozen
class PlaceHold:
    """Reserve money on the account: it counts against the funds check like
    a debit (overdraft included) but stays on the account until captured,
    released or expired. ``command_id`` is the hold id.

    Expiry: ``expires_at_ms`` (epoch ms) or ``expires_in_ms`` from the
    moment it is decided, not both; 0 means not given (the default then is
    HOLD_EXPIRY_DEFAULT_MS). ``to_account_id`` ("" for none) is where a
    capture moves the money."""

    command_id: str
    account_id: str
    amount_minor: int
    currency: str
    to_account_id: str = ""
    expires_at_ms: int = 0
    expires_in_ms: int = 0
    metadata: tuple[tuple[str, str], ...] = ()
    expected_version: int = ANY_VERSION
    type = "hold"


@frozen
class CaptureHold:
    """Settle an active hold once: ``amount_minor`` of it (0: all of it; the
    rest is released in the same step). With a destination (the hold's or
    this one's, "" for none) the money moves there as a transfer whose id
    is the hold id; without one it leaves the ledger like a debit."""

    command_id: str
    account_id: str
    hold_id: str
    amount_minor: int = 0
    to_account_id: str = ""
    expected_version: int = ANY_VERSION
    type = "capture"


@frozen
class ReleaseHold:
    """Void an active hold."""

    command_id: str
    account_id: str
    hold_id: str
    expected_version: int = ANY_VERSION
    type = "release"


@frozen
class ExpireHold:
    """Internal: the owner of the account releases a hold whose time has
    passed (workers only, at their clock: ``now_ms`` of ``decide``)."""

    command_id: str  # "<hold_id>#expire": never a client's id
    account_id: str
    hold_id: str
    type = "expire_hold"


def expire_hold(account_id: str, hold_id: str) -> ExpireHold:
    return ExpireHold(f"{hold_id}#expire", account_id, hold_id)


Command = Union[OpenAccount, Credit, Debit, CloseAccount, Transfer, PlaceHold, CaptureHold,
                ReleaseHold]
Leg = Union[TransferCreditLeg, TransferSettleLeg]
COMMAND_TYPES: dict[str, type] = {
    c.type: c for c in (OpenAccount, Credit, Debit, CloseAccount, Transfer, PlaceHold,
                        CaptureHold, ReleaseHold)
}


def command_hash(command: Command) -> str:
    """Hex SHA-256 of the command's canonical form (type plus sorted fields).

    Two sends with the same ``command_id`` are the same request only if their
    hashes match; otherwise the second is ``command_id_reused``.
    """
    canonical = _canonical_writer(type(command))(command)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


# What json.dumps writes for a settle leg's completed flag and an empty
# metadata tuple: one of these is in every transfer's and every settle's form.
_JSON_CONSTANTS = {True: "true", False: "false", None: "null", (): "[]"}


@functools.lru_cache(maxsize=None)
def _canonical_writer(command_class: type):
    """A function writing a command's canonical form: json.dumps({"type":
    ..., **fields}, sort_keys=True, separators=(",", ":"), ensure_ascii=True),
    with expected_version absent when it is ANY_VERSION (as before the field
    existed: old commands keep their hash). Generated per class as straight
    code, one member at a time: a plain int, or a string json.dumps writes
    as itself between quotes, is written directly; anything else by
    json.dumps itself. The same bytes, so the same hash
    (tests/ledger/test_command_hash.py checks both against each other); one
    whole json.dumps per command was 5% of the worker's core thread, the
    member loop this replaced 4%."""
    names = sorted({"type", *command_class.__dataclass_fields__})
    lines = ["def canonical(c):", "    parts = []"]
    for name in names:
        label = json.dumps(name) + ":"
        if name == "type":
            lines.append(f"    parts.append({label + json.dumps(command_class.type)!r})")
            continue
        lines.append(f"    v = c.{name}")
        indent = "    "
        if name == "expected_version":
            lines.append("    if v != ANY_VERSION:")
            indent = "        "
        lines += [f"{indent}if type(v) is int:",
                  f"{indent}    parts.append({label!r} + str(v))",
                  f"{indent}elif type(v) is str and v.isascii() and v.isprintable() "
                  "and '\"' not in v and '\\\\' not in v:",
                  f"{indent}    parts.append({label + chr(34)!r} + v + '\"')",
                  f"{indent}elif v is True or v is False or v is None or v == ():",
                  f"{indent}    parts.append({label!r} + _JSON_CONSTANTS[v])",
                  f"{indent}else:",
                  f"{indent}    parts.append({label!r} + dumps(v, sort_keys=True, "
                  "separators=(',', ':'), ensure_ascii=True))"]
    lines.append("    return '{' + ','.join(parts) + '}'")
    env = {"ANY_VERSION": ANY_VERSION, "dumps": json.dumps, "_JSON_CONSTANTS": _JSON_CONSTANTS}
    exec("\n".join(lines), env)  # noqa: S102 - built above from the class's field names
    return env["canonical"]


# --------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------


@frozen
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


@frozen
class AccountOpened(_AccountEvent):
    overdraft_limit_minor: int
    type = "account_opened"


@frozen
class Credited(_AccountEvent):
    type = "credited"


@frozen
class Debited(_AccountEvent):
    type = "debited"


@frozen
class AccountClosed(_AccountEvent):
    type = "account_closed"


@frozen
class _TransferEvent(_AccountEvent):
    transfer_id: str
    counterparty_account_id: str


@frozen
class TransferDebited(_TransferEvent):
    """Money left the source; it is pending until settled."""

    metadata: tuple[tuple[str, str], ...] = ()
    type = "transfer_debited"


@frozen
class TransferCredited(_TransferEvent):
    """Money reached the destination."""

    type = "transfer_credited"


@frozen
class TransferCompleted(_TransferEvent):
    """The source learns the destination was credited; nothing is pending."""

    type = "transfer_completed"


@frozen
class TransferRefunded(_TransferEvent):
    """The destination refused; the money is back at the source."""

    reason: str
    type = "transfer_refunded"


@frozen
class HoldEvent(_AccountEvent):
    hold_id: str


@frozen
class HoldPlaced(HoldEvent):
    """``amount_minor`` is reserved: held, still on the balance."""

    to_account_id: str  # "" for none
    expires_at_ms: int
    metadata: tuple[tuple[str, str], ...] = ()
    type = "hold_placed"


@frozen
class HoldCaptured(HoldEvent):
    """``amount_minor`` of the hold is taken, ``released_minor`` (the rest)
    is freed. Without a destination the captured money left the ledger
    here (the balance fell); with one, a TransferDebited of the same
    command follows and moves it (the balance is unchanged by this event)."""

    released_minor: int
    to_account_id: str  # "" for none
    type = "hold_captured"


@frozen
class HoldReleased(HoldEvent):
    """The whole hold (``amount_minor``) is freed by a release command."""

    type = "hold_released"


@frozen
class HoldExpired(HoldEvent):
    """The whole hold is freed because its time passed; ``recorded_at_ms`` is
    the worker's clock when it noticed (at or after ``expires_at_ms``)."""

    expires_at_ms: int
    type = "hold_expired"


Event = Union[AccountOpened, Credited, Debited, AccountClosed, TransferDebited,
              TransferCredited, TransferCompleted, TransferRefunded, HoldPlaced, HoldCaptured,
              HoldReleased, HoldExpired]
EVENT_TYPES: dict[str, type] = {
    e.type: e for e in (AccountOpened, Credited, Debited, AccountClosed, TransferDebited,
                        TransferCredited, TransferCompleted, TransferRefunded, HoldPlaced,
                        HoldCaptured, HoldReleased, HoldExpired)
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


@frozen
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


@frozen
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


@frozen
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
    # The sum of the account's active holds.
    held_minor: int = field(default=0)

    @property
    def available_minor(self) -> int:
        """What may still leave: balance + overdraft - held. (Money pending in
        outgoing transfers has already left the balance.)"""
        return self.balance_minor + self.overdraft_limit_minor - self.held_minor


class HoldStatus(str, enum.Enum):
    active = "active"
    captured = "captured"
    released = "released"
    expired = "expired"


@frozen
class Hold:
    """One hold, as its events made it (:func:`evolve_hold`)."""

    hold_id: str
    account_id: str
    amount_minor: int
    currency: str
    to_account_id: str  # "" for none
    expires_at_ms: int
    status: HoldStatus
    captured_minor: int
    placed_at_ms: int
    ended_at_ms: int = 0  # when it left "active" (0 while active)
    sequences: tuple[int, ...] = ()  # its events on the account


def evolve_hold(hold: Hold | None, event) -> Hold | None:
    """Fold one event into the hold it concerns (None for other events)."""
    if isinstance(event, HoldPlaced):
        return Hold(event.hold_id, event.account_id, event.amount_minor, event.currency,
                    event.to_account_id, event.expires_at_ms, HoldStatus.active, 0,
                    event.recorded_at_ms, 0, (event.sequence,))
    if hold is None or not isinstance(event, HoldEvent) or hold.status is not HoldStatus.active:
        raise ValueError(f"{event!r} does not follow an active hold")
    status = {HoldCaptured: HoldStatus.captured, HoldReleased: HoldStatus.released,
              HoldExpired: HoldStatus.expired}[type(event)]
    captured = event.amount_minor if isinstance(event, HoldCaptured) else 0
    return replace(hold, status=status, captured_minor=captured,
                   ended_at_ms=event.recorded_at_ms,
                   sequences=hold.sequences + (event.sequence,))


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
    status, credits, debits = state.status, state.credits_minor, state.debits_minor
    pending_out, held = state.pending_out_minor, state.held_minor
    if isinstance(event, Credited):
        credits += event.amount_minor
    elif isinstance(event, Debited):
        debits += event.amount_minor
    elif isinstance(event, AccountClosed):
        status = AccountStatus.closed
    elif isinstance(event, TransferDebited):
        pending_out += event.amount_minor
    elif isinstance(event, (TransferCompleted, TransferRefunded)):
        pending_out -= event.amount_minor
    elif isinstance(event, TransferCredited):
        pass
    elif isinstance(event, HoldPlaced):
        held += event.amount_minor
    elif isinstance(event, HoldCaptured):
        held -= event.amount_minor + event.released_minor
        if not event.to_account_id:  # it left the ledger here, like a debit
            debits += event.amount_minor
    elif isinstance(event, (HoldReleased, HoldExpired)):
        held -= event.amount_minor
    else:
        raise TypeError(f"not an event: {event!r}")
    # Every event carries the balance after it (unchanged for a close, which
    # only happens at 0, and for a completed transfer). Built field by field
    # (_STATE_FIELDS below pins the list): dataclasses.replace cost more than
    # the rest of the fold (issue 10, recovery speed).
    return AccountState(state.account_id, state.currency, event.balance_after_minor,
                        state.overdraft_limit_minor, event.sequence, status,
                        state.opened_at_ms, event.recorded_at_ms, credits, debits,
                        pending_out, held)


# evolve builds AccountState positionally: a field added to it must be added there.
_STATE_FIELDS = ("account_id", "currency", "balance_minor", "overdraft_limit_minor", "version",
                 "status", "opened_at_ms", "updated_at_ms", "credits_minor", "debits_minor",
                 "pending_out_minor", "held_minor")
if tuple(AccountState.__dataclass_fields__) != _STATE_FIELDS:
    raise AssertionError("AccountState's fields changed: update evolve")


def fold(events, state: AccountState | None = None) -> AccountState | None:
    for event in events:
        state = evolve(state, event)
    return state


# A transfer's status at its source account, as its records there make it.
TRANSFER_PENDING, TRANSFER_COMPLETED, TRANSFER_FAILED = "pending", "completed", "failed"
TRANSFER_STATUSES = (TRANSFER_PENDING, TRANSFER_COMPLETED, TRANSFER_FAILED)


def transfer_status(record) -> tuple[str, str | None] | None:
    """The (status, reason) a transfer has at its source right after ``record``,
    or None if the record is not one of a transfer's records at its source.

    The one fold of transfer status: debited is pending, completed is
    completed, refunded (the destination refused the credit) or rejected
    (refused at the source) is failed with the reason. Pure.
    """
    if isinstance(record, TransferDebited):
        return TRANSFER_PENDING, None
    if isinstance(record, TransferCompleted):
        return TRANSFER_COMPLETED, None
    if isinstance(record, TransferRefunded):
        return TRANSFER_FAILED, record.reason
    if isinstance(record, CommandRejected) and record.command_type == Transfer.type \
            and record.reason != RejectionReason.command_id_reused.value:
        return TRANSFER_FAILED, record.reason
    return None


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
    """Money may leave (or be held) only while what is available covers it:
    balance + overdraft_limit - held (which also keeps the balance far above
    the int64 floor)."""
    if state.available_minor < amount:
        return Rejection(
            RejectionReason.insufficient_funds,
            f"balance {state.balance_minor} + overdraft {state.overdraft_limit_minor} "
            f"- held {state.held_minor} < {amount}",
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
    state: AccountState | None, command: Command, now_ms: int, hold: Hold | None = None
) -> tuple[Event, ...] | Rejection:
    """What ``command`` does to the account in ``state`` at time ``now_ms``.

    Returns the events to append (never empty) or a :class:`Rejection`.
    ``state`` is None for an account that has never been opened. ``hold``
    is the account's hold named by a capture, release or expiry (None if
    it has none); other commands ignore it.
    """
    early = decide_common(state, command)
    if early is not None:
        return early
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
        if state.held_minor != 0:
            return Rejection(RejectionReason.holds_active, f"held {state.held_minor}")
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
    if isinstance(command, (PlaceHold, CaptureHold, ReleaseHold, ExpireHold)):
        return _decide_hold(state, command, now_ms, next_sequence, hold)
    raise TypeError(f"not a command: {command!r}")


def _decide_hold(state, command, now_ms: int, next_sequence: int, hold: Hold | None):
    if isinstance(command, PlaceHold):
        return _decide_place_hold(state, command, now_ms, next_sequence)
    if isinstance(command, ExpireHold):
        if hold is None or hold.status is not HoldStatus.active or hold.expires_at_ms > now_ms:
            raise ValueError(f"expiry of {command.hold_id} that is not due")
        return (HoldExpired(account_id=command.account_id, sequence=next_sequence,
                            command_id=command.command_id, currency=hold.currency,
                            amount_minor=hold.amount_minor,
                            balance_after_minor=state.balance_minor, recorded_at_ms=now_ms,
                            hold_id=hold.hold_id, expires_at_ms=hold.expires_at_ms),)
    rejection = _check_live_account(state, command) or _check_hold(hold, command, now_ms)
    if rejection:
        return rejection
    common = dict(account_id=command.account_id, sequence=next_sequence,
                  command_id=command.command_id, currency=hold.currency,
                  recorded_at_ms=now_ms, hold_id=hold.hold_id)
    if isinstance(command, ReleaseHold):
        return (HoldReleased(amount_minor=hold.amount_minor,
                             balance_after_minor=state.balance_minor, **common),)
    return _decide_capture(state, command, hold, common)


def decide_common(state, command) -> Rejection | None:
    """The checks every account command starts with (``decide``'s first two)."""
    if not valid_account_id(command.account_id):
        return Rejection(RejectionReason.invalid_account_id, _show(command.account_id))
    expected = getattr(command, "expected_version", ANY_VERSION)
    if expected != ANY_VERSION:
        current = 0 if state is None else state.version
        if expected != current:
            return Rejection(RejectionReason.version_conflict,
                             f"current version {current}, expected {_show(expected)}")
    return None


def _decide_place_hold(state, command: PlaceHold, now_ms: int, next_sequence: int):
    rejection = _check_currency(command.currency) or _check_amount(command.amount_minor)
    if rejection:
        return rejection
    to = command.to_account_id
    if to and not valid_account_id(to):
        return Rejection(RejectionReason.invalid_account_id, _show(to))
    if to == command.account_id:
        return Rejection(RejectionReason.same_account, to)
    expires_at = _hold_expiry(command, now_ms)
    if isinstance(expires_at, Rejection):
        return expires_at
    rejection = (_check_live_account(state, command)
                 or _check_same_currency(state, command.currency, "hold")
                 or _check_funds(state, command.amount_minor))
    if rejection:
        return rejection
    return (HoldPlaced(account_id=command.account_id, sequence=next_sequence,
                       command_id=command.command_id, currency=command.currency,
                       amount_minor=command.amount_minor,
                       balance_after_minor=state.balance_minor, recorded_at_ms=now_ms,
                       hold_id=command.command_id, to_account_id=to,
                       expires_at_ms=expires_at, metadata=command.metadata),)


def _hold_expiry(command: PlaceHold, now_ms: int) -> int | Rejection:
    at, within = command.expires_at_ms, command.expires_in_ms
    for value in (at, within):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return Rejection(RejectionReason.expiry_out_of_range, _show(value))
    if at and within:
        return Rejection(RejectionReason.expiry_out_of_range,
                         "expires_at and expires_in both given")
    expires_at = at or now_ms + (within or HOLD_EXPIRY_DEFAULT_MS)
    if not now_ms < expires_at <= now_ms + HOLD_EXPIRY_MAX_MS:
        return Rejection(RejectionReason.expiry_out_of_range,
                         f"expires at {expires_at}, now {now_ms}, at most "
                         f"{HOLD_EXPIRY_MAX_MS} ms ahead")
    return expires_at


_HOLD_ENDED = {HoldStatus.captured: RejectionReason.hold_captured,
               HoldStatus.released: RejectionReason.hold_released,
               HoldStatus.expired: RejectionReason.hold_expired}


def _check_hold(hold: Hold | None, command, now_ms: int) -> Rejection | None:
    if hold is None:
        return Rejection(RejectionReason.unknown_hold, _show(command.hold_id))
    if hold.status is not HoldStatus.active:
        return Rejection(_HOLD_ENDED[hold.status], hold.hold_id)
    if hold.expires_at_ms <= now_ms:
        # Its expiry is due (the worker is about to record it): never captured now.
        return Rejection(RejectionReason.hold_expired, f"{hold.hold_id} expired at "
                                                       f"{hold.expires_at_ms}")
    return None


def _decide_capture(state, command: CaptureHold, hold: Hold, common: dict):
    amount = command.amount_minor or hold.amount_minor
    rejection = _check_amount(amount)
    if rejection:
        return rejection
    if amount > hold.amount_minor:
        return Rejection(RejectionReason.capture_exceeds_hold,
                         f"capture {amount} > hold {hold.amount_minor}")
    to = command.to_account_id
    if to and hold.to_account_id and to != hold.to_account_id:
        return Rejection(RejectionReason.hold_destination_mismatch,
                         f"hold to {hold.to_account_id}, capture to {to}")
    to = to or hold.to_account_id
    if to and not valid_account_id(to):
        return Rejection(RejectionReason.invalid_account_id, _show(to))
    if to == command.account_id:
        return Rejection(RejectionReason.same_account, to)
    captured = HoldCaptured(amount_minor=amount, released_minor=hold.amount_minor - amount,
                            to_account_id=to,
                            balance_after_minor=state.balance_minor - (0 if to else amount),
                            **common)
    if not to:
        return (captured,)
    # The money moves on as a transfer (id: the hold id) through the legs.
    return (captured, TransferDebited(
        account_id=command.account_id, sequence=captured.sequence + 1,
        command_id=command.command_id, currency=hold.currency, amount_minor=amount,
        balance_after_minor=state.balance_minor - amount,
        recorded_at_ms=captured.recorded_at_ms, transfer_id=hold.hold_id,
        counterparty_account_id=to))


def capture_transfer(events) -> Transfer | None:
    """The transfer a capture's events start (its credit leg is sent on), if any."""
    for event in events:
        if isinstance(event, TransferDebited):
            return Transfer(event.transfer_id, event.account_id,
                            event.counterparty_account_id, event.amount_minor, event.currency)
    return None


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


@frozen
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
