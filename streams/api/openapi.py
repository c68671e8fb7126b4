"""The OpenAPI 3.0.3 description of a worker's HTTP API (served at /v1/openapi.json).

:func:`openapi_document` builds it from the same limits that
:mod:`streams.api.requests` enforces, so a generator (schemathesis) working from
the request body schema produces bodies ``parse_command`` accepts, and the
documented 400s when it strays (metadata key lengths cannot be expressed in
OpenAPI 3.0 and are checked only by the server).

Money (``amount``, ``balance``, ``balance_after``, ``overdraft_limit``) is
always ``type: integer, format: int64``, in minor units; never a number.

Pure: imports nothing from Faust, Kafka or aiohttp.
"""

from __future__ import annotations

import copy

from ledger import domain
from streams.api import auth, models
from streams.api import requests as req

OPENAPI_VERSION = "3.0.3"
API_VERSION = "1.0.0"

# POST /v1/commands?wait=1&timeout_ms=...: how long the view may wait for the outcome.
# (The same numbers as streams.api.commands and streams.api.accounts, which
# import the web framework; tests/streams/test_openapi.py checks they agree.)
WAIT_TIMEOUT_MS_DEFAULT = 5_000
WAIT_TIMEOUT_MS_MAX = 60_000
# GET /v1/accounts/{account_id}/events?limit=...
EVENTS_LIMIT_DEFAULT = 100
EVENTS_LIMIT_MAX = 1_000
# GET /v1/accounts/{account_id}?as_of=T (and /events?to=T): how long to wait
# for T to become final (streams.api.accounts).
AS_OF_TIMEOUT_MS_DEFAULT = 2_000
AS_OF_TIMEOUT_MS_MAX = 10_000

INT64_MIN = models.INT64_MIN
INT64_MAX = models.INT64_MAX

EVENT_TYPE_NAMES = tuple(domain.EVENT_TYPES)

# The request bodies, from the models: one schema per command type
# (OpenAccountCommand, CreditCommand, ...) and Command, their union by type.
(_COMMAND_SCHEMA,), _COMMAND_SCHEMAS = models.openapi_schemas([models.Command])


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


