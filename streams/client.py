"""The Python client apps use to send commands and, if they like, wait for outcomes.

    from streams.client import LedgerClient
    with LedgerClient() as ledger:                      # KAFKA_BOOTSTRAP_SERVERS
        cid = ledger.open_account("alice", "EUR")
        ledger.credit("alice", 10_00, "EUR")
        outcome = ledger.debit("alice", 25_00, "EUR", wait=True)
        outcome.status, outcome.reason                  # 'rejected', 'insufficient_funds'

Sending is idempotent at two levels: the producer has ``enable.idempotence``
(no duplicates from its own retries) and every command has a ``command_id``;
resend a command with the same ``command_id`` after a timeout and it is
applied at most once. Pass your own ``command_id`` to make that possible
across process restarts; by default a random UUID is used.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from ledger import domain
from schemas import codec
from streams.config import Settings
from streams.topics import watermarks


class LedgerClientError(Exception):
    """Base of the client's errors."""


class DeliveryFailed(LedgerClientError):
    """Kafka did not accept the command (it was not sent)."""


class OutcomeTimeout(LedgerClientError):
    """No outcome was seen in time; the command may still be applied later."""


@dataclass
class Outcome:
    command_id: str
    status: str  # "applied" | "rejected"
    reason: str | None
    events: list = field(default_factory=list)


@dataclass
class TransferStatus:
    transfer_id: str
    status: str  # "pending" | "completed" | "failed"
    reason: str | None
    events: list = field(default_factory=list)


class LedgerClient:
    def __init__(self, settings: Settings | None = None, *, watch_outcomes: bool = True):
        self.settings = settings or Settings.from_env()
        self._producer = Producer(self.settings.kafka(**{
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            # The same partitioner as Kafka's Java client and aiokafka/Faust;
            # librdkafka's default (CRC32) would send a key elsewhere.
            "partitioner": "murmur2_random",
        }))
        self._watcher = OutcomeWatcher(self.settings) if watch_outcomes else None

    # -- commands ---------------------------------------------------------

    def open_account(self, account_id: str, currency: str, overdraft_limit_minor: int = 0,
                     *, command_id: str | None = None, wait: bool = False):
        return self.send(domain.OpenAccount(command_id or _new_id(), account_id, currency,
                                            overdraft_limit_minor), wait=wait)

    def credit(self, account_id: str, amount_minor: int, currency: str,
               *, command_id: str | None = None, wait: bool = False):
        return self.send(domain.Credit(command_id or _new_id(), account_id, amount_minor,
                                       currency), wait=wait)

    def debit(self, account_id: str, amount_minor: int, currency: str,
              *, command_id: str | None = None, wait: bool = False):
        return self.send(domain.Debit(command_id or _new_id(), account_id, amount_minor,
                                      currency), wait=wait)

    def transfer(self, from_account_id: str, to_account_id: str, amount_minor: int,
                 currency: str, *, transfer_id: str | None = None,
                 metadata: dict[str, str] | None = None, wait: bool = False,
                 timeout_s: float = 30.0):
        """Send a transfer. With ``wait``, return its :class:`TransferStatus`
        once it is completed or failed (not merely debited)."""
        command = domain.Transfer(transfer_id or _new_id(), from_account_id, to_account_id,
                                  amount_minor, currency,
                                  tuple(sorted((metadata or {}).items())))
        self.send(command)
        if not wait:
            return command.command_id
        self.flush(timeout_s)
        return self.wait_for_transfer(from_account_id, command.command_id, timeout_s)

    def wait_for_transfer(self, from_account_id: str, transfer_id: str,
                          timeout_s: float = 30.0) -> "TransferStatus":
        """Wait until the transfer ``transfer_id`` from ``from_account_id``
        (transfer ids are scoped per source account) is completed or failed."""
        if self._watcher is None:
            raise LedgerClientError("client was created with watch_outcomes=False")
        return self._watcher.wait_for_transfer(from_account_id, transfer_id, timeout_s)

    def close_account(self, account_id: str, *, command_id: str | None = None,
                      wait: bool = False):
        return self.send(domain.CloseAccount(command_id or _new_id(), account_id), wait=wait)

    def send(self, command: domain.Command, *, wait: bool = False,
             timeout_s: float = 30.0):
        """Publish a command. Returns its command_id, or its Outcome if ``wait``."""
        self.send_nowait(command)
        if not wait:
            return command.command_id
        self.flush(timeout_s)
        return self.wait_for(command.account_id, command.command_id, timeout_s)

    def send_nowait(self, command: domain.Command) -> None:
        """Queue a command without flushing (for bulk loads); call flush() after."""
        raw = codec.encode_command(command, int(time.time() * 1000))
        while True:
            try:
                self._producer.produce(self.settings.commands_topic, raw,
                                       command.account_id.encode(),
                                       on_delivery=_raise_on_error)
                break
            except BufferError:  # local queue full: let it drain
                self._producer.poll(0.1)
        self._producer.poll(0)

    def flush(self, timeout_s: float = 30.0) -> None:
        if self._producer.flush(timeout_s) > 0:
            raise DeliveryFailed(f"commands not delivered within {timeout_s}s")

    def wait_for(self, account_id: str, command_id: str, timeout_s: float = 30.0) -> Outcome:
        """The outcome of command ``command_id`` sent to ``account_id`` (command
        ids are scoped per account; a transfer's is its source)."""
        if self._watcher is None:
            raise LedgerClientError("client was created with watch_outcomes=False")
        return self._watcher.wait_for(account_id, command_id, timeout_s)

    def close(self) -> None:
        self._producer.flush(30)
        if self._watcher is not None:
            self._watcher.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _new_id() -> str:
    return str(uuid.uuid4())


