"""The JSON shapes of the HTTP API, declared once as msgspec Structs.

Each command type a client may send is one Struct here (tagged by its
``type``), and each field's limits are an annotated type built from the
domain's own limits (``ledger.domain``: id lengths and character rule,
currency rule, amount maximum). Everything else is derived from these
declarations, never written again:

- :mod:`streams.api.requests` validates a body by walking a Struct's type
  information (``msgspec.inspect``) and answers the project's 400s (``field``,
  ``reason``, ``message``) in the declared field order;
- :mod:`streams.api.openapi` takes every body schema from
  ``msgspec.json.schema_components`` (turned into OpenAPI 3.0 by
  :func:`openapi_schemas`);
- ``ledger send`` (streams/cli.py) takes the options each type needs and
  allows from :data:`REQUIRED_FIELDS` and :data:`TYPE_FIELDS`.

Why msgspec rather than pydantic v2: neither library's own validator runs
on the request path (their errors are not the API's 400 format, and they
report fields in body order, not in the fixed order the API promises), so
what is used is the model's type information and JSON Schema, which msgspec
gives as plain data (``msgspec.inspect``). Measured on a credit body (README,
HTTP API): msgspec validates one Struct in 1.3 us, pydantic one model in
1.4-1.7 us; the walk in requests.py costs within 0.7 us of the hand-written
checks it replaced.

Optional fields default to ``UNSET`` (absent on the wire; ``null`` is never
accepted), except ``overdraft_limit`` and ``metadata``, whose defaults are
real values that :func:`streams.api.requests.command_to_json` always writes.

Pure: msgspec and ``ledger.domain`` only.
"""

from __future__ import annotations

import heapq
from typing import Annotated, Literal, Union

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from ledger import domain

INT64_MIN = domain.BALANCE_MIN_MINOR
INT64_MAX = domain.AMOUNT_MAX_MINOR

METADATA_ENTRIES_MAX = 16
METADATA_KEY_LENGTH_MAX = 64
METADATA_VALUE_LENGTH_MAX = 256

# Every reason code a 400 (InvalidRequest) can give, for documentation and tests.
REASONS = (
    "missing",
    "wrong_type",
    "empty",
    "too_long",
    "malformed",
    "unknown_type",
    "unexpected_field",
    "not_allowed_for_type",
    "not_an_integer",
    "must_be_positive",
    "must_not_be_negative",
    "too_large",
    "too_many_entries",
    "empty_key",
    "key_too_long",
    "duplicate_field",
    "out_of_range",
)

# The domain's character rules as anchored JSON Schema patterns.
ID_PATTERN = f"^{domain._ID_RE.pattern}$"
# An account id is also a URL path segment: "." and ".." are not ids.
ACCOUNT_ID_PATTERN = f"^(?!\\.\\.?$){domain._ID_RE.pattern}$"
CURRENCY_PATTERN = f"^{domain._CURRENCY_RE.pattern}$"
_ID_CHARACTERS = "may only contain A-Z a-z 0-9 . _ : @ -"

# ``extra`` of a string's Meta, read by the validator only:
#   malformed: (pattern, message) pairs checked in order, the first that does
#              not match the whole value names the problem (their conjunction
#              is the Meta's pattern);
#   parse:     the name of a parser the value goes through (``instant``).


def _int64(minimum: int, description: str | None, **extra) -> Meta:
    return Meta(ge=minimum, le=INT64_MAX, description=description,
                extra_json_schema={"format": "int64", **extra})


def _account(description: str, example: str = "alice") -> type:
    return Annotated[str, Meta(
        min_length=1, max_length=domain.ACCOUNT_ID_LENGTH_MAX, pattern=ACCOUNT_ID_PATTERN,
        description=description, examples=[example],
        extra={"malformed": ((ID_PATTERN, _ID_CHARACTERS),
                             (ACCOUNT_ID_PATTERN, "is not an account id"))})]


def _command_id(description: str) -> type:
    return Annotated[str, Meta(
        min_length=1, max_length=domain.COMMAND_ID_LENGTH_MAX, pattern=ID_PATTERN,
        description=description, examples=["order-17"],
        extra={"malformed": ((ID_PATTERN, _ID_CHARACTERS),)})]


