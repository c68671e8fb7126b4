"""The ledger on a secured broker: SASL_SSL (SCRAM-SHA-512 over TLS) and ACLs.

Issue 9: every Kafka client of the project is configured from one place
(Settings.kafka, fed by LEDGER_KAFKA_CONFIG / LEDGER_KAFKA_*), Faust's too.
Here a broker started like `ledger kafka start --secure` runs the ledger with
its three principals: the admin creates the topics, workers run with the
worker principal and no create rights (LEDGER_CREATE_TOPICS=0), the client
with the app principal. The story, a few hundred transfers with a kill -9,
replay and verify all run through TLS and SCRAM; the app principal cannot
forge a leg or an event; a wrong password or an untrusted CA stops a worker
at start within 30 s with a clear message; no secret reaches a log line;
a worker refuses topics of the wrong shape.
"""

from __future__ import annotations

import os
import random
import time
import uuid

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from ledger import domain
from schemas import codec
from streams import localkafka
from streams.client import LedgerClient
from streams.config import Settings, read_properties
from streams.eventlog import read_log
from streams.partitioner import partition_for
from streams.topics import ensure_topics
from tests.conftest import ledger_settings

pytestmark = [pytest.mark.kafka, pytest.mark.secure, pytest.mark.slow]

PREFIX = f"sec{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory):
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("starts its own secured broker: needs the local jars, not "
                    "KAFKA_BOOTSTRAP_SERVERS")
    broker = localkafka.start_broker(tmp_path_factory.mktemp("kafka-secure"), secure=True,
                                     topic_prefix=PREFIX)
    try:
        yield broker
    finally:
        localkafka.stop_broker(broker)


def as_principal(base: Settings, broker, role: str, **changes) -> Settings:
    props = read_properties(broker.client_properties[localkafka.CLIENT_PRINCIPALS[role]])
    props.pop("bootstrap.servers", None)
    return base.with_(bootstrap_servers=broker.bootstrap,
                      kafka_properties=tuple(sorted(props.items())), **changes)


@pytest.fixture
def secured(secure_broker, tmp_path, leg_key_file):
    """(admin, worker, app) settings for one ledger on the secured broker."""
    base = ledger_settings(secure_broker.bootstrap, tmp_path, leg_key_file, topic_prefix=PREFIX)
    admin = as_principal(base, secure_broker, "admin")
    ensure_topics(admin)
    worker = as_principal(base, secure_broker, "worker", create_topics=False)
    app = as_principal(base, secure_broker, "app")
    return admin, worker, app


def passwords(broker) -> list[str]:
    return [read_properties(path)["sasl.password"]
            for path in broker.client_properties.values()]


def test_the_ledger_runs_end_to_end_on_sasl_ssl_with_acls(secure_broker, secured, workers,
                                                          ledger_cli):
    admin, worker_settings, app = secured
    rng = random.Random(11)
    w1 = workers.start(worker_settings)
    accounts = [f"acct-{i}" for i in range(12)]
    with LedgerClient(app) as client:
        for a in accounts:
            client.open_account(a, "EUR", command_id=f"open-{a}")
            client.credit(a, 100_000, "EUR", command_id=f"fund-{a}")
        client.flush()
        # Every account is open before a transfer may name it: the partitions
        # are applied independently, so one account's outcome says nothing of
        # another's (a leg that reached an account not yet open is refunded).
        assert ["applied"] * len(accounts) == [
            client.wait_for(a, f"fund-{a}", 60).status for a in accounts]
        transfers = []
        for n in range(300):
            source, dest = rng.sample(accounts, 2)
            transfers.append(domain.Transfer(f"t{n}", source, dest, rng.randrange(1, 500), "EUR"))
        for i, t in enumerate(transfers):
            client.send_nowait(t)
            if i == 150:
                client.flush()
                workers.kill(w1)  # kill -9 halfway
                w1 = workers.start(worker_settings)
        client.flush()
        fates = [client.wait_for_transfer(t.from_account_id, t.command_id, 90)
                 for t in transfers]
    assert [("completed", None)] * len(transfers) == [(f.status, f.reason) for f in fates]

    # The app principal may not write legs or events: the broker refuses.
    producer = Producer(app.kafka(**{"enable.idempotence": False, "retries": 0}))
    refused = []
    leg = codec.encode_leg(domain.TransferCreditLeg(
        "f#credit:acct-0", "acct-1", "f", "acct-0", 10**9, "EUR"), 0)
    for topic in (app.legs_topic, app.events_topic):
        producer.produce(topic, leg, b"acct-1", partition=partition_for(b"acct-1", 6),
                         on_delivery=lambda err, _m: refused.append(err and err.code()))
    producer.flush(30)
    assert [KafkaError.TOPIC_AUTHORIZATION_FAILED] * 2 == refused

    # Money is conserved and verify passes, reading with the worker principal.
    final = {}
    for _p, _o, record in read_log(worker_settings):
        if not isinstance(record, domain.CommandRejected):
            final[record.account_id] = record.balance_after_minor
    assert 12 * 100_000 == sum(final.values())
    verify = ledger_cli(worker_settings, "verify", "--no-store")
    assert 0 == verify.returncode, verify.stdout + verify.stderr
    replay = ledger_cli(worker_settings, "replay", "--out", str(worker_settings.data_dir / "r.jsonl"))
    assert 0 == replay.returncode, replay.stderr
    assert 12 == len((worker_settings.data_dir / "r.jsonl").read_text().splitlines())
    workers.stop(w1)
    # No password in any log line of the run.
    logs = "".join(w.log_path.read_text() for w in workers.started)
    assert all(p not in logs for p in passwords(secure_broker))


