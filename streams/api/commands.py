"""POST /v1/commands and GET /v1/commands/{command_id}?account_id=A.

A command is identified by (account_id, command_id), account_id being the
account it is addressed to (a transfer's source). Its outcome lives on the
partition of that account and is answered by that partition's owner.
"""

from __future__ import annotations

import asyncio
import logging
import time

from rocksdict import DbClosedError

from ledger import domain
from streams.api import errors, forwarding
from streams.api import requests as req
from streams.api.base import LedgerView, endpoint
from streams.api.forwarding import Target
from streams.api.shared import PUBLISH_ERRORS
from streams.shapes import event_json

log = logging.getLogger("ledger.http")

WAIT_TIMEOUT_MS_DEFAULT = 5_000
WAIT_TIMEOUT_MS_MAX = 60_000
POLL_INTERVAL_S = 0.02

# Only in answers to forwarded requests: ?wait=1 on another worker compares
# it with the hash of what it published to detect command_id_reused.
COMMAND_HASH = "command_hash"
OUTCOME_QUERY = frozenset(("account_id",))


def outcome_target(account_id: str, command_id: str) -> Target:
    return Target(("v1", "commands", command_id), {"account_id": account_id}, OUTCOME_QUERY)


def outcome_json(store, account_id: str, command_id: str) -> dict | None:
    """The outcome as the owner knows it, with its command hash; None if none."""
    outcome = store.outcome(account_id, command_id)
    if outcome is None:
        return None
    events = store.events(account_id, range(outcome.sequences[0], outcome.sequences[1] + 1)) \
        if outcome.sequences else []
    return {"command_id": command_id, "status": outcome.status, "reason": outcome.reason,
            "events": [event_json(e) for e in events], COMMAND_HASH: outcome.command_hash}


def without_hash(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != COMMAND_HASH}


class CommandOutcome(LedgerView):
    """The outcome of command ``command_id`` addressed to ``?account_id``."""

    def public(self, body: dict) -> dict:
        return without_hash(body)

    @endpoint
    async def get(self, request, command_id: str):
        command_id = req.parse_command_id("command_id", command_id)
        account_id = req.parse_account_id("account_id", request.query.get("account_id"))
        internal = forwarding.is_forwarded(request)

        def local(store):
            found = outcome_json(store, account_id, command_id)
            if found is None:
                raise errors.unknown("command", f"no command {command_id!r} "
                                                f"on account {account_id!r}")
            return self.json(found if internal else without_hash(found))

        return await self.from_owner(request, self.shared.partition_of(account_id),
                                     outcome_target(account_id, command_id), local)


class Commands(LedgerView):
    """Validate a command, publish it; with ``?wait=1`` answer with its outcome."""

    @endpoint
    async def post(self, request):
        if not req.is_json_media_type(request.headers.get("Content-Type")):
            raise errors.unsupported_media_type()  # before a byte of the body is read
        length = request.content_length
        if length is not None and length > req.REQUEST_BODY_BYTES_MAX:
            raise errors.body_too_large()
        q = request.query
        wait = req.parse_flag("wait", q.get("wait"))
        timeout_ms = req.parse_positive_int("timeout_ms", q["timeout_ms"],
                                            WAIT_TIMEOUT_MS_MAX) \
            if "timeout_ms" in q else WAIT_TIMEOUT_MS_DEFAULT
        raw = await read_body(request, req.REQUEST_BODY_BYTES_MAX)
        command = req.parse_command_json(raw)  # 400 before anything is published
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, self.shared.publish, command)
        except PUBLISH_ERRORS as exc:
            log.warning("publishing %r: %s", command.command_id, exc)
            raise errors.kafka_unavailable(command.command_id) from None
        if not wait:
            return self.json({"command_id": command.command_id, "status": "accepted"},
                             status=202)
        return self.json(await self.wait_for_outcome(command, timeout_ms))

    async def wait_for_outcome(self, command, timeout_ms: int) -> dict:
        """Poll the owner of the command's account until the outcome is committed."""
        digest = domain.command_hash(command)
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            found = await self.poll_outcome(command.account_id, command.command_id, deadline)
            if found is not None:
                if found.get(COMMAND_HASH) != digest:
                    # What the worker logged for this send; the original stands.
                    return {"command_id": command.command_id, "status": "rejected",
                            "reason": domain.RejectionReason.command_id_reused.value,
                            "events": []}
                return without_hash(found)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.outcome_timeout(command.command_id, timeout_ms)
            await asyncio.sleep(min(POLL_INTERVAL_S, remaining))

    async def poll_outcome(self, account_id: str, command_id: str,
                           deadline: float) -> dict | None:
        """The outcome (with its hash) from the owner of the account's partition;
        None if it has none yet or cannot be asked right now."""
        partition = self.shared.partition_of(account_id)
        store = self.shared.store_for(partition)
        if store is not None:
            try:
                return outcome_json(store, account_id, command_id)
            except DbClosedError:
                pass  # revoked while we read: ask the new owner
        owner = await self.shared.owner(partition)
        if owner is None or owner[0] == self.shared.settings.worker_id:
            return None
        answer = await self.shared.forward(
            owner[1], outcome_target(account_id, command_id),
            timeout_s=max(0.05, min(forwarding.FORWARD_TIMEOUT_S,
                                    deadline - time.monotonic())))
        if answer is None or answer.status != 200:
            return None
        return answer.body


async def read_body(request, cap: int) -> bytes:
    """The whole body, or 413 as soon as it passes ``cap`` bytes."""
    chunks, size = [], 0
    while True:
        chunk = await request.content.read(cap + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            raise errors.body_too_large()
