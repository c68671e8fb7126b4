"""The secured local broker (`ledger kafka start --secure`, start_broker(secure=True)).

One broker per module, started through the CLI on free ports in a temporary
directory, with the ACLs of streams.localkafka.ledger_acls for the prefix
PREFIX.  Clients are built from the generated property files only.  The broker
is stopped by its pid at the end, also when a test fails; the last test (file
order) stops it through the CLI and restarts it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import subprocess
import time
import uuid

import pytest

from streams import localkafka
from tests.conftest import wait_until

PREFIX = "sec"
LEDGER_TOPICS = [f"{PREFIX}.commands", f"{PREFIX}.events", f"{PREFIX}.legs",
                 f"{PREFIX}.commands.dlq"]
WORKER, APP, ADMIN = "ledger-worker", "ledger-app", "ledger-admin"

needs_broker = [
    pytest.mark.kafka,
    pytest.mark.secure,
    pytest.mark.skipif(
        bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
        reason="KAFKA_BOOTSTRAP_SERVERS names an external broker; not starting a private one",
    ),
]


def _run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = localkafka.main(list(argv))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    """(broker, ports, what `start --secure` printed)."""
    localkafka.ensure_jars()
    run_dir = tmp_path_factory.mktemp("secure") / "kafka"
    port, controller_port = localkafka._free_ports(2)
    started = time.monotonic()
    try:
        code, output = _run_cli("start", "--secure", "--run-dir", str(run_dir),
                                "--port", str(port), "--controller-port", str(controller_port),
                                "--topic-prefix", PREFIX)
        assert code == 0, output
        print(f"secured broker ready in {time.monotonic() - started:.1f}s")
        broker = localkafka.status(run_dir)
        assert broker is not None and broker.secure
        yield broker, (port, controller_port), output
    finally:
        localkafka.stop_broker(run_dir)  # by its pid file; a no-op if stopped already


def _config(broker, principal: str, **overrides) -> dict:
    config = localkafka.read_client_properties(broker.client_properties[principal])
    config.update(overrides)
    return config


def _passwords(broker) -> dict[str, str]:
    return json.loads((broker.run_dir / "credentials.json").read_text())


@pytest.fixture(scope="module")
def ledger_topics(secure):
    """The ledger topics, created by the admin principal."""
    from confluent_kafka.admin import AdminClient, NewTopic

    broker, _, _ = secure
    admin = AdminClient(_config(broker, ADMIN))
    futures = admin.create_topics([NewTopic(t, 1, 1) for t in LEDGER_TOPICS])
    for future in futures.values():
        future.result(30)
    # Created by the controller is not yet in the broker's metadata: a busy
    # machine answered a metadata request right after with no topic at all.
    wait_until(lambda: set(LEDGER_TOPICS) <= set(admin.list_topics(timeout=20).topics), 30,
               "the ledger topics in the broker's metadata", broker.run_dir / "broker.log")
    return admin


def _deliver(config: dict, topic: str, value: bytes, timeout_s: float = 30):
    """Produce one message; the delivery report's error (None: acknowledged)."""
    from confluent_kafka import Producer

    reports = []
    producer = Producer({**config, "enable.idempotence": True, "acks": "all",
                         "message.timeout.ms": int(timeout_s * 1000)})
    producer.produce(topic, key=b"k", value=value, on_delivery=lambda err, msg: reports.append(err))
    assert producer.flush(timeout_s + 10) == 0
    return reports[0]


