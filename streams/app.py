"""The Faust worker: hosts the transactional core and serves HTTP.

``ledger worker`` builds the app with :func:`create_app` and runs it with
``faust.Worker``. Faust provides the process (mode services, signal handling,
logging) and the web server (aiohttp, default 127.0.0.1:6066). The money path
is :class:`streams.processor.Processor`, a confluent-kafka transactional
loop that runs on a thread of its own, started and stopped by
:class:`CoreService` with the app; DESIGN.md explains why Faust's own
``exactly_once`` tables are not used for it.

HTTP (JSON):

    GET /v1/health                  worker id, owned partitions, caught up or not
    GET /v1/accounts/{account_id}   current committed state of an account
    GET /v1/commands/{command_id}   the outcome of any command ever handled
    GET /v1/transfers/{transfer_id} a transfer's status and its source events
    GET /metrics                    Prometheus text format

Any worker answers for any account: a request for a partition another
worker owns is forwarded to it (``streams.routing``); lookups by command or
transfer id, whose partition is not known from the id, ask every worker.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import asdict
from datetime import datetime, timezone

import faust
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import aiohttp

from ledger import domain
from schemas import codec
from streams.config import Settings
from streams.routing import Router
from streams.partitioner import partition_for
from streams.processor import Processor
from streams.store import history_key

log = logging.getLogger("ledger.app")


def rfc3339_ms(epoch_ms: int) -> str:
    return (
        datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def account_json(state: domain.AccountState) -> dict:
    return {
        "account_id": state.account_id,
        "currency": state.currency,
        "balance": state.balance_minor,
        "version": state.version,
        "status": state.status.value,
        "overdraft_limit": state.overdraft_limit_minor,
        "updated_at": rfc3339_ms(state.updated_at_ms),
    }


def event_json(record) -> dict:
    fields = asdict(record)
    if "metadata" in fields:
        fields["metadata"] = dict(fields["metadata"])
    return {"type": record.type, **fields}


def history_json(store, account_id: str, first: int, last: int) -> list[dict]:
    raws = (store.get(history_key(account_id, seq)) for seq in range(first, last + 1))
    return [event_json(codec.decode_outcome(raw)[0]) for raw in raws if raw is not None]


def create_app(settings: Settings) -> faust.App:
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{settings.topic_prefix}-faust",
        broker=f"kafka://{settings.bootstrap_servers}",
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        datadir=str(settings.data_dir / "faust"),
        autodiscover=False,
        topic_partitions=settings.partitions,
        # Faust's own state holds nothing of the ledger's; see the module doc.
        store="memory://",
        # Faust's consumer group must not hold a restarted worker back: static
        # membership lets the same worker id rejoin at once, and the session
        # timeout matches the core's (Faust's default of 60 s made a worker
        # restarted after kill -9 wait a minute before it started at all).
        consumer_group_instance_id=settings.worker_id,
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_ms / 3000),
        broker_rebalance_timeout=settings.session_timeout_ms / 1000,
    )
    processor = Processor(settings)
    app.ledger_processor = processor

    class CoreService(Service):
        """Runs the processor thread; a crash of the loop stops the worker."""

        async def on_start(self) -> None:
            loop = asyncio.get_running_loop()
            self._thread = threading.Thread(
                target=self._run, args=(loop,), name="ledger-core", daemon=True)
            self._thread.start()

        def _run(self, loop) -> None:
            try:
                processor.run()
            except BaseException:
                log.exception("transactional core failed; stopping the worker")
                # A supervisor (or the test) restarts us; state is rebuilt from the log.
                loop.call_soon_threadsafe(lambda: asyncio.ensure_future(app.crash(
                    RuntimeError("ledger core failed"))))

        async def on_stop(self) -> None:
            processor.stop()
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 30)

    app.service(CoreService)

    def json_error(web, status: int, error: str, detail: str, **extra):
        return web.json({"error": error, "detail": detail, **extra}, status=status)

    router = Router(settings)
    http: dict[str, aiohttp.ClientSession] = {}

    async def fetch(address: str, request) -> tuple[int, dict] | None:
        """GET the same path and query on another worker, marked as forwarded."""
        if "session" not in http:
            http["session"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        query = dict(request.query)
        query["forwarded"] = "1"
        try:
            async with http["session"].get(f"http://{address}{request.path}",
                                           params=query) as response:
                return response.status, await response.json()
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None

    async def on_partition(web, request, partition: int, local):
        """Answer from the local store if we own ``partition``, else forward."""
        store = processor.store_for(partition)
        if store is not None:
            return local(store)
        if "forwarded" not in request.query:
            loop = asyncio.get_running_loop()
            owner = await loop.run_in_executor(None, router.owner, partition)
            if owner is not None and owner[0] != settings.worker_id:
                answer = await fetch(owner[1], request)
                if answer is not None:
                    return web.json(answer[1], status=answer[0])
        return json_error(web, 503, "partition_not_owned",
                          f"no worker reachable for partition {partition}; retry",
                          partition=partition)

    async def on_any_partition(web, request, local, what: str):
        """Look a key up in every owned store, then on every other worker."""
        for partition in processor.assigned:
            store = processor.store_for(partition)
            found = local(store) if store is not None else None
            if found is not None:
                return web.json(found)
        if "forwarded" not in request.query:
            loop = asyncio.get_running_loop()
            workers = await loop.run_in_executor(None, router.workers)
            for worker_id, address in workers.items():
                if worker_id == settings.worker_id:
                    continue
                answer = await fetch(address, request)
                if answer is not None and answer[0] == 200:
                    return web.json(answer[1])
        return json_error(web, 404, f"unknown_{what}", f"no such {what}")

    @app.page("/v1/health")
    async def health(web, request):
        return web.json({
            "worker_id": settings.worker_id,
            "partitions": processor.assigned,
            "caught_up": processor.caught_up.is_set(),
        })

    @app.page("/v1/accounts/{account_id}")
    async def account(web, request, account_id: str):
        def local(store):
            state = store.account(account_id)
            if state is None:
                return json_error(web, 404, "unknown_account",
                                  f"account {account_id!r} does not exist")
            return web.json(account_json(state))

        return await on_partition(
            web, request, partition_for(account_id.encode(), settings.partitions), local)

    @app.page("/v1/commands/{command_id}")
    async def command(web, request, command_id: str):
        def local(store):
            entry = store.outcome(command_id)
            if entry is None:
                return None
            events = history_json(store, entry["a"], *entry["q"]) if entry["q"] else []
            return {"command_id": command_id, "status": entry["s"], "reason": entry["r"],
                    "events": events}

        return await on_any_partition(web, request, local, "command")

    @app.page("/v1/transfers/{transfer_id}")
    async def transfer(web, request, transfer_id: str):
        def local(store):
            entry = store.transfer(transfer_id)
            if entry is None:
                return None
            events = [event for seq in entry["sequences"]
                      for event in history_json(store, entry["from_account_id"], seq, seq)]
            return {"transfer_id": transfer_id, "status": entry["status"],
                    "reason": entry["reason"], "from_account_id": entry["from_account_id"],
                    "to_account_id": entry["to_account_id"], "amount": entry["amount"],
                    "currency": entry["currency"], "events": events}

        return await on_any_partition(web, request, local, "transfer")

    @app.page("/metrics")
    async def metrics_view(web, request):
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    return app


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    app = create_app(settings)
    # The web port and host are app settings (create_app); Worker takes neither.
    faust.Worker(app, loglevel=loglevel).execute_from_commandline()