AccountId = _account("Account id.")
CommandId = _command_id("Client-chosen idempotency key.")
Currency = Annotated[str, Meta(
    pattern=CURRENCY_PATTERN, description="ISO 4217 code: exactly three capital letters.",
    examples=["EUR"], extra_json_schema={"minLength": 3, "maxLength": 3},  # as the pattern says
    extra={"malformed": ((CURRENCY_PATTERN, "is not three capital letters (ISO 4217)"),)})]
_MINOR = " Integer count of minor units (cents for EUR)."
Amount = Annotated[int, _int64(1, "Amount, at least 1." + _MINOR)]
OverdraftLimit = Annotated[int, _int64(0, "How far below zero the balance may go." + _MINOR)]
ExpectedVersion = Annotated[int, _int64(
    0, "Optimistic concurrency: decided only if the account's version is this one then "
       "(0: it does not exist yet), else rejected as version_conflict (the reply's version "
       "is the current one).")]
Metadata = Annotated[
    dict[Annotated[str, Meta(min_length=1, max_length=METADATA_KEY_LENGTH_MAX)],
         Annotated[str, Meta(max_length=METADATA_VALUE_LENGTH_MAX)]],
    Meta(max_length=METADATA_ENTRIES_MAX,
         description=f"Free-form string pairs kept with the command: at most "
                     f"{METADATA_ENTRIES_MAX} entries, keys 1..{METADATA_KEY_LENGTH_MAX} "
                     f"characters, values at most {METADATA_VALUE_LENGTH_MAX} characters.",
         examples=[{"note": "rent"}])]
Instant = Annotated[str, Meta(extra_json_schema={"format": "date-time"},
                              extra={"parse": "instant"})]
ExpiresAt = Annotated[
    Union[Instant, Annotated[int, _int64(1, "Epoch ms.")]],
    Meta(description="hold only: when it expires (at most 30 days ahead, else "
                     "expiry_out_of_range); not with expires_in_ms. Default: 7 days.")]
ExpiresInMs = Annotated[int, _int64(1, "hold only: expires this long after it is decided "
                                       "(at most 30 days); not with expires_at.")]
HoldId = _command_id("The hold: its hold command's command_id.")
FromAccountId = _account("Source account (debited).")
ToAccountId = _account("Destination account (credited).", "bob")


class _Command(Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True):
    command_id: CommandId


class OpenAccountCommand(_Command, tag="open_account", kw_only=True):
    """Open an account in one currency."""
    account_id: AccountId
    currency: Currency
    overdraft_limit: OverdraftLimit = 0
    expected_version: ExpectedVersion | UnsetType = UNSET


class _ExternalMoney(_Command, kw_only=True):
    account_id: AccountId
    amount: Amount
    currency: Currency
    expected_version: ExpectedVersion | UnsetType = UNSET


class CreditCommand(_ExternalMoney, tag="credit", kw_only=True):
    """Money in from outside the ledger."""


class DebitCommand(_ExternalMoney, tag="debit", kw_only=True):
    """Money out of the ledger (refused as insufficient_funds past the overdraft limit)."""


class CloseAccountCommand(_Command, tag="close_account", kw_only=True):
    """Close an account (its balance must be zero, nothing held or pending)."""
    account_id: AccountId
    expected_version: ExpectedVersion | UnsetType = UNSET


class TransferCommand(_Command, tag="transfer", kw_only=True):
    """Move money between two accounts (same currency), exactly once."""
    from_account_id: FromAccountId
    to_account_id: ToAccountId
    amount: Amount
    currency: Currency
    metadata: Metadata = {}
    expected_version: ExpectedVersion | UnsetType = UNSET


class HoldCommand(_Command, tag="hold", kw_only=True):
    """Reserve money on an account until it is captured, released or expires."""
    account_id: AccountId
    to_account_id: ToAccountId | UnsetType = UNSET
    amount: Amount
    currency: Currency
    expires_at: ExpiresAt | UnsetType = UNSET
    expires_in_ms: ExpiresInMs | UnsetType = UNSET
    metadata: Metadata = {}
    expected_version: ExpectedVersion | UnsetType = UNSET


class CaptureCommand(_Command, tag="capture", kw_only=True):
    """Take a held amount (default: all of it; the rest is released)."""
    account_id: AccountId
    to_account_id: ToAccountId | UnsetType = UNSET
    hold_id: HoldId
    amount: Amount | UnsetType = UNSET
    expected_version: ExpectedVersion | UnsetType = UNSET


