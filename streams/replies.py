"""Replies: one record per command on ``<prefix>.replies``, and the waiters on them.

The worker that decides a command produces its reply in the same Kafka
transaction as the command's outcome (streams/processor.py), so a reply is
committed if and only if the outcome is. A retry (same ``command_id``, same
body) changes nothing in the ledger, but it gets a reply too: the original
outcome with ``"duplicate": true``. That is what lets a client that retries
learn what became of its command, in about the time a new command takes.

A reply is a small JSON object (key: the account id, utf-8; partition: the
account's, like every ledger topic)::

    {"v": 1, "account_id", "command_id", "command_type", "command_hash",
     "status": "applied" | "rejected", "reason", "detail", "duplicate",
     "version",            # the account's version after it (null: no account)
     "events": [...],      # the command's events as in the event log: Avro
                           # single-object bytes (schemas/codec.py), base64
     "transfer": null | {"transfer_id", "status", "reason"}}

Besides commands, the settle step of a transfer (``transfer_settle``, at
the source) replies too, carrying the transfer's final status and the hash
of the transfer command: a client waiting for a transfer to end waits for it.

The topic has a finite retention (``streams.topics.REPLY_RETENTION_MS``, a day): replies are for
waiting, the event log stays the source of truth, and a retry produces a
fresh reply anyway.

Readers (:class:`ReplyWatcher`) start at the end of the topic and only see
replies committed after they started (read_committed), so a waiter is
registered before its command is sent.
"""

from __future__ import annotations

import json
import threading
from base64 import b64decode
import time
import uuid
from dataclasses import dataclass, field

import msgspec
from confluent_kafka import Consumer, TopicPartition

from schemas import codec
from streams.api import models
from streams.shapes import event_json
from streams.topics import consume_ready, watermarks

REPLY_VERSION = 1
# One reply per command on the worker's hot path: msgspec writes the same JSON
# as json.dumps(separators=(",", ":")) for ASCII text (UTF-8 where json.dumps
# writes \u escapes; both decode the same) at a fraction of its cost.
_encode_json = msgspec.json.Encoder().encode


def encode_reply(*, account_id: str, command_id: str, command_type: str, command_hash: str,
                 status: str, reason: str | None, detail: str, duplicate: bool,
                 version: int | None, events=(), transfer=None) -> bytes:
    """``events``: the log bytes of the command's events (already encoded for
    the event log: no second encoding on the worker's hot path)."""
    return _encode_json({
        "v": REPLY_VERSION, "account_id": account_id, "command_id": command_id,
        "command_type": command_type, "command_hash": command_hash, "status": status,
        "reason": reason, "detail": detail, "duplicate": duplicate, "version": version,
        "events": list(events),  # bytes: written as standard padded base64
        "transfer": None if transfer is None else {
            "transfer_id": transfer.transfer_id, "status": transfer.status,
            "reason": transfer.reason},
    })


def decode_reply(raw) -> dict | None:
    """The reply, or None for anything that is not one (never raises)."""
    try:
        reply = json.loads(raw)
    except (TypeError, ValueError):
        return None
    if not isinstance(reply, dict) or reply.get("v") != REPLY_VERSION:
        return None
    if not isinstance(reply.get("account_id"), str) or \
            not isinstance(reply.get("command_id"), str):
        return None
    return reply


def reply_key(reply: dict) -> tuple[str, str]:
    """What a reply answers: (account, transfer id) for a transfer's replies,
    else (account, command id). A transfer's id is its command id."""
    transfer = reply.get("transfer")
    if isinstance(transfer, dict) and isinstance(transfer.get("transfer_id"), str):
        return reply["account_id"], transfer["transfer_id"]
    return reply["account_id"], reply["command_id"]


def public(reply: dict) -> dict:
    """A reply as the HTTP API answers a command: its outcome."""
    return msgspec.to_builtins(models.Outcome(
        command_id=reply["command_id"], status=reply["status"], reason=reply["reason"],
        events=[event_json(e) for e in reply_events(reply)],
        duplicate=bool(reply.get("duplicate")), version=reply.get("version")))


def reply_events(reply: dict) -> list:
    """The domain events a reply carries (an undecodable one is skipped: a
    reply is a convenience, the event log is the truth)."""
    out = []
    for text in reply.get("events") or ():
        try:
            out.append(codec.decode_outcome(b64decode(text, validate=True))[0])
        except (codec.CodecError, ValueError, TypeError):
            continue
    return out


class RepliesUnavailable(RuntimeError):
    """The replies topic cannot be read (missing: no worker has created it)."""


