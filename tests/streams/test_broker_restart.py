"""kill -9 the broker under load, twice: the workers come back by themselves.

Issue 8: after a broker restart every worker was fenced as a static member,
stalled in ``send_offsets_to_transaction`` until a person restarted it, and
answered /v1/health 200 the whole time. Here two workers run on a private
broker (this test kills it) under a paced load of transfers and debits; the
broker is SIGKILLed mid-load and restarted on the same data dir, twice. The
test asserts that commands are applied again within 30 s of the broker being
back, that health said 503 during each outage, that every command has
exactly one outcome equal to an independent model's, that balances and
sequences match, that ``ledger verify`` exits 0, and that SIGTERM stops a
worker within 10 s even while the broker is down.

Payers only send (debits and transfers) and payees only receive, so every
verdict depends on a payer's own ordered commands: the model knows them all.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import threading
import time
import urllib.request
import uuid
from collections import Counter, defaultdict

import pytest
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from ledger import domain
from schemas import codec
from streams import localkafka
from streams.client import LedgerClient
from streams.eventlog import read_log
from streams.topics import ensure_topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PAYERS, PAYEES = 40, 20
FUNDING = 200_000
RATE_PER_S = 250
LOAD_S = 50
RECOVERY_LIMIT_S = 30
STOP_LIMIT_S = 10


@pytest.fixture
def broker(tmp_path):
    """A broker of this test's own: it gets killed."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("kills the broker: needs the local one, not KAFKA_BOOTSTRAP_SERVERS")
    b = localkafka.start_broker(tmp_path / "kafka")
    try:
        yield b
    finally:
        localkafka.stop_broker(b)


