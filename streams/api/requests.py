"""What a client sends over HTTP, validated: command bodies, path ids, query parameters.

An HTTP adapter, not domain code (it lives beside the views, not in
``ledger/``), but pure all the same: stdlib, msgspec and ``ledger.domain``
only, no web framework, no Kafka. The views call :func:`parse_command_json` on
a body and the ``parse_*`` functions on path ids and query parameters, and
answer 400 with ``InvalidRequest.to_json()`` when one raises. Every parser
bounds what it returns, so nothing downstream (a store seek, a date format)
can fail on a value that passed here.

What a command body may hold is declared once, in :mod:`streams.api.models`
(one msgspec Struct per command type, fields with their limits). This module
does not restate it: :func:`parse_command` walks the Struct of the body's type
(``msgspec.inspect.type_info``, compiled into one check per field at import)
and :func:`command_to_json` writes the fields the Struct names. Wire form of
each command (money is an integer count of minor units, never a float)::

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
5. The type's own fields in the order its Struct declares them (each a
   subsequence of :data:`FIELD_ORDER`): a required field that is absent is
   ``missing``; a present one is checked by its annotated type:

   - strings (ids, currency): wrong_type, empty (``min_length`` 1), too_long
     (``max_length``), malformed (the ``pattern``, with the message of the
     first rule in the Meta's ``extra["malformed"]`` that fails; an account
     id may not be ``.`` or ``..``: it is a URL path segment)
   - integers (``amount``, ``overdraft_limit``, ``expires_in_ms``,
     ``expected_version``): wrong_type (bool, string, null, ...),
     not_an_integer (any float, even ``1.0`` or ``1e3``), must_be_positive
     (``ge=1``) or must_not_be_negative (``ge=0``), too_large (``le``, 2**63-1)
   - ``expires_at``: a string is an instant (wrong_type, malformed,
     out_of_range: RFC 3339 or epoch ms), anything else is checked as an
     integer. Whether the expiry is within 30 days is the domain's:
     ``expiry_out_of_range``.
   - ``metadata``: wrong_type, too_many_entries (> 16); then per entry in
     sorted key order: empty_key / key_too_long / malformed key (field
     ``metadata``), wrong_type / too_long / malformed value (field
     ``metadata.<key>``)

``null`` is never accepted: an optional field is left out, not sent as null.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import numbers
import re
from typing import Callable

import msgspec.inspect as mi

from ledger import domain
from ledger.domain import Command
from streams.api import models
from streams.api.models import (
    FIELD_ORDER,
    METADATA_ENTRIES_MAX,
    METADATA_KEY_LENGTH_MAX,
    METADATA_VALUE_LENGTH_MAX,
    REASONS,
    REQUIRED_FIELDS,
    TYPE_FIELDS,
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
]

# The largest valid command, every character \u-escaped, is under 62 KiB;
# a body above this is refused (413) before it is parsed.
REQUEST_BODY_BYTES_MAX = 64 * 1024

# The command types a client may send (one model each, in the domain's order).
COMMAND_TYPE_NAMES = tuple(models.COMMAND_MODELS)

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
# Validation, compiled from the models' type information
# --------------------------------------------------------------------------

# (field name, JSON value) -> the validated value, or InvalidRequest.
Check = Callable[[str, object], object]


def _compile(info: mi.Type) -> Check:
    """One check for an annotated type of :mod:`streams.api.models`.

    Knows the constraints the models use and fails at import on any other
    (a new constraint needs its reason code here first).
    """
    extra: dict = {}
    if isinstance(info, mi.Metadata):
        extra, info = info.extra or {}, info.type
    if isinstance(info, mi.StrType):
        return _string_check(info, extra)
    if isinstance(info, mi.IntType):
        return _int_check(info)
    if isinstance(info, mi.DictType):
        return _dict_check(info)
    if isinstance(info, mi.UnionType):
        # A string or an integer (expires_at): chosen by the value's JSON type.
        by_kind = {type(m.type if isinstance(m, mi.Metadata) else m): _compile(m)
                   for m in info.types}
        if set(by_kind) != {mi.StrType, mi.IntType}:
            raise TypeError(f"no validator for the union {info!r}")
        as_str, as_int = by_kind[mi.StrType], by_kind[mi.IntType]
        return lambda name, value: (as_str if isinstance(value, str) else as_int)(name, value)
    raise TypeError(f"no validator for {info!r}")


def _string_check(info: mi.StrType, extra: dict) -> Check:
    if info.min_length not in (None, 1):
        raise TypeError(f"no reason code for min_length={info.min_length}")
    not_empty, length_max = info.min_length == 1, info.max_length
    rules = tuple((re.compile(p), text) for p, text in extra.get("malformed", ()))
    if info.pattern and not rules:
        rules = ((re.compile(info.pattern), "is malformed"),)
    parse = {"instant": parse_instant}[extra["parse"]] if "parse" in extra else None

    def check(name: str, value: object) -> object:
        if not isinstance(value, str):
            raise InvalidRequest(name, "wrong_type",
                                 f"{name} must be a string, not {_json_type(value)}")
        if parse is not None:
            return parse(name, value)
        if not_empty and not value:
            raise InvalidRequest(name, "empty", f"{name} must not be empty")
        if length_max is not None and len(value) > length_max:
            raise InvalidRequest(name, "too_long",
                                 f"{name} is {len(value)} characters; at most {length_max}")
        for pattern, text in rules:
            # fullmatch: "$" alone would let a trailing newline through.
            if pattern.fullmatch(value) is None:
                raise InvalidRequest(name, "malformed", f"{name} {_show(value)} {text}")
        if not _is_utf8(value):
            raise InvalidRequest(name, "malformed", f"{name} is not valid Unicode")
        return value

    return check


def _int_check(info: mi.IntType) -> Check:
    if info.gt is not None or info.lt is not None or info.multiple_of is not None \
            or info.ge not in (0, 1) or info.le is None:
        raise TypeError(f"no reason codes for {info!r}")
    minimum, maximum = info.ge, info.le
    if minimum == 1:
        low = ("must_be_positive", "must be at least 1")
    else:
        low = ("must_not_be_negative", "must not be negative")
    shown_max = "2^63-1" if maximum == models.INT64_MAX else str(maximum)

    def check(name: str, value: object) -> int:
        # bool is an int subclass: true is not one cent.
        if isinstance(value, bool) or not isinstance(value, numbers.Number):
            raise InvalidRequest(name, "wrong_type",
                                 f"{name} must be an integer (minor units), not "
                                 f"{_json_type(value)}")
        if not isinstance(value, int):
            raise InvalidRequest(name, "not_an_integer",
                                 f"{name} must be an integer count of minor units; "
                                 "1.0 and 1e3 are not integers")
        # Never format the value itself: str() of a huge int raises ValueError.
        if value < minimum:
            raise InvalidRequest(name, low[0], f"{name} {low[1]}")
        if value > maximum:
            raise InvalidRequest(name, "too_large", f"{name} must be at most {shown_max}")
        return int(value)

    return check


def _dict_check(info: mi.DictType) -> Check:
    """An object of strings, returned as sorted (key, value) pairs (the domain's form)."""
    key = info.key_type.type if isinstance(info.key_type, mi.Metadata) else info.key_type
    if not isinstance(key, mi.StrType) or key.min_length != 1 or key.pattern:
        raise TypeError(f"no validator for the keys {key!r}")
    key_max, entries_max = key.max_length, info.max_length
    value_check = _compile(info.value_type)

    def check(name: str, value: object) -> tuple[tuple[str, object], ...]:
        if not isinstance(value, dict):
            raise InvalidRequest(name, "wrong_type",
                                 f"{name} must be an object of strings, not {_json_type(value)}")
        if entries_max is not None and len(value) > entries_max:
            raise InvalidRequest(name, "too_many_entries",
                                 f"{name} has {len(value)} entries; at most {entries_max}")
        for item in sorted(value, key=_sort_key):
            if not isinstance(item, str):
                raise InvalidRequest(name, "wrong_type", f"{name} keys must be strings")
            if not item:
                raise InvalidRequest(name, "empty_key", f"{name} keys must not be empty")
            if len(item) > key_max:
                raise InvalidRequest(name, "key_too_long",
                                     f"{name} key {_show(item)} is {len(item)} characters; "
                                     f"at most {key_max}")
            if not _is_utf8(item):
                raise InvalidRequest(name, "malformed",
                                     f"{name} key {_show(item)} is not valid Unicode")
            value_check(f"{name}.{item}", value[item])
        return tuple(sorted(value.items()))

    return check


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str         # on the wire
    attribute: str    # of the domain command
    check: Check
    required: bool
    # command_to_json leaves the field out when the command holds this value
    # (the domain's default); None: always written (required, or a model
    # default such as overdraft_limit 0 that is part of the canonical form).
    omitted_if: object


def _fields(type_name: str) -> tuple[_Field, ...]:
    model = models.COMMAND_MODELS[type_name]
    defaults = {f.name: f.default for f in dataclasses.fields(domain.COMMAND_TYPES[type_name])}
    out = []
    for f in mi.type_info(model).fields:
        if f.encode_name == "command_id":
            continue
        attribute = models.DOMAIN_NAMES.get(f.encode_name, f.encode_name)
        # An UNSET default shows as no default at all (type_info hides it).
        written = f.required or f.default is not mi.NODEFAULT \
            or f.default_factory is not mi.NODEFAULT
        out.append(_Field(f.encode_name, attribute, _compile(f.type), f.required,
                          None if written else defaults[attribute]))
    return tuple(out)



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
    if "command_id" not in body:
        raise InvalidRequest("command_id", "missing", "command_id is required")
    values = {"command_id": _check_command_id("command_id", body["command_id"])}

    if "type" not in body:
        raise InvalidRequest("type", "missing", "type is required")
    type_name = body["type"]
    if not isinstance(type_name, str):
        raise InvalidRequest("type", "wrong_type",
                             f"type must be a string, not {_json_type(type_name)}")
    if type_name not in _FIELDS:
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

    for field in _FIELDS[type_name]:
        name = field.name
        if name in body:
            values[field.attribute] = field.check(name, body[name])
        elif field.required:
            raise InvalidRequest(name, "missing", f"{name} is required")
    return domain.COMMAND_TYPES[type_name](**values)


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

    Keys in check order (command_id, type, then the model's fields); a field
    the model defaults to UNSET is left out when the command holds the
    domain's default, one with a model default (open_account's
    ``overdraft_limit``, ``metadata``: ``{}`` when empty) is always written.
    For every valid command ``c``, ``parse_command(command_to_json(c)) == c``.
    """
    type_name = _MODEL_OF.get(type(command))
    if type_name is None:
        raise TypeError(f"not a client command: {type(command).__name__}")
    out = {"command_id": command.command_id, "type": command.type}
    for field in _FIELDS[type_name]:
        value = getattr(command, field.attribute)
        if field.omitted_if is None or value != field.omitted_if:
            out[field.name] = dict(value) if isinstance(value, tuple) else value
    return out


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _is_utf8(text: str) -> bool:
    # JSON may carry a lone surrogate ("\ud800"); Avro (UTF-8) cannot.
    if text.isascii():  # every id and currency: no encoding needed to know
        return True
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

# Query-string limits of the views, here (not in the views, which import the
# web framework) so that the API document reads the same numbers.
# POST /v1/commands?wait=1&timeout_ms=...: how long the view may wait for the outcome.
WAIT_TIMEOUT_MS_DEFAULT = 5_000
WAIT_TIMEOUT_MS_MAX = 60_000
# GET /v1/accounts/{account_id}/events?limit=...
EVENTS_LIMIT_DEFAULT = 100
EVENTS_LIMIT_MAX = 1_000
# GET /v1/accounts/{account_id}?as_of=T (and /events?to=T): how long a read
# may wait for T to become final.
AS_OF_TIMEOUT_MS_DEFAULT = 2_000
AS_OF_TIMEOUT_MS_MAX = 10_000

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
    return _check_account_id(field, value)


def parse_command_id(field: str, value: object) -> str:
    """A command (or transfer) id from a URL path or query (percent-decoded)."""
    if value is None:
        raise InvalidRequest(field, "missing", f"{field} is required")
    return _check_command_id(field, value)


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


# The checks of each command type's fields, compiled once from the models
# (here, at the end: the instant parser above is one of them).
_FIELDS = {name: _fields(name) for name in models.COMMAND_MODELS}
_MODEL_OF = {domain.COMMAND_TYPES[name]: name for name in models.COMMAND_MODELS}
_check_command_id = _compile(mi.type_info(models.CommandId))
_check_account_id = _compile(mi.type_info(models.AccountId))
