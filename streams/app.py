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
    GET /metrics                    Prometheus text format
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import datetime, timezone

import faust
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ledger import domain
from streams.config import Settings
from streams.partitioner import partition_for
from streams.processor import Processor

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

    @app.page("/v1/health")
    async def health(web, request):
        return web.json({
            "worker_id": settings.worker_id,
            "partitions": processor.assigned,
            "caught_up": processor.caught_up.is_set(),
        })

    @app.page("/v1/accounts/{account_id}")
    async def account(web, request, account_id: str):
        partition = partition_for(account_id.encode(), settings.partitions)
        store = processor.store_for(partition)
        if store is None:
            return json_error(web, 503, "partition_not_owned",
                              f"partition {partition} is not owned by worker "
                              f"{settings.worker_id}", partition=partition)
        state = store.account(account_id)
        if state is None:
            return json_error(web, 404, "unknown_account",
                              f"account {account_id!r} does not exist")
        return web.json(account_json(state))

    @app.page("/metrics")
    async def metrics_view(web, request):
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    return app


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    app = create_app(settings)
    # The web port and host are app settings (create_app); Worker takes neither.
    faust.Worker(app, loglevel=loglevel).execute_from_commandline()