class ReleaseCommand(_Command, tag="release", kw_only=True):
    """Give a hold's money back to the account."""
    account_id: AccountId
    hold_id: HoldId
    expected_version: ExpectedVersion | UnsetType = UNSET


# Command type -> its Struct, in the domain's order (the one list of types).
def _command_models(base: type[Struct]):
    """The Structs a client may send: the classes below ``base`` that nothing extends."""
    for model in base.__subclasses__():
        if model.__subclasses__():
            yield from _command_models(model)
        else:
            yield msgspec.inspect.type_info(model).tag, model


_BY_TAG = dict(_command_models(_Command))
COMMAND_MODELS: dict[str, type[Struct]] = {
    name: _BY_TAG[name] for name in domain.COMMAND_TYPES if name in _BY_TAG}
if set(_BY_TAG) != set(domain.COMMAND_TYPES):  # a new type needs its model here, and back
    raise ImportError(f"models for {sorted(_BY_TAG)}, the domain's command types "
                      f"are {sorted(domain.COMMAND_TYPES)}")
Command = Union[tuple(COMMAND_MODELS.values())]

# A wire name that is not the domain's field name (money fields say "_minor"
# in the domain, instants "_ms").
DOMAIN_NAMES = {"amount": "amount_minor", "overdraft_limit": "overdraft_limit_minor",
                "expires_at": "expires_at_ms"}

# type -> its fields besides command_id and type, in the order they are checked.
TYPE_FIELDS: dict[str, tuple[str, ...]] = {
    name: tuple(f.encode_name for f in msgspec.inspect.type_info(model).fields
                if f.encode_name != "command_id")
    for name, model in COMMAND_MODELS.items()
}
# type -> the fields it cannot do without.
REQUIRED_FIELDS: dict[str, frozenset[str]] = {
    name: frozenset(f.encode_name for f in msgspec.inspect.type_info(model).fields
                    if f.required and f.encode_name != "command_id")
    for name, model in COMMAND_MODELS.items()
}
for _name, _fields in TYPE_FIELDS.items():
    _domain_fields = domain.COMMAND_TYPES[_name].__dataclass_fields__
    _unknown = [f for f in _fields if DOMAIN_NAMES.get(f, f) not in _domain_fields]
    if _unknown:
        raise ImportError(f"{_name}: {_unknown} are not fields of the domain's command")


def _field_order() -> tuple[str, ...]:
    """Every field in one order that agrees with each type's declared order
    (a topological merge; ties go to the field declared first)."""
    first_seen: dict[str, int] = {}
    before: dict[str, set[str]] = {}
    for fields in TYPE_FIELDS.values():
        for i, name in enumerate(fields):
            first_seen.setdefault(name, len(first_seen))
            before.setdefault(name, set()).update(fields[:i])
    ready = [(first_seen[n], n) for n, preds in before.items() if not preds]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        for other, preds in before.items():
            if name in preds:
                preds.discard(name)
                if not preds:
                    heapq.heappush(ready, (first_seen[other], other))
    return tuple(order)


# Every field a command body may carry besides command_id and type.
FIELD_ORDER = _field_order()


# --------------------------------------------------------------------------
# JSON Schema -> OpenAPI 3.0
# --------------------------------------------------------------------------

REF_TEMPLATE = "#/components/schemas/{name}"


def openapi_schemas(types) -> tuple[list[dict], dict[str, dict]]:
    """(schema of each type, component schemas) in OpenAPI 3.0 form.

    msgspec writes JSON Schema 2020-12; OpenAPI 3.0 wants ``example`` (one)
    instead of ``examples``, ``nullable`` instead of a ``null`` type, and has
    no ``propertyNames`` (metadata key lengths are in the description and
    checked by the server).
    """
    schemas, components = msgspec.json.schema_components(types, ref_template=REF_TEMPLATE)
    return ([_to_openapi_30(s) for s in schemas],
            {name: _to_openapi_30(s) for name, s in components.items()})


