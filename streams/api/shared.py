"""What the views of one worker share: settings, the processor, who may
call (:mod:`streams.api.auth`: client tokens, the forward secret), and three
clients made on first use and closed when the app stops.

* an aiohttp session for lookups forwarded to other workers (https when the
  API serves TLS, trusting :func:`streams.api.tls.client_context`),
* the :class:`streams.routing.Router` (who owns which partition),
* a Kafka producer for ``POST /v1/commands``,
* a :class:`streams.replies.ReplyWatcher` for ``?wait=1``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import aiohttp
from confluent_kafka import KafkaException, Producer

from schemas import codec
from streams.api import auth, forwarding, tls
from streams.config import Settings
from streams.partitioner import partition_for
from streams.routing import Router

log = logging.getLogger("ledger.http")

PUBLISH_TIMEOUT_S = 10.0
REPLIES_START_S = 5.0  # a ?wait=1 waits at most this for the reply watcher to start


class PublishFailed(Exception):
    """A command was handed to the producer but its delivery is not confirmed."""


class Shared:
    def __init__(self, settings: Settings, processor):
        self.settings = settings
        self.processor = processor
        # Both raise auth.AuthConfigError / tls.TlsConfigError on a bad file;
        # run_worker checks them first (auth.startup_problem).
        self.client_auth = auth.ClientAuth(settings.api_tokens_file)
        self.forward_secrets, self.forward_secret_source = auth.forward_secrets(settings)
        self._client_ssl = tls.client_context(settings)
        self._scheme = tls.scheme(settings)
        self._session: aiohttp.ClientSession | None = None
        self._router: Router | None = None
        self._producer: Producer | None = None
        self._replies = None  # streams.replies.ReplyWatcher, made on the first ?wait=1
        self._lock = threading.Lock()  # router and producer are made on executor threads
        self._replies_lock = threading.Lock()

    # -- partitions ------------------------------------------------------------

    def partition_of(self, account_id: str) -> int:
        return partition_for(account_id.encode(), self.settings.partitions)

    def store_for(self, partition: int):
        """The local committed store of ``partition`` if this worker serves it, else None."""
        return self.processor.store_for(partition)

    async def owner(self, partition: int) -> tuple[str, str] | None:
        """(worker_id, "host:port") of the partition's owner; None if unknown
        or the group cannot be described right now."""
        try:
            return await asyncio.get_running_loop().run_in_executor(
                None, self._owner, partition)
        except Exception:  # KafkaException, a timeout, a malformed member: no owner known
            log.warning("cannot tell who owns partition %d", partition, exc_info=True)
            return None

    def _owner(self, partition: int) -> tuple[str, str] | None:
        with self._lock:
            if self._router is None:
                self._router = Router(self.settings)
            router = self._router
        return router.owner(partition)

    async def forward(self, address: str, target: forwarding.Target,
                      timeout_s: float = forwarding.FORWARD_TIMEOUT_S):
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._client_ssl) \
                if self._client_ssl is not None else None
            self._session = aiohttp.ClientSession(connector=connector)
        return await forwarding.forward(self._session, address, target, timeout_s,
                                        secret=self.forward_secrets[0], scheme=self._scheme)

    def is_worker_request(self, request) -> bool:
        """Whether ``request`` carries a valid mark of another worker (GETs only)."""
        if request.method != "GET" or forwarding.FORWARDED_HEADER not in request.headers:
            return False
        return forwarding.verify_mark(self.forward_secrets, request.method, request.raw_path,
                                      request.headers.get(forwarding.FORWARDED_HEADER))

    # -- publishing ------------------------------------------------------------

    def publish(self, command) -> None:
        """Produce one command and wait for its delivery (blocking: run it in
        an executor). Raises PublishFailed, KafkaException or BufferError when
        the delivery is not confirmed; the command may still land."""
        with self._lock:
            if self._producer is None:
                self._producer = Producer(self.settings.kafka(**{
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 1,
                    "partitioner": "murmur2_random",  # the ledger's partitioner, see topics.py
                }))
            producer = self._producer
        done = threading.Event()
        errors: list = []

        def on_delivery(err, _msg):
            if err is not None:
                errors.append(err)
            done.set()

        producer.produce(self.settings.commands_topic,
                         codec.encode_command(command, int(time.time() * 1000)),
                         command.account_id.encode(), on_delivery=on_delivery)
        deadline = time.monotonic() + PUBLISH_TIMEOUT_S
        while not done.is_set() and time.monotonic() < deadline:
            producer.poll(0.05)  # serves delivery callbacks, ours or another thread's
        if not done.is_set():
            raise PublishFailed(f"delivery not confirmed within {PUBLISH_TIMEOUT_S:.0f} s")
        if errors:
            raise PublishFailed(str(errors[0]))

    def replies(self, timeout_s: float = REPLIES_START_S):
        """The worker's reply watcher, made on the first ?wait=1 (blocking, at
        most about ``timeout_s``: run it in an executor; raises
        RepliesUnavailable, a 503, e.g. with brokers down). Only registered
        waiters get replies: it holds nothing between requests. Not made
        before it is needed: it reads every reply of the ledger."""
        from streams.replies import ReplyWatcher

        with self._replies_lock:
            if self._replies is None:
                self._replies = ReplyWatcher(self.settings, keep_all=False,
                                             group="worker-replies", timeout_s=timeout_s)
            return self._replies


    # -- lifecycle -------------------------------------------------------------

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        with self._lock:
            producer, self._producer, self._router = self._producer, None, None
        with self._replies_lock:
            watcher, self._replies = self._replies, None
        if watcher is not None:
            await asyncio.get_running_loop().run_in_executor(None, watcher.close)
        if producer is not None:
            await asyncio.get_running_loop().run_in_executor(None, producer.flush, 5)


PUBLISH_ERRORS = (PublishFailed, KafkaException, BufferError)
