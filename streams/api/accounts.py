"""GET /v1/accounts/{account_id} and GET /v1/accounts/{account_id}/events.

**Answers that never change their mind.** The store of a partition knows
every event recorded up to its *watermark* W and will never be given another
one recorded at or before W (``streams/store.py``, Completeness). So:

* ``?as_of=T`` (and an event page with ``?to=T``) is answered only once
  T <= W, and is then final: the same bytes later, through any worker, after
  any crash, takeover, restart or rebuild. For T beyond W the view waits for
  W to pass T, up to ``timeout_ms`` (default 2,000, at most 10,000; at once
  if T cannot be reached in that time), then answers 503
  ``{"error": "as_of_not_final", "complete_up_to", "as_of"}`` with
  Retry-After: never a state that may still change. A waiting read asks the
  core for a tick on the partition as soon as the clock has passed T
  (``Processor.want_final``), so "as of now" waits about a loop turn and a
  commit even on an idle partition.
* A read without ``as_of`` is the state as of the store's watermark, which
  is the state as of the account's last event known then: it says so with
  ``as_of`` = ``complete_up_to`` = that event's time, and asking again with
  ``?as_of=`` that instant gives the same bytes, forever.
* ``complete_up_to`` in an answer: every event of the account recorded at or
  before it is in the answer (and, for an as-of answer, none after ``as_of``
  is). It names the instant the answer is about (T, or the last event's
  time), not the answering store's watermark, which may be later: the store
  that answers, and when, must not change the bytes. How far each worker's
  watermarks trail its clock is ``ledger_watermark_lag_seconds``.
* ``?version=N`` addresses an event, not an instant: once event N exists its
  answer never changes (and carries neither field); before, it is 404
  ``unknown_version``.
"""

from __future__ import annotations

import asyncio
import math
import time

from streams import metrics
from streams.api import errors
from streams.api import requests as req
from streams.api.base import LedgerView, endpoint
from streams.api.errors import ApiError
from streams.api.forwarding import Target
from streams.shapes import account_json, event_json, rfc3339_ms

WAIT_POLL_S = 0.005  # how often a waiting read looks at the watermark
NOT_FINAL = "as_of_not_final"


def parse_timeout_ms(query) -> int:
    """``timeout_ms``: 0 (do not wait) to AS_OF_TIMEOUT_MS_MAX (streams/api/requests.py)."""
    if "timeout_ms" not in query:
        return req.AS_OF_TIMEOUT_MS_DEFAULT
    if query["timeout_ms"] == "0":
        return 0
    return req.parse_positive_int("timeout_ms", query["timeout_ms"], req.AS_OF_TIMEOUT_MS_MAX)


def retry_after_s(t_ms: int, watermark_ms: int) -> int:
    """Whole seconds until the watermark may have passed T (at least 1)."""
    return max(1, math.ceil((t_ms - watermark_ms) / 1000))


def not_final(t_ms: int, watermark_ms: int, field: str) -> ApiError:
    return ApiError(
        503, NOT_FINAL,
        f"{field} {rfc3339_ms(t_ms)} is not final yet: events recorded at or before it "
        f"may still be committed (this partition is complete up to "
        f"{rfc3339_ms(watermark_ms)}); ask again later",
        headers={"Retry-After": str(retry_after_s(t_ms, watermark_ms))},
        complete_up_to=rfc3339_ms(watermark_ms), as_of=rfc3339_ms(t_ms))


def settled_state(store, account_id: str):
    """The account as of the store's watermark (None: no such account then).

    The watermark is read first: everything at or before it is already in the
    store. A batch applied meanwhile may have moved the account past it; then
    it is read as of the watermark."""
    watermark = store.watermark
    state = store.account(account_id)
    if state is not None and state.updated_at_ms > watermark:
        state = store.state_at(account_id, as_of_ms=watermark)
    return state


def as_of_json(state, t_ms: int) -> dict:
    """An account answer about an instant: final once T is."""
    return account_json(state, as_of_ms=t_ms)


class FinalView(LedgerView):
    """A lookup answered by the owner of the account's partition once the
    instant it asks about is final there."""

    async def from_owner_when_final(self, request, partition: int, target: Target, local,
                                    t_ms: int | None, timeout_ms: int, field: str):
        """Like :meth:`LedgerView.from_owner`, but with ``t_ms`` the owner's
        store must be final as of it first: wait for its watermark (at most
        ``timeout_ms``, the forwarded request included), else 503
        as_of_not_final."""
        started = time.monotonic()
        deadline = started + timeout_ms / 1000
        store = self.shared.store_for(partition)
        if store is not None and t_ms is not None:
            store = await self._until_final(partition, store, t_ms, started, deadline, field)

        def forward():
            if t_ms is None:
                return target, 0.0
            # The owner waits what is left of this request's time.
            wait_s = max(0.0, deadline - time.monotonic())
            return Target(target.segments, {**target.query, "timeout_ms": str(int(wait_s * 1000))},
                          target.allowed), wait_s

        def retry_after(body: dict):
            if body.get("error") != NOT_FINAL or t_ms is None:
                return None
            try:
                watermark = req.parse_instant("complete_up_to", body.get("complete_up_to"))
            except req.InvalidRequest:
                return None
            return {"Retry-After": str(retry_after_s(t_ms, watermark))}

        return await self.from_owner(request, partition, target, local, store=store,
                                     forward=forward, retry_after=retry_after)

    async def _until_final(self, partition: int, store, t_ms: int, started: float,
                           deadline: float, field: str):
        """The store once its watermark is at or past ``t_ms`` (None if the
        partition was revoked meanwhile: its new owner answers); raises 503
        as_of_not_final when that does not happen by ``deadline``, at once
        if it cannot (T further ahead of the clock than the time left)."""
        waited = False
        while True:
            watermark = store.watermark
            if watermark >= t_ms:
                if waited:
                    metrics.AS_OF_WAIT_SECONDS.observe(time.monotonic() - started)
                return store
            left_ms = (deadline - time.monotonic()) * 1000
            if left_ms <= 0 or t_ms > max(self.shared.processor.now_ms(), watermark) + left_ms:
                metrics.AS_OF_NOT_FINAL.inc()
                raise not_final(t_ms, watermark, field)
            if not waited:
                # Ask the core to mark the time on this partition as soon as
                # its clock has passed T, rather than at its next tick.
                self.shared.processor.want_final(partition, t_ms)
                waited = True
            await asyncio.sleep(min(WAIT_POLL_S, left_ms / 1000))
            current = self.shared.store_for(partition)
            if current is not store:
                if current is None:
                    return None
                store = current


