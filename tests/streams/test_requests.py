"""streams.api.requests: the JSON body of POST /v1/commands into a domain command,
and the path ids and query parameters of every route.

Table-driven 400 cases (field and reason asserted), the happy path of each
type, the order in which problems are reported, strict JSON decoding, and
hypothesis properties: the round trip parse(to_json(c)) == c, and that
arbitrary JSON never makes parse_command raise anything but InvalidRequest.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typing import Annotated

import msgspec
import msgspec.inspect
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ledger import domain
from streams.api import models
from streams.api import requests as req
from streams.api.requests import (
    FIELD_ORDER,
    REASONS,
    REQUIRED_FIELDS,
    TYPE_FIELDS,
    InvalidRequest,
    command_to_json,
    decode_json_body,
    parse_command,
    parse_command_json,
)

REPO = Path(__file__).resolve().parents[2]
MAX = 2**63 - 1

OPEN = {"command_id": "c-1", "type": "open_account", "account_id": "alice", "currency": "EUR"}
CREDIT = {"command_id": "c-2", "type": "credit", "account_id": "alice", "amount": 1000,
          "currency": "EUR"}
DEBIT = {"command_id": "c-3", "type": "debit", "account_id": "alice", "amount": 250,
         "currency": "EUR"}
TRANSFER = {"command_id": "t-1", "type": "transfer", "from_account_id": "alice",
            "to_account_id": "bob", "amount": 99, "currency": "EUR"}
CLOSE = {"command_id": "c-4", "type": "close_account", "account_id": "alice"}
HOLD = {"command_id": "h-1", "type": "hold", "account_id": "alice", "amount": 500,
        "currency": "EUR", "expires_in_ms": 60_000}
CAPTURE = {"command_id": "k-1", "type": "capture", "account_id": "alice", "hold_id": "h-1"}
RELEASE = {"command_id": "r-1", "type": "release", "account_id": "alice", "hold_id": "h-1"}
BASES = {"open_account": OPEN, "credit": CREDIT, "debit": DEBIT, "transfer": TRANSFER,
         "close_account": CLOSE, "hold": HOLD, "capture": CAPTURE, "release": RELEASE}

DELETE = object()


def body(base: dict, **changes) -> dict:
    """A copy of ``base`` with fields changed (value DELETE removes the field)."""
    result = dict(base)
    for key, value in changes.items():
        if value is DELETE:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def rejects(value: object) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_command(value)
    return info.value


# --------------------------------------------------------------------------
# Happy paths
# --------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    (OPEN, domain.OpenAccount("c-1", "alice", "EUR", 0)),
    (body(OPEN, overdraft_limit=500), domain.OpenAccount("c-1", "alice", "EUR", 500)),
    (body(OPEN, overdraft_limit=0), domain.OpenAccount("c-1", "alice", "EUR", 0)),
    (body(OPEN, overdraft_limit=MAX), domain.OpenAccount("c-1", "alice", "EUR", MAX)),
    (CREDIT, domain.Credit("c-2", "alice", 1000, "EUR")),
    (body(CREDIT, amount=MAX), domain.Credit("c-2", "alice", MAX, "EUR")),
    (body(CREDIT, amount=1), domain.Credit("c-2", "alice", 1, "EUR")),
    (DEBIT, domain.Debit("c-3", "alice", 250, "EUR")),
    (TRANSFER, domain.Transfer("t-1", "alice", "bob", 99, "EUR", ())),
    (body(TRANSFER, metadata={}), domain.Transfer("t-1", "alice", "bob", 99, "EUR", ())),
    (body(TRANSFER, metadata={"z": "last", "a": "first", "note": ""}),
     domain.Transfer("t-1", "alice", "bob", 99, "EUR",
                     (("a", "first"), ("note", ""), ("z", "last")))),
    # Same account on both sides is the domain's call (same_account), not a 400.
    (body(TRANSFER, to_account_id="alice"),
     domain.Transfer("t-1", "alice", "alice", 99, "EUR", ())),
    (CLOSE, domain.CloseAccount("c-4", "alice")),
    # Limits, exactly.
    (body(CLOSE, command_id="c" * 128, account_id="a" * 64),
     domain.CloseAccount("c" * 128, "a" * 64)),
    (body(CLOSE, account_id="A-z_0.9:x@y"), domain.CloseAccount("c-4", "A-z_0.9:x@y")),
    (body(TRANSFER, metadata={f"k{i:02}": "v" * 256 for i in range(16)}),
     domain.Transfer("t-1", "alice", "bob", 99, "EUR",
                     tuple((f"k{i:02}", "v" * 256) for i in range(16)))),
    (body(TRANSFER, metadata={"k" * 64: "é✓😀"}),
     domain.Transfer("t-1", "alice", "bob", 99, "EUR", (("k" * 64, "é✓😀"),))),
], ids=lambda v: v.get("type", "") if isinstance(v, dict) else "")
def test_valid_bodies(value, expected):
    assert parse_command(value) == expected
    assert type(parse_command(value)) is type(expected)


def test_same_account_transfer_is_left_to_the_domain():
    command = parse_command(body(TRANSFER, to_account_id="alice"))
    result = domain.decide(None, command, 0)
    assert isinstance(result, domain.Rejection)
    assert result.reason is domain.RejectionReason.same_account


def test_field_order_matches_type_fields():
    for type_name, fields in TYPE_FIELDS.items():
        assert list(fields) == [f for f in FIELD_ORDER if f in fields], type_name
        assert REQUIRED_FIELDS[type_name] <= set(fields)
    assert set(TYPE_FIELDS) == set(domain.COMMAND_TYPES)


# --------------------------------------------------------------------------
# Every 400
# --------------------------------------------------------------------------

CASES = [
    # -- body
    ("body list", [], "body", "wrong_type"),
    ("body string", "{}", "body", "wrong_type"),
    ("body null", None, "body", "wrong_type"),
    ("body int", 1, "body", "wrong_type"),
    ("body bool", True, "body", "wrong_type"),
    ("body empty object", {}, "command_id", "missing"),
    # -- command_id
    ("command_id missing", body(CREDIT, command_id=DELETE), "command_id", "missing"),
    ("command_id int", body(CREDIT, command_id=7), "command_id", "wrong_type"),
    ("command_id null", body(CREDIT, command_id=None), "command_id", "wrong_type"),
    ("command_id list", body(CREDIT, command_id=["a"]), "command_id", "wrong_type"),
    ("command_id empty", body(CREDIT, command_id=""), "command_id", "empty"),
    ("command_id 129", body(CREDIT, command_id="c" * 129), "command_id", "too_long"),
    ("command_id space", body(CREDIT, command_id="a b"), "command_id", "malformed"),
    ("command_id slash", body(CREDIT, command_id="a/b"), "command_id", "malformed"),
    ("command_id newline", body(CREDIT, command_id="abc\n"), "command_id", "malformed"),
    ("command_id unicode", body(CREDIT, command_id="café"), "command_id", "malformed"),
    ("command_id surrogate", body(CREDIT, command_id="a\ud800"), "command_id", "malformed"),
    # -- type
    ("type missing", body(CREDIT, type=DELETE), "type", "missing"),
    ("type int", body(CREDIT, type=1), "type", "wrong_type"),
    ("type null", body(CREDIT, type=None), "type", "wrong_type"),
    ("type unknown", body(CREDIT, type="withdraw"), "type", "unknown_type"),
    ("type case", body(CREDIT, type="Credit"), "type", "unknown_type"),
    ("type internal leg", body(CREDIT, type="transfer_credit"), "type", "unknown_type"),
    ("type settle leg", body(CREDIT, type="transfer_settle"), "type", "unknown_type"),
    # -- unknown and foreign fields
    ("unknown field", body(CREDIT, memo="x"), "memo", "unexpected_field"),
    ("unknown field null", body(CLOSE, reason=None), "reason", "unexpected_field"),
    ("amount_minor is not the wire name", body(CREDIT, amount_minor=5),
     "amount_minor", "unexpected_field"),
    ("amount on open_account", body(OPEN, amount=1), "amount", "not_allowed_for_type"),
    ("amount on close_account", body(CLOSE, amount=1), "amount", "not_allowed_for_type"),
    ("currency on close_account", body(CLOSE, currency="EUR"),
     "currency", "not_allowed_for_type"),
    ("account_id on transfer", body(TRANSFER, account_id="alice"),
     "account_id", "not_allowed_for_type"),
    ("from_account_id on debit", body(DEBIT, from_account_id="x"),
     "from_account_id", "not_allowed_for_type"),
    ("to_account_id on credit", body(CREDIT, to_account_id="x"),
     "to_account_id", "not_allowed_for_type"),
    ("overdraft_limit on credit", body(CREDIT, overdraft_limit=0),
     "overdraft_limit", "not_allowed_for_type"),
    ("overdraft_limit on transfer", body(TRANSFER, overdraft_limit=0),
     "overdraft_limit", "not_allowed_for_type"),
    ("metadata on debit", body(DEBIT, metadata={}), "metadata", "not_allowed_for_type"),
    ("metadata on open_account", body(OPEN, metadata={}), "metadata", "not_allowed_for_type"),
    ("extras reported in sorted order", body(OPEN, zeta=1, amount=1),
     "amount", "not_allowed_for_type"),
    ("extras sorted, unknown first", body(OPEN, amount=1, aardvark=1),
     "aardvark", "unexpected_field"),
    ("extras before missing fields", {"command_id": "c", "type": "credit", "amt": 5},
     "amt", "unexpected_field"),
    ("long unknown field name is cut", body(CREDIT, **{"x" * 500: 1}),
     "x" * 64 + "...", "unexpected_field"),
    # -- account ids
    ("account_id missing", body(CREDIT, account_id=DELETE), "account_id", "missing"),
    ("account_id int", body(CREDIT, account_id=42), "account_id", "wrong_type"),
    ("account_id null", body(OPEN, account_id=None), "account_id", "wrong_type"),
    ("account_id empty", body(CLOSE, account_id=""), "account_id", "empty"),
    ("account_id 65", body(DEBIT, account_id="a" * 65), "account_id", "too_long"),
    ("account_id slash", body(CREDIT, account_id="a/b"), "account_id", "malformed"),
    ("account_id space", body(CREDIT, account_id="al ice"), "account_id", "malformed"),
    ("account_id newline", body(CREDIT, account_id="alice\n"), "account_id", "malformed"),
    ("account_id unicode", body(CREDIT, account_id="ålice"), "account_id", "malformed"),
    ("account_id percent", body(CREDIT, account_id="a%2Fb"), "account_id", "malformed"),
    ("account_id dot", body(OPEN, account_id="."), "account_id", "malformed"),
    ("account_id dot dot", body(CREDIT, account_id=".."), "account_id", "malformed"),
    ("to_account_id dot dot", body(TRANSFER, to_account_id=".."), "to_account_id",
     "malformed"),
    ("from_account_id missing", body(TRANSFER, from_account_id=DELETE),
     "from_account_id", "missing"),
    ("from_account_id malformed", body(TRANSFER, from_account_id="a b"),
     "from_account_id", "malformed"),
    ("to_account_id missing", body(TRANSFER, to_account_id=DELETE), "to_account_id", "missing"),
    ("to_account_id 65", body(TRANSFER, to_account_id="b" * 65), "to_account_id", "too_long"),
    ("to_account_id wrong type", body(TRANSFER, to_account_id={"id": "b"}),
     "to_account_id", "wrong_type"),
    # -- amount
    ("amount missing credit", body(CREDIT, amount=DELETE), "amount", "missing"),
    ("amount missing debit", body(DEBIT, amount=DELETE), "amount", "missing"),
    ("amount missing transfer", body(TRANSFER, amount=DELETE), "amount", "missing"),
    ("amount true", body(CREDIT, amount=True), "amount", "wrong_type"),
    ("amount false", body(CREDIT, amount=False), "amount", "wrong_type"),
    ("amount string", body(CREDIT, amount="100"), "amount", "wrong_type"),
    ("amount null", body(CREDIT, amount=None), "amount", "wrong_type"),
    ("amount list", body(CREDIT, amount=[1]), "amount", "wrong_type"),
    ("amount object", body(CREDIT, amount={"minor": 1}), "amount", "wrong_type"),
    ("amount 1.0", body(CREDIT, amount=1.0), "amount", "not_an_integer"),
    ("amount 1e3", body(DEBIT, amount=1e3), "amount", "not_an_integer"),
    ("amount 1.5", body(TRANSFER, amount=1.5), "amount", "not_an_integer"),
    ("amount 0.0", body(CREDIT, amount=0.0), "amount", "not_an_integer"),
    ("amount nan", body(CREDIT, amount=float("nan")), "amount", "not_an_integer"),
    ("amount inf", body(CREDIT, amount=float("inf")), "amount", "not_an_integer"),
    ("amount 2^63 as float", body(CREDIT, amount=2.0**63), "amount", "not_an_integer"),
    ("amount 0", body(CREDIT, amount=0), "amount", "must_be_positive"),
    ("amount -1", body(DEBIT, amount=-1), "amount", "must_be_positive"),
    ("amount -2^63", body(TRANSFER, amount=-(2**63)), "amount", "must_be_positive"),
    ("amount 2^63", body(CREDIT, amount=2**63), "amount", "too_large"),
    ("amount 10^30", body(TRANSFER, amount=10**30), "amount", "too_large"),
    ("amount 10^5000", body(DEBIT, amount=10**5000), "amount", "too_large"),
    # -- currency
    ("currency missing", body(CREDIT, currency=DELETE), "currency", "missing"),
    ("currency missing open", body(OPEN, currency=DELETE), "currency", "missing"),
    ("currency missing transfer", body(TRANSFER, currency=DELETE), "currency", "missing"),
    ("currency int", body(CREDIT, currency=978), "currency", "wrong_type"),
    ("currency null", body(OPEN, currency=None), "currency", "wrong_type"),
    ("currency lower", body(CREDIT, currency="eur"), "currency", "malformed"),
    ("currency four", body(CREDIT, currency="EURO"), "currency", "malformed"),
    ("currency two", body(CREDIT, currency="EU"), "currency", "malformed"),
    ("currency empty", body(CREDIT, currency=""), "currency", "malformed"),
    ("currency newline", body(CREDIT, currency="EUR\n"), "currency", "malformed"),
    ("currency leading space", body(OPEN, currency=" EUR"), "currency", "malformed"),
    ("currency unicode", body(TRANSFER, currency="ÉUR"), "currency", "malformed"),
    ("currency digits", body(CREDIT, currency="978"), "currency", "malformed"),
    # -- overdraft_limit
    ("overdraft -1", body(OPEN, overdraft_limit=-1), "overdraft_limit", "must_not_be_negative"),
    ("overdraft 2^63", body(OPEN, overdraft_limit=2**63), "overdraft_limit", "too_large"),
    ("overdraft 1.0", body(OPEN, overdraft_limit=1.0), "overdraft_limit", "not_an_integer"),
    ("overdraft 0.0", body(OPEN, overdraft_limit=0.0), "overdraft_limit", "not_an_integer"),
    ("overdraft string", body(OPEN, overdraft_limit="0"), "overdraft_limit", "wrong_type"),
    ("overdraft null", body(OPEN, overdraft_limit=None), "overdraft_limit", "wrong_type"),
    ("overdraft bool", body(OPEN, overdraft_limit=True), "overdraft_limit", "wrong_type"),
    # -- metadata
    ("metadata list", body(TRANSFER, metadata=[["a", "b"]]), "metadata", "wrong_type"),
    ("metadata string", body(TRANSFER, metadata="note"), "metadata", "wrong_type"),
    ("metadata null", body(TRANSFER, metadata=None), "metadata", "wrong_type"),
    ("metadata 17 entries", body(TRANSFER, metadata={f"k{i}": "v" for i in range(17)}),
     "metadata", "too_many_entries"),
    ("metadata empty key", body(TRANSFER, metadata={"": "x"}), "metadata", "empty_key"),
    ("metadata key 65", body(TRANSFER, metadata={"k" * 65: "x"}), "metadata", "key_too_long"),
    ("metadata key surrogate", body(TRANSFER, metadata={"\ud800": "x"}),
     "metadata", "malformed"),
    ("metadata value int", body(TRANSFER, metadata={"note": 1}), "metadata.note", "wrong_type"),
    ("metadata value null", body(TRANSFER, metadata={"note": None}),
     "metadata.note", "wrong_type"),
    ("metadata value object", body(TRANSFER, metadata={"note": {"a": "b"}}),
     "metadata.note", "wrong_type"),
    ("metadata value 257", body(TRANSFER, metadata={"note": "x" * 257}),
     "metadata.note", "too_long"),
    ("metadata value surrogate", body(TRANSFER, metadata={"note": "a\udc00"}),
     "metadata.note", "malformed"),
    ("metadata entries in sorted key order", body(TRANSFER, metadata={"b": 1, "a": 2}),
     "metadata.a", "wrong_type"),
    # -- the fixed order: the first problem wins
    ("command_id before type", {"command_id": "", "type": "nope"}, "command_id", "empty"),
    ("command_id before body fields", body(CREDIT, command_id=1, amount=0),
     "command_id", "wrong_type"),
    ("type before extras", body(CREDIT, type="nope", memo=1), "type", "unknown_type"),
    ("extras before account_id", body(CREDIT, account_id=DELETE, memo=1),
     "memo", "unexpected_field"),
    ("account_id before amount", body(CREDIT, account_id="", amount=0), "account_id", "empty"),
    ("amount before currency", body(DEBIT, amount=0, currency="eur"),
     "amount", "must_be_positive"),
    ("from before to", body(TRANSFER, from_account_id="", to_account_id=""),
     "from_account_id", "empty"),
    ("to before amount", body(TRANSFER, to_account_id="", amount=0), "to_account_id", "empty"),
    ("currency before metadata", body(TRANSFER, currency="x", metadata=1),
     "currency", "malformed"),
    ("currency before overdraft", body(OPEN, currency="x", overdraft_limit=-1),
     "currency", "malformed"),
    ("account_id before currency (open)", body(OPEN, account_id=DELETE, currency=DELETE),
     "account_id", "missing"),
]


@pytest.mark.parametrize("value, field, reason", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_invalid_bodies(value, field, reason):
    error = rejects(value)
    assert (error.field, error.reason) == (field, reason), error.message
    assert reason in REASONS
    assert error.message and isinstance(error.message, str)
    assert str(error) == error.message
    # The 400 body is JSON and UTF-8, whatever the input contained.
    json.dumps(error.to_json(), ensure_ascii=False).encode("utf-8")


def test_case_names_are_unique():
    names = [c[0] for c in CASES]
    assert len(names) == len(set(names))


def test_every_reason_is_exercised():
    # duplicate_field comes from decoding, out_of_range from query parameters only.
    used = {c[3] for c in CASES} | {"duplicate_field", "out_of_range"}
    assert used == set(REASONS)


def test_error_json_shape():
    error = rejects(body(CREDIT, amount=1.0))
    assert isinstance(error, ValueError)
    assert error.to_json() == {
        "error": "invalid_request",
        "field": "amount",
        "reason": "not_an_integer",
        "message": error.message,
    }


def test_parse_does_not_mutate_the_body():
    value = body(TRANSFER, metadata={"b": "2", "a": "1"})
    snapshot = json.loads(json.dumps(value))
    parse_command(value)
    assert value == snapshot


# --------------------------------------------------------------------------
# Raw bodies
# --------------------------------------------------------------------------


@pytest.mark.parametrize("raw, field, reason", [
    (b"", "body", "malformed"),
    (b"{", "body", "malformed"),
    (b"\xff\xfe{}", "body", "malformed"),
    (b"NaN", "body", "malformed"),
    (b'{"amount": Infinity}', "body", "malformed"),
    (b'{"amount": -Infinity}', "body", "malformed"),
    (b"[" * 100_000 + b"]" * 100_000, "body", "malformed"),
    (b"1" * 5000, "body", "malformed"),  # beyond Python's int digits limit
    (b'{"command_id": "a", "command_id": "b"}', "command_id", "duplicate_field"),
    (b'{"metadata": {"k": "a", "k": "b"}}', "k", "duplicate_field"),
    (b"[]", "body", "wrong_type"),
    (b'"text"', "body", "wrong_type"),
    (b"null", "body", "wrong_type"),
    (b'{"command_id":"c","type":"credit","account_id":"a","amount":1.0,"currency":"EUR"}',
     "amount", "not_an_integer"),
    (b'{"command_id":"c","type":"credit","account_id":"a","amount":1e3,"currency":"EUR"}',
     "amount", "not_an_integer"),
    (b'{"command_id":"c","type":"credit","account_id":"a","amount":100e-2,"currency":"EUR"}',
     "amount", "not_an_integer"),
    (b'{"command_id":"c","type":"credit","account_id":"a","amount":9223372036854775808,'
     b'"currency":"EUR"}', "amount", "too_large"),
    (b'{"command_id":"c","type":"credit","account_id":"a","amount":-0,"currency":"EUR"}',
     "amount", "must_be_positive"),
    (b'{"command_id":"c","type":"credit","account_id":"a","amount":1,"currency":"EUR\\n"}',
     "currency", "malformed"),
    (b'{"command_id":"c","type":"transfer","from_account_id":"a","to_account_id":"b",'
     b'"amount":1,"currency":"EUR","metadata":{"k":"\\ud800"}}', "metadata.k", "malformed"),
])
def test_invalid_raw_bodies(raw, field, reason):
    with pytest.raises(InvalidRequest) as info:
        parse_command_json(raw)
    assert (info.value.field, info.value.reason) == (field, reason), info.value.message


def test_raw_body_happy_path():
    raw = (b'{"command_id":"c","type":"credit","account_id":"a",'
           b'"amount":9223372036854775807,"currency":"EUR"}')
    assert parse_command_json(raw) == domain.Credit("c", "a", MAX, "EUR")
    assert parse_command_json(raw.decode()) == domain.Credit("c", "a", MAX, "EUR")
    assert decode_json_body(bytearray(b'{"a": [1, 2.5]}')) == {"a": [1, 2.5]}


def test_decode_refuses_non_text():
    with pytest.raises(InvalidRequest) as info:
        decode_json_body(123)  # type: ignore[arg-type]
    assert (info.value.field, info.value.reason) == ("body", "wrong_type")


# --------------------------------------------------------------------------
# command_to_json
# --------------------------------------------------------------------------


@pytest.mark.parametrize("command, expected", [
    (domain.OpenAccount("c-1", "alice", "EUR"), {**OPEN, "overdraft_limit": 0}),
    (domain.Credit("c-2", "alice", 1000, "EUR"), CREDIT),
    (domain.Debit("c-3", "alice", 250, "EUR"), DEBIT),
    (domain.Transfer("t-1", "alice", "bob", 99, "EUR", (("a", "1"),)),
     {**TRANSFER, "metadata": {"a": "1"}}),
    (domain.CloseAccount("c-4", "alice"), CLOSE),
])
def test_command_to_json(command, expected):
    result = command_to_json(command)
    assert result == expected
    assert list(result)[:2] == ["command_id", "type"]
    assert list(result)[2:] == [f for f in FIELD_ORDER if f in result]
    assert parse_command(result) == command


def test_command_to_json_refuses_internal_legs():
    transfer = domain.Transfer("t-1", "alice", "bob", 99, "EUR")
    with pytest.raises(TypeError):
        command_to_json(domain.credit_leg(transfer))


# --------------------------------------------------------------------------
# Hypothesis
# --------------------------------------------------------------------------

account_ids = st.from_regex(r"[A-Za-z0-9._:@-]{1,64}", fullmatch=True).filter(
    lambda a: a not in (".", ".."))  # dot segments are not account ids
command_ids = st.from_regex(r"[A-Za-z0-9._:@-]{1,128}", fullmatch=True)
currencies = st.from_regex(r"[A-Z]{3}", fullmatch=True)
amounts = st.integers(1, MAX) | st.sampled_from([1, MAX])
limits = st.integers(0, MAX) | st.sampled_from([0, MAX])
metadata = st.dictionaries(st.text(min_size=1, max_size=64), st.text(max_size=256),
                           max_size=16).map(lambda d: tuple(sorted(d.items())))

commands = st.one_of(
    st.builds(domain.OpenAccount, command_ids, account_ids, currencies, limits),
    st.builds(domain.Credit, command_ids, account_ids, amounts, currencies),
    st.builds(domain.Debit, command_ids, account_ids, amounts, currencies),
    st.builds(domain.Transfer, command_ids, account_ids, account_ids, amounts, currencies,
              metadata),
    st.builds(domain.CloseAccount, command_ids, account_ids),
    st.builds(domain.Credit, command_ids, account_ids, amounts, currencies, limits),
    st.builds(domain.PlaceHold, command_ids, account_ids, amounts, currencies,
              st.just("") | account_ids, st.just(0) | st.integers(1, 253_402_300_799_999),
              st.just(0) | amounts, metadata, st.just(-1) | limits),
    st.builds(domain.CaptureHold, command_ids, account_ids, command_ids,
              st.just(0) | amounts, st.just("") | account_ids, st.just(-1) | limits),
    st.builds(domain.ReleaseHold, command_ids, account_ids, command_ids,
              st.just(-1) | limits),
)


@settings(max_examples=300, deadline=None)
@given(commands)
def test_round_trip(command):
    as_json = command_to_json(command)
    assert parse_command(as_json) == command
    # And through the wire: text, bytes, back.
    wire = json.dumps(as_json, ensure_ascii=False).encode("utf-8")
    again = parse_command_json(wire)
    assert again == command
    assert domain.command_hash(again) == domain.command_hash(command)
    assert command_to_json(again) == as_json


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=25,
)

# Keys a generator is likely to get wrong in interesting ways.
field_names = st.sampled_from(("command_id", "type", *FIELD_ORDER, "amount_minor", "memo"))
type_names = st.sampled_from((*TYPE_FIELDS, "transfer_credit", "", "CREDIT"))


@st.composite
def near_valid_bodies(draw):
    """A valid body with a few fields replaced, removed or added."""
    value = dict(draw(st.sampled_from(list(BASES.values()))))
    for _ in range(draw(st.integers(0, 3))):
        key = draw(field_names)
        action = draw(st.sampled_from(("replace", "delete", "type")))
        if action == "delete":
            value.pop(key, None)
        elif action == "type":
            value["type"] = draw(type_names)
        else:
            value[key] = draw(json_values | amounts | account_ids | currencies
                              | metadata.map(dict))
    return value


def _check_outcome(value) -> None:
    try:
        command = parse_command(value)
    except InvalidRequest as error:
        assert error.reason in REASONS
        assert isinstance(error.field, str) and error.field
        assert isinstance(error.message, str) and error.message
        json.dumps(error.to_json(), ensure_ascii=False).encode("utf-8")
        return
    assert isinstance(command, tuple(domain.COMMAND_TYPES.values()))
    # What parse accepts, the domain's shape checks accept too.
    result = domain.decide(None, command, 0)
    if isinstance(result, domain.Rejection):
        # Depend on the account (or, for a hold's expiry, the time): not shape.
        assert result.reason in (domain.RejectionReason.unknown_account,
                                 domain.RejectionReason.same_account,
                                 domain.RejectionReason.version_conflict,
                                 domain.RejectionReason.expiry_out_of_range), result
    assert parse_command(command_to_json(command)) == command


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_fuzz_arbitrary_json(value):
    _check_outcome(value)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_valid_bodies())
def test_fuzz_near_valid_bodies(value):
    _check_outcome(value)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_valid_bodies())
def test_msgspec_reading_the_same_models_accepts_the_same_bodies(value):
    """parse_command walks the models' type information itself (for the API's 400s
    in a fixed order); msgspec, validating against the same Structs, must agree on
    what is valid. Not compared: expires_at as a string (an instant to the server,
    any string to a schema) and lone surrogates (which hypothesis does not draw)."""
    assume(not isinstance(value.get("expires_at"), str))
    try:
        parse_command(value)
        ours = True
    except InvalidRequest:
        ours = False
    try:
        msgspec.convert(value, models.Command, strict=True)
        theirs = True
    except msgspec.ValidationError:
        theirs = False
    assert ours == theirs, value


def test_a_constraint_the_validator_does_not_know_fails_at_import():
    """A model field with a constraint that has no reason code yet is refused
    when the checks are compiled, not silently left unchecked."""
    for annotated in (Annotated[str, msgspec.Meta(min_length=3)],
                      Annotated[int, msgspec.Meta(ge=5, le=10)],
                      Annotated[int, msgspec.Meta(multiple_of=2, ge=0, le=10)],
                      list[int]):
        with pytest.raises(TypeError):
            req._compile(msgspec.inspect.type_info(annotated))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_fuzz_raw_bytes(raw):
    try:
        parse_command_json(raw)
    except InvalidRequest as error:
        assert error.reason in REASONS


# --------------------------------------------------------------------------
# Purity
# --------------------------------------------------------------------------


def test_requests_module_imports_only_stdlib_and_domain():
    """An HTTP adapter, but pure: importing it loads no web framework, Kafka or store
    (msgspec, whose models it walks, is the one library)."""
    script = (
        "import sys, json; import streams.api.requests; "
        "print(json.dumps(sorted(m for m in sys.modules if '.' not in m "
        "or m.startswith(('streams.', 'ledger.')))))"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    third_party = {"faust", "mode", "aiohttp", "confluent_kafka", "aiokafka", "rocksdict",
                   "fastavro", "prometheus_client", "schemas", "yarl"}
    assert loaded & third_party == set()
    # Of this project: the domain (with ledger.frozen, its records' decorator,
    # and ledger._frozen, their constructor in C where it is built), the
    # models, and the module itself with its packages.
    from ledger import frozen

    ours = {m for m in loaded if m.split(".")[0] in ("streams", "ledger")}
    assert ours == {"streams", "streams.api", "streams.api.requests", "streams.api.models",
                    "ledger", "ledger.domain", "ledger.frozen",
                    *(["ledger._frozen"] if frozen.ACCELERATED else [])}


# --------------------------------------------------------------------------
# Path ids and query parameters: bounded, never anything but InvalidRequest
# --------------------------------------------------------------------------


def refused(parse, *args) -> tuple[str, str]:
    with pytest.raises(InvalidRequest) as caught:
        parse(*args)
    return caught.value.field, caught.value.reason


@pytest.mark.parametrize("text, ms", [
    ("0", 0),
    ("1795687200000", 1_795_687_200_000),
    ("253402300799999", 253_402_300_799_999),
    ("1970-01-01T00:00:00Z", 0),
    ("2026-11-26T10:00:00Z", 1_795_687_200_000),
    ("2026-11-26T11:00:00.2509+01:00", 1_795_687_200_250),
    ("9999-12-31T23:59:59.999999Z", 253_402_300_799_999),
    ("1970-01-01t01:00:00+01:00", 0),
])
def test_instants_in_range(text, ms):
    assert ms == req.parse_instant("as_of", text)


@pytest.mark.parametrize("text, reason", [
    ("-1", "out_of_range"),
    ("-62135596800001", "out_of_range"),          # before year 1: once a 500
    ("253402300800000", "out_of_range"),          # year 10000
    ("9999999999999999", "out_of_range"),
    ("1969-12-31T23:59:59.999Z", "out_of_range"),
    ("0001-01-01T00:00:00Z", "out_of_range"),
    ("9999-12-31T23:59:59-01:00", "out_of_range"),  # year 10000 in UTC
    ("0000-01-01T00:00:00Z", "malformed"),
    ("99999999999999999", "malformed"),           # 17 digits
    ("2026-02-30T00:00:00Z", "malformed"),
    ("2026-11-26T10:00:00", "malformed"),         # no zone
    ("yesterday", "malformed"),
    ("", "malformed"),
    ("1" * 65, "malformed"),
])
def test_instants_out_of_range_or_malformed(text, reason):
    assert ("as_of", reason) == refused(req.parse_instant, "as_of", text)


def b64(text: str) -> str:
    import base64

    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize("first, last", [(1, 1), (2, 1), (41, 151), (1, 2**63 - 1),
                                         (2**63 - 1, 2**63 - 1)])
def test_cursors_round_trip(first, last):
    cursor = req.encode_cursor(first, last)
    assert (first, last) == req.parse_cursor("cursor", cursor)
    assert (first, last) == req.parse_cursor("cursor", cursor.rstrip("="))


@pytest.mark.parametrize("text", [
    b64("-1:3"), b64("1:99999999999999999999999"), b64(f"1:{2**63}"), b64(f"{2**64}:1"),
    b64("0:5"), b64("3:1"), b64("1:0"), b64("1:2:3"), b64(" 1:2"), b64("+1:2"), b64("1_0:20"),
    b64("1:２"), b64("a:b"), b64(""), "%%%", "", "MTo", "MTox=a", "M" * 200, "MTox===",
    "MT!x", "\u00e9",
])
def test_cursors_we_did_not_give_are_malformed(text):
    assert ("cursor", "malformed") == refused(req.parse_cursor, "cursor", text)


@pytest.mark.parametrize("value, reason", [
    (None, "missing"), ("", "empty"), ("a" * 65, "too_long"), ("a/b", "malformed"),
    ("../../v1/health", "malformed"), ("..", "malformed"), (".", "malformed"),
    ("a b", "malformed"), ("a%2Fb", "malformed"), ("%ff", "malformed"), ("a\x00", "malformed"),
    ("ålice", "malformed"),
])
def test_path_account_ids(value, reason):
    assert ("account_id", reason) == refused(req.parse_account_id, "account_id", value)


def test_path_ids_follow_the_domain_rule():
    assert "a.b:c@d-e_f" == req.parse_account_id("account_id", "a.b:c@d-e_f")
    assert "..." == req.parse_account_id("account_id", "...")
    assert "x" * 64 == req.parse_account_id("account_id", "x" * 64)
    # Command ids: the domain's rule as it is (dots are fine, 128 long).
    assert ".." == req.parse_command_id("command_id", "..")
    assert "c" * 128 == req.parse_command_id("command_id", "c" * 128)
    assert ("command_id", "too_long") == refused(req.parse_command_id, "command_id", "c" * 129)
    assert ("transfer_id", "malformed") == refused(req.parse_command_id, "transfer_id", "t#1")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_path_ids_agree_with_the_domain(value):
    try:
        req.parse_account_id("account_id", value)
        assert domain.valid_account_id(value) and value not in (".", "..")
    except InvalidRequest:
        assert not domain.valid_account_id(value) or value in (".", "..")
    try:
        req.parse_command_id("command_id", value)
        assert domain.valid_command_id(value)
    except InvalidRequest:
        assert not domain.valid_command_id(value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_query_parsers_raise_only_invalid_request(text):
    for parse in (lambda: req.parse_instant("as_of", text),
                  lambda: req.parse_cursor("cursor", text),
                  lambda: req.parse_positive_int("limit", text, 1000),
                  lambda: req.parse_flag("wait", text)):
        try:
            parse()
        except InvalidRequest as error:
            assert error.reason in REASONS


@pytest.mark.parametrize("header, ok", [
    ("application/json", True), ("application/json; charset=utf-8", True),
    ("Application/JSON;charset=UTF-8", True), (" application/json ", True),
    (None, False), ("", False), ("text/plain", False),
    ("application/x-www-form-urlencoded", False), ("multipart/form-data; boundary=x", False),
    ("application/json-patch+json", False), ("application/jsonx", False),
])
def test_json_media_type(header, ok):
    assert ok == req.is_json_media_type(header)


def test_positive_ints_and_flags():
    assert 1000 == req.parse_positive_int("limit", "1000", 1000)
    assert ("limit", "too_large") == refused(req.parse_positive_int, "limit", "1001", 1000)
    assert ("version", "too_large") == refused(req.parse_positive_int, "version",
                                               str(2**63))
    assert ("version", "not_an_integer") == refused(req.parse_positive_int, "version",
                                                    "9" * 20)
    assert ("version", "must_be_positive") == refused(req.parse_positive_int, "version", "0")
    for text in ("-1", "+1", "1.0", " 1", "1_0", "١"):
        assert ("version", "not_an_integer") == refused(req.parse_positive_int, "version",
                                                        text)
    assert (False, False, True) == (req.parse_flag("wait", None), req.parse_flag("wait", "0"),
                                    req.parse_flag("wait", "1"))
    assert ("wait", "malformed") == refused(req.parse_flag, "wait", "yes")
