"""GET /v1/holds/{hold_id}?account_id=A (A: the account the hold is on)."""

from __future__ import annotations

import msgspec

from streams.api import errors, models
from streams.api import requests as req
from streams.api.base import LedgerView, endpoint
from streams.api.forwarding import Target
from streams.shapes import event_json, rfc3339_ms


def hold_json(hold, events) -> dict:
    return msgspec.to_builtins(models.Hold(
        hold_id=hold.hold_id, account_id=hold.account_id, status=hold.status.value,
        amount=hold.amount_minor, captured_amount=hold.captured_minor,
        currency=hold.currency, to_account_id=hold.to_account_id or None,
        expires_at=rfc3339_ms(hold.expires_at_ms), events=[event_json(e) for e in events]))


class HoldStatus(LedgerView):
    """A hold as its account's partition knows it."""

    FORWARDED_QUERY = frozenset(("account_id",))

    @endpoint
    async def get(self, request, hold_id: str):
        hold_id = req.parse_command_id("hold_id", hold_id)
        account_id = req.parse_account_id("account_id", request.query.get("account_id"))

        def local(store):
            hold = store.hold(account_id, hold_id)
            if hold is None:
                raise errors.unknown("hold", f"no hold {hold_id!r} on account {account_id!r}")
            return self.json(hold_json(hold, store.events(account_id, hold.sequences)))

        target = Target(("v1", "holds", hold_id), {"account_id": account_id},
                        self.FORWARDED_QUERY)
        return await self.from_owner(request, self.shared.partition_of(account_id),
                                     target, local)
