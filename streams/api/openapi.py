"""The OpenAPI 3.0.3 description of a worker's HTTP API (served at /v1/openapi.json).

Every request and response body schema is generated from the models of
:mod:`streams.api.models` (the msgspec Structs that :mod:`streams.api.requests`
validates with), so the document and the server cannot disagree about a
field, a limit or a pattern. Written here by hand: the paths, their
parameters and descriptions, and which response (status, schema) each
operation gives. (Metadata key lengths cannot be expressed in OpenAPI 3.0
and are in the description, checked only by the server.)

Money (``amount``, ``balance``, ``balance_after``, ``overdraft_limit``) is
always ``type: integer, format: int64``, in minor units; never a number.

Pure: imports nothing from Faust, Kafka or aiohttp.
"""

from __future__ import annotations

import copy

from streams.api import auth, models
from streams.api import requests as req

OPENAPI_VERSION = "3.0.3"
API_VERSION = "1.0.0"

# The request bodies, from the models: one schema per command type
# (OpenAccountCommand, CreditCommand, ...) and Command, their union by type.
(_COMMAND_SCHEMA,), _COMMAND_SCHEMAS = models.openapi_schemas([models.Command])
# The response bodies (Outcome, Account, EventPage, ..., InvalidRequest, Error), from the models.
_, _RESPONSE_SCHEMAS = models.openapi_schemas(models.RESPONSE_MODELS)


# --------------------------------------------------------------------------
# Schema building blocks (fresh dicts each call: no shared mutable state)
# --------------------------------------------------------------------------


def _field_schema(annotated, description: str | None = None) -> dict:
    """The schema of one of the models' field types (ids, currency)."""
    (schema,), _ = models.openapi_schemas([annotated])
    return {**schema, "description": description} if description else schema


def _account_id(description: str = "Account id.") -> dict:
    return _field_schema(models.AccountId, description)


def _command_id(description: str = "Client-chosen idempotency key.") -> dict:
    return _field_schema(models.CommandId, description)


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _schemas() -> dict:
    schemas: dict = copy.deepcopy({**_COMMAND_SCHEMAS, **_RESPONSE_SCHEMAS})
    schemas["Command"] = {
        "description": (
            "A command. Fields are checked in a fixed order and the first problem is "
            "answered with 400: command_id, type, unknown or foreign fields (sorted), "
            "then " + ", ".join(req.FIELD_ORDER) + "."
        ),
        **copy.deepcopy(_COMMAND_SCHEMA),
    }
    return schemas


# --------------------------------------------------------------------------
# Responses and parameters
# --------------------------------------------------------------------------


def _error(description: str) -> dict:
    return _json(_ref("Error"), description)


def _invalid(description: str = "The request is malformed; the first problem found.") -> dict:
    return _json(_ref("InvalidRequest"), description)


def _path_param(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema,
            "description": description}


def _query_param(name: str, schema: dict, description: str, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "schema": schema,
            "description": description}


def _unavailable() -> dict:
    response = _error("No worker can answer for the partition of this account right now "
                      "(error partition_unavailable, with partition): its owner is "
                      "unknown, unreachable or still catching up. Retry.")
    response["headers"] = {"Retry-After": {"schema": {"type": "integer", "minimum": 1},
                                           "description": "Seconds to wait: 1."}}
    return response


def _unavailable_or_not_final(field: str) -> dict:
    response = _error(
        "Either no worker can answer for the partition of this account right now (error "
        "partition_unavailable, with partition; Retry-After: 1), or the instant " + field
        + " is not final yet (error as_of_not_final, with complete_up_to and as_of): "
        "events recorded at or before it may still be committed, and it did not become "
        "final within timeout_ms. Never a state that may change; Retry-After says when "
        "to ask again.")
    response["headers"] = {"Retry-After": {"schema": {"type": "integer", "minimum": 1},
                                           "description": "Seconds to wait."}}
    return response


def _timeout_param(field: str) -> dict:
    return _query_param("timeout_ms", {"type": "integer", "minimum": 0,
                                       "maximum": req.AS_OF_TIMEOUT_MS_MAX,
                                       "default": req.AS_OF_TIMEOUT_MS_DEFAULT},
                        f"How long to wait for {field} to become final (the answering "
                        "store's watermark to pass it) before answering 503 "
                        "as_of_not_final; 0: do not wait.")


