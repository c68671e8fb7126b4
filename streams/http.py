"""The worker's HTTP API (Faust web views, aiohttp underneath).

    POST /v1/commands                         validate, publish; ?wait=1 for the outcome
    GET  /v1/commands/{command_id}            the outcome of any command ever handled
    GET  /v1/transfers/{transfer_id}          a transfer's status and its source events
    GET  /v1/accounts/{account_id}            current state; ?as_of=T or ?version=N
    GET  /v1/accounts/{account_id}/events     ?from=T1&to=T2&limit=N&cursor=C
    GET  /v1/health, /v1/openapi.json, /metrics

Any worker answers for any account: a request for a partition another
worker owns is forwarded to it (``streams.routing``); lookups by command or
transfer id, whose partition the id does not tell, ask every worker. Answers
are built only from committed state, so every replica gives the same bytes.

Errors: 400 ``{"error": "invalid_request", "field", "reason", "message"}``
for bad input; otherwise ``{"error", "detail", ...}`` (404 unknown_*, 413,
503 partition_not_owned / kafka_unavailable, 504 outcome_timeout).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import time

import aiohttp
import faust
from confluent_kafka import KafkaException, Producer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from rocksdict import DbClosedError

from ledger import domain, requests
from schemas import codec
from streams import metrics
from streams.config import Settings
from streams.openapi import openapi_document
from streams.partitioner import partition_for
from streams.processor import Processor
from streams.routing import Router
from streams.shapes import account_json, event_json, rfc3339_ms
from streams.store import history_key

log = logging.getLogger("ledger.http")

WAIT_TIMEOUT_MS_DEFAULT = 5_000
WAIT_TIMEOUT_MS_MAX = 60_000
EVENTS_LIMIT_DEFAULT = 100
EVENTS_LIMIT_MAX = 1_000


def _history(store, account_id: str, sequences) -> list[dict]:
    raws = (store.get(history_key(account_id, seq)) for seq in sequences)
    return [event_json(codec.decode_outcome(raw)[0]) for raw in raws if raw is not None]


def _encode_cursor(next_sequence: int, last_sequence: int) -> str:
    return base64.urlsafe_b64encode(f"{next_sequence}:{last_sequence}".encode()).decode()


def _decode_cursor(text: str) -> tuple[int, int]:
    try:
        first, last = base64.urlsafe_b64decode(text.encode()).decode().split(":")
        return int(first), int(last)
    except (ValueError, UnicodeError):
        raise requests.InvalidRequest("cursor", "malformed", "cursor is not one we gave") from None


def observe_snapshots(settings: Settings) -> None:
    """Age and size of the newest ledger-wide snapshot file (a directory listing)."""
    files = sorted(settings.snapshot_dir.glob("snapshot-*.json.gz"))
    if not files:
        metrics.SNAPSHOT_AGE_SECONDS.set(float("nan"))
        metrics.SNAPSHOT_BYTES.set(0)
        return
    newest = files[-1]
    newest_event_ms = int(newest.name.split("-")[1])
    metrics.SNAPSHOT_AGE_SECONDS.set(max(0.0, time.time() - newest_event_ms / 1000))
    metrics.SNAPSHOT_BYTES.set(newest.stat().st_size)


def register_views(app: faust.App, settings: Settings, processor: Processor) -> None:
    router = Router(settings)
    http: dict[str, aiohttp.ClientSession] = {}
    producer: dict[str, Producer] = {}

    def json_error(web, status: int, error: str, detail: str, **extra):
        return web.json({"error": error, "detail": detail, **extra}, status=status)

    def instrumented(route: str):
        """Count and time each request by route and status; turn bad input into 400."""
        def wrap(handler):
            @functools.wraps(handler)
            async def view(self, request, *args, **kwargs):
                started = time.perf_counter()
                try:
                    response = await handler(self, request, *args, **kwargs)
                except requests.InvalidRequest as exc:
                    response = self.json(exc.to_json(), status=400)
                metrics.HTTP_REQUESTS.labels(request.method, route, str(response.status)).inc()
                metrics.HTTP_SECONDS.labels(request.method, route).observe(
                    time.perf_counter() - started)
                return response
            return view
        return wrap

    async def fetch(address: str, path: str, query: dict) -> tuple[int, dict] | None:
        """GET a path on another worker, marked as forwarded (it will not forward again)."""
        if "session" not in http:
            http["session"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            async with http["session"].get(f"http://{address}{path}",
                                           params={**query, "forwarded": "1"}) as response:
                return response.status, await response.json()
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None

    async def on_partition(web, request, partition: int, local):
        """Answer from the local store if we own ``partition``, else forward to its owner."""
        store = processor.store_for(partition)
        if store is not None:
            try:
                return local(store)
            except DbClosedError:
                pass  # revoked while we read: answer as a non-owner would
        if "forwarded" not in request.query:
            owner = await asyncio.get_running_loop().run_in_executor(
                None, router.owner, partition)
            if owner is not None and owner[0] != settings.worker_id:
                answer = await fetch(owner[1], request.path, dict(request.query))
                if answer is not None:
                    return web.json(answer[1], status=answer[0])
        return json_error(web, 503, "partition_not_owned",
                          f"no worker reachable for partition {partition}; retry",
                          partition=partition)

    async def on_any_partition(web, request, local, what: str, public=lambda found: found):
        """Look an id up in every owned store, then on every other worker.

        ``public`` trims what only workers need to see from the final answer."""
        forwarded = "forwarded" in request.query
        for partition in processor.assigned:
            store = processor.store_for(partition)
            try:
                found = local(store) if store is not None else None
            except DbClosedError:
                found = None  # revoked while we read; its new owner is asked below
            if found is not None:
                return web.json(found if forwarded else public(found))
        if not forwarded:
            workers = await asyncio.get_running_loop().run_in_executor(None, router.workers)
            for worker_id, address in workers.items():
                if worker_id != settings.worker_id:
                    answer = await fetch(address, request.path, dict(request.query))
                    if answer is not None and answer[0] == 200:
                        return web.json(public(answer[1]))
        return json_error(web, 404, f"unknown_{what}", f"no such {what}")

    def command_outcome(store, command_id: str) -> dict | None:
        entry = store.outcome(command_id)
        if entry is None:
            return None
        events = _history(store, entry["a"], range(entry["q"][0], entry["q"][1] + 1)) \
            if entry["q"] else []
        return {"command_id": command_id, "status": entry["s"], "reason": entry["r"],
                "events": events, "command_hash": entry["h"]}

    @app.page("/v1/health")
    class Health(faust.web.View):
        @instrumented("/v1/health")
        async def get(self, request):
            return self.json({"worker_id": settings.worker_id,
                              "partitions": processor.assigned,
                              "caught_up": processor.caught_up.is_set()})

    @app.page("/v1/openapi.json")
    class OpenApi(faust.web.View):
        @instrumented("/v1/openapi.json")
        async def get(self, request):
            return self.json(openapi_document())

    @app.page("/metrics")
    class Metrics(faust.web.View):
        async def get(self, request):
            observe_snapshots(settings)
            return self.bytes(generate_latest(),
                              content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/v1/accounts/{account_id}")
    class Account(faust.web.View):
        @instrumented("/v1/accounts/{account_id}")
        async def get(self, request, account_id: str):
            as_of, version = request.query.get("as_of"), request.query.get("version")
            if as_of is not None and version is not None:
                raise requests.InvalidRequest("as_of", "not_allowed_for_type",
                                              "give as_of or version, not both")
            t_ms = requests.parse_instant("as_of", as_of) if as_of is not None else None
            wanted = requests.parse_positive_int("version", version) \
                if version is not None else None

            def local(store):
                if t_ms is not None:
                    at = store.version_at(account_id, t_ms)
                    state = store.state_at_version(account_id, at)
                    if state is None:
                        return json_error(self, 404, "unknown_account",
                                          f"account {account_id!r} did not exist at "
                                          f"{rfc3339_ms(t_ms)}")
                elif wanted is not None:
                    state = store.state_at_version(account_id, wanted)
                    if state is None or state.version < wanted:
                        return json_error(self, 404, "unknown_version",
                                          f"account {account_id!r} has no version {wanted}")
                else:
                    state = store.account(account_id)
                    if state is None:
                        return json_error(self, 404, "unknown_account",
                                          f"account {account_id!r} does not exist")
                return self.json(account_json(state))

            return await on_partition(
                self, request, partition_for(account_id.encode(), settings.partitions), local)

    @app.page("/v1/accounts/{account_id}/events")
    class AccountEvents(faust.web.View):
        @instrumented("/v1/accounts/{account_id}/events")
        async def get(self, request, account_id: str):
            q = request.query
            limit = requests.parse_positive_int("limit", q["limit"], EVENTS_LIMIT_MAX) \
                if "limit" in q else EVENTS_LIMIT_DEFAULT
            cursor = _decode_cursor(q["cursor"]) if "cursor" in q else None
            from_ms = requests.parse_instant("from", q["from"]) if "from" in q else None
            to_ms = requests.parse_instant("to", q["to"]) if "to" in q else None

            def local(store):
                current = store.account(account_id)
                if current is None:
                    return json_error(self, 404, "unknown_account",
                                      f"account {account_id!r} does not exist")
                if cursor is not None:
                    first, last = cursor
                else:
                    first = 1 if from_ms is None else store.version_at(account_id, from_ms - 1) + 1
                    last = current.version if to_ms is None else store.version_at(account_id, to_ms)
                end = min(last, first + limit - 1)
                events = _history(store, account_id, range(first, end + 1))
                return self.json({"account_id": account_id, "events": events,
                                  "next_cursor": _encode_cursor(end + 1, last)
                                  if end < last else None})

            return await on_partition(
                self, request, partition_for(account_id.encode(), settings.partitions), local)

    @app.page("/v1/transfers/{transfer_id}")
    class TransferView(faust.web.View):
        @instrumented("/v1/transfers/{transfer_id}")
        async def get(self, request, transfer_id: str):
            def local(store):
                entry = store.transfer(transfer_id)
                if entry is None:
                    return None
                return {"transfer_id": transfer_id, "status": entry["status"],
                        "reason": entry["reason"],
                        "from_account_id": entry["from_account_id"],
                        "to_account_id": entry["to_account_id"], "amount": entry["amount"],
                        "currency": entry["currency"],
                        "events": _history(store, entry["from_account_id"],
                                           entry["sequences"])}

            return await on_any_partition(self, request, local, "transfer")

    @app.page("/v1/commands/{command_id}")
    class CommandView(faust.web.View):
        @instrumented("/v1/commands/{command_id}")
        async def get(self, request, command_id: str):
            partition = request.query.get("partition")
            if partition is not None and partition.isdigit() \
                    and int(partition) < settings.partitions:
                # Internal form (with the hash), used by wait_for_outcome.
                def local(store):
                    found = command_outcome(store, command_id)
                    if found is None:
                        return json_error(self, 404, "unknown_command", "no such command")
                    return self.json(found)
                return await on_partition(self, request, int(partition), local)
            return await on_any_partition(
                self, request, lambda store: command_outcome(store, command_id), "command",
                public=lambda found: {k: v for k, v in found.items() if k != "command_hash"})

    @app.page("/v1/commands")
    class Commands(faust.web.View):
        @instrumented("/v1/commands")
        async def post(self, request):
            length = request.content_length
            cap = requests.REQUEST_BODY_BYTES_MAX
            if length is not None and length > cap:
                return json_error(self, 413, "body_too_large", f"request body over {cap} bytes")
            raw = await request.content.read(cap + 1)
            if len(raw) > cap:
                return json_error(self, 413, "body_too_large", f"request body over {cap} bytes")
            q = request.query
            wait = q.get("wait", "0")
            if wait not in ("0", "1"):
                raise requests.InvalidRequest("wait", "malformed", "wait must be 0 or 1")
            timeout_ms = requests.parse_positive_int("timeout_ms", q["timeout_ms"],
                                                     WAIT_TIMEOUT_MS_MAX) \
                if "timeout_ms" in q else WAIT_TIMEOUT_MS_DEFAULT
            command = requests.parse_command_json(raw)  # 400 before anything is published
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(None, publish, command)
            except (KafkaException, BufferError, RuntimeError) as exc:
                return json_error(self, 503, "kafka_unavailable", f"not published: {exc}")
            if wait == "0":
                return self.json({"command_id": command.command_id, "status": "accepted"},
                                 status=202)
            return await wait_for_outcome(self, command, timeout_ms)

    def publish(command) -> None:
        if "p" not in producer:
            producer["p"] = Producer({
                "bootstrap.servers": settings.bootstrap_servers,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 1,
                "partitioner": "murmur2_random",  # the ledger's partitioner, see topics.py
            })
        failures = []
        producer["p"].produce(settings.commands_topic,
                              codec.encode_command(command, int(time.time() * 1000)),
                              command.account_id.encode(),
                              on_delivery=lambda err, _msg: err and failures.append(err))
        if producer["p"].flush(10) > 0 or failures:
            raise RuntimeError(failures[0] if failures else "delivery timed out")

    async def wait_for_outcome(web, command, timeout_ms: int):
        """Poll the owner of the command's partition until its outcome is committed."""
        partition = partition_for(command.account_id.encode(), settings.partitions)
        digest = domain.command_hash(command)
        deadline = time.monotonic() + timeout_ms / 1000
        path = f"/v1/commands/{command.command_id}"
        while time.monotonic() < deadline:
            store = processor.store_for(partition)
            if store is not None:
                found = command_outcome(store, command.command_id)
            else:
                owner = await asyncio.get_running_loop().run_in_executor(
                    None, router.owner, partition)
                answer = await fetch(owner[1], path, {"partition": str(partition)}) \
                    if owner is not None else None
                found = answer[1] if answer is not None and answer[0] == 200 else None
            if found is not None:
                if found.pop("command_hash") != digest:
                    # What the worker logged for this send; the original stands.
                    return web.json({"command_id": command.command_id, "status": "rejected",
                                     "reason": domain.RejectionReason.command_id_reused.value,
                                     "events": []})
                return web.json(found)
            await asyncio.sleep(0.02)
        return json_error(web, 504, "outcome_timeout",
                          f"no outcome within {timeout_ms} ms; it may still be applied",
                          command_id=command.command_id)