def _read_all(config: dict, topic: str, group: str, timeout_s: float = 20) -> list[bytes]:
    """Every committed message of partition 0 of ``topic`` (assign, no group commits)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**config, "group.id": group, "enable.auto.commit": False,
                         "isolation.level": "read_committed"})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=timeout_s)
        if high <= low:
            return []
        consumer.assign([TopicPartition(topic, 0, low)])
        values = []
        deadline = time.monotonic() + timeout_s
        while consumer.position([TopicPartition(topic, 0)])[0].offset < high:
            assert time.monotonic() < deadline, f"{topic}: not read up to {high}"
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                values.append(msg.value())
        return values
    finally:
        consumer.close()


def _first_error(config: dict, timeout_s: float = 30):
    """Start a producer and wait (bounded) for the first error its error_cb gets."""
    from confluent_kafka import Producer

    errors = []
    producer = Producer({**config, "error_cb": errors.append})
    started = time.monotonic()
    producer.produce(f"{PREFIX}.commands", value=b"x")
    while not errors and time.monotonic() - started < timeout_s:
        producer.poll(0.2)
    elapsed = time.monotonic() - started
    producer.purge()
    producer.flush(0)
    return (errors[0] if errors else None), elapsed


# ------------------------------------------------------------------ no broker needed


def test_acl_list_gives_the_app_only_commands_and_events():
    rules = localkafka.ledger_acls("acme")
    app = {(r.resource_type, r.pattern_type, r.resource_name): set(r.operations)
           for r in rules if r.principal == APP}
    assert app == {
        ("TOPIC", "LITERAL", "acme.commands"): {"WRITE", "DESCRIBE"},
        ("TOPIC", "LITERAL", "acme.events"): {"READ", "DESCRIBE"},
        ("TOPIC", "LITERAL", "acme.replies"): {"READ", "DESCRIBE"},
        ("GROUP", "PREFIXED", "acme-client"): {"READ"},
    }
    worker = {(r.resource_type, r.resource_name): set(r.operations)
              for r in rules if r.principal == WORKER}
    assert {"READ"} <= worker[("TOPIC", "acme.commands")]
    assert {"READ", "WRITE"} <= worker[("TOPIC", "acme.legs")]
    assert {"WRITE"} <= worker[("TOPIC", "acme.events")]
    assert {"WRITE"} <= worker[("TOPIC", "acme.commands.dlq")]
    assert {"WRITE"} <= worker[("TOPIC", "acme.replies")]
    assert worker[("GROUP", "acme-")] == {"READ"}
    assert worker[("TRANSACTIONAL_ID", "acme-")] == {"WRITE", "DESCRIBE"}
    admin = {(r.resource_type, r.resource_name): set(r.operations)
             for r in rules if r.principal == ADMIN}
    assert admin == {("TOPIC", "acme"): {"CREATE", "DESCRIBE", "DESCRIBE_CONFIGS",
                                         "ALTER_CONFIGS"},
                     ("CLUSTER", "kafka-cluster"): {"DESCRIBE"}}
    # Every rule converts to confluent_kafka's enums, and the README table shows each.
    from confluent_kafka.admin import AclOperation, ResourcePatternType

    table = localkafka.acl_table_markdown("acme")
    for r in rules:
        assert ResourcePatternType[r.pattern_type]
        assert all(AclOperation[op] for op in r.operations)
        assert f"`{r.resource_name}`" in table
    with pytest.raises(ValueError):
        localkafka.ledger_acls("bad*prefix")


# ------------------------------------------------------------------- with a broker


class TestSecuredBroker:
    pytestmark = needs_broker

    def test_start_prints_file_paths_but_no_password(self, secure):
        broker, (port, _), output = secure
        assert broker.bootstrap == f"127.0.0.1:{port}"
        for path in [*broker.client_properties.values(), broker.ca_path]:
            assert str(path) in output
        assert set(broker.client_properties) == {WORKER, APP, ADMIN}
        for password in _passwords(broker).values():
            assert password not in output
            for log in ("broker.log", "broker.out"):
                assert password not in (broker.run_dir / log).read_text(errors="replace")
        # No password stays on disk outside the 0600 files.
        assert not (broker.run_dir / "format.args").exists()

    def test_client_property_files_and_secrets_are_private(self, secure):
        broker, _, _ = secure
        passwords = _passwords(broker)
        for principal, path in broker.client_properties.items():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert localkafka.read_client_properties(path) == {
                "bootstrap.servers": broker.bootstrap,
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": "SCRAM-SHA-512",
                "sasl.username": principal,
                "sasl.password": passwords[principal],
                "ssl.ca.location": str(broker.ca_path),
            }
        for secret in (broker.run_dir / "credentials.json", broker.run_dir / "server.properties",
                       broker.run_dir / "tls" / "broker-keystore.pem",
                       broker.run_dir / "tls" / "ca-key.pem"):
            assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
        assert len(set(passwords.values())) == len(passwords) == 4

    def test_broker_certificate_names_localhost_and_127_0_0_1(self, secure):
        from confluent_kafka.admin import AdminClient

        broker, (port, _), _ = secure
        san = subprocess.run(
            ["openssl", "x509", "-noout", "-ext", "subjectAltName",
             "-in", str(broker.run_dir / "tls" / "broker-keystore.pem")],
            capture_output=True, text=True, check=True).stdout
        assert "DNS:localhost" in san and "IP Address:127.0.0.1" in san
        # librdkafka checks the host name: both spellings connect.
        for host in ("localhost", "127.0.0.1"):
            admin = AdminClient(_config(broker, ADMIN, **{"bootstrap.servers": f"{host}:{port}"}))
            assert admin.list_topics(timeout=20).brokers

    def test_admin_creates_topics_under_its_prefix_only(self, secure, ledger_topics):
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import NewTopic

        admin = ledger_topics
        assert set(LEDGER_TOPICS) <= set(admin.list_topics(timeout=20).topics)
        outside = f"other-{uuid.uuid4().hex[:6]}"
        with pytest.raises(KafkaException) as err:
            admin.create_topics([NewTopic(outside, 1, 1)])[outside].result(30)
        assert err.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED

    def test_app_sends_commands_but_cannot_write_legs_or_events(self, secure, ledger_topics):
        from confluent_kafka import KafkaError

        broker, _, _ = secure
        marker = f"app-{uuid.uuid4().hex[:8]}".encode()
        app = _config(broker, APP)
        assert _deliver(app, f"{PREFIX}.commands", marker) is None
        for topic in (f"{PREFIX}.legs", f"{PREFIX}.events", f"{PREFIX}.commands.dlq"):
            err = _deliver(app, topic, marker)
            assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, \
                (topic, err)
        # Read back as the worker: the command is there, nothing reached legs or events.
        worker = _config(broker, WORKER)
        assert marker in _read_all(worker, f"{PREFIX}.commands", f"{PREFIX}-worker-check")
        for topic in (f"{PREFIX}.legs", f"{PREFIX}.events"):
            assert marker not in _read_all(worker, topic, f"{PREFIX}-worker-check")

    def test_worker_commits_a_transaction_with_group_offsets(self, secure, ledger_topics):
        from confluent_kafka import Consumer, Producer, TopicPartition

        broker, _, _ = secure
        marker = f"event-{uuid.uuid4().hex[:8]}".encode()
        assert _deliver(_config(broker, APP), f"{PREFIX}.commands", b"cmd-" + marker) is None

        worker = _config(broker, WORKER)
        group = f"{PREFIX}-worker"
        consumer = Consumer({**worker, "group.id": group, "enable.auto.commit": False,
                             "auto.offset.reset": "earliest",
                             "isolation.level": "read_committed"})
        producer = Producer({**worker, "transactional.id": f"{PREFIX}-worker-w1"})
        try:
            producer.init_transactions(30)
            consumer.subscribe([f"{PREFIX}.commands"])
            seen = None
            deadline = time.monotonic() + 60
            while seen is None:
                assert time.monotonic() < deadline, "the worker consumed no command"
                msg = consumer.poll(0.5)
                if msg is not None:
                    assert msg.error() is None, msg.error()
                    if msg.value() == b"cmd-" + marker:
                        seen = msg
            producer.begin_transaction()
            producer.produce(f"{PREFIX}.events", key=b"k", value=marker)
            producer.send_offsets_to_transaction(
                [TopicPartition(seen.topic(), seen.partition(), seen.offset() + 1)],
                consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(30)
            committed = consumer.committed([TopicPartition(seen.topic(), seen.partition())],
                                           timeout=30)
            assert committed[0].offset == seen.offset() + 1
        finally:
            consumer.close()
        # The app (READ on events) sees the committed event.
        assert marker in _read_all(_config(broker, APP), f"{PREFIX}.events",
                                   f"{PREFIX}-client-{uuid.uuid4()}")

    def test_wrong_password_fails_with_an_authentication_error(self, secure):
        from confluent_kafka import KafkaError

        broker, _, _ = secure
        error, elapsed = _first_error(_config(broker, APP, **{"sasl.password": "wrong"}))
        assert error is not None, "no error within 30 s"
        assert error.code() == KafkaError._AUTHENTICATION, error
        assert elapsed < 30

    def test_client_without_the_ca_fails_with_an_ssl_error(self, secure):
        from confluent_kafka import KafkaError

        broker, _, _ = secure
        config = _config(broker, APP)
        del config["ssl.ca.location"]
        error, elapsed = _first_error(config)
        assert error is not None, "no error within 30 s"
        assert error.code() == KafkaError._SSL, error
        assert elapsed < 30

    def test_cli_status_stop_and_restart_keep_credentials_and_acls(self, secure, ledger_topics):
        from confluent_kafka import KafkaError

        broker, (port, controller_port), _ = secure
        passwords = _passwords(broker)
        code, output = _run_cli("status", "--run-dir", str(broker.run_dir))
        assert code == 0
        assert f"(pid {broker.pid})" in output and str(broker.client_properties[APP]) in output
        assert not any(p in output for p in passwords.values())

        code, output = _run_cli("stop", "--run-dir", str(broker.run_dir))
        assert code == 0 and f"stopped broker (pid {broker.pid})" in output
        with pytest.raises(ProcessLookupError):
            os.kill(broker.pid, 0)
        assert localkafka.status(broker.run_dir) is None

        with pytest.raises(RuntimeError, match="formatted with --secure"):
            localkafka.start_broker(broker.run_dir, secure=False)
        again = localkafka.start_broker(broker.run_dir, port=port,
                                        controller_port=controller_port)
        try:
            assert again.secure and again.bootstrap == broker.bootstrap
            assert _passwords(again) == passwords
            assert localkafka.status(again.run_dir) == again
            # Credentials and ACLs live in the cluster metadata: both survived.
            assert _deliver(_config(again, APP), f"{PREFIX}.commands", b"after restart") is None
            err = _deliver(_config(again, APP), f"{PREFIX}.events", b"after restart")
            assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
        finally:
            assert localkafka.stop_broker(again)