def _as_of_param(description: str) -> dict:
    return _query_param("as_of", {"anyOf": [
        {"type": "string", "format": "date-time"},
        {"type": "integer", "format": "int64", "minimum": req.INSTANT_MS_MIN,
         "maximum": req.INSTANT_MS_MAX},
    ]}, description)


_INSTANT_RANGE = ("RFC 3339 (2026-11-26T10:00:00Z) or epoch ms, from 1970-01-01 to "
                  "9999-12-31 (else 400 out_of_range)")


def _paths() -> dict:
    account_param = _path_param("account_id", _account_id(), "Account id.")
    return {
        "/v1/commands": {
            "post": {
                "operationId": "submitCommand",
                "summary": "Send a command (idempotent by command_id).",
                "parameters": [
                    _query_param("wait", {"type": "integer", "enum": [0, 1], "default": 0},
                                 "1: wait for the outcome and answer 200 with it."),
                    _query_param("timeout_ms", {"type": "integer", "minimum": 1,
                                                "maximum": req.WAIT_TIMEOUT_MS_MAX,
                                                "default": req.WAIT_TIMEOUT_MS_DEFAULT},
                                 "How long to wait when wait=1."),
                ],
                "requestBody": {
                    "required": True,
                    "description": (
                        f"A command as JSON, at most {req.REQUEST_BODY_BYTES_MAX} bytes. "
                        "Amounts are JSON integers: 1.0 and 1e3 are refused."
                    ),
                    "content": {"application/json": {"schema": _ref("Command")}},
                },
                "responses": {
                    "202": _json(_ref("Accepted"),
                                 "Written to the command log; the outcome comes later."),
                    "200": _json(_ref("Outcome"), "wait=1: the command's outcome."),
                    "400": _invalid(),
                    "413": {
                        "description": f"Body larger than {req.REQUEST_BODY_BYTES_MAX} bytes.",
                        "content": {"application/json": {"schema": _ref("Error")},
                                    "text/plain": {"schema": {"type": "string"}}},
                    },
                    "415": _error("The Content-Type is not application/json (error "
                                  "unsupported_media_type). Nothing was published."),
                    "503": _error("Kafka did not confirm the command (error "
                                  "kafka_unavailable, with command_id). It may have been "
                                  "published: retry with the same command_id."),
                    "504": _error("wait=1 and no outcome within timeout_ms (error "
                                  "outcome_timeout, with command_id). The command was "
                                  "sent and may still be applied; ask GET "
                                  "/v1/commands/{command_id}?account_id=..."),
                },
            }
        },
        "/v1/commands/{command_id}": {
            "get": {
                "operationId": "getCommandOutcome",
                "summary": "The outcome of a command sent to an account.",
                "parameters": [
                    _path_param("command_id", _command_id(), "Command id."),
                    _query_param("account_id", _account_id(
                        "The account the command was addressed to (a transfer's "
                        "from_account_id): command ids are unique per account."),
                        "The command's account.", required=True),
                ],
                "responses": {
                    "200": _json(_ref("Outcome"), "The command's outcome."),
                    "400": _invalid("The command id or account_id is missing or malformed."),
                    "404": _error("The owner has no outcome (yet) for this command id on this "
                                  "account (error unknown_command)."),
                    "503": _unavailable(),
                },
            }
        },
        "/v1/transfers/{transfer_id}": {
            "get": {
                "operationId": "getTransfer",
                "summary": "Where a transfer is: pending, completed or failed.",
                "parameters": [
                    _path_param("transfer_id", _command_id("The transfer's command_id."),
                                "Transfer id (its command_id)."),
                    _query_param("account_id", _account_id(
                        "The transfer's source (from_account_id)."),
                        "The transfer's source account.", required=True),
                ],
                "responses": {
                    "200": _json(_ref("TransferStatus"), "The transfer."),
                    "400": _invalid("The transfer id or account_id is missing or malformed."),
                    "404": _error("The owner knows no such transfer from this account "
                                  "(error unknown_transfer)."),
                    "503": _unavailable(),
                },
            }
        },
        "/v1/holds/{hold_id}": {
            "get": {
                "operationId": "getHold",
                "summary": "A hold: active, captured, released or expired.",
                "parameters": [
                    _path_param("hold_id", _command_id("The hold's command_id."),
                                "Hold id (its hold command's command_id)."),
                    _query_param("account_id", _account_id("The account the hold is on."),
                                 "The hold's account.", required=True),
                ],
                "responses": {
                    "200": _json(_ref("Hold"), "The hold."),
                    "400": _invalid("The hold id or account_id is missing or malformed."),
                    "404": _error("The owner knows no such hold on this account "
                                  "(error unknown_hold)."),
                    "503": _unavailable(),
                },
            }
        },
        "/v1/accounts/{account_id}": {
            "get": {
                "operationId": "getAccount",
                "summary": "An account's committed state, now or in the past.",
                "parameters": [
                    account_param,
                    _as_of_param("State as of this instant (every event recorded at or "
                                 "before it): " + _INSTANT_RANGE + ". Answered only once "
                                 "final, then the same forever. Not together with "
                                 "version."),
                    _query_param("version", {"type": "integer", "format": "int64",
                                             "minimum": 1, "maximum": models.INT64_MAX},
                                 "State after this event sequence. Not together with as_of."),
                    _timeout_param("as_of"),
                ],
                "responses": {
                    "200": _json(_ref("Account"), "The account: as of as_of, right after "
                                 "event version, or (neither given) as of the last event "
                                 "known to the answering store, which as_of names."),
                    "400": _invalid("Malformed account id, as_of, version or timeout_ms, "
                                    "or both as_of and version given."),
                    "404": _error("No such account (unknown_account), none yet at that "
                                  "time (unknown_account), or no such version "
                                  "(unknown_version)."),
                    "503": _unavailable_or_not_final("as_of"),
                },
            }
        },
        "/v1/accounts/{account_id}/events": {
            "get": {
                "operationId": "listAccountEvents",
                "summary": "An account's events in sequence order, a page at a time.",
                "parameters": [
                    account_param,
                    _query_param("from", {"type": "string", "maxLength": 64},
                                 "Events recorded at or after this instant: "
                                 + _INSTANT_RANGE + ". Default: the first."),
                    _query_param("to", {"type": "string", "maxLength": 64},
                                 "Events recorded at or before this instant: "
                                 + _INSTANT_RANGE + ". Answered only once final, then "
                                 "the same forever. Default: the latest."),
                    _query_param("limit", {"type": "integer", "minimum": 1,
                                           "maximum": req.EVENTS_LIMIT_MAX,
                                           "default": req.EVENTS_LIMIT_DEFAULT},
                                 "Events per page."),
                    _query_param("cursor", {"type": "string", "maxLength": 66},
                                 "next_cursor of the previous page (opaque; a cursor "
                                 "we did not give is 400 malformed). Wins over from (and "
                                 "over to, which still bounds it)."),
                    _timeout_param("to"),
                ],
                "responses": {
                    "200": _json(_ref("EventPage"), "A page of events."),
                    "400": _invalid("Malformed account id, from, to, limit, cursor or "
                                    "timeout_ms."),
                    "404": _error("No such account (error unknown_account), or none yet at "
                                  "`to`."),
                    "503": _unavailable_or_not_final("to"),
                },
            }
        },
        "/v1/health": {
            "get": {
                "operationId": "health",
                "summary": "This worker: applying commands or not, and why.",
                "responses": {
                    "200": _json(_ref("Health"), "Healthy: applying commands "
                                                 "(status ok, reason consuming)."),
                    "503": _json(_ref("Health"), "Not applying commands (status "
                                                 "unavailable, with the reason)."),
                },
            }
        },
        "/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.0.3 document.")},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics.",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }


