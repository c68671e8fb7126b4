"""GET /v1/accounts/{account_id} and GET /v1/accounts/{account_id}/events."""

from __future__ import annotations

from streams.api import errors
from streams.api import requests as req
from streams.api.base import LedgerView, endpoint
from streams.api.forwarding import Target
from streams.shapes import account_json, event_json, rfc3339_ms

EVENTS_LIMIT_DEFAULT = 100
EVENTS_LIMIT_MAX = 1_000


class Account(LedgerView):
    """An account's state: current, ``?as_of=T`` or ``?version=N``."""

    FORWARDED_QUERY = frozenset(("as_of", "version"))

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

        def local(store):
            if t_ms is not None:
                state = store.state_at(account_id, as_of_ms=t_ms)
                if state is None:
                    raise errors.unknown("account", f"account {account_id!r} did not exist "
                                                    f"at {rfc3339_ms(t_ms)}")
            elif wanted is not None:
                state = store.state_at(account_id, version=wanted)
                if state is None or state.version < wanted:
                    raise errors.unknown("version",
                                         f"account {account_id!r} has no version {wanted}")
            else:
                state = store.account(account_id)
                if state is None:
                    raise errors.unknown("account", f"account {account_id!r} does not exist")
            return self.json(account_json(state))

        target = Target(("v1", "accounts", account_id), query, self.FORWARDED_QUERY)
        return await self.from_owner(request, self.shared.partition_of(account_id),
                                     target, local)


class AccountEvents(LedgerView):
    """An account's events in sequence order, a page at a time."""

    FORWARDED_QUERY = frozenset(("from", "to", "limit", "cursor"))

    @endpoint
    async def get(self, request, account_id: str):
        account_id = req.parse_account_id("account_id", account_id)
        q = request.query
        limit = req.parse_positive_int("limit", q["limit"], EVENTS_LIMIT_MAX) \
            if "limit" in q else EVENTS_LIMIT_DEFAULT
        cursor = req.parse_cursor("cursor", q["cursor"]) if "cursor" in q else None
        from_ms = req.parse_instant("from", q["from"]) if "from" in q else None
        to_ms = req.parse_instant("to", q["to"]) if "to" in q else None
        query = {"limit": str(limit)}
        if cursor is not None:
            query["cursor"] = req.encode_cursor(*cursor)
        if from_ms is not None:
            query["from"] = str(from_ms)
        if to_ms is not None:
            query["to"] = str(to_ms)

        def local(store):
            current = store.account(account_id)
            if current is None:
                raise errors.unknown("account", f"account {account_id!r} does not exist")
            if cursor is not None:
                first, last = cursor[0], min(cursor[1], current.version)
            else:
                first = 1 if from_ms is None else store.version_at(account_id, from_ms - 1) + 1
                last = current.version if to_ms is None else store.version_at(account_id, to_ms)
            end = min(last, first + limit - 1)
            events = store.events(account_id, range(first, end + 1)) if first <= end else []
            return self.json({"account_id": account_id,
                              "events": [event_json(e) for e in events],
                              "next_cursor": req.encode_cursor(end + 1, last)
                              if end < last else None})

        target = Target(("v1", "accounts", account_id, "events"), query, self.FORWARDED_QUERY)
        return await self.from_owner(request, self.shared.partition_of(account_id),
                                     target, local)
