"""POST /v1/commands and GET /v1/commands/{command_id}?account_id=A.

A command is identified by (account_id, command_id), account_id being the
account it is addressed to (a transfer's source). Its outcome lives on the
partition of that account and is answered by that partition's owner.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec

from ledger import domain
from streams.api import errors, forwarding, models
from streams.api import requests as req
from streams.api.base import LedgerView, endpoint
from streams.api.forwarding import Target
from streams.api.shared import PUBLISH_ERRORS
from streams import replies
from streams.shapes import event_json

log = logging.getLogger("ledger.http")

# Only in answers to forwarded requests (a worker's own view of an outcome).
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
    return {**msgspec.to_builtins(models.Outcome(
        command_id=command_id, status=outcome.status, reason=outcome.reason,
        events=[event_json(e) for e in events])), COMMAND_HASH: outcome.command_hash}


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
    """Validate a command, publish it; with ``?wait=1`` answer with its reply
    (streams/replies.py): its outcome, or for a retry the original outcome
    with ``duplicate: true``."""

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
                                            req.WAIT_TIMEOUT_MS_MAX) \
            if "timeout_ms" in q else req.WAIT_TIMEOUT_MS_DEFAULT
        raw = await read_body(request, req.REQUEST_BODY_BYTES_MAX)
        command = req.parse_command_json(raw)  # 400 before anything is published
        loop = asyncio.get_running_loop()
        waiter = watcher = None
        if wait:
            # Registered before the command is published: its reply comes after.
            try:
                watcher = await loop.run_in_executor(None, self.shared.replies)
            except Exception as exc:  # KafkaException, RepliesUnavailable
                log.warning("reading replies: %s", exc)
                raise errors.kafka_unavailable(command.command_id) from None
            waiter = watcher.watch((command.account_id, command.command_id),
                                   replies.accepts(domain.command_hash(command)), loop=loop)
        try:
            try:
                await loop.run_in_executor(None, self.shared.publish, command)
            except PUBLISH_ERRORS as exc:
                log.warning("publishing %r: %s", command.command_id, exc)
                raise errors.kafka_unavailable(command.command_id) from None
            if not wait:
                return self.json(msgspec.to_builtins(models.Accepted(
                    command_id=command.command_id, status="accepted")), status=202)
            try:
                reply = await asyncio.wait_for(waiter.future, timeout_ms / 1000)
            except asyncio.TimeoutError:
                raise errors.outcome_timeout(command.command_id, timeout_ms) from None
            return self.json(replies.public(reply))
        finally:
            if waiter is not None:
                watcher.forget(waiter)


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