# --------------------------------------------------------------------------
# Read models (streams/readmodels.py, streams/api/ledger_views.py)
# --------------------------------------------------------------------------

# GET /v1/accounts/{account_id}/statements: at most this many days per answer
# (streams.readmodels.STATEMENT_DAYS_MAX; tests/streams/test_read_models.py).
STATEMENT_DAYS_MAX = 366


def _read_models_unavailable(what: str) -> dict:
    return _error(what + " (error partition_unavailable, with Retry-After: 1), or this "
                  "worker runs without read models (error read_models_disabled).")


def _read_model_paths() -> dict:
    day = {"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
    return {
        "/v1/ledger/totals": {
            "get": {
                "operationId": "getLedgerTotals",
                "summary": "Ledger-wide money per currency and the invariant, from the "
                           "read models of every partition (gathered from their owners).",
                "responses": {
                    "200": _json(_ref("LedgerTotals"), "The totals; missing_partitions "
                                                       "names what no worker gave."),
                    "503": _error("This worker runs without read models (error "
                                  "read_models_disabled)."),
                },
            }
        },
        "/v1/ledger/totals/local": {
            "get": {
                "operationId": "getLocalLedgerTotals",
                "summary": "This worker's partitions of the totals (what /v1/ledger/totals "
                           "asks each owner); never forwarded.",
                "responses": {
                    "200": _json(_ref("LocalTotals"), "Sums by kind per partition."),
                    "503": _error("This worker runs without read models (error "
                                  "read_models_disabled)."),
                },
            }
        },
        "/v1/accounts/{account_id}/statements": {
            "get": {
                "operationId": "getAccountStatements",
                "summary": "An account's statement per calendar day: opening balance, "
                           "flows by kind, closing balance.",
                "parameters": [
                    _path_param("account_id", _account_id(), "Account id."),
                    _query_param("from", day, "First day (included), YYYY-MM-DD.",
                                 required=True),
                    _query_param("to", day, f"Last day (included), YYYY-MM-DD; at most "
                                            f"{STATEMENT_DAYS_MAX} days from `from`.",
                                 required=True),
                ],
                "responses": {
                    "200": _json(_ref("StatementPage"), "The days with events."),
                    "400": _invalid("Malformed account id, from or to (missing, "
                                    "malformed), to before from (out_of_range) or more "
                                    f"than {STATEMENT_DAYS_MAX} days (too_large)."),
                    "503": _read_models_unavailable(
                        "No worker can answer for the account's partition right now"),
                },
            }
        },
    }


# --------------------------------------------------------------------------
# Who may call (streams.api.auth)
# --------------------------------------------------------------------------

BEARER = "bearerAuth"
# Public with or without LEDGER_API_TOKENS: no money data in them.
PUBLIC_PATHS = frozenset(("/v1/health", "/v1/openapi.json", "/metrics"))
# The scope each HTTP method needs (as streams.api.base.LedgerView.SCOPES).
METHOD_SCOPES = {"get": auth.READ, "head": auth.READ, "post": auth.WRITE}


def _security_schemes() -> dict:
    return {BEARER: {
        "type": "http",
        "scheme": "bearer",
        "description": (
            "A token from the worker's LEDGER_API_TOKENS file, sent as "
            "Authorization: Bearer <token>. Scopes: read (every GET but /v1/health, "
            "/v1/openapi.json and /metrics), write (POST /v1/commands); each operation "
            "names its scope in x-required-scope. Without LEDGER_API_TOKENS the API is "
            "open and bound to loopback."
        ),
    }}


def _challenge_header(description: str) -> dict:
    return {"WWW-Authenticate": {"schema": {"type": "string"}, "description": description}}


def _unauthorized() -> dict:
    response = _error("No bearer token, or not a known one (error unauthorized). "
                      "Only when the worker has LEDGER_API_TOKENS.")
    response["headers"] = _challenge_header('Bearer realm="ledger" (with '
                                            'error="invalid_token" for an unknown token).')
    return response


def _forbidden(scope: str) -> dict:
    response = _error(f"The bearer token lacks the {scope} scope (error forbidden).")
    response["headers"] = _challenge_header(
        f'Bearer realm="ledger", error="insufficient_scope", scope="{scope}".')
    return response


def _secured(paths: dict) -> dict:
    """Every operation but the public ones: bearer security, its scope, 401 and 403."""
    for path, item in paths.items():
        for method, operation in item.items():
            if path in PUBLIC_PATHS:
                operation["security"] = []
                continue
            scope = METHOD_SCOPES.get(method, auth.WRITE)
            operation["security"] = [{BEARER: []}]
            operation["x-required-scope"] = scope
            operation["responses"].setdefault("401", _unauthorized())
            operation["responses"].setdefault("403", _forbidden(scope))
    return paths


_DOCUMENT = {
    "openapi": OPENAPI_VERSION,
    "info": {
        "title": "Kafka ledger worker",
        "version": API_VERSION,
        "description": (
            "Event-sourced account ledger. Commands are written to Kafka and applied "
            "exactly once per command_id; money is an integer count of minor units."
        ),
    },
    "paths": _secured({**_paths(), **_read_model_paths()}),
    "components": {"schemas": _schemas(),
                   "securitySchemes": _security_schemes()},
    "security": [{BEARER: []}],
}


def openapi_document() -> dict:
    """The OpenAPI 3.0.3 document, as a fresh JSON-serialisable dict."""
    return copy.deepcopy(_DOCUMENT)
