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

``wait=True`` waits for the command's reply (streams/replies.py): every
command gets one, a retry too, carrying the original outcome with
``duplicate`` set, so a retry of anything ever applied (or rejected)
answers in about the time a new command takes.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from confluent_kafka import Producer

from ledger import domain
from schemas import codec
from streams import replies
from streams.config import Settings


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
    events: list = field(default_factory=list)  # ledger.domain events
    duplicate: bool = False  # a retry: this is the original outcome
    detail: str = ""
    version: int | None = None  # the account's version after it


@dataclass
class TransferStatus:
    transfer_id: str
    status: str  # "pending" | "completed" | "failed"
    reason: str | None
    events: list = field(default_factory=list)
    duplicate: bool = False


# The client's producer (scripts/bench's open-loop generator sends with it too).
PRODUCER_SETTINGS = {
    "enable.idempotence": True,
    "acks": "all",
    # librdkafka's default (and the Java client's since Kafka 4.0). With 2 ms
    # the commands reached the broker in record batches of a few records,
    # which cost the broker and the worker more per command: at 8,500
    # commands/s from one client (scripts/bench --latency-rates 1700,8500,
    # two alternating runs each) the worker fell behind (p50 1.9-2.4 s
    # against 0.5-0.6 s with 5 ms), and at 1,700/s p99 was 72-80 ms against
    # 57-58 ms.
    "linger.ms": 5,
    # The same partitioner as Kafka's Java client and aiokafka/Faust;
    # librdkafka's default (CRC32) would send a key elsewhere.
    "partitioner": "murmur2_random",
}


