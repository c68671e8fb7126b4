"""The Faust worker: hosts the transactional core and serves HTTP.

``ledger worker`` builds the app with :func:`create_app` and runs it with
``faust.Worker``. Faust provides the process (mode services, signal handling,
logging) and the web server (aiohttp, default 127.0.0.1:6066). The money path
is :class:`streams.processor.Processor`, a confluent-kafka transactional
loop that runs on a thread of its own, started and stopped by
:class:`CoreService` with the app; DESIGN.md explains why Faust's own
``exactly_once`` tables are not used for it.

The HTTP API is in :mod:`streams.api`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import sys
import threading

import faust
from mode import Service

from streams.config import Settings
from streams.processor import Processor
from streams import gcpause, readmodels
from streams.api import auth as api_auth, register_views, tls as api_tls

log = logging.getLogger("ledger.app")

# SIGTERM stops a worker within this long in every state (a broker that is
# gone can hold Faust's own Kafka clients in their close for much longer).
# Exiting hard is as safe as kill -9, which the ledger is built for.
STOP_DEADLINE_S = 8.0
EXIT_CORE_FAILED = 70  # EX_SOFTWARE: the supervisor restarts the worker


def exit_within(seconds: float, code: int, why: str) -> None:
    """Make sure the process is gone ``seconds`` from now, whatever hangs."""
    def expire():
        log.error("%s: still running after %.0f s; exiting now", why, seconds)
        logging.shutdown()
        os._exit(code)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def broker_credentials(settings: Settings):
    """Faust's (aiokafka's) credentials from the same client properties as
    every librdkafka client of the project (Settings.kafka)."""
    props = dict(settings.kafka_properties)
    protocol = props.get("security.protocol", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=props.get("ssl.ca.location"))
        if props.get("ssl.certificate.location"):
            context.load_cert_chain(props["ssl.certificate.location"],
                                    props.get("ssl.key.location"), props.get("ssl.key.password"))
        if props.get("ssl.endpoint.identification.algorithm", "https").lower() == "none":
            context.check_hostname = False
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(username=props.get("sasl.username"),
                                     password=props.get("sasl.password"),
                                     mechanism=props.get("sasl.mechanism", "PLAIN"),
                                     ssl_context=context)
    return faust.SSLCredentials(context)


def create_app(settings: Settings) -> faust.App:
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{settings.topic_prefix}-faust",
        broker=[f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")],
        broker_credentials=broker_credentials(settings),
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        # https when LEDGER_WEB_TLS_CERT is set (streams/api/tls.py).
        web_ssl_context=api_tls.server_context(settings),
        # Faust's /router and /table pages would answer without a token; the
        # ledger uses no table_route; its read models' tables are served by
        # its own views (streams/api/ledger_views.py), behind its auth.
        web_router_enabled=False,
        web_tables_enabled=False,
        datadir=str(settings.data_dir / "faust"),
        autodiscover=False,
        topic_partitions=settings.partitions,
        # The money path keeps no Faust state (see the module doc); the read
        # models' tables name their own rocksdb store (streams/readmodels.py).
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
    # Read models: Faust agents and tables over the event log (issue 12).
    readmodels.register(app, settings)
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
                # Only what a rebuild cannot mend gets here (a store that cannot
                # be written: disk full). A supervisor restarts us; the store
                # is caught up from the log.
                log.exception("transactional core failed; stopping the worker")
                exit_within(STOP_DEADLINE_S, EXIT_CORE_FAILED, "core failed")
                loop.call_soon_threadsafe(lambda: asyncio.ensure_future(app.crash(
                    RuntimeError("ledger core failed"))))

        async def on_stop(self) -> None:
            processor.stop()
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 5)

    app.service(CoreService)

    register_views(app, settings, processor)
    return app


class LedgerWorker(faust.Worker):
    """Faust's worker, with a deadline on stopping: SIGTERM or SIGINT ends the
    process within STOP_DEADLINE_S even if a Kafka client hangs in close."""

    def _schedule_shutdown(self, signum: signal.Signals) -> None:
        if not self._signal_stop_time:
            exit_within(STOP_DEADLINE_S, 128 + signum.value, f"stop on {signum.name}")
        super()._schedule_shutdown(signum)

    def _setup_spinner_handler(self, logger, level) -> None:
        # No terminal spinner. Faust's, at --loglevel warning or above, sets
        # the root logger to DEBUG so that it spins on every record: every
        # library debug record was built and then dropped, about 6% of a
        # worker's CPU (scripts/bench_readmodels.py profile). A worker's
        # output is a log, not a terminal.
        self.spinner = None


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    # No open API on a reachable address, no broken tokens/secret/TLS files.
    problem = api_auth.startup_problem(settings)
    if problem is not None:
        print(f"ledger worker: {problem}", file=sys.stderr)
        raise SystemExit(2)
    gcpause.freeze_after_catch_up()
    app = create_app(settings)
    # The web port and host are app settings (create_app); Worker takes neither.
    LedgerWorker(app, loglevel=loglevel).execute_from_commandline()