@dataclass(eq=False)
class Waiter:
    """One wait for a reply to ``key`` that ``accept`` takes."""

    key: tuple[str, str]
    accept: object  # (reply: dict) -> bool
    done: threading.Event = field(default_factory=threading.Event)
    reply: dict | None = None
    future: object = None  # an asyncio future, for async waits
    loop: object = None

    def offer(self, reply: dict) -> bool:
        if self.done.is_set() or not self.accept(reply):
            return False
        self.reply = reply
        self.done.set()
        if self.future is not None:
            self.loop.call_soon_threadsafe(_resolve, self.future, reply)
        return True


def _resolve(future, reply) -> None:
    if not future.done():
        future.set_result(reply)


def accepts(digest: str | None = None, final_transfer: bool = False):
    """A waiter's test: the reply to a command with this hash (any, if None),
    and with ``final_transfer``, only a transfer's final status."""
    def accept(reply: dict) -> bool:
        if digest is not None and reply.get("command_hash") != digest:
            return False
        if final_transfer:
            transfer = reply.get("transfer")
            return isinstance(transfer, dict) and transfer.get("status") in ("completed",
                                                                             "failed")
        # The reply to the command itself, not to a later step of its transfer
        # ("<transfer_id>#settle" has the same key and hash; client ids have no #).
        return "#" not in reply.get("command_id", "")
    return accept


class ReplyWatcher:
    """Tails the replies topic (read_committed) from its end at construction.

    ``keep_all``: remember every reply seen (a client that may ask about a
    command after sending it); otherwise only registered waiters get replies
    (a long-running worker answering ``?wait=1``).
    """

    def __init__(self, settings, *, keep_all: bool, group: str = "client",
                 timeout_s: float = 30.0):
        self.settings = settings
        self._keep_all = keep_all
        self._seen: dict[tuple[str, str], list[dict]] = {}
        self._waiters: dict[tuple[str, str], list[Waiter]] = {}
        # Keys (account ids, utf-8) someone waits on, for the cheap skip in
        # _run: a frozenset replaced whole under the lock, read without it.
        self._waited_accounts: frozenset[bytes] = frozenset()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer(settings.kafka(**{
            # Never joins the group or commits: assign() with explicit offsets.
            "group.id": f"{settings.topic_prefix}-{group}-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 20,  # see streams/processor.py
        }))
        topic = settings.replies_topic
        deadline = time.monotonic() + timeout_s
        try:
            meta = self._consumer.list_topics(topic, timeout=timeout_s).topics[topic]
            if meta.error is not None:
                raise RepliesUnavailable(f"topic {topic}: {meta.error}")
            starts = [TopicPartition(topic, p, watermarks(
                self._consumer, topic, p, max(0.1, deadline - time.monotonic()))[1])
                for p in meta.partitions]
        except Exception as exc:
            self._consumer.close()
            if isinstance(exc, RepliesUnavailable):
                raise
            raise RepliesUnavailable(f"topic {topic}: {exc}") from None
        self._consumer.assign(starts)
        self._thread = threading.Thread(target=self._run, name="reply-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                messages = consume_ready(self._consumer, 1000, 0.2)
            except Exception:  # a closed or broken consumer: stop quietly
                if self._stop.is_set():
                    return
                time.sleep(0.2)
                continue
            for msg in messages:
                if msg.error():
                    continue
                if not self._keep_all and msg.key() not in self._waited_accounts:
                    continue  # nobody waits on this account: not even decoded
                reply = decode_reply(msg.value())
                if reply is not None:
                    self._deliver(reply)

    def _deliver(self, reply: dict) -> None:
        key = reply_key(reply)
        with self._lock:
            if self._keep_all:
                self._seen.setdefault(key, []).append(reply)
            for waiter in self._waiters.get(key, ()):
                waiter.offer(reply)

    def watch(self, key: tuple[str, str], accept, loop=None, seen: bool = True) -> Waiter:
        """Register a waiter (before sending the command it waits for).
        With ``loop``, ``waiter.future`` is an asyncio future of that loop.
        ``seen``: a reply seen before counts (for a command sent earlier);
        not when waiting for the reply to a send about to be made."""
        waiter = Waiter(key, accept)
        if loop is not None:
            waiter.loop, waiter.future = loop, loop.create_future()
        with self._lock:
            for reply in self._seen.get(key, ()) if seen else ():
                if waiter.offer(reply):
                    break
            self._waiters.setdefault(key, []).append(waiter)
            self._waited_accounts = self._waited_accounts | {key[0].encode()}
        return waiter

    def forget(self, waiter: Waiter) -> None:
        with self._lock:
            waiters = self._waiters.get(waiter.key, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(waiter.key, None)
                self._waited_accounts = frozenset(a.encode() for a, _id in self._waiters)

    def wait(self, waiter: Waiter, timeout_s: float) -> dict | None:
        """The reply, or None after ``timeout_s``; the waiter is forgotten."""
        try:
            waiter.done.wait(timeout_s)
            return waiter.reply
        finally:
            self.forget(waiter)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()