def _currency() -> dict:
    return _field_schema(models.Currency)


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _schemas() -> dict:
    schemas: dict = copy.deepcopy(_COMMAND_SCHEMAS)
    schemas["Command"] = {
        "description": (
            "A command. Fields are checked in a fixed order and the first problem is "
            "answered with 400: command_id, type, unknown or foreign fields (sorted), "
            "then " + ", ".join(req.FIELD_ORDER) + "."
        ),
        **copy.deepcopy(_COMMAND_SCHEMA),
    }
    schemas["Accepted"] = {
        "type": "object",
        "required": ["command_id", "status"],
        "properties": {
            "command_id": _command_id(),
            "status": {"type": "string", "enum": ["accepted"]},
        },
    }
    schemas["Event"] = {
        "type": "object",
        "description": (
            "One committed event of an account. Fields beyond the common ones "
            "depend on the type (transfer_* events carry transfer_id and "
            "counterparty_account_id; transfer_debited carries metadata; "
            "transfer_refunded carries reason)."
        ),
        "required": ["type", "account_id", "sequence", "command_id", "currency",
                     "amount", "balance_after", "recorded_at"],
        "properties": {
            "type": {"type": "string", "enum": list(EVENT_TYPE_NAMES)},
            "account_id": _account_id(),
            "sequence": {"type": "integer", "format": "int64", "minimum": 1},
            "command_id": {"type": "string"},
            "currency": _currency(),
            "amount": {"type": "integer", "format": "int64", "minimum": 0,
                       "maximum": INT64_MAX,
                       "description": "Minor units moved (0 for account_opened/closed)."},
            "balance_after": {"type": "integer", "format": "int64", "minimum": INT64_MIN,
                              "maximum": INT64_MAX,
                              "description": "Balance after this event, minor units."},
            "recorded_at": {"type": "string", "format": "date-time"},
            "overdraft_limit": {"type": "integer", "format": "int64", "minimum": 0,
                                "maximum": INT64_MAX,
                                "description": "account_opened only."},
            "transfer_id": {"type": "string"},
            "counterparty_account_id": {"type": "string"},
            "hold_id": {"type": "string", "description": "hold_* events."},
            "to_account_id": {"type": "string", "description": "hold_placed, hold_captured: "
                                                            "the destination, empty for none."},
            "expires_at_ms": {"type": "integer", "format": "int64",
                              "description": "hold_placed, hold_expired."},
            "released_minor": {"type": "integer", "format": "int64",
                               "description": "hold_captured: the part released."},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            "reason": {"type": "string"},
        },
    }
    schemas["Outcome"] = {
        "type": "object",
        "required": ["command_id", "status", "reason", "events"],
        "properties": {
            "command_id": {"type": "string"},
            "status": {"type": "string", "enum": ["applied", "rejected"]},
            "reason": {
                "type": "string",
                "nullable": True,
                "enum": [r.value for r in domain.RejectionReason] + [None],
                "description": "Why it was rejected; null when applied.",
            },
            "events": {"type": "array", "items": _ref("Event"),
                       "description": "The events it appended; empty when rejected."},
            "duplicate": {"type": "boolean",
                          "description": "?wait=1 only: true when this send was a retry "
                                         "(same command_id and body) and the outcome is "
                                         "the original one."},
            "version": {"type": "integer", "format": "int64", "nullable": True,
                        "description": "?wait=1 only: the account's version when the "
                                       "reply was made (null: no such account)."},
        },
    }
    schemas["TransferStatus"] = {
        "type": "object",
        "required": ["transfer_id", "status", "reason", "from_account_id",
                     "to_account_id", "amount", "currency", "events"],
        "properties": {
            "transfer_id": {"type": "string"},
            "status": {"type": "string", "enum": ["pending", "completed", "failed"]},
            "reason": {"type": "string", "nullable": True,
                       "description": "Why it failed; null unless failed."},
            "from_account_id": _account_id(),
            "to_account_id": {**_account_id(), "nullable": True,
                              "description": "Null only for a transfer refused before "
                                             "it was decoded."},
            "amount": {"type": "integer", "format": "int64", "minimum": 1,
                       "maximum": INT64_MAX, "nullable": True},
            "currency": {**_currency(), "nullable": True},
            "events": {"type": "array", "items": _ref("Event"),
                       "description": "Its events at the source account."},
        },
    }
    schemas["Hold"] = {
        "type": "object",
        "required": ["hold_id", "account_id", "status", "amount", "captured_amount",
                     "currency", "to_account_id", "expires_at", "events"],
        "properties": {
            "hold_id": {"type": "string"},
            "account_id": _account_id(),
            "status": {"type": "string", "enum": ["active", "captured", "released", "expired"]},
            "amount": {"type": "integer", "format": "int64", "minimum": 1,
                       "maximum": INT64_MAX, "description": "Minor units held."},
            "captured_amount": {"type": "integer", "format": "int64", "minimum": 0,
                                "maximum": INT64_MAX,
                                "description": "Minor units captured (0 unless captured; "
                                               "the rest was released)."},
            "currency": _currency(),
            "to_account_id": {**_account_id(), "nullable": True,
                              "description": "Where a capture moves the money; null: it "
                                             "leaves the ledger."},
            "expires_at": {"type": "string", "format": "date-time",
                           "description": "The worker that owns the account records "
                                          "hold_expired within 5 s after it."},
            "events": {"type": "array", "items": _ref("Event"),
                       "description": "Its events on the account."},
        },
    }
    schemas["Account"] = {
        "type": "object",
        "required": ["account_id", "currency", "balance", "version", "status",
                     "overdraft_limit", "updated_at"],
        "properties": {
            "account_id": _account_id(),
            "currency": _currency(),
            "balance": {"type": "integer", "format": "int64", "minimum": INT64_MIN,
                        "maximum": INT64_MAX, "description": "Minor units; may be negative "
                        "down to -overdraft_limit."},
            "version": {"type": "integer", "format": "int64", "minimum": 1,
                        "description": "Sequence of the last event folded in."},
            "status": {"type": "string", "enum": ["open", "closed"]},
            "overdraft_limit": {"type": "integer", "format": "int64", "minimum": 0,
                                "maximum": INT64_MAX},
            "pending_out": {"type": "integer", "format": "int64", "minimum": 0,
                            "maximum": INT64_MAX,
                            "description": "Money debited here by transfers not yet settled."},
            "held": {"type": "integer", "format": "int64", "minimum": 0, "maximum": INT64_MAX,
                     "description": "Sum of the account's active holds (still on the "
                                    "balance)."},
            "available": {"type": "integer", "format": "int64", "minimum": 0,
                          "maximum": INT64_MAX,
                          "description": "What may still leave or be held: balance + "
                                         "overdraft_limit - held (money pending in "
                                         "outgoing transfers has already left the "
                                         "balance)."},
            "updated_at": {"type": "string", "format": "date-time"},
            "as_of": {"type": "string", "format": "date-time",
                      "description": "The instant this state is as of: the as_of asked "
                                     "for, or, for a read without as_of, the time of the "
                                     "account's last event known to the answering store "
                                     "(the state as of its watermark). Final: ?as_of= "
                                     "this instant gives the same bytes, forever, through "
                                     "any worker. Absent when asked by version."},
            "complete_up_to": {"type": "string", "format": "date-time",
                               "description": "Every event of the account recorded at or "
                                              "before this instant is in the answer (here "
                                              "equal to as_of: the answer is about that "
                                              "instant, whichever worker answers, however "
                                              "far its store is). Absent when asked by "
                                              "version."},
        },
    }
    schemas["EventPage"] = {
        "type": "object",
        "required": ["account_id", "events", "next_cursor", "complete_up_to"],
        "properties": {
            "account_id": _account_id(),
            "events": {"type": "array", "items": _ref("Event")},
            "next_cursor": {"type": "string", "nullable": True,
                            "description": "Pass as ?cursor= for the next page; null at the end."},
            "complete_up_to": {"type": "string", "format": "date-time",
                               "description": "Every event of the account recorded at or "
                                              "before this instant is in the range these "
                                              "pages walk: `to` when given (the page is "
                                              "then final), else the time of the account's "
                                              "last event known to the answering store."},
        },
    }
    schemas["Health"] = {
        "type": "object",
        "required": ["status", "worker_id", "partitions", "reason", "caught_up"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "worker_id": {"type": "string"},
            "partitions": {"type": "array", "items": {"type": "integer", "minimum": 0},
                           "description": "Partitions this worker owns and serves."},
            "reason": {"type": "string",
                       "description": "consuming when ok; else why not, e.g. starting, "
                                      "catching_up, fenced_rebuilding, broker_unreachable, "
                                      "store_failed, stopping."},
            "caught_up": {"type": "boolean",
                          "description": "Same as status == ok (kept for older clients)."},
        },
    }
    schemas["InvalidRequest"] = {
        "type": "object",
        "required": ["error", "field", "reason", "message"],
        "properties": {
            "error": {"type": "string", "enum": ["invalid_request"]},
            "field": {"type": "string",
                      "description": 'Where: "body", a field name, "metadata.<key>", '
                                     "or a query parameter name."},
            "reason": {"type": "string",
                       "description": "Short code, e.g. " + ", ".join(req.REASONS) + "."},
            "message": {"type": "string"},
        },
    }
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string",
                      "description": "unauthorized, forbidden, "
                                     "unknown_account, unknown_version, unknown_command, "
                                     "unknown_transfer, body_too_large, "
                                     "unsupported_media_type, partition_unavailable, "
                                     "as_of_not_final, kafka_unavailable, "
                                     "outcome_timeout."},
            "detail": {"type": "string"},
            "partition": {"type": "integer", "minimum": 0,
                          "description": "partition_unavailable: the partition with no "
                                         "reachable owner."},
            "command_id": {"type": "string",
                           "description": "kafka_unavailable, outcome_timeout: the command."},
            "complete_up_to": {"type": "string", "format": "date-time",
                               "description": "as_of_not_final: the instant up to which the "
                                              "answering store knows every event of the "
                                              "account's partition (its watermark)."},
            "as_of": {"type": "string", "format": "date-time",
                      "description": "as_of_not_final: the instant asked about."},
        },
        "additionalProperties": True,
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
                                       "maximum": AS_OF_TIMEOUT_MS_MAX,
                                       "default": AS_OF_TIMEOUT_MS_DEFAULT},
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
                                                "maximum": WAIT_TIMEOUT_MS_MAX,
                                                "default": WAIT_TIMEOUT_MS_DEFAULT},
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
                                             "minimum": 1, "maximum": INT64_MAX},
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
                                           "maximum": EVENTS_LIMIT_MAX,
                                           "default": EVENTS_LIMIT_DEFAULT},
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
_TOTALS_KINDS = ("credited", "debited", "transfer_debited", "transfer_credited",
                 "transfer_refunded", "transfer_completed")