def _raise_on_error(err, msg) -> None:
    if err is not None:
        raise DeliveryFailed(f"{msg.topic()}: {err}")


class OutcomeWatcher:
    """Tails the event log (read_committed) from 'now' and remembers outcomes.

    Only outcomes logged after the watcher started are seen; to ask about an
    older command use the worker's HTTP API.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        # Keyed by (account_id, command_id) and (source account, transfer_id).
        self._outcomes: dict[tuple[str, str], Outcome] = {}
        self._transfers: dict[tuple[str, str], TransferStatus] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._consumer = Consumer(settings.kafka(**{
            "group.id": f"{settings.topic_prefix}-client-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 20,  # see streams/processor.py
        }))
        topic = settings.events_topic
        meta = self._consumer.list_topics(topic, timeout=30).topics[topic]
        if meta.error is not None:
            raise LedgerClientError(f"topic {topic}: {meta.error}")
        starts = []
        for p in meta.partitions:
            _low, high = watermarks(self._consumer, topic, p)
            starts.append(TopicPartition(topic, p, high))
        self._consumer.assign(starts)
        self._thread = threading.Thread(target=self._run, name="outcome-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            messages = self._consumer.consume(1000, timeout=0.2)
            if not messages:
                continue
            with self._cond:
                for msg in messages:
                    if msg.error() or codec.is_tick(msg.value()):
                        continue  # a PartitionTick only marks time on the partition
                    try:
                        record, _digest = codec.decode_outcome(msg.value())
                    except codec.CodecError:
                        continue
                    self._remember(record)
                self._cond.notify_all()

    def _remember(self, record) -> None:
        transfer = domain.transfer_of(record)
        if isinstance(record, domain.CommandRejected):
            key = (record.account_id, record.command_id)
            if key not in self._outcomes:
                self._outcomes[key] = Outcome(record.command_id, "rejected", record.reason, [])
                if transfer is not None:
                    self._transfers[transfer] = TransferStatus(
                        record.command_id, "failed", record.reason, [])
            return
        if transfer is not None:
            status = self._transfers.setdefault(
                transfer, TransferStatus(transfer[1], "pending", None, []))
            status.events.append(record)
            if isinstance(record, domain.TransferCompleted):
                status.status = "completed"
            elif isinstance(record, domain.TransferRefunded):
                status.status, status.reason = "failed", record.reason
        outcome = self._outcomes.setdefault(
            (record.account_id, record.command_id),
            Outcome(record.command_id, "applied", None, []))
        outcome.events.append(record)

    def _wait(self, table: dict, key, done, timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while key not in table or not done(table[key]):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OutcomeTimeout(f"{what} {key[1]} of {key[0]}: nothing within "
                                         f"{timeout_s}s")
                self._cond.wait(left)
            return table[key]

    def wait_for(self, account_id: str, command_id: str, timeout_s: float) -> Outcome:
        return self._wait(self._outcomes, (account_id, command_id), lambda _o: True,
                          timeout_s, "no outcome for command")

    def wait_for_transfer(self, from_account_id: str, transfer_id: str,
                          timeout_s: float) -> TransferStatus:
        return self._wait(self._transfers, (from_account_id, transfer_id),
                          lambda t: t.status != "pending", timeout_s, "transfer not settled:")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()