class Account(FinalView):
    """An account's state: current, ``?as_of=T`` or ``?version=N``."""

    FORWARDED_QUERY = frozenset(("as_of", "version", "timeout_ms"))

    @endpoint
    async def get(self, request, account_id: str):
        account_id = req.parse_account_id("account_id", account_id)
        q = request.query
        as_of, version = q.get("as_of"), q.get("version")
        if as_of is not None and version is not None:
            raise req.InvalidRequest("as_of", "not_allowed_for_type",
                                     "give as_of or version, not both")
        query: dict[str, str] = {}
        t_ms = wanted = None
        if as_of is not None:
            t_ms = req.parse_instant("as_of", as_of)
            query["as_of"] = str(t_ms)
        if version is not None:
            wanted = req.parse_positive_int("version", version)
            query["version"] = str(wanted)
        timeout_ms = parse_timeout_ms(q)

        def local(store):
            if t_ms is not None:  # final: the store's watermark is at or past T
                state = store.state_at(account_id, as_of_ms=t_ms)
                if state is None:
                    raise errors.unknown("account", f"account {account_id!r} did not exist "
                                                    f"at {rfc3339_ms(t_ms)}")
                return self.json(as_of_json(state, t_ms))
            if wanted is not None:
                state = store.state_at(account_id, version=wanted)
                if state is None or state.version < wanted:
                    raise errors.unknown("version",
                                         f"account {account_id!r} has no version {wanted}")
                return self.json(account_json(state))
            state = settled_state(store, account_id)
            if state is None:
                raise errors.unknown("account", f"account {account_id!r} does not exist")
            return self.json(as_of_json(state, state.updated_at_ms))

        target = Target(("v1", "accounts", account_id), query, self.FORWARDED_QUERY)
        return await self.from_owner_when_final(request, self.shared.partition_of(account_id),
                                                target, local, t_ms, timeout_ms, "as_of")


class AccountEvents(FinalView):
    """An account's events in sequence order, a page at a time."""

    FORWARDED_QUERY = frozenset(("from", "to", "limit", "cursor", "timeout_ms"))

    @endpoint
    async def get(self, request, account_id: str):
        account_id = req.parse_account_id("account_id", account_id)
        q = request.query
        limit = req.parse_positive_int("limit", q["limit"], req.EVENTS_LIMIT_MAX) \
            if "limit" in q else req.EVENTS_LIMIT_DEFAULT
        cursor = req.parse_cursor("cursor", q["cursor"]) if "cursor" in q else None
        from_ms = req.parse_instant("from", q["from"]) if "from" in q else None
        to_ms = req.parse_instant("to", q["to"]) if "to" in q else None
        timeout_ms = parse_timeout_ms(q)
        query = {"limit": str(limit)}
        if cursor is not None:
            query["cursor"] = req.encode_cursor(*cursor)
        if from_ms is not None:
            query["from"] = str(from_ms)
        if to_ms is not None:
            query["to"] = str(to_ms)

        def local(store):
            if to_ms is not None:  # final: the store's watermark is at or past it
                last = store.version_at(account_id, to_ms)
                if last == 0:
                    raise errors.unknown("account", f"account {account_id!r} did not exist "
                                                    f"at {rfc3339_ms(to_ms)}")
                complete_up_to = to_ms
            else:
                current = settled_state(store, account_id)
                if current is None:
                    raise errors.unknown("account", f"account {account_id!r} does not exist")
                last, complete_up_to = current.version, current.updated_at_ms
            if cursor is not None:
                first, last = cursor[0], min(cursor[1], last)
            else:
                first = 1 if from_ms is None else store.version_at(account_id, from_ms - 1) + 1
            end = min(last, first + limit - 1)
            events = store.events(account_id, range(first, end + 1)) if first <= end else []
            return self.json({"account_id": account_id,
                              "events": [event_json(e) for e in events],
                              "next_cursor": req.encode_cursor(end + 1, last)
                              if end < last else None,
                              "complete_up_to": rfc3339_ms(complete_up_to)})

        target = Target(("v1", "accounts", account_id, "events"), query, self.FORWARDED_QUERY)
        return await self.from_owner_when_final(request, self.shared.partition_of(account_id),
                                                target, local, to_ms, timeout_ms, "to")
