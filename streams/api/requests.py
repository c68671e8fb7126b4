"""What a client sends over HTTP, validated: command bodies, path ids, query parameters.

An HTTP adapter, not domain code (it lives beside the views, not in
``ledger/``), but pure all the same: stdlib and ``ledger.domain`` only, no web
framework, no Kafka. The views call :func:`parse_command_json` on a body and
the ``parse_*`` functions on path ids and query parameters, and answer 400
with ``InvalidRequest.to_json()`` when one raises. Every parser bounds what it
returns, so nothing downstream (a store seek, a date format) can fail on a
value that passed here.

Wire form of each command (``command_to_json`` writes exactly this; money is
an integer count of minor units, never a float)::

    {"command_id": "c-1", "type": "open_account", "account_id": "alice",
     "currency": "EUR", "overdraft_limit": 0}                    # limit optional
    {"command_id": "c-2", "type": "credit", "account_id": "alice",
     "amount": 1000, "currency": "EUR"}                          # debit alike
    {"command_id": "t-1", "type": "transfer", "from_account_id": "alice",
     "to_account_id": "bob", "amount": 250, "currency": "EUR",
     "metadata": {"note": "rent"}}                               # metadata optional
    {"command_id": "c-3", "type": "close_account", "account_id": "alice"}
    {"command_id": "h-1", "type": "hold", "account_id": "alice", "amount": 500,
     "currency": "EUR", "to_account_id": "shop",                 # optional
     "expires_in_ms": 60000, "metadata": {}}     # or "expires_at"; both optional
    {"command_id": "k-1", "type": "capture", "account_id": "alice",
     "hold_id": "h-1", "amount": 300, "to_account_id": "shop"}   # both optional
    {"command_id": "r-1", "type": "release", "account_id": "alice", "hold_id": "h-1"}

Any command may carry ``"expected_version": N`` (N >= 0): decided only if
the account's version is N then, else rejected as ``version_conflict``.

What is checked here is the *shape* of a request. Whatever needs an account's
state (unknown account, currency mismatch, same account on both sides of a
transfer, ...) is left to ``domain.decide`` and comes back as a rejected
outcome, not as a 400.

Order of checks (the first failure is the one reported, so a given body
always gets the same answer):

1. ``body``: must be a JSON object.
2. ``command_id``: missing, wrong_type, empty, too_long, malformed.
3. ``type``: missing, wrong_type, unknown_type.
4. Every other key of the body, in sorted order: a key no command type knows
   is ``unexpected_field``; a key known to another type only is
   ``not_allowed_for_type``. (Both name the key as ``field``.)
5. The type's own fields in :data:`FIELD_ORDER` order, i.e. ``account_id``,
   ``from_account_id``, ``to_account_id``, ``hold_id``, ``amount``,
   ``currency``, ``overdraft_limit``, ``expires_at``, ``expires_in_ms``,
   ``metadata``, ``expected_version`` (each type takes a subsequence, see
   :data:`TYPE_FIELDS`).

   - ids: missing, wrong_type, empty, too_long, malformed (an account id may
     not be ``.`` or ``..`` either: it is a URL path segment)
   - ``amount``: missing, wrong_type (bool, string, null, ...),
     not_an_integer (any float, even ``1.0`` or ``1e3``), must_be_positive,
     too_large (> 2**63-1)
   - ``currency``: missing, wrong_type, malformed (not exactly ``[A-Z]{3}``)
   - ``overdraft_limit``, ``expected_version`` (optional): wrong_type,
     not_an_integer, must_not_be_negative, too_large
   - ``expires_in_ms`` (optional): as ``amount``; ``expires_at`` (optional):
     wrong_type, malformed, out_of_range (RFC 3339 or epoch ms). Whether the
     expiry is within 30 days is the domain's: ``expiry_out_of_range``.
   - ``metadata`` (optional): wrong_type, too_many_entries (> 16); then per
     entry in sorted key order: empty_key / key_too_long / malformed key
     (field ``metadata``), wrong_type / too_long / malformed value (field
     ``metadata.<key>``)

``null`` is never accepted: an optional field is left out, not sent as null.
"""

