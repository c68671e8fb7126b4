"""The read models' routes (streams/readmodels.py).

    GET /v1/ledger/totals                     per currency the ledger-wide sums and
                                              invariant_ok, the offsets they cover,
                                              missing_partitions
    GET /v1/ledger/totals/local               this worker's partitions only (what
                                              /v1/ledger/totals asks each owner,
                                              marked as forwarded)
    GET /v1/accounts/{account_id}/statements  ?from=YYYY-MM-DD&to=YYYY-MM-DD, per day

Read models live on the worker Faust's consumer group gives an event-log
partition to, which need not be the worker whose transactional core owns the
partition's commands: these routes find owners through Faust's assignment,
and forward to them like every other lookup (once, marked as forwarded).
"""

from __future__ import annotations

import re
from datetime import date

from streams.api import errors, forwarding
from streams.api import requests as req
from streams.api.base import RELAYED_STATUSES, LedgerView, endpoint
from streams.api.errors import ApiError
from streams.api.forwarding import Target
from streams.readmodels import STATEMENT_DAYS_MAX, totals_json

_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def parse_date(field: str, text) -> date:
    """A calendar day written YYYY-MM-DD."""
    if text is None:
        raise req.InvalidRequest(field, "missing", f"{field} is required (YYYY-MM-DD)")
    if not isinstance(text, str) or not _DATE_RE.fullmatch(text):
        raise req.InvalidRequest(field, "malformed", f"{field} must be a date YYYY-MM-DD")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise req.InvalidRequest(field, "malformed",
                                 f"{field} is not a calendar date") from None


def parse_date_range(query) -> tuple[date, date]:
    """``from`` and ``to`` (both days included), at most STATEMENT_DAYS_MAX days."""
    first = parse_date("from", query.get("from"))
    last = parse_date("to", query.get("to"))
    if last < first:
        raise req.InvalidRequest("to", "out_of_range", "to must not be before from")
    if (last - first).days + 1 > STATEMENT_DAYS_MAX:
        raise req.InvalidRequest("to", "too_large",
                                 f"a statement covers at most {STATEMENT_DAYS_MAX} days")
    return first, last


def read_models_disabled() -> ApiError:
    return ApiError(503, "read_models_disabled",
                    "this worker runs without read models (LEDGER_READ_MODELS=0)")


class ReadModelView(LedgerView):
    @property
    def read_models(self):
        models = getattr(self.app, "ledger_read_models", None)
        if models is None:
            raise read_models_disabled()
        return models


class LedgerTotals(ReadModelView):
    """Ledger-wide totals: every partition, from whichever worker holds it."""

    @endpoint
    async def get(self, request):
        models = self.read_models
        snapshot, verdicts = await models.evaluate(self.shared)
        return self.json(totals_json(snapshot, verdicts, self.shared.settings.partitions))


class LocalTotals(ReadModelView):
    """This worker's partitions' totals (never forwarded anywhere)."""

    @endpoint
    async def get(self, request):
        return self.json(self.read_models.local_json())


class AccountStatements(ReadModelView):
    """An account's statement per day, from the read model of its partition."""

    FORWARDED_QUERY = frozenset(("from", "to"))

    @endpoint
    async def get(self, request, account_id: str):
        account_id = req.parse_account_id("account_id", account_id)
        first, last = parse_date_range(request.query)
        models = self.read_models
        partition = self.shared.partition_of(account_id)
        if models.serves(partition):
            return self.json(models.statements_json(account_id, first, last, partition))
        if forwarding.is_forwarded(request):
            raise errors.partition_unavailable(partition)  # never forwarded twice
        address = models.owners().get(partition)
        if address is None or models.is_me(address):
            raise errors.partition_unavailable(partition)
        target = Target(("v1", "accounts", account_id, "statements"),
                        {"from": first.isoformat(), "to": last.isoformat()},
                        self.FORWARDED_QUERY)
        answer = await self.shared.forward(address, target)
        if answer is None or answer.status not in RELAYED_STATUSES:
            raise errors.partition_unavailable(partition)
        headers = dict(errors.RETRY_SOON) if answer.status == 503 else None
        return self.json(answer.body, status=answer.status, headers=headers)
