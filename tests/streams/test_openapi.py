"""streams.api.openapi: the OpenAPI 3.0.3 document served at /v1/openapi.json.

Checks that it is valid OpenAPI 3.0 (with openapi-spec-validator when it is
installed, else a structural check), that money is integer/int64 everywhere,
that every body schema is the one generated from streams.api.models, and
that the request body schema agrees with streams.api.requests: every
command parse_command accepts validates against it, and the 400s a schema can
express are refused by it too. (tests/streams/test_http_table.py validates live
answers of two workers against the documented responses.)
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import domain
from streams.api import models
from streams.api import requests as req
from streams.api.openapi import openapi_document
from streams.api.requests import InvalidRequest, command_to_json, parse_command

try:
    from openapi_spec_validator import OpenAPIV30SpecValidator, validate as validate_spec
except ImportError:  # pragma: no cover - depends on the environment
    validate_spec = None

try:
    from openapi_schema_validator import OAS30Validator
except ImportError:  # pragma: no cover - depends on the environment
    OAS30Validator = None

MONEY = ("amount", "balance", "overdraft_limit")
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
EXPECTED_OPERATIONS = {
    ("/v1/commands", "post"),
    ("/v1/commands/{command_id}", "get"),
    ("/v1/transfers/{transfer_id}", "get"),
    ("/v1/accounts/{account_id}", "get"),
    ("/v1/accounts/{account_id}/events", "get"),
    ("/v1/health", "get"),
    ("/metrics", "get"),
}


@pytest.fixture(scope="module")
def doc() -> dict:
    return openapi_document()


def resolve(doc: dict, node):
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        node = doc
        for part in ref[2:].split("/"):
            node = node[part]
    return node


def walk(node, path=()):
    """Every (path, dict) in a JSON tree."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, path + (i,))


# --------------------------------------------------------------------------
# Validity
# --------------------------------------------------------------------------


def check_structure(doc: dict) -> None:
    assert doc["openapi"] == "3.0.3"
    assert doc["info"]["title"] and doc["info"]["version"]
    for path, item in doc["paths"].items():
        assert path.startswith("/")
        for method, operation in item.items():
            assert method in HTTP_METHODS, (path, method)
            assert operation["responses"], (path, method)
            for status, response in operation["responses"].items():
                assert status == "default" or 100 <= int(status) <= 599
                assert response["description"]
            templated = {p.strip("{}") for p in path.split("/") if p.startswith("{")}
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert templated == declared, (path, method)
            for parameter in operation.get("parameters", []):
                assert parameter["in"] in {"path", "query", "header", "cookie"}
                assert "schema" in parameter
                if parameter["in"] == "path":
                    assert parameter["required"] is True
    for _, node in walk(doc):
        if "$ref" in node:
            resolve(doc, node)  # raises KeyError if dangling


def test_document_is_valid_openapi_30(doc):
    check_structure(doc)
    if validate_spec is not None:
        validate_spec(doc, cls=OpenAPIV30SpecValidator)


def test_structure_without_validator(doc):
    check_structure(doc)


@pytest.mark.skipif(validate_spec is None, reason="openapi-spec-validator not installed")
def test_validator_would_catch_a_broken_document(doc):
    broken = openapi_document()
    broken["paths"]["/v1/accounts/{account_id}"]["get"]["parameters"] = []
    with pytest.raises(Exception):
        validate_spec(broken, cls=OpenAPIV30SpecValidator)


def test_operations(doc):
    operations = {(p, m) for p, item in doc["paths"].items() for m in item}
    assert EXPECTED_OPERATIONS <= operations
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_document_is_json_and_fresh(doc):
    text = json.dumps(doc, allow_nan=False)
    assert json.loads(text) == doc
    mine = openapi_document()
    mine["paths"].clear()
    assert openapi_document() == doc


# --------------------------------------------------------------------------
# Money is an integer everywhere
# --------------------------------------------------------------------------