def _to_openapi_30(node):
    if isinstance(node, list):
        return [_to_openapi_30(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "examples":
            out["example"] = value[0]
        elif key == "description":
            out[key] = " ".join(value.split())  # a docstring's line breaks are not meant
        elif key != "propertyNames":
            out[key] = _to_openapi_30(value)
    if "enum" in out and "type" not in out and all(isinstance(v, str) for v in out["enum"]):
        out["type"] = "string"  # a tag: msgspec writes the enum alone
    for union in ("anyOf", "oneOf"):
        options = out.get(union)
        if options and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            del out[union]
            if len(rest) == 1 and "$ref" not in rest[0]:
                out = {**rest[0], **out}
            elif len(rest) == 1:
                out["allOf"] = rest
            else:
                out[union] = rest
            out["nullable"] = True
            if "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
    return out


# --------------------------------------------------------------------------
# Responses (what the views answer; tests/streams/test_http_table.py checks
# live answers against the schemas generated from these)
# --------------------------------------------------------------------------


def _i64(description: str | None = None, minimum: int = INT64_MIN) -> Meta:
    return _int64(minimum, description)


def _text(description: str | None = None, **schema) -> Meta:
    return Meta(description=description, extra_json_schema=schema or None)


def _about(description: str) -> Meta:
    return Meta(description=description)


DateTime = Annotated[str, _text(format="date-time")]
Date = Annotated[str, _text(format="date")]
_MONEY = "Minor units."
MoneyOut = Annotated[int, _i64(_MONEY, 0)]
EventType = Literal[tuple(domain.EVENT_TYPES)]
RejectionReason = Literal[tuple(r.value for r in domain.RejectionReason)]
Partition = Annotated[int, Meta(ge=0)]
Offset = Annotated[int, _i64("Last event-log offset folded (-1: none).", -1)]


class Accepted(Struct, kw_only=True):
    command_id: CommandId
    status: Literal["accepted"]


class Event(Struct, kw_only=True):
    """One committed event of an account. Fields beyond the common ones depend on
    the type (transfer_* events carry transfer_id and counterparty_account_id;
    transfer_debited carries metadata; transfer_refunded carries reason)."""
    type: EventType
    account_id: AccountId
    sequence: Annotated[int, _i64(minimum=1)]
    command_id: str
    currency: Currency
    amount: Annotated[int, _i64("Minor units moved (0 for account_opened/closed).", 0)]
    balance_after: Annotated[int, _i64("Balance after this event, minor units.")]
    recorded_at: DateTime
    overdraft_limit: Annotated[int, _i64("account_opened only.", 0)] | UnsetType = UNSET
    transfer_id: str | UnsetType = UNSET
    counterparty_account_id: str | UnsetType = UNSET
    hold_id: Annotated[str, _about("hold_* events.")] | UnsetType = UNSET
    to_account_id: Annotated[str, _about(
        "hold_placed, hold_captured: the destination, empty for none.")] | UnsetType = UNSET
    expires_at_ms: Annotated[int, _i64("hold_placed, hold_expired.")] | UnsetType = UNSET
    released_minor: Annotated[int, _i64("hold_captured: the part released.")] \
        | UnsetType = UNSET
    metadata: dict[str, str] | UnsetType = UNSET
    reason: str | UnsetType = UNSET


class Outcome(Struct, kw_only=True):
    command_id: str
    status: Literal["applied", "rejected"]
    reason: Annotated[RejectionReason | None,
                      _about("Why it was rejected; null when applied.")]
    events: Annotated[list[Event], _about("The events it appended; empty when rejected.")]
    duplicate: Annotated[bool, _about(
        "?wait=1 only: true when this send was a retry (same command_id and body) and the "
        "outcome is the original one.")] | UnsetType = UNSET
    version: Annotated[int | None, _text(
        "?wait=1 only: the account's version when the reply was made (null: no such "
        "account).", format="int64")] | UnsetType = UNSET


class TransferStatus(Struct, kw_only=True):
    transfer_id: str
    status: Literal["pending", "completed", "failed"]
    reason: Annotated[str | None, _about("Why it failed; null unless failed.")]
    from_account_id: AccountId
    to_account_id: Annotated[AccountId | None, _about(
        "Null only for a transfer refused before it was decoded.")]
    amount: Annotated[int, _i64(minimum=1)] | None
    currency: Currency | None
    events: Annotated[list[Event], _about("Its events at the source account.")]


class Hold(Struct, kw_only=True):
    hold_id: str
    account_id: AccountId
    status: Literal["active", "captured", "released", "expired"]
    amount: Annotated[int, _i64("Minor units held.", 1)]
    captured_amount: Annotated[int, _i64(
        "Minor units captured (0 unless captured; the rest was released).", 0)]
    currency: Currency
    to_account_id: Annotated[AccountId | None, _about(
        "Where a capture moves the money; null: it leaves the ledger.")]
    expires_at: Annotated[str, _text(
        "The worker that owns the account records hold_expired within 5 s after it.",
        format="date-time")]
    events: Annotated[list[Event], _about("Its events on the account.")]


class Account(Struct, kw_only=True):
    account_id: AccountId
    currency: Currency
    balance: Annotated[int, _i64("Minor units; may be negative down to -overdraft_limit.")]
    version: Annotated[int, _i64("Sequence of the last event folded in.", 1)]
    status: Literal["open", "closed"]
    overdraft_limit: Annotated[int, _i64(minimum=0)]
    pending_out: Annotated[int, _i64(
        "Money debited here by transfers not yet settled.", 0)] | UnsetType = UNSET
    held: Annotated[int, _i64(
        "Sum of the account's active holds (still on the balance).", 0)] | UnsetType = UNSET
    available: Annotated[int, _i64(
        "What may still leave or be held: balance + overdraft_limit - held (money pending "
        "in outgoing transfers has already left the balance).", 0)] | UnsetType = UNSET
    updated_at: DateTime
    as_of: Annotated[str, _text(
        "The instant this state is as of: the as_of asked for, or, for a read without "
        "as_of, the time of the account's last event known to the answering store (the "
        "state as of its watermark). Final: ?as_of= this instant gives the same bytes, "
        "forever, through any worker. Absent when asked by version.",
        format="date-time")] | UnsetType = UNSET
    complete_up_to: Annotated[str, _text(
        "Every event of the account recorded at or before this instant is in the answer "
        "(here equal to as_of: the answer is about that instant, whichever worker answers, "
        "however far its store is). Absent when asked by version.",
        format="date-time")] | UnsetType = UNSET


class EventPage(Struct, kw_only=True):
    account_id: AccountId
    events: list[Event]
    next_cursor: Annotated[str | None, _about(
        "Pass as ?cursor= for the next page; null at the end.")]
    complete_up_to: Annotated[str, _text(
        "Every event of the account recorded at or before this instant is in the range "
        "these pages walk: `to` when given (the page is then final), else the time of the "
        "account's last event known to the answering store.", format="date-time")]


class Health(Struct, kw_only=True):
    status: Literal["ok", "unavailable"]
    worker_id: str
    partitions: Annotated[list[Partition], _about("Partitions this worker owns and serves.")]
    reason: Annotated[str, _about(
        "consuming when ok; else why not, e.g. starting, catching_up, fenced_rebuilding, "
        "broker_unreachable, store_failed, stopping.")]
    caught_up: Annotated[bool, _about("Same as status == ok (kept for older clients).")]


class InvalidRequest(Struct, kw_only=True):
    """A 400: the first problem found in the request (streams.api.requests)."""
    error: Literal["invalid_request"]
    field: Annotated[str, _about(
        'Where: "body", a field name, "metadata.<key>", or a query parameter name.')]
    reason: Annotated[str, _about("Short code, e.g. " + ", ".join(REASONS) + ".")]
    message: str


class Error(Struct, kw_only=True):
    error: Annotated[str, _about(
        "unauthorized, forbidden, unknown_account, unknown_version, unknown_command, "
        "unknown_transfer, body_too_large, unsupported_media_type, partition_unavailable, "
        "as_of_not_final, kafka_unavailable, outcome_timeout.")]
    detail: str | UnsetType = UNSET
    partition: Annotated[Partition, _about(
        "partition_unavailable: the partition with no reachable owner.")] | UnsetType = UNSET
    command_id: Annotated[str, _about(
        "kafka_unavailable, outcome_timeout: the command.")] | UnsetType = UNSET
    complete_up_to: Annotated[str, _text(
        "as_of_not_final: the instant up to which the answering store knows every event of "
        "the account's partition (its watermark).", format="date-time")] | UnsetType = UNSET
    as_of: Annotated[str, _text(
        "as_of_not_final: the instant asked about.", format="date-time")] | UnsetType = UNSET


class MoneyTotals(Struct, kw_only=True):
    balances: Annotated[int, _i64("Sum of all balances. " + _MONEY)]
    in_flight: Annotated[int, _i64(
        "Debited by transfers, not yet credited or refunded. " + _MONEY)]
    external_credits: Annotated[int, _i64("Credits from outside the ledger. " + _MONEY, 0)]
    external_debits: Annotated[int, _i64("Debits to outside the ledger. " + _MONEY, 0)]
    pending_out: Annotated[int, _i64(
        "Debited by transfers, not yet completed or refunded at their sources. " + _MONEY)]
    invariant_ok: Annotated[bool, _about(
        "balances + in_flight == external_credits - external_debits, pending_out >= 0 in "
        "every partition, and in flight >= 0 ledger-wide (judged lag-free).")]
    problems: Annotated[list[str], _about("Why invariant_ok is false.")]


class TotalsPartition(Struct, kw_only=True):
    """Per event-log partition: the offsets the sums cover."""
    offset: Offset
    records: Annotated[int, _i64("Log records folded (events and rejections).", 0)]
    lag: Annotated[int, _i64("Committed offsets not yet folded.", 0)]
    caught_up: bool
    worker_id: str


class LedgerTotals(Struct, kw_only=True):
    currencies: Annotated[dict[str, MoneyTotals], _about("Per currency code.")]
    invariant_ok: Annotated[bool, _about("For every currency.")]
    partitions: dict[str, TotalsPartition]
    missing_partitions: Annotated[list[Partition], _about(
        "Partitions no worker could answer for: the sums leave them out.")]
    complete: Annotated[bool, _about("No partition is missing.")]


class PartitionSums(Struct, kw_only=True):
    """Sums of amounts by kind of event, one currency, one partition."""
    credited: MoneyOut
    debited: MoneyOut
    transfer_debited: MoneyOut
    transfer_credited: MoneyOut
    transfer_refunded: MoneyOut
    transfer_completed: MoneyOut


class LocalPartition(Struct, kw_only=True):
    offset: Offset
    records: Annotated[int, _i64("Log records folded.", 0)]
    position: Annotated[int, _i64("Every committed record below it is folded.", 0)]
    end: Annotated[int, _i64("The log's last stable offset.", 0)] | None
    caught_up: bool
    currencies: dict[str, PartitionSums]


class LocalTotals(Struct, kw_only=True):
    worker_id: str
    partitions: dict[str, LocalPartition]


class StatementDay(Struct, kw_only=True):
    date: Date
    account_id: AccountId
    currency: Currency
    opening_balance: Annotated[int, _i64("Balance before the day's first event. " + _MONEY)]
    credited: Annotated[int, _i64("External credits. " + _MONEY, 0)]
    debited: Annotated[int, _i64("External debits. " + _MONEY, 0)]
    transfer_in: Annotated[int, _i64("Transfers credited here. " + _MONEY, 0)]
    transfer_out: Annotated[int, _i64("Transfers debited here. " + _MONEY, 0)]
    refunds: Annotated[int, _i64("Failed transfers paid back here. " + _MONEY, 0)]
    closing_balance: Annotated[int, _i64("Balance after the day's last event. " + _MONEY)]
    events: Annotated[int, _i64("Events of the account that day.", 1)]
    first_sequence: Annotated[int, _i64("Sequence of the day's first event.", 1)]
    last_sequence: Annotated[int, _i64("Sequence of the day's last event.", 1)]


class StatementPage(Struct, kw_only=True, rename={"from_": "from"}):
    account_id: AccountId
    time_zone: Annotated[str, _about("Days are calendar days here (LEDGER_STATEMENT_TZ).")]
    from_: Date
    to: Date
    days: Annotated[list[StatementDay], _about(
        "Days with events, in order; a day without events has no entry.")]
    partition: Partition
    position: Annotated[int, _i64(
        "The read model has folded every committed record of the partition below this "
        "offset.", 0)]
    caught_up: bool


# Every response body; each is a component of the OpenAPI document under its name.
RESPONSE_MODELS = (Accepted, Event, Outcome, TransferStatus, Hold, Account, EventPage,
                   Health, InvalidRequest, Error, MoneyTotals, LedgerTotals, LocalTotals,
                   StatementDay, StatementPage)