def _int64(description: str, minimum: int = INT64_MIN) -> dict:
    return {"type": "integer", "format": "int64", "minimum": minimum, "maximum": INT64_MAX,
            "description": description}


def _read_model_schemas() -> dict:
    money = "Minor units."
    partition_sums = {
        "type": "object",
        "description": "Sums of amounts by kind of event, one currency, one partition.",
        "required": list(_TOTALS_KINDS),
        "properties": {k: _int64(money, 0) for k in _TOTALS_KINDS},
    }
    return {
        "MoneyTotals": {
            "type": "object",
            "required": ["balances", "in_flight", "external_credits", "external_debits",
                         "pending_out", "invariant_ok", "problems"],
            "properties": {
                "balances": _int64("Sum of all balances. " + money),
                "in_flight": _int64("Debited by transfers, not yet credited or refunded. "
                                    + money),
                "external_credits": _int64("Credits from outside the ledger. " + money, 0),
                "external_debits": _int64("Debits to outside the ledger. " + money, 0),
                "pending_out": _int64("Debited by transfers, not yet completed or "
                                      "refunded at their sources. " + money),
                "invariant_ok": {"type": "boolean",
                                 "description": "balances + in_flight == external_credits - "
                                                "external_debits, pending_out >= 0 in every "
                                                "partition, and in flight >= 0 ledger-wide "
                                                "(judged lag-free)."},
                "problems": {"type": "array", "items": {"type": "string"},
                             "description": "Why invariant_ok is false."},
            },
        },
        "LedgerTotals": {
            "type": "object",
            "required": ["currencies", "invariant_ok", "partitions", "missing_partitions",
                         "complete"],
            "properties": {
                "currencies": {"type": "object", "additionalProperties": _ref("MoneyTotals"),
                               "description": "Per currency code."},
                "invariant_ok": {"type": "boolean", "description": "For every currency."},
                "partitions": {
                    "type": "object",
                    "description": "Per event-log partition: the offsets the sums cover.",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["offset", "records", "lag", "caught_up", "worker_id"],
                        "properties": {
                            "offset": _int64("Last event-log offset folded (-1: none).", -1),
                            "records": _int64("Log records folded (events and "
                                              "rejections).", 0),
                            "lag": _int64("Committed offsets not yet folded.", 0),
                            "caught_up": {"type": "boolean"},
                            "worker_id": {"type": "string"},
                        },
                    },
                },
                "missing_partitions": {"type": "array",
                                       "items": {"type": "integer", "minimum": 0},
                                       "description": "Partitions no worker could answer "
                                                      "for: the sums leave them out."},
                "complete": {"type": "boolean",
                             "description": "No partition is missing."},
            },
        },
        "LocalTotals": {
            "type": "object",
            "required": ["worker_id", "partitions"],
            "properties": {
                "worker_id": {"type": "string"},
                "partitions": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["offset", "records", "position", "end", "caught_up",
                                     "currencies"],
                        "properties": {
                            "offset": _int64("Last event-log offset folded (-1: none).", -1),
                            "records": _int64("Log records folded.", 0),
                            "position": _int64("Every committed record below it is "
                                               "folded.", 0),
                            "end": {**_int64("The log's last stable offset.", 0),
                                    "nullable": True},
                            "caught_up": {"type": "boolean"},
                            "currencies": {"type": "object",
                                           "additionalProperties": partition_sums},
                        },
                    },
                },
            },
        },
        "StatementDay": {
            "type": "object",
            "required": ["date", "account_id", "currency", "opening_balance", "credited",
                         "debited", "transfer_in", "transfer_out", "refunds",
                         "closing_balance", "events", "first_sequence", "last_sequence"],
            "properties": {
                "date": {"type": "string", "format": "date"},
                "account_id": _account_id(),
                "currency": _currency(),
                "opening_balance": _int64("Balance before the day's first event. " + money),
                "credited": _int64("External credits. " + money, 0),
                "debited": _int64("External debits. " + money, 0),
                "transfer_in": _int64("Transfers credited here. " + money, 0),
                "transfer_out": _int64("Transfers debited here. " + money, 0),
                "refunds": _int64("Failed transfers paid back here. " + money, 0),
                "closing_balance": _int64("Balance after the day's last event. " + money),
                "events": _int64("Events of the account that day.", 1),
                "first_sequence": _int64("Sequence of the day's first event.", 1),
                "last_sequence": _int64("Sequence of the day's last event.", 1),
            },
        },
        "StatementPage": {
            "type": "object",
            "required": ["account_id", "time_zone", "from", "to", "days", "partition",
                         "position", "caught_up"],
            "properties": {
                "account_id": _account_id(),
                "time_zone": {"type": "string",
                              "description": "Days are calendar days here "
                                             "(LEDGER_STATEMENT_TZ)."},
                "from": {"type": "string", "format": "date"},
                "to": {"type": "string", "format": "date"},
                "days": {"type": "array", "items": _ref("StatementDay"),
                         "description": "Days with events, in order; a day without "
                                        "events has no entry."},
                "partition": {"type": "integer", "minimum": 0},
                "position": _int64("The read model has folded every committed record "
                                   "of the partition below this offset.", 0),
                "caught_up": {"type": "boolean"},
            },
        },
    }


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
    "components": {"schemas": {**_schemas(), **_read_model_schemas()},
                   "securitySchemes": _security_schemes()},
    "security": [{BEARER: []}],
}


def openapi_document() -> dict:
    """The OpenAPI 3.0.3 document, as a fresh JSON-serialisable dict."""
    return copy.deepcopy(_DOCUMENT)
