"""GET /v1/transfers/{transfer_id}?account_id=A (A: the transfer's source)."""

from __future__ import annotations

import msgspec

from streams.api import errors, models
from streams.api import requests as req
from streams.api.base import LedgerView, endpoint
from streams.api.forwarding import Target
from streams.shapes import event_json


class TransferStatus(LedgerView):
    """Where a transfer is, as its source account's partition knows it."""

    FORWARDED_QUERY = frozenset(("account_id",))

    @endpoint
    async def get(self, request, transfer_id: str):
        transfer_id = req.parse_command_id("transfer_id", transfer_id)
        account_id = req.parse_account_id("account_id", request.query.get("account_id"))

        def local(store):
            entry = store.transfer(account_id, transfer_id)
            if entry is None:
                raise errors.unknown("transfer", f"no transfer {transfer_id!r} "
                                                 f"from account {account_id!r}")
            return self.json(msgspec.to_builtins(models.TransferStatus(
                transfer_id=transfer_id, status=entry.status, reason=entry.reason,
                from_account_id=entry.from_account_id, to_account_id=entry.to_account_id,
                amount=entry.amount_minor, currency=entry.currency,
                events=[event_json(e) for e in store.events(account_id, entry.sequences)])))

        target = Target(("v1", "transfers", transfer_id), {"account_id": account_id},
                        self.FORWARDED_QUERY)
        return await self.from_owner(request, self.shared.partition_of(account_id),
                                     target, local)