def test_body_schemas_are_generated_from_the_models(doc):
    """Every request and response body schema is the one streams.api.models
    generates (Command adds only its description), and every model is used."""
    _, generated = models.openapi_schemas([models.Command, *models.RESPONSE_MODELS])
    schemas = doc["components"]["schemas"]
    assert set(schemas) == set(generated) | {"Command"}
    for name, schema in generated.items():
        assert schemas[name] == schema, name
    used = {node["$ref"].rsplit("/", 1)[1] for _, node in walk(doc["paths"]) if "$ref" in node}
    for model in models.RESPONSE_MODELS:
        name = model.__name__
        assert name in used or any(f"/{name}" in json.dumps(s) for s in schemas.values()), name


def test_money_properties_are_int64(doc):
    seen = []
    for path, node in walk(doc):
        for name, schema in node.get("properties", {}).items():
            if any(name == m or name.startswith(m + "_") for m in MONEY):
                schema = resolve(doc, schema)
                assert schema.get("type") == "integer", (path, name)
                assert schema.get("format") == "int64", (path, name)
                seen.append(name)
    # Request bodies and responses both have money in them.
    assert {"amount", "balance", "balance_after", "overdraft_limit"} <= set(seen)
    assert seen.count("amount") >= 5


def test_no_number_type_anywhere(doc):
    for path, node in walk(doc):
        assert node.get("type") != "number", path
        assert node.get("format") not in ("float", "double"), path


def test_query_parameters(doc):
    def params(path, method):
        return {p["name"]: p for p in doc["paths"][path][method]["parameters"]}

    post = params("/v1/commands", "post")
    assert post["wait"]["schema"]["enum"] == [0, 1]
    assert post["timeout_ms"]["schema"]["type"] == "integer"
    account = params("/v1/accounts/{account_id}", "get")
    assert {"account_id", "as_of", "version", "timeout_ms"} == set(account)
    assert account["version"]["schema"]["minimum"] == 1
    assert [0, req.INSTANT_MS_MAX] == [
        s.get("minimum") for s in account["as_of"]["schema"]["anyOf"] if "minimum" in s] + [
        s.get("maximum") for s in account["as_of"]["schema"]["anyOf"] if "maximum" in s]
    events = params("/v1/accounts/{account_id}/events", "get")
    assert {"account_id", "from", "to", "limit", "cursor", "timeout_ms"} == set(events)
    assert (events["limit"]["schema"]["minimum"], events["limit"]["schema"]["maximum"]) == (1, 1000)
    # Lookups by command or transfer id name the account: required.
    for path in ("/v1/commands/{command_id}", "/v1/transfers/{transfer_id}"):
        lookup = params(path, "get")
        assert lookup["account_id"]["in"] == "query" and lookup["account_id"]["required"]
    for name, parameters in (("account", account), ("events", events)):
        assert parameters["account_id"]["required"], name


def test_account_id_pattern_is_the_servers_rule():
    import re

    pattern = re.compile(openapi_document()["components"]["schemas"]["Account"]
                         ["properties"]["account_id"]["pattern"])
    for value in ("a", "...", "a.b", ".", "..", "a/b", "a b", "", "x" * 64):
        assert bool(pattern.search(value)) == domain.valid_account_id(value) or len(value) > 64, \
            value


def test_responses(doc):
    def codes(path, method):
        return set(doc["paths"][path][method]["responses"])

    assert {"200", "202", "400", "413", "415", "503", "504"} <= codes("/v1/commands", "post")
    for path in ("/v1/commands/{command_id}", "/v1/transfers/{transfer_id}",
                 "/v1/accounts/{account_id}", "/v1/accounts/{account_id}/events"):
        assert {"200", "400", "404", "503"} <= codes(path, "get"), path
        unavailable = doc["paths"][path]["get"]["responses"]["503"]
        assert "Retry-After" in unavailable["headers"], path
    assert {"200", "503"} <= codes("/v1/health", "get")
    health = doc["components"]["schemas"]["Health"]
    assert {"status", "worker_id", "partitions", "reason", "caught_up"} == set(
        health["required"])
    assert {"ok", "unavailable"} == set(health["properties"]["status"]["enum"])
    metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert set(metrics) == {"text/plain"}
    invalid = doc["components"]["schemas"]["InvalidRequest"]
    assert set(invalid["required"]) == {"error", "field", "reason", "message"}
    transfer = doc["components"]["schemas"]["TransferStatus"]["properties"]
    # (an enum is a set: the generated schema lists it sorted)
    assert set(transfer["status"]["enum"]) == {"pending", "completed", "failed"}
    page = doc["components"]["schemas"]["EventPage"]["properties"]
    assert page["next_cursor"]["nullable"] is True


