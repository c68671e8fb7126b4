"""The base of every view: who may call it, errors to JSON, metrics, and
answering from the owner of a partition."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

from faust.web import View
from rocksdict import DbClosedError

from streams import metrics
from streams.api import auth, errors, forwarding
from streams.api.errors import ApiError
from streams.api.requests import InvalidRequest
from streams.api.shared import Shared

log = logging.getLogger("ledger.http")

_ASK = object()  # from_owner: look up the local store of the partition
# What an owner may answer to a lookup; anything else counts as no answer.
RELAYED_STATUSES = frozenset((200, 400, 404, 503))


def endpoint(handler):
    """Wrap a view method: first who may call it (:meth:`LedgerView.authorize`,
    a 401/403 before anything else is looked at), then InvalidRequest is a
    400, ApiError its own answer, anything else a logged 500 in JSON; count
    and time each request by the route (the view's path template) and status."""

    @functools.wraps(handler)
    async def view(self: "LedgerView", request, *args, **kwargs):
        started = time.perf_counter()
        try:
            self.authorize(request)
            response = await handler(self, request, *args, **kwargs)
        except InvalidRequest as exc:
            response = self.json(exc.to_json(), status=400)
        except ApiError as exc:
            response = self.error_response(exc)
        except Exception:
            log.exception("%s %s failed", request.method, self.view_path)
            response = self.json({"error": "internal_error", "detail": "see the worker's log"},
                                 status=500)
        metrics.HTTP_REQUESTS.labels(request.method, self.view_path,
                                     str(response.status)).inc()
        metrics.HTTP_SECONDS.labels(request.method, self.view_path).observe(
            time.perf_counter() - started)
        return response

    return view


class LedgerView(View):
    """A view with the worker's shared state at ``self.shared``.

    Every method needs a client token with the scope ``SCOPES`` gives its
    HTTP method (write for any method not listed), unless the view is
    ``PUBLIC`` or the request carries a valid worker mark (GETs only)."""

    PUBLIC = False
    SCOPES = {"GET": auth.READ, "HEAD": auth.READ, "POST": auth.WRITE}

    @property
    def shared(self) -> Shared:
        return self.app.ledger_api

    def authorize(self, request) -> None:
        """Raise the 401/403 ApiError if ``request`` may not call this view;
        record on it whether another worker sent it (forwarding.is_forwarded)."""
        if self.PUBLIC:
            return
        if self.shared.is_worker_request(request):
            request[forwarding.FORWARDED_KEY] = True
            return
        scope = self.SCOPES.get(request.method, auth.WRITE)
        denied = self.shared.client_auth.check(request.headers.get("Authorization"), scope)
        if denied is not None:
            # Never the header itself: it may hold a token.
            log.info("%s %s from %s refused: %d %s (scope %s)", request.method,
                     self.view_path, request.remote, denied.status, denied.error, scope)
            raise errors.denied(denied)

    def error_response(self, exc: ApiError):
        return self.json(exc.body, status=exc.status, headers=exc.headers or None)

    def public(self, body: dict) -> dict:
        """What of an owner's answer is passed on to a client (all, by default)."""
        return body

    async def from_owner(self, request, partition: int, target: forwarding.Target,
                         local: Callable, *, store=_ASK, forward: Callable | None = None,
                         retry_after: Callable | None = None):
        """Answer with ``local(store)`` if this worker serves ``partition``;
        else, unless the request was itself forwarded, with what the owner
        says to ``target``; else 503 partition_unavailable.

        ``local`` returns a response or raises ApiError (a 404, ...). Hooks
        for views that wait: ``store`` the local store to use (default: the
        one this worker serves, if any); ``forward()`` -> (target, extra
        seconds the owner may take), called when forwarding; ``retry_after(
        body)`` -> the headers of a relayed 503 (default Retry-After: 1)."""
        if store is _ASK:
            store = self.shared.store_for(partition)
        if store is not None:
            try:
                return local(store)
            except DbClosedError:
                pass  # revoked while we read: answer as a non-owner would
        if forwarding.is_forwarded(request):
            raise errors.partition_unavailable(partition)  # never forwarded twice
        owner = await self.shared.owner(partition)
        if owner is None or owner[0] == self.shared.settings.worker_id:
            raise errors.partition_unavailable(partition)
        extra_s = 0.0
        if forward is not None:
            target, extra_s = forward()
        answer = await self.shared.forward(owner[1], target,
                                           timeout_s=forwarding.FORWARD_TIMEOUT_S + extra_s)
        if answer is None or answer.status not in RELAYED_STATUSES:
            raise errors.partition_unavailable(partition)
        headers = None
        if answer.status == 503:
            headers = (retry_after(answer.body) if retry_after else None) \
                or dict(errors.RETRY_SOON)
        return self.json(self.public(answer.body), status=answer.status, headers=headers)