@pytest.mark.parametrize("breakage", ["wrong password", "untrusted CA"])
def test_bad_credentials_stop_a_worker_at_start_with_a_clear_message(secured, workers,
                                                                     tmp_path, breakage):
    _admin, worker_settings, _app = secured
    props = dict(worker_settings.kafka_properties)
    if breakage == "wrong password":
        props["sasl.password"] = "not-the-password"
        expected = "authentication"
    else:
        other_ca = tmp_path / "other-ca.pem"
        os.system(f"openssl req -x509 -newkey rsa:2048 -nodes -keyout {tmp_path}/k.pem "
                  f"-out {other_ca} -subj /CN=other -days 1 2>/dev/null")
        props["ssl.ca.location"] = str(other_ca)
        expected = "ssl"
    broken = worker_settings.with_(kafka_properties=tuple(sorted(props.items())))
    started = time.monotonic()
    worker = workers.start(broken, wait=False)
    code = worker.process.wait(45)
    took = time.monotonic() - started
    log = worker.log_path.read_text()
    assert code != 0 and took < 30, (code, took, log)
    assert "cannot use Kafka" in log and expected in log.lower(), log
    assert "not-the-password" not in log


def test_a_worker_without_create_rights_refuses_topics_of_the_wrong_shape(
        secure_broker, secured, workers, tmp_path):
    admin, worker_settings, _app = secured
    admin_client = AdminClient(admin.kafka())
    # Finite retention on the event log: refused, named.
    admin_client.incremental_alter_configs([ConfigResource(
        ResourceType.TOPIC, admin.events_topic,
        incremental_configs=[__import__("confluent_kafka").admin.ConfigEntry(
            "retention.ms", "86400000",
            incremental_operation=__import__("confluent_kafka").admin.AlterConfigOpType.SET)])]
    )[ConfigResource(ResourceType.TOPIC, admin.events_topic)].result()
    worker = workers.start(worker_settings, wait=False)
    assert 0 != worker.process.wait(45)
    assert "retention.ms=86400000" in worker.log_path.read_text()

    # Another prefix whose commands topic has 3 partitions instead of 6.
    wrong = worker_settings.with_(topic_prefix=f"{PREFIX}x",
                                  data_dir=tmp_path / "data-x")
    localkafka.grant_ledger_acls(secure_broker, topic_prefix=wrong.topic_prefix)
    admin_client.create_topics([NewTopic(wrong.commands_topic, 3, 1)])[
        wrong.commands_topic].result()
    for spec_topic in (wrong.events_topic, wrong.legs_topic, wrong.dead_letter_topic,
                       wrong.replies_topic):
        admin_client.create_topics([NewTopic(spec_topic, 6, 1, config={
            "retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"})])[
            spec_topic].result()
    worker = workers.start(wrong, wait=False)
    assert 0 != worker.process.wait(45)
    assert "has 3 partitions, the ledger needs 6" in worker.log_path.read_text()