class LedgerClient:
    def __init__(self, settings: Settings | None = None, *, watch_outcomes: bool = True):
        self.settings = settings or Settings.from_env()
        self._producer = Producer(self.settings.kafka(**PRODUCER_SETTINGS))
        # Replies seen since the client started (streams/replies.py).
        try:
            self._watcher = replies.ReplyWatcher(self.settings, keep_all=True) \
                if watch_outcomes else None
        except replies.RepliesUnavailable as exc:
            raise LedgerClientError(str(exc)) from None

    # -- commands ---------------------------------------------------------

    def open_account(self, account_id: str, currency: str, overdraft_limit_minor: int = 0,
                     *, command_id: str | None = None, wait: bool = False,
                     timeout_s: float = 30.0):
        return self.send(domain.OpenAccount(command_id or _new_id(), account_id, currency,
                                            overdraft_limit_minor), wait=wait,
                         timeout_s=timeout_s)

    def credit(self, account_id: str, amount_minor: int, currency: str,
               *, command_id: str | None = None, wait: bool = False,
               timeout_s: float = 30.0):
        return self.send(domain.Credit(command_id or _new_id(), account_id, amount_minor,
                                       currency), wait=wait,
                         timeout_s=timeout_s)

    def debit(self, account_id: str, amount_minor: int, currency: str,
              *, command_id: str | None = None, wait: bool = False,
              timeout_s: float = 30.0):
        return self.send(domain.Debit(command_id or _new_id(), account_id, amount_minor,
                                      currency), wait=wait,
                         timeout_s=timeout_s)

    def transfer(self, from_account_id: str, to_account_id: str, amount_minor: int,
                 currency: str, *, transfer_id: str | None = None,
                 metadata: dict[str, str] | None = None, wait: bool = False,
                 timeout_s: float = 30.0):
        """Send a transfer. With ``wait``, return its :class:`TransferStatus`
        once it is completed or failed (not merely debited)."""
        command = domain.Transfer(transfer_id or _new_id(), from_account_id, to_account_id,
                                  amount_minor, currency,
                                  tuple(sorted((metadata or {}).items())))
        if not wait:
            self.send(command)
            return command.command_id
        return self.send_transfer(command, timeout_s)

    def send_transfer(self, command: domain.Transfer, timeout_s: float = 30.0):
        """Send a transfer command and return its :class:`TransferStatus` once
        it is completed or failed (a retry's: the original end)."""
        waiter = self._watch(command, final_transfer=True)
        self.send_nowait(command)
        self.flush(timeout_s)
        return self._transfer_status(self._await(waiter, timeout_s, "transfer not settled:"))

    def wait_for_transfer(self, from_account_id: str, transfer_id: str,
                          timeout_s: float = 30.0) -> "TransferStatus":
        """Wait until the transfer ``transfer_id`` from ``from_account_id``
        (transfer ids are scoped per source account) is completed or failed."""
        if self._watcher is None:
            raise LedgerClientError("client was created with watch_outcomes=False")
        waiter = self._watcher.watch((from_account_id, transfer_id),
                                     replies.accepts(final_transfer=True))
        return self._transfer_status(self._await(waiter, timeout_s, "transfer not settled:"))

    def hold(self, account_id: str, amount_minor: int, currency: str, *,
             to_account_id: str = "", expires_in_ms: int = 0, expires_at_ms: int = 0,
             metadata: dict[str, str] | None = None, hold_id: str | None = None,
             wait: bool = False, timeout_s: float = 30.0):
        """Reserve money on the account; the hold id is the command id."""
        return self.send(domain.PlaceHold(hold_id or _new_id(), account_id, amount_minor,
                                          currency, to_account_id, expires_at_ms,
                                          expires_in_ms, tuple(sorted((metadata or {}).items()))),
                         wait=wait, timeout_s=timeout_s)

    def capture(self, account_id: str, hold_id: str, amount_minor: int = 0, *,
                to_account_id: str = "", command_id: str | None = None, wait: bool = False,
                timeout_s: float = 30.0):
        """Settle a hold (all of it when ``amount_minor`` is 0; the rest is released)."""
        return self.send(domain.CaptureHold(command_id or _new_id(), account_id, hold_id,
                                            amount_minor, to_account_id),
                         wait=wait, timeout_s=timeout_s)

    def release(self, account_id: str, hold_id: str, *, command_id: str | None = None,
                wait: bool = False, timeout_s: float = 30.0):
        return self.send(domain.ReleaseHold(command_id or _new_id(), account_id, hold_id),
                         wait=wait, timeout_s=timeout_s)

    def close_account(self, account_id: str, *, command_id: str | None = None,
                      wait: bool = False, timeout_s: float = 30.0):
        return self.send(domain.CloseAccount(command_id or _new_id(), account_id), wait=wait,
                         timeout_s=timeout_s)

    def send(self, command: domain.Command, *, wait: bool = False,
             timeout_s: float = 30.0):
        """Publish a command. Returns its command_id, or its Outcome if ``wait``:
        the outcome of this very body (a retry gets the original outcome,
        ``duplicate`` set; another body under a used id gets command_id_reused)."""
        if not wait:
            self.send_nowait(command)
            return command.command_id
        waiter = self._watch(command, final_transfer=False)
        self.send_nowait(command)
        self.flush(timeout_s)
        return self._outcome(self._await(waiter, timeout_s, "no outcome for command"))

    def _watch(self, command, final_transfer: bool):
        if self._watcher is None:
            raise LedgerClientError("client was created with watch_outcomes=False")
        # The reply to this send (every send gets its own; a retry's is the
        # original outcome marked duplicate), not one seen before it.
        return self._watcher.watch((command.account_id, command.command_id),
                                   replies.accepts(domain.command_hash(command),
                                                   final_transfer), seen=False)

    def _await(self, waiter, timeout_s: float, what: str) -> dict:
        reply = self._watcher.wait(waiter, timeout_s)
        if reply is None:
            raise OutcomeTimeout(f"{what} {waiter.key[1]} of {waiter.key[0]}: nothing "
                                 f"within {timeout_s}s")
        return reply

    @staticmethod
    def _outcome(reply: dict) -> Outcome:
        return Outcome(reply["command_id"], reply["status"], reply.get("reason"),
                       replies.reply_events(reply),
                       bool(reply.get("duplicate")),
                       reply.get("detail") or "", reply.get("version"))

    @staticmethod
    def _transfer_status(reply: dict) -> TransferStatus:
        transfer = reply["transfer"]
        return TransferStatus(transfer["transfer_id"], transfer["status"],
                              transfer.get("reason"),
                              replies.reply_events(reply),
                              bool(reply.get("duplicate")))

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
        waiter = self._watcher.watch((account_id, command_id), replies.accepts())
        return self._outcome(self._await(waiter, timeout_s, "no outcome for command"))

    def close(self) -> None:
        self._producer.flush(30)
        if self._watcher is not None:
            self._watcher.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if isinstance(exc, DeliveryFailed):
            # The caller has been told these were not delivered (and retries
            # them under the same command ids); do not wait on them again.
            self._producer.purge()
            while True:  # their delivery reports say purged; each one raises
                try:
                    self._producer.poll(0)
                    break
                except DeliveryFailed:
                    continue
        self.close()


def _new_id() -> str:
    return str(uuid.uuid4())


def _raise_on_error(err, msg) -> None:
    if err is not None:
        raise DeliveryFailed(f"{msg.topic()}: {err}")