from __future__ import annotations

import base64
import json
import numbers
import re

from ledger import domain
from ledger.domain import (
    ACCOUNT_ID_LENGTH_MAX,
    AMOUNT_MAX_MINOR,
    COMMAND_ID_LENGTH_MAX,
    Command,
)

__all__ = [
    "InvalidRequest",
    "parse_command",
    "parse_command_json",
    "decode_json_body",
    "command_to_json",
    "COMMAND_TYPE_NAMES",
    "FIELD_ORDER",
    "TYPE_FIELDS",
    "REQUIRED_FIELDS",
    "METADATA_ENTRIES_MAX",
    "METADATA_KEY_LENGTH_MAX",
    "METADATA_VALUE_LENGTH_MAX",
    "REQUEST_BODY_BYTES_MAX",
    "REASONS",
    "INSTANT_MS_MIN",
    "INSTANT_MS_MAX",
    "SEQUENCE_MAX",
    "parse_instant",
    "parse_positive_int",
    "parse_account_id",
    "parse_command_id",
    "parse_cursor",
    "encode_cursor",
    "parse_flag",
    "is_json_media_type",
    "valid_account_id",
]

METADATA_ENTRIES_MAX = 16
METADATA_KEY_LENGTH_MAX = 64
METADATA_VALUE_LENGTH_MAX = 256
# The largest valid command, every character \u-escaped, is under 62 KiB;
# a body above this is refused (413) before it is parsed.
REQUEST_BODY_BYTES_MAX = 64 * 1024

# The same character rules as the domain (one definition, no drift).
_ID_RE: re.Pattern = domain._ID_RE
_CURRENCY_RE: re.Pattern = domain._CURRENCY_RE
# Path segments a URL resolver would remove ("/a/./b" is "/a/b"). An account
# id is a path segment of every account route, so these two are refused.
_DOT_SEGMENTS = frozenset((".", ".."))


def valid_account_id(value: object) -> bool:
    """The domain's account id rule, minus the dot segments ``.`` and ``..``."""
    return domain.valid_account_id(value) and value not in _DOT_SEGMENTS

# The command types a client may send: the domain's one list.
COMMAND_TYPE_NAMES = tuple(domain.COMMAND_TYPES)

# Every field a command body may carry besides command_id and type, in the
# order they are checked.
FIELD_ORDER = (
    "account_id",
    "from_account_id",
    "to_account_id",
    "hold_id",
    "amount",
    "currency",
    "overdraft_limit",
    "expires_at",
    "expires_in_ms",
    "metadata",
    "expected_version",
)

# The fields each type takes (a subsequence of FIELD_ORDER) ...
TYPE_FIELDS: dict[str, tuple[str, ...]] = {
    "open_account": ("account_id", "currency", "overdraft_limit", "expected_version"),
    "credit": ("account_id", "amount", "currency", "expected_version"),
    "debit": ("account_id", "amount", "currency", "expected_version"),
    "transfer": ("from_account_id", "to_account_id", "amount", "currency", "metadata",
                 "expected_version"),
    "close_account": ("account_id", "expected_version"),
    "hold": ("account_id", "to_account_id", "amount", "currency", "expires_at",
             "expires_in_ms", "metadata", "expected_version"),
    "capture": ("account_id", "to_account_id", "hold_id", "amount", "expected_version"),
    "release": ("account_id", "hold_id", "expected_version"),
}
if set(TYPE_FIELDS) != set(COMMAND_TYPE_NAMES):  # a new command type needs its fields here
    raise ImportError(f"TYPE_FIELDS covers {sorted(TYPE_FIELDS)}, the domain's command types "
                      f"are {sorted(COMMAND_TYPE_NAMES)}")
# ... and which of them must be present.
_OPTIONAL = frozenset(("overdraft_limit", "metadata", "expected_version", "expires_at",
                       "expires_in_ms"))
REQUIRED_FIELDS: dict[str, frozenset[str]] = {
    name: frozenset(fields) - _OPTIONAL - (
        {"to_account_id"} if name == "hold" else
        {"to_account_id", "amount"} if name == "capture" else set())
    for name, fields in TYPE_FIELDS.items()
}

