"""GET /v1/health, /v1/openapi.json and /metrics: about the worker itself.

All three are public (no token, even with LEDGER_API_TOKENS set): health and
metrics say how the worker is doing, never what is in an account (no
balances, account ids, amounts or command ids: metric labels are routes,
statuses and reasons), and the OpenAPI document is the same for everyone.
"""

from __future__ import annotations

import time

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams import metrics
from streams.api import models
from streams.api.base import LedgerView, endpoint
from streams.api.openapi import openapi_document
from streams.config import Settings


def processor_health(processor) -> tuple[bool, str]:
    """(healthy, reason): ``processor.health()``, or the older ``caught_up``
    event for a processor without it."""
    health = getattr(processor, "health", None)
    if health is not None:
        return health()
    # Fallback for the processor before health(); remove with it.
    return (True, "consuming") if processor.caught_up.is_set() else (False, "starting")


class Health(LedgerView):
    """200 while this worker applies commands, else 503 with the reason."""

    PUBLIC = True

    @endpoint
    async def get(self, request):
        healthy, reason = processor_health(self.shared.processor)
        return self.json(msgspec.to_builtins(models.Health(
            status="ok" if healthy else "unavailable",
            worker_id=self.shared.settings.worker_id,
            partitions=self.shared.processor.assigned, reason=reason,
            caught_up=healthy)),  # the older field, kept for clients
            status=200 if healthy else 503)


class OpenApi(LedgerView):
    PUBLIC = True

    @endpoint
    async def get(self, request):
        return self.json(openapi_document())


def observe_snapshots(settings: Settings) -> None:
    """Age and size of the newest ledger-wide snapshot file (a directory listing)."""
    files = sorted(path for path in settings.snapshot_dir.glob("snapshot-*.json.gz")
                   if path.name.split("-")[1].isdigit())
    try:
        newest = files[-1]
        size = newest.stat().st_size
    except (IndexError, OSError):  # none, or removed since the listing
        metrics.SNAPSHOT_AGE_SECONDS.set(float("nan"))
        metrics.SNAPSHOT_BYTES.set(0)
        return
    newest_event_ms = int(newest.name.split("-")[1])
    metrics.SNAPSHOT_AGE_SECONDS.set(max(0.0, time.time() - newest_event_ms / 1000))
    metrics.SNAPSHOT_BYTES.set(size)


class Metrics(LedgerView):
    PUBLIC = True

    async def get(self, request):
        observe_snapshots(self.shared.settings)
        return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])