def kill9(b) -> None:
    os.kill(b.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(b.pid, 0)
        except ProcessLookupError:
            return
        try:
            if os.waitpid(b.pid, os.WNOHANG)[0] == b.pid:
                return
        except ChildProcessError:
            pass
        time.sleep(0.05)
    raise AssertionError("broker did not die")


class Sender(threading.Thread):
    """Produces the load at a steady rate whether or not the broker is up
    (the idempotent producer queues and retries); a command whose delivery
    failed is sent again with the same command_id, as a real client would."""

    def __init__(self, settings, commands):
        super().__init__(name="load", daemon=True)
        self.settings, self.commands = settings, commands
        self.failed: list = []
        self.error: BaseException | None = None

    def run(self):
        try:
            producer = Producer({"bootstrap.servers": self.settings.bootstrap_servers,
                                 "enable.idempotence": True, "acks": "all",
                                 "partitioner": "murmur2_random", "linger.ms": 5,
                                 "message.timeout.ms": 120_000})
            started = time.monotonic()
            for i, command in enumerate(self.commands):
                self._send(producer, command)
                ahead = started + i / RATE_PER_S - time.monotonic()
                producer.poll(max(0.0, ahead))
            for _round in range(5):
                producer.flush(150)
                retry, self.failed = self.failed, []
                if not retry:
                    return
                for command in retry:
                    self._send(producer, command)
            raise AssertionError(f"{len(self.failed)} commands never delivered")
        except BaseException as exc:  # reported by the test
            self.error = exc

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
            if any(not m.error() for m in consumer.consume(100, timeout=0.2)):
                return time.monotonic() - started
        raise AssertionError(f"no command applied within {timeout_s}s of the broker's return")
    finally:
        consumer.close()


def make_load(rng):
    payers = [f"payer-{i:02d}" for i in range(PAYERS)]
    payees = [f"payee-{i:02d}" for i in range(PAYEES)]
    setup = [domain.OpenAccount(f"open-{a}", a, "EUR") for a in payers + payees]
    setup += [domain.Credit(f"fund-{a}", a, FUNDING, "EUR") for a in payers]
    load = []
    for n in range(RATE_PER_S * LOAD_S):
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


def test_broker_killed_twice_under_load(broker, tmp_path, leg_key_file, workers, ledger_cli):
    from tests.conftest import free_port
    from streams.config import Settings

    seed = int(os.environ.get("LEDGER_CRASH_SEED", random.randrange(2**32)))
    print(f"broker restart test seed: {seed} (LEDGER_CRASH_SEED={seed} to replay)")
    rng = random.Random(seed)
    base = Settings(bootstrap_servers=broker.bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:12]}",
                    partitions=6, batch_size_max=500, transaction_timeout_ms=10_000,
                    session_timeout_ms=6_000, snapshot_root=tmp_path / "snapshots",
                    leg_key_file=leg_key_file)
    ensure_topics(base)
    w = [workers.start(base.with_(worker_id=f"w{i}", data_dir=tmp_path / f"data-w{i}",
                                  web_port=free_port()), wait=False) for i in (1, 2)]
    for worker in w:
        worker.wait_ready()
    setup, load = make_load(rng)
    with LedgerClient(base) as client:
        for c in setup:
            client.send_nowait(c)
        client.flush()
        for c in setup:
            client.wait_for(c.account_id, c.command_id, 60)

    health = HealthWatch([worker.url for worker in w])
    health.start()
    sender = Sender(base, load)
    sender.start()
    outages, recoveries = [], []
    port = int(broker.bootstrap.rsplit(":", 1)[1])
    controller_port = int(
        (broker.run_dir / "server.properties").read_text()
        .split("controller.quorum.bootstrap.servers=")[1].split("\n")[0].rsplit(":", 1)[1])
    for kill_at in (8, 12):
        time.sleep(kill_at)  # load keeps flowing meanwhile (a pace, not a wait for a condition)
        down = time.monotonic()
        kill9(broker)
        time.sleep(4)  # the outage itself
        broker = localkafka.start_broker(broker.run_dir, port=port, controller_port=controller_port)
        back = time.monotonic()
        recoveries.append(first_new_event_after(base, RECOVERY_LIMIT_S))
        outages.append((down, back))
    print(f"applied again {', '.join(f'{s:.1f}' for s in recoveries)} s after the broker "
          f"was back (median {statistics.median(recoveries):.1f} s)")

    sender.join(400)
    assert sender.error is None, sender.error
    # Wait until every command of the load has its outcome in the log.
    expected, balances_expected = model(setup, load)
    deadline = time.monotonic() + 180
    while True:
        outcomes = Counter()
        records = list(read_log(base))
        for _p, _o, r in records:
            if "#" not in r.command_id and not (isinstance(r, domain.CommandRejected)
                                                 and r.reason == "command_id_reused"):
                outcomes[(r.account_id, r.command_id)] += 1
        settled = Counter(type(r).__name__ for _p, _o, r in records)
        if (len(outcomes) >= len(expected)
                and settled["TransferDebited"] == settled["TransferCompleted"]):
            break
        assert time.monotonic() < deadline, f"{len(outcomes)} of {len(expected)} outcomes"
        time.sleep(1)
    health.stop.set()
    health.join()

    # Health said 503 (or the worker was unreachable) during each outage.
    for down, back in outages:
        during = [(round(t - down, 1), u[-5:], s, r) for t, u, s, r in health.samples
                  if down + 3 < t < back]
        assert during and all(s != 200 for _t, _u, s, _r in during), during
    # Both workers are healthy again at the end.
    for worker in w:
        assert 200 == worker.get("/v1/health")[0]

    # Exactly one outcome per command, each the model's verdict.
    assert {k: n for k, n in outcomes.items() if n != 1} == {}
    actual = {}
    final, sequences = {}, defaultdict(list)
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
    result = ledger_cli(base, "verify", "--no-store")
    assert 0 == result.returncode, result.stdout + result.stderr

    # SIGTERM stops a worker within 10 s even while the broker is gone.
    kill9(broker)
    for worker in w:
        started = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        worker.process.wait(STOP_LIMIT_S + 5)
        assert time.monotonic() - started < STOP_LIMIT_S
