"""Shared by the fault tests: a steady load that survives broker outages, a
model of its outcomes, health sampling and the log's verdicts.

Payers only send (debits and transfers) and payees only receive, so every
verdict depends on a payer's own ordered commands: the model knows them all.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request
import uuid
from collections import Counter, defaultdict

from confluent_kafka import OFFSET_END, Consumer, KafkaError, Producer, TopicPartition

from ledger import domain
from schemas import codec
from streams.eventlog import read_log

PAYERS, PAYEES = 40, 20
FUNDING = 200_000


def kill9(broker) -> None:
    """SIGKILL a broker by its pid and wait until it is gone."""
    from streams import localkafka

    assert localkafka.kill_broker(broker)


class Load(threading.Thread):
    """Sends ``commands`` in order from a thread of its own. ``stop`` ends the
    load early: ``sent()`` is then what was sent (the first ``count``)."""

    def __init__(self, name: str, commands):
        super().__init__(name=name, daemon=True)
        self.commands = commands
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.count = 0

    def sent(self) -> list:
        return self.commands[:self.count]


class Sender(Load):
    """Produces the load at a steady rate whether or not the broker is up
    (the idempotent producer queues and retries); a command whose delivery
    failed is sent again with the same command_id, as a real client would.

    So is a command the commands topic does not hold once every delivery
    was reported: with two brokers of three gone, librdkafka 2.16.0's
    idempotent producer reported no failure for the first two commands of
    a partition, and the log never got them (sequences 0 and 1 missing on
    all three replicas, the next ones there; librdkafka#4134). A client that
    gets no outcome resends with the same command_id (streams/client.py),
    and the ledger applies it once. ``lost`` names those; everything in the
    topic must still get its outcome without help."""

    def __init__(self, settings, commands, rate_per_s: int):
        super().__init__("load", commands)
        self.settings, self.rate_per_s = settings, rate_per_s
        self.failed: list = []
        self.lost: list = []

    def run(self):
        try:
            producer = Producer({"bootstrap.servers": self.settings.bootstrap_servers,
                                 "enable.idempotence": True, "acks": "all",
                                 "partitioner": "murmur2_random", "linger.ms": 5,
                                 "message.timeout.ms": 120_000})
            started = time.monotonic()
            for i, command in enumerate(self.commands):
                if self.stop.is_set():
                    break
                self._send(producer, command)
                self.count = i + 1
                ahead = started + i / self.rate_per_s - time.monotonic()
                producer.poll(max(0.0, ahead))
            self._deliver(producer)
            held = command_ids_in_topic(self.settings, self.settings.commands_topic)
            self.lost = [c for c in self.sent() if c.command_id not in held]
            if self.lost:
                print(f"Sender: {len(self.lost)} commands delivered without an error are not in "
                      f"the topic (librdkafka#4134), sent again: "
                      f"{[c.command_id for c in self.lost]}", flush=True)
                for command in self.lost:
                    self._send(producer, command)
                self._deliver(producer)
                # Now the topic must hold them (and a check that finds
                # nothing cannot pass unseen).
                held = command_ids_in_topic(self.settings, self.settings.commands_topic)
                missing = [c.command_id for c in self.lost if c.command_id not in held]
                assert not missing, f"sent again, still not in the topic: {missing}"
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _deliver(self, producer) -> None:
        """Flush, sending again what failed, until every delivery succeeded."""
        for _round in range(5):
            producer.flush(150)
            retry, self.failed = self.failed, []
            if not retry:
                return
            for command in retry:
                self._send(producer, command)
        raise AssertionError(f"{len(self.failed)} commands never delivered")

    def _send(self, producer, command):
        def report(err, _msg, command=command):
            if err is not None:
                self.failed.append(command)
        while True:
            try:
                producer.produce(self.settings.commands_topic,
                                 codec.encode_command(command, int(time.time() * 1000)),
                                 command.account_id.encode(), on_delivery=report)
                return
            except BufferError:
                producer.poll(0.1)


class HealthWatch(threading.Thread):
    """Samples every worker's /v1/health: (monotonic time, worker, status)."""

    def __init__(self, urls):
        super().__init__(name="health", daemon=True)
        self.urls, self.samples, self.stop = urls, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            for url in self.urls:
                reason = None
                try:
                    with urllib.request.urlopen(url + "/v1/health", timeout=1) as r:
                        status = r.status
                except urllib.error.HTTPError as exc:
                    status, reason = exc.code, json.loads(exc.read()).get("reason")
                except OSError:
                    status = None
                self.samples.append((time.monotonic(), url, status, reason))
            self.stop.wait(0.2)


def command_ids_in_topic(settings, topic: str, timeout_s: float = 60) -> set[str]:
    """The command_id of every committed record of a commands topic, now."""
    from streams.topics import consume_ready, watermarks

    consumer = Consumer(settings.kafka(**{
        "group.id": f"{settings.topic_prefix}-client-check-{uuid.uuid4().hex}",
        "enable.auto.commit": False, "isolation.level": "read_committed",
        "enable.partition.eof": True}))  # the end may be a commit marker
    try:
        ends = {p: watermarks(consumer, topic, p)[1] for p in range(settings.partitions)}
        consumer.assign([TopicPartition(topic, p, 0) for p, end in ends.items() if end > 0])
        positions = {p: 0 for p in ends}
        ids: set[str] = set()
        deadline = time.monotonic() + timeout_s
        while any(positions[p] < end for p, end in ends.items()):
            assert time.monotonic() < deadline, f"{topic}: at {positions} of {ends}"
            for msg in consume_ready(consumer, 10_000, 0.5):
                p, error = msg.partition(), msg.error()
                if error is None:
                    positions[p] = msg.offset() + 1
                    ids.add(codec.decode_command(msg.value())[0].command_id)
                elif error.code() == KafkaError._PARTITION_EOF:
                    positions[p] = max(positions[p], msg.offset())
        return ids
    finally:
        consumer.close()


def first_new_event_after(settings, timeout_s: float) -> float:
    """Seconds until a new committed event appears at the end of the log."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers,
                         "group.id": f"probe-{uuid.uuid4()}", "enable.auto.commit": False,
                         "isolation.level": "read_committed", "auto.offset.reset": "latest"})
    started = time.monotonic()
    try:
        # The end as librdkafka resolves it once the partitions have leaders again.
        consumer.assign([TopicPartition(settings.events_topic, p, OFFSET_END)
                         for p in range(settings.partitions)])
        while time.monotonic() - started < timeout_s:
            # A PartitionTick (time marked on an idle partition) is no command applied.
            if any(not m.error() and not codec.is_tick(m.value())
                   for m in consumer.consume(100, timeout=0.2)):
                return time.monotonic() - started
        raise AssertionError(f"no command applied within {timeout_s}s of the broker's return")
    finally:
        consumer.close()


def counter(name: str, labels: dict[str, str] | None = None) -> float:
    """A Prometheus counter of this process (a core run on a thread here)."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


@contextlib.contextmanager
def core_on_a_thread(settings, ready_timeout_s: float = 60):
    """A real core (streams.processor.Processor) run on a thread of the test
    process, caught up; stopped and joined on the way out, even on failure.
    Yields (core, its thread)."""
    from streams import processor

    core = processor.Processor(settings)
    runner = threading.Thread(target=core.run, name="core", daemon=True)
    runner.start()
    try:
        assert core.caught_up.wait(ready_timeout_s)
        yield core, runner
    finally:
        core.stop()
        runner.join(30)
    assert not runner.is_alive()


def make_load(rng, count: int):
    payers = [f"payer-{i:02d}" for i in range(PAYERS)]
    payees = [f"payee-{i:02d}" for i in range(PAYEES)]
    setup = [domain.OpenAccount(f"open-{a}", a, "EUR") for a in payers + payees]
    setup += [domain.Credit(f"fund-{a}", a, FUNDING, "EUR") for a in payers]
    load = []
    for n in range(count):
        payer = rng.choice(payers)
        amount = rng.randrange(1, 2_000)
        if rng.random() < 0.5:
            load.append(domain.Debit(f"d{n}", payer, amount, "EUR"))
        else:
            load.append(domain.Transfer(f"t{n}", payer, rng.choice(payees), amount, "EUR"))
    return setup, load


def model(setup, load):
    """Verdict per (account, command_id) and final balances, by the ledger's rules."""
    balance, verdict = defaultdict(int), {}
    for c in setup:
        if isinstance(c, domain.Credit):
            balance[c.account_id] += c.amount_minor
        verdict[(c.account_id, c.command_id)] = ("applied", None)
    for c in load:
        if balance[c.account_id] < c.amount_minor:
            verdict[(c.account_id, c.command_id)] = ("rejected", "insufficient_funds")
            continue
        balance[c.account_id] -= c.amount_minor
        if isinstance(c, domain.Transfer):
            balance[c.to_account_id] += c.amount_minor
        verdict[(c.account_id, c.command_id)] = ("applied", None)
    return verdict, dict(balance)




def apply_all(settings, commands, timeout_s: float = 60) -> None:
    """Send ``commands`` and wait until each has its outcome."""
    from streams.client import LedgerClient

    with LedgerClient(settings) as client:
        for c in commands:
            client.send_nowait(c)
        client.flush()
        for c in commands:
            client.wait_for(c.account_id, c.command_id, timeout_s)


def wait_for_all_outcomes(settings, expected: dict, timeout_s: float = 180):
    """The log's records once every command of ``expected`` has its outcome
    and every debited transfer is settled; (records, outcome counts)."""
    deadline = time.monotonic() + timeout_s
    while True:
        outcomes = Counter()
        records = list(read_log(settings))
        for _p, _o, r in records:
            if "#" not in r.command_id and not (isinstance(r, domain.CommandRejected)
                                                 and r.reason == "command_id_reused"):
                outcomes[(r.account_id, r.command_id)] += 1
        settled = Counter(type(r).__name__ for _p, _o, r in records)
        if (len(outcomes) >= len(expected)
                and settled["TransferDebited"] == settled["TransferCompleted"]):
            return records, outcomes
        assert time.monotonic() < deadline, f"{len(outcomes)} of {len(expected)} outcomes"
        time.sleep(1)


def check_against_model(records, outcomes, expected: dict, balances_expected: dict) -> None:
    """Exactly one outcome per command, each the model's verdict; balances and
    sequences as the model says."""
    assert {k: n for k, n in outcomes.items() if n != 1} == {}
    actual, final, sequences = {}, {}, defaultdict(list)
    for _p, _o, r in records:
        if isinstance(r, domain.CommandRejected):
            if r.reason != "command_id_reused":
                actual[(r.account_id, r.command_id)] = ("rejected", r.reason)
            continue
        sequences[r.account_id].append(r.sequence)
        final[r.account_id] = r.balance_after_minor
        if "#" not in r.command_id:
            actual[(r.account_id, r.command_id)] = ("applied", None)
    assert expected == actual
    assert balances_expected == final
    for account_id, seqs in sequences.items():
        assert list(range(1, len(seqs) + 1)) == seqs, account_id