# Every reason code parse_command can give, for documentation and tests.
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

_TOP_FIELDS = frozenset(("command_id", "type", *FIELD_ORDER))
_FIELD_NAME_SHOWN_MAX = 64


class InvalidRequest(ValueError):
    """A request body that is not a well-formed command (HTTP 400).

    ``field`` names where the problem is ("body", "amount", "metadata.note"),
    ``reason`` is a short snake_case code from :data:`REASONS`, ``message``
    is for humans.
    """

    def __init__(self, field: str, reason: str, message: str):
        super().__init__(message)
        self.field = field
        self.reason = reason
        self.message = message

    def to_json(self) -> dict:
        return {
            "error": "invalid_request",
            "field": self.field,
            "reason": self.reason,
            "message": self.message,
        }

    def __repr__(self) -> str:
        return f"InvalidRequest(field={self.field!r}, reason={self.reason!r}, message={self.message!r})"


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


def parse_command(body: object) -> Command:
    """Validate a decoded JSON body; return the domain command or raise InvalidRequest.

    Never raises anything else, whatever ``body`` is.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("body", "wrong_type",
                             f"the body must be a JSON object, not {_json_type(body)}")

    command_id = _id_field(body, "command_id", account=False)

    if "type" not in body:
        raise InvalidRequest("type", "missing", "type is required")
    type_name = body["type"]
    if not isinstance(type_name, str):
        raise InvalidRequest("type", "wrong_type",
                             f"type must be a string, not {_json_type(type_name)}")
    if type_name not in TYPE_FIELDS:
        raise InvalidRequest("type", "unknown_type",
                             f"type {_show(type_name)} is not one of "
                             + ", ".join(COMMAND_TYPE_NAMES))

    allowed = TYPE_FIELDS[type_name]
    extra = [k for k in body if k not in ("command_id", "type") and k not in allowed]
    if extra:
        key = min(extra, key=_sort_key)
        if isinstance(key, str) and key in _TOP_FIELDS:
            raise InvalidRequest(_field_name(key), "not_allowed_for_type",
                                 f"{key} is not a field of {type_name}")
        raise InvalidRequest(_field_name(key), "unexpected_field",
                             f"unknown field {_show(key)}")

    if type_name == "open_account":
        account_id = _id_field(body, "account_id", account=True)
        currency = _currency_field(body)
        limit = 0
        if "overdraft_limit" in body:
            limit = _integer_field(body, "overdraft_limit", minimum=0)
        return domain.OpenAccount(command_id, account_id, currency, limit,
                                  _expected_version(body))

    if type_name in ("credit", "debit"):
        account_id = _id_field(body, "account_id", account=True)
        amount = _integer_field(body, "amount", minimum=1)
        currency = _currency_field(body)
        cls = domain.Credit if type_name == "credit" else domain.Debit
        return cls(command_id, account_id, amount, currency, _expected_version(body))

    if type_name == "transfer":
        from_id = _id_field(body, "from_account_id", account=True)
        to_id = _id_field(body, "to_account_id", account=True)
        amount = _integer_field(body, "amount", minimum=1)
        currency = _currency_field(body)
        metadata: tuple[tuple[str, str], ...] = ()
        if "metadata" in body:
            metadata = _metadata_field(body["metadata"])
        return domain.Transfer(command_id, from_id, to_id, amount, currency, metadata,
                               _expected_version(body))

    if type_name == "hold":
        account_id = _id_field(body, "account_id", account=True)
        to_id = _id_field(body, "to_account_id", account=True) if "to_account_id" in body \
            else ""
        amount = _integer_field(body, "amount", minimum=1)
        currency = _currency_field(body)
        expires_at = _instant_field(body, "expires_at") if "expires_at" in body else 0
        expires_in = _integer_field(body, "expires_in_ms", minimum=1) \
            if "expires_in_ms" in body else 0
        metadata = _metadata_field(body["metadata"]) if "metadata" in body else ()
        return domain.PlaceHold(command_id, account_id, amount, currency, to_id, expires_at,
                                expires_in, metadata, _expected_version(body))

    if type_name == "capture":
        account_id = _id_field(body, "account_id", account=True)
        to_id = _id_field(body, "to_account_id", account=True) if "to_account_id" in body \
            else ""
        hold_id = _id_field(body, "hold_id", account=False)
        amount = _integer_field(body, "amount", minimum=1) if "amount" in body else 0
        return domain.CaptureHold(command_id, account_id, hold_id, amount, to_id,
                                  _expected_version(body))

    if type_name == "release":
        account_id = _id_field(body, "account_id", account=True)
        hold_id = _id_field(body, "hold_id", account=False)
        return domain.ReleaseHold(command_id, account_id, hold_id, _expected_version(body))

    # close_account
    account_id = _id_field(body, "account_id", account=True)
    return domain.CloseAccount(command_id, account_id, _expected_version(body))


def _expected_version(body: dict) -> int:
    if "expected_version" not in body:
        return domain.ANY_VERSION
    return _integer_field(body, "expected_version", minimum=0)


def _instant_field(body: dict, name: str) -> int:
    """An instant as an RFC 3339 string or epoch ms (a positive integer)."""
    value = body[name]
    if isinstance(value, str):
        return parse_instant(name, value)
    return _integer_field(body, name, minimum=1)


def decode_json_body(raw: bytes | bytearray | str) -> object:
    """Decode a request body as strict JSON; InvalidRequest(field="body") if it is not.

    Stricter than ``json.loads``: the body must be UTF-8, ``NaN``/``Infinity``
    are refused, and so is a key repeated in one object (``duplicate_field``;
    json.loads would silently keep the last one). Very deep nesting and
    integers of more than 4300 digits are reported as ``malformed``.
    """
    if isinstance(raw, (bytes, bytearray)):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest("body", "malformed", "the body is not UTF-8") from None
    elif isinstance(raw, str):
        text = raw
    else:
        raise InvalidRequest("body", "wrong_type", "the body must be bytes or text")
    try:
        return json.loads(text, parse_constant=_refuse_constant,
                          object_pairs_hook=_no_duplicates)
    except InvalidRequest:
        raise
    except RecursionError:
        raise InvalidRequest("body", "malformed", "the body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or an int beyond str-digits limit
        raise InvalidRequest("body", "malformed", f"the body is not valid JSON: {exc}") from None


def parse_command_json(raw: bytes | bytearray | str) -> Command:
    """``parse_command(decode_json_body(raw))``: raw request bytes to a command."""
    return parse_command(decode_json_body(raw))


# --------------------------------------------------------------------------
# Serialising
# --------------------------------------------------------------------------


def command_to_json(command: Command) -> dict:
    """The canonical JSON form of a domain command (the inverse of parse_command).

    Keys in check order (command_id, type, then FIELD_ORDER); open_account
    always carries ``overdraft_limit``, transfer always carries ``metadata``
    (a dict, ``{}`` when empty). For every valid command ``c``,
    ``parse_command(command_to_json(c)) == c``.
    """
    out = _command_fields(command)
    if command.expected_version != domain.ANY_VERSION:
        out["expected_version"] = command.expected_version
    return out


def _command_fields(command: Command) -> dict:
    if isinstance(command, domain.OpenAccount):
        return {"command_id": command.command_id, "type": command.type,
                "account_id": command.account_id, "currency": command.currency,
                "overdraft_limit": command.overdraft_limit_minor}
    if isinstance(command, (domain.Credit, domain.Debit)):
        return {"command_id": command.command_id, "type": command.type,
                "account_id": command.account_id, "amount": command.amount_minor,
                "currency": command.currency}
    if isinstance(command, domain.Transfer):
        return {"command_id": command.command_id, "type": command.type,
                "from_account_id": command.from_account_id,
                "to_account_id": command.to_account_id,
                "amount": command.amount_minor, "currency": command.currency,
                "metadata": dict(command.metadata)}
    if isinstance(command, domain.CloseAccount):
        return {"command_id": command.command_id, "type": command.type,
                "account_id": command.account_id}
    if isinstance(command, domain.PlaceHold):
        out = {"command_id": command.command_id, "type": command.type,
               "account_id": command.account_id}
        if command.to_account_id:
            out["to_account_id"] = command.to_account_id
        out.update(amount=command.amount_minor, currency=command.currency)
        if command.expires_at_ms:
            out["expires_at"] = command.expires_at_ms
        if command.expires_in_ms:
            out["expires_in_ms"] = command.expires_in_ms
        out["metadata"] = dict(command.metadata)
        return out
    if isinstance(command, domain.CaptureHold):
        out = {"command_id": command.command_id, "type": command.type,
               "account_id": command.account_id}
        if command.to_account_id:
            out["to_account_id"] = command.to_account_id
        out["hold_id"] = command.hold_id
        if command.amount_minor:
            out["amount"] = command.amount_minor
        return out
    if isinstance(command, domain.ReleaseHold):
        return {"command_id": command.command_id, "type": command.type,
                "account_id": command.account_id, "hold_id": command.hold_id}
    raise TypeError(f"not a client command: {type(command).__name__}")


# --------------------------------------------------------------------------
# Field checks
# --------------------------------------------------------------------------


def _id_field(body: dict, name: str, *, account: bool) -> str:
    if name not in body:
        raise InvalidRequest(name, "missing", f"{name} is required")
    return _check_id(name, body[name], account=account)


def _check_id(name: str, value: object, *, account: bool) -> str:
    """An id (account or command) by the domain's rule; one check for bodies,
    paths and query parameters, so every place refuses the same ids."""
    length_max = ACCOUNT_ID_LENGTH_MAX if account else COMMAND_ID_LENGTH_MAX
    if not isinstance(value, str):
        raise InvalidRequest(name, "wrong_type",
                             f"{name} must be a string, not {_json_type(value)}")
    if not value:
        raise InvalidRequest(name, "empty", f"{name} must not be empty")
    if len(value) > length_max:
        raise InvalidRequest(name, "too_long",
                             f"{name} is {len(value)} characters; at most {length_max}")
    if _ID_RE.fullmatch(value) is None:
        raise InvalidRequest(name, "malformed",
                             f"{name} {_show(value)} may only contain A-Z a-z 0-9 . _ : @ -")
    if account and not valid_account_id(value):
        raise InvalidRequest(name, "malformed", f"{name} {_show(value)} is not an account id")
    return value


def _currency_field(body: dict) -> str:
    if "currency" not in body:
        raise InvalidRequest("currency", "missing", "currency is required")
    value = body["currency"]
    if not isinstance(value, str):
        raise InvalidRequest("currency", "wrong_type",
                             f"currency must be a string, not {_json_type(value)}")
    if _CURRENCY_RE.fullmatch(value) is None:
        raise InvalidRequest("currency", "malformed",
                             f"currency {_show(value)} is not three capital letters (ISO 4217)")
    return value


def _integer_field(body: dict, name: str, *, minimum: int) -> int:
    if name not in body:
        raise InvalidRequest(name, "missing", f"{name} is required")
    value = body[name]
    # bool is an int subclass: true is not one cent.
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        raise InvalidRequest(name, "wrong_type",
                             f"{name} must be an integer (minor units), not {_json_type(value)}")
    if not isinstance(value, int):
        raise InvalidRequest(name, "not_an_integer",
                             f"{name} must be an integer count of minor units; "
                             "1.0 and 1e3 are not integers")
    # Never format the value itself: str() of a huge int raises ValueError.
    if value < minimum:
        if minimum == 1:
            raise InvalidRequest(name, "must_be_positive", f"{name} must be at least 1")
        raise InvalidRequest(name, "must_not_be_negative", f"{name} must not be negative")
    if value > AMOUNT_MAX_MINOR:
        raise InvalidRequest(name, "too_large", f"{name} must be at most 2^63-1")
    return int(value)


def _metadata_field(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise InvalidRequest("metadata", "wrong_type",
                             f"metadata must be an object of strings, not {_json_type(value)}")
    if len(value) > METADATA_ENTRIES_MAX:
        raise InvalidRequest("metadata", "too_many_entries",
                             f"metadata has {len(value)} entries; at most {METADATA_ENTRIES_MAX}")
    for key in sorted(value, key=_sort_key):
        if not isinstance(key, str):
            raise InvalidRequest("metadata", "wrong_type", "metadata keys must be strings")
        if not key:
            raise InvalidRequest("metadata", "empty_key", "metadata keys must not be empty")
        if len(key) > METADATA_KEY_LENGTH_MAX:
            raise InvalidRequest("metadata", "key_too_long",
                                 f"metadata key {_show(key)} is {len(key)} characters; "
                                 f"at most {METADATA_KEY_LENGTH_MAX}")
        if not _is_utf8(key):
            raise InvalidRequest("metadata", "malformed",
                                 f"metadata key {_show(key)} is not valid Unicode")
        field = f"metadata.{key}"
        item = value[key]
        if not isinstance(item, str):
            raise InvalidRequest(field, "wrong_type",
                                 f"{field} must be a string, not {_json_type(item)}")
        if len(item) > METADATA_VALUE_LENGTH_MAX:
            raise InvalidRequest(field, "too_long",
                                 f"{field} is {len(item)} characters; "
                                 f"at most {METADATA_VALUE_LENGTH_MAX}")
        if not _is_utf8(item):
            raise InvalidRequest(field, "malformed", f"{field} is not valid Unicode")
    return tuple(sorted(value.items()))


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _is_utf8(text: str) -> bool:
    # JSON may carry a lone surrogate ("\ud800"); Avro (UTF-8) cannot.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _sort_key(key: object) -> tuple[int, str]:
    # JSON keys are strings; a dict built in Python may have others.
    return (0, key) if isinstance(key, str) else (1, _show(key))


def _field_name(key: object) -> str:
    name = key if isinstance(key, str) and _is_utf8(key) else _show(key)
    if len(name) > _FIELD_NAME_SHOWN_MAX:
        name = name[:_FIELD_NAME_SHOWN_MAX] + "..."
    return name


def _show(value: object, limit: int = 40) -> str:
    """A short repr for messages; never fails."""
    try:
        if isinstance(value, str):
            text = repr(value[: limit + 1])
        else:
            text = repr(value)
    except Exception:  # e.g. an int too long to print
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = text[:limit] + "..."
    return text


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, numbers.Number):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _refuse_constant(name: str):
    raise InvalidRequest("body", "malformed", f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise InvalidRequest(_field_name(key), "duplicate_field",
                                 f"field {_show(key)} appears more than once")
        result[key] = value
    return result


# --------------------------------------------------------------------------
# Path ids and query parameters
# --------------------------------------------------------------------------

# Instants a query may name: 1970-01-01T00:00:00.000Z to 9999-12-31T23:59:59.999Z
# (what RFC 3339 can write and the event log can have recorded).
INSTANT_MS_MIN = 0
INSTANT_MS_MAX = 253_402_300_799_999
# Event sequences are Avro longs.
SEQUENCE_MAX = 2**63 - 1

_EPOCH_MS_RE = re.compile(r"-?[0-9]{1,16}")
# RFC 3339 date-time: a date, 'T' (or 't' / ' '), a time with optional
# fraction, and a zone that is Z or +hh:mm. datetime.fromisoformat does the
# arithmetic; this pattern refuses what RFC 3339 does not allow (no zone,
# week dates, ...).
_RFC3339_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})")
_DECIMAL_RE = re.compile(r"[0-9]{1,19}")
_CURSOR_TEXT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}={0,2}")
_CURSOR_RE = re.compile(r"([0-9]{1,19}):([0-9]{1,19})")


def parse_account_id(field: str, value: object) -> str:
    """An account id from a URL path or query (already percent-decoded)."""
    if value is None:
        raise InvalidRequest(field, "missing", f"{field} is required")
    return _check_id(field, value, account=True)


def parse_command_id(field: str, value: object) -> str:
    """A command (or transfer) id from a URL path or query (percent-decoded)."""
    if value is None:
        raise InvalidRequest(field, "missing", f"{field} is required")
    return _check_id(field, value, account=False)


def parse_instant(field: str, text: str) -> int:
    """An instant as epoch milliseconds, from RFC 3339 or integer epoch ms.

    ``2026-11-26T10:00:00Z``, ``2026-11-26T11:00:00.250+01:00`` and
    ``1795687200000`` are accepted. Fractions below a millisecond are cut
    (floor), so an instant names the millisecond it falls in. The result lies
    in [INSTANT_MS_MIN, INSTANT_MS_MAX] (years 1970 to 9999), else
    ``out_of_range``.
    """
    from datetime import datetime, timezone

    if not isinstance(text, str) or len(text) > 64:
        raise InvalidRequest(field, "malformed", f"{field} must be RFC 3339 or epoch ms")
    if _EPOCH_MS_RE.fullmatch(text):
        return _in_range(field, int(text))
    if not _RFC3339_RE.fullmatch(text):
        raise InvalidRequest(field, "malformed",
                             f"{field} must be RFC 3339 (2026-11-26T10:00:00Z) or epoch ms")
    normal = text[:10] + "T" + text[11:]
    normal = normal[:-1] + "+00:00" if normal[-1] in "Zz" else normal
    fraction = ""
    if "." in normal:
        head, rest = normal.split(".", 1)
        digits = rest[:len(rest) - 6]
        fraction, normal = digits, head + rest[len(digits):]
    try:
        moment = datetime.fromisoformat(normal)
    except ValueError:
        raise InvalidRequest(field, "malformed", f"{field} is not a valid date-time") from None
    delta = moment - datetime(1970, 1, 1, tzinfo=timezone.utc)
    ms = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    return _in_range(field, ms + int((fraction + "000")[:3]) if fraction else ms)


def _in_range(field: str, ms: int) -> int:
    if not INSTANT_MS_MIN <= ms <= INSTANT_MS_MAX:
        raise InvalidRequest(field, "out_of_range",
                             f"{field} must lie between 1970-01-01T00:00:00Z and "
                             "9999-12-31T23:59:59.999Z")
    return ms


def parse_positive_int(field: str, text: str, maximum: int = domain.AMOUNT_MAX_MINOR) -> int:
    """A decimal integer in [1, maximum] (maximum at most 2^63-1)."""
    if not isinstance(text, str) or not _DECIMAL_RE.fullmatch(text):
        raise InvalidRequest(field, "not_an_integer", f"{field} must be a positive integer")
    value = int(text)
    if value < 1:
        raise InvalidRequest(field, "must_be_positive", f"{field} must be >= 1")
    if value > maximum:
        raise InvalidRequest(field, "too_large", f"{field} must be <= {maximum}")
    return value


def parse_flag(field: str, text: str | None) -> bool:
    """``0`` or ``1`` (absent is 0)."""
    if text is None or text == "0":
        return False
    if text == "1":
        return True
    raise InvalidRequest(field, "malformed", f"{field} must be 0 or 1")


def encode_cursor(first: int, last: int) -> str:
    """The opaque ``next_cursor``: the next page runs from ``first`` up to ``last``."""
    return base64.urlsafe_b64encode(f"{first}:{last}".encode()).decode()


def parse_cursor(field: str, text: str) -> tuple[int, int]:
    """(first, last) from a cursor :func:`encode_cursor` made.

    Both are sequences in [1, SEQUENCE_MAX] and ``first <= last + 1``;
    anything else is ``malformed``.
    """
    malformed = InvalidRequest(field, "malformed", f"{field} is not one we gave")
    if not isinstance(text, str) or not _CURSOR_TEXT_RE.fullmatch(text):
        raise malformed
    try:
        decoded = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_",
                                   validate=True).decode("ascii")
    except (ValueError, UnicodeError):  # binascii.Error is a ValueError
        raise malformed from None
    match = _CURSOR_RE.fullmatch(decoded)
    if match is None:
        raise malformed
    first, last = int(match[1]), int(match[2])
    if not (1 <= first <= SEQUENCE_MAX and 1 <= last <= SEQUENCE_MAX and first <= last + 1):
        raise malformed
    return first, last


def is_json_media_type(content_type: str | None) -> bool:
    """True for ``application/json``, with or without parameters (``; charset=utf-8``)."""
    if not content_type:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json"
