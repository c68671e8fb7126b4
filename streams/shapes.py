"""The JSON shapes of the ledger's answers, written once.

The HTTP API, ``ledger replay`` (its output file), the CLI and the tests all
show accounts and events in these shapes, so they cannot drift apart.
"""

from __future__ import annotations

from datetime import datetime, timezone

import msgspec
from msgspec import UNSET

from ledger import domain
from streams.api import models


def rfc3339_ms(epoch_ms: int) -> str:
    return (datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"))


def account_json(state: domain.AccountState, as_of_ms: int | None = None) -> dict:
    """An account in the API's shape, ``models.Account`` (streams/api/models.py);
    about an instant (``as_of`` and ``complete_up_to``) when ``as_of_ms`` is given."""
    at = UNSET if as_of_ms is None else rfc3339_ms(as_of_ms)
    return msgspec.to_builtins(models.Account(
        account_id=state.account_id,
        currency=state.currency,
        balance=state.balance_minor,
        version=state.version,
        status=state.status.value,
        overdraft_limit=state.overdraft_limit_minor,
        pending_out=state.pending_out_minor,
        held=state.held_minor,  # sum of the active holds
        available=state.available_minor,  # balance + overdraft_limit - held
        updated_at=rfc3339_ms(state.updated_at_ms),
        as_of=at, complete_up_to=at))


_WIRE_NAMES = {"amount_minor": "amount", "balance_after_minor": "balance_after",
               "overdraft_limit_minor": "overdraft_limit"}


def event_json(record) -> dict:
    """An event with the API's field names (amount, balance_after, recorded_at)."""
    out = {"type": record.type}
    # Shallow (not dataclasses.asdict, which deep-copies): every reply and
    # answer shows its events through here.
    for name in record.__dataclass_fields__:
        value = getattr(record, name)
        if name == "recorded_at_ms":
            out["recorded_at"] = rfc3339_ms(value)
        elif name == "metadata":
            out["metadata"] = dict(value)
        else:
            out[_WIRE_NAMES.get(name, name)] = value
    return out