# --------------------------------------------------------------------------
# The request body schema agrees with parse_command
# --------------------------------------------------------------------------


def command_validator(doc):
    if OAS30Validator is None:
        pytest.skip("openapi-schema-validator not installed")
    root = {"$ref": "#/components/schemas/Command", "components": doc["components"]}
    return OAS30Validator(root)


MAX = 2**63 - 1
account_ids = st.from_regex(r"[A-Za-z0-9._:@-]{1,64}", fullmatch=True).filter(
    lambda a: a not in (".", ".."))  # dot segments are not account ids
command_ids = st.from_regex(r"[A-Za-z0-9._:@-]{1,128}", fullmatch=True)
currencies = st.from_regex(r"[A-Z]{3}", fullmatch=True)
amounts = st.integers(1, MAX)
metadata = st.dictionaries(st.text(min_size=1, max_size=64), st.text(max_size=256),
                           max_size=16).map(lambda d: tuple(sorted(d.items())))
commands = st.one_of(
    st.builds(domain.OpenAccount, command_ids, account_ids, currencies, st.integers(0, MAX)),
    st.builds(domain.Credit, command_ids, account_ids, amounts, currencies),
    st.builds(domain.Debit, command_ids, account_ids, amounts, currencies),
    st.builds(domain.Transfer, command_ids, account_ids, account_ids, amounts, currencies,
              metadata),
    st.builds(domain.CloseAccount, command_ids, account_ids),
    st.builds(domain.PlaceHold, command_ids, account_ids, amounts, currencies,
              st.one_of(st.just(""), account_ids), st.integers(0, MAX), st.integers(0, MAX),
              metadata),
    st.builds(domain.CaptureHold, command_ids, account_ids, command_ids, st.integers(0, MAX),
              st.one_of(st.just(""), account_ids)),
    st.builds(domain.ReleaseHold, command_ids, account_ids, command_ids),
    st.builds(domain.Credit, command_ids, account_ids, amounts, currencies,
              st.integers(0, MAX)),
)


@settings(max_examples=200, deadline=None)
@given(commands)
def test_valid_commands_match_the_request_schema(command):
    validator = command_validator(openapi_document())
    as_json = command_to_json(command)
    errors = list(validator.iter_errors(as_json))
    assert errors == [], [e.message for e in errors]
    # Optional fields may be left out too.
    trimmed = {k: v for k, v in as_json.items() if k not in ("overdraft_limit", "metadata")}
    assert list(validator.iter_errors(trimmed)) == []


BASE = {"command_id": "c", "type": "transfer", "from_account_id": "a", "to_account_id": "b",
        "amount": 1, "currency": "EUR"}


@pytest.mark.parametrize("changes", [
    {"amount": 0},
    {"amount": -5},
    {"amount": 2**63},
    {"amount": "1"},
    {"amount": True},
    {"amount": 1.5},
    {"currency": "eur"},
    {"currency": "EURO"},
    {"from_account_id": ""},
    {"from_account_id": "a" * 65},
    {"from_account_id": "a/b"},
    {"from_account_id": ".."},
    {"to_account_id": "."},
    {"command_id": "c" * 129},
    {"command_id": "a b"},
    {"type": "withdraw"},
    {"memo": "x"},
    {"account_id": "a"},
    {"overdraft_limit": 0},
    {"metadata": {f"k{i}": "v" for i in range(17)}},
    {"metadata": {"k": "v" * 257}},
    {"metadata": {"k": 1}},
    {"metadata": []},
], ids=lambda c: ",".join(f"{k}={str(v)[:12]}" for k, v in c.items()))
def test_invalid_bodies_the_schema_can_express_are_refused_by_both(doc, changes):
    value = {**BASE, **changes}
    with pytest.raises(InvalidRequest):
        parse_command(value)
    assert list(command_validator(doc).iter_errors(value)) != []


def test_missing_required_fields_are_refused_by_both(doc):
    validator = command_validator(doc)
    for key in BASE:
        value = {k: v for k, v in BASE.items() if k != key}
        with pytest.raises(InvalidRequest):
            parse_command(value)
        assert list(validator.iter_errors(value)) != [], key
