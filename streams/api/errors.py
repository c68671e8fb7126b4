"""The API's JSON errors, written once.

Bad input is a 400 ``{"error": "invalid_request", "field", "reason", "message"}``
(:class:`streams.api.requests.InvalidRequest`). Every other error is
``{"error", "detail", ...}`` with a fixed code per situation, raised as an
:class:`ApiError` anywhere in a view and turned into the response by
:func:`streams.api.base.endpoint`:

    401 unauthorized               (no bearer token, or not a known one; WWW-Authenticate)
    403 forbidden                  (the token lacks the route's scope; WWW-Authenticate
                                    with error="insufficient_scope")
    404 unknown_account / unknown_version / unknown_command / unknown_transfer
        (only from the worker that owns the partition: it looked and found nothing)
    413 body_too_large
    415 unsupported_media_type     (POST /v1/commands without application/json)
    503 partition_unavailable      (no reachable owner right now; Retry-After: 1)
    503 kafka_unavailable          (a publish failed or timed out: it MAY have landed)
    504 outcome_timeout            (?wait=1 and no outcome in time)

Pure: no web framework here either; the views render ``body`` themselves.
"""

from __future__ import annotations

from streams.api.requests import REQUEST_BODY_BYTES_MAX


class ApiError(Exception):
    """An answer that is not a 2xx (and not a 400): status, JSON body, headers."""

    def __init__(self, status: int, error: str, detail: str, *,
                 headers: dict[str, str] | None = None, **extra):
        super().__init__(detail)
        self.status = status
        self.body = {"error": error, "detail": detail, **extra}
        self.headers = dict(headers or {})


def denied(refusal) -> ApiError:
    """401 unauthorized / 403 forbidden from a :class:`streams.api.auth.Denied`."""
    return ApiError(refusal.status, refusal.error, refusal.detail,
                    headers={"WWW-Authenticate": refusal.challenge})


def unknown(what: str, detail: str) -> ApiError:
    """404: the owner of the partition looked and has no such ``what``."""
    return ApiError(404, f"unknown_{what}", detail)


RETRY_SOON = {"Retry-After": "1"}


def partition_unavailable(partition: int) -> ApiError:
    return ApiError(503, "partition_unavailable",
                    f"no worker can answer for partition {partition} right now; retry",
                    headers=RETRY_SOON, partition=partition)


def kafka_unavailable(command_id: str) -> ApiError:
    # A delivery that timed out may still land: never say "not published".
    return ApiError(503, "kafka_unavailable",
                    "may have been published: retry with the same command_id",
                    command_id=command_id)


def body_too_large() -> ApiError:
    return ApiError(413, "body_too_large", f"request body over {REQUEST_BODY_BYTES_MAX} bytes")


def unsupported_media_type() -> ApiError:
    return ApiError(415, "unsupported_media_type",
                    "the body must be sent as Content-Type: application/json")


def outcome_timeout(command_id: str, timeout_ms: int) -> ApiError:
    return ApiError(504, "outcome_timeout",
                    f"no outcome within {timeout_ms} ms; it may still be applied",
                    command_id=command_id)
