"""Tests of the local-broker tooling (streams/localkafka.py) and docker-compose.yml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from streams import localkafka

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.skipif(
    bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
    reason="KAFKA_BOOTSTRAP_SERVERS names an external broker; not starting a private one",
)
def test_private_broker_commits_a_transaction_and_stops(tmp_path):
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    broker = localkafka.start_broker(tmp_path / "kafka")
    try:
        assert localkafka.status(broker.run_dir) == broker

        topic = "localkafka-test"
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([NewTopic(topic, num_partitions=1)])[topic].result(30)

        # Transactions need the single-node settings of __transaction_state.
        producer = Producer({"bootstrap.servers": broker.bootstrap,
                             "transactional.id": f"localkafka-test-{uuid.uuid4()}"})
        producer.init_transactions(60)
        producer.begin_transaction()
        producer.produce(topic, key=b"k", value=b"committed")
        producer.commit_transaction(30)

        consumer = Consumer({"bootstrap.servers": broker.bootstrap,
                             "group.id": "localkafka-test",
                             "isolation.level": "read_committed",
                             "enable.auto.commit": False})
        try:
            consumer.assign([TopicPartition(topic, 0, 0)])
            msg = consumer.poll(30)
        finally:
            consumer.close()
        assert msg is not None and msg.error() is None
        assert msg.value() == b"committed"
    finally:
        stopped = localkafka.stop_broker(broker)

    assert stopped
    assert _gone(broker.pid)
    assert localkafka.status(broker.run_dir) is None
    assert not (broker.run_dir / "broker.pid").exists()
    assert localkafka.stop_broker(broker) is False  # stopping again is a no-op


def test_stop_broker_never_signals_an_unrelated_pid(tmp_path):
    # A stale pid file whose pid now belongs to another process (pid reuse).
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "broker.pid").write_text(f"{other.pid}\n")
        (tmp_path / "bootstrap.txt").write_text("127.0.0.1:1\n")
        assert localkafka.status(tmp_path) is None
        assert localkafka.stop_broker(tmp_path) is False
        assert other.poll() is None  # still running
        assert not (tmp_path / "broker.pid").exists()
    finally:
        other.kill()
        other.wait()


def test_docker_compose_file_parses():
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on PATH")
    if subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    result = subprocess.run([docker, "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
                            capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr


def test_docker_compose_worker_uses_the_internal_listener():
    # Runs without Docker: the worker must use an address the broker advertises.
    yaml = pytest.importorskip("yaml")
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    bootstrap = services["worker"]["environment"]["KAFKA_BOOTSTRAP_SERVERS"]
    assert f"://{bootstrap}" in advertised
