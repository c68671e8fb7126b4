"""The local three-node KRaft cluster (localkafka.start_cluster, `ledger kafka start --brokers 3`).

One cluster per module, on free ports in a temporary directory; every node is
stopped by its own pid at the end, also when a test fails.  The tests run in
file order: the last one stops the cluster through the CLI.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest

from streams import localkafka

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.cluster,
    pytest.mark.skipif(
        bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
        reason="KAFKA_BOOTSTRAP_SERVERS names an external broker; not starting a private cluster",
    ),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    localkafka.ensure_jars()
    started = time.monotonic()
    cluster = localkafka.start_cluster(tmp_path_factory.mktemp("cluster"))
    print(f"three-node cluster ready in {time.monotonic() - started:.1f}s: {cluster.bootstrap}")
    _remember(cluster)
    try:
        yield cluster
    finally:
        localkafka.stop_cluster(cluster.run_dir)  # by each node's pid file
        for pid in _pids_ever(cluster):
            assert _gone(pid), f"pid {pid} still runs"


_STARTED: dict[str, set[int]] = {}


def _remember(cluster) -> None:
    _STARTED.setdefault(str(cluster.run_dir), set()).update(cluster.pids)


def _pids_ever(cluster) -> set[int]:
    return _STARTED.get(str(cluster.run_dir), set()) | set(cluster.pids)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _admin(cluster):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": cluster.bootstrap})


def _wait(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        time.sleep(0.2)


def _partitions(admin, topic: str):
    meta = admin.list_topics(topic, timeout=10).topics[topic]
    assert meta.error is None, meta.error
    return meta.partitions


def _fully_replicated(admin, topic: str) -> bool:
    meta = admin.list_topics(topic, timeout=10).topics[topic]
    if meta.error is not None:  # a new topic may not have reached every node's metadata yet
        return False
    parts = meta.partitions
    return bool(parts) and all(len(p.replicas) == 3 and sorted(p.isrs) == sorted(p.replicas)
                               and p.leader >= 0 for p in parts.values())


def _quorum_state(node) -> dict:
    return json.loads((node.run_dir / "data" / "__cluster_metadata-0" / "quorum-state").read_text())


def _topic_config(admin, topic: str) -> dict[str, str]:
    from confluent_kafka.admin import ConfigResource, ResourceType

    from confluent_kafka import KafkaError, KafkaException

    resource = ConfigResource(ResourceType.TOPIC, topic)
    deadline = time.monotonic() + 30
    while True:
        try:
            configs = admin.describe_configs([resource])[resource].result(30)
            return {name: entry.value for name, entry in configs.items()}
        except KafkaException as exc:
            # The broker asked may not have the new topic's metadata yet.
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART \
                    or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_three_nodes_form_a_three_voter_quorum(cluster):
    _remember(cluster)
    assert [n.node_id for n in cluster.nodes] == [1, 2, 3]
    assert cluster.bootstrap.split(",") == [f"127.0.0.1:{n.port}" for n in cluster.nodes]
    assert len(set(cluster.pids)) == 3
    for node in cluster.nodes:
        assert node.run_dir == cluster.run_dir / f"node-{node.node_id}"
        assert (node.run_dir / "broker.pid").read_text().strip() == str(node.pid)
        assert "-Xmx512m" in (open(f"/proc/{node.pid}/cmdline").read().split("\0"))
    assert localkafka.status(cluster.run_dir) == cluster

    assert set(_admin(cluster).list_topics(timeout=10).brokers) == {1, 2, 3}
    states = [_quorum_state(n) for n in cluster.nodes]
    for state in states:
        assert sorted(v["voterId"] for v in state["currentVoters"]) == [1, 2, 3]
    assert len({s["leaderId"] for s in states}) == 1  # all agree on the controller


def test_nodes_are_fenced_after_the_documented_session(cluster):
    from confluent_kafka.admin import ConfigResource, ResourceType

    admin = _admin(cluster)
    for node in cluster.nodes:
        resource = ConfigResource(ResourceType.BROKER, str(node.node_id))
        configs = admin.describe_configs([resource])[resource].result(30)
        assert configs["broker.session.timeout.ms"].value == str(localkafka.BROKER_SESSION_MS)
        assert configs["broker.heartbeat.interval.ms"].value == str(
            localkafka.BROKER_HEARTBEAT_MS)


def test_topics_and_internal_topics_get_three_replicas_and_min_isr_2(cluster):
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import NewTopic

    admin = _admin(cluster)
    explicit, default = f"rf3-{uuid.uuid4().hex[:8]}", f"dflt-{uuid.uuid4().hex[:8]}"
    futures = admin.create_topics([
        NewTopic(explicit, 3, 3, config={"min.insync.replicas": "2"}),
        NewTopic(default),  # the broker defaults: 6 partitions, RF 3, min ISR 2
    ])
    for future in futures.values():
        future.result(30)
    for topic in (explicit, default):
        _wait(lambda: _fully_replicated(admin, topic), 30, f"{topic} has 3 in-sync replicas")
        assert _topic_config(admin, topic)["min.insync.replicas"] == "2"
    assert len(_partitions(admin, explicit)) == 3
    assert len(_partitions(admin, default)) == 6

    # A transaction with consumer offsets creates both internal topics.
    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": group,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    producer = Producer({"bootstrap.servers": cluster.bootstrap,
                         "transactional.id": f"tx-{uuid.uuid4().hex[:8]}"})
    try:
        producer.init_transactions(60)
        producer.begin_transaction()
        producer.produce(explicit, key=b"k", value=b"v")
        consumer.subscribe([explicit])
        _wait(lambda: (consumer.poll(0.5), consumer.assignment())[1], 60,
              "the consumer gets its partitions")
        producer.send_offsets_to_transaction([TopicPartition(explicit, 0, 1)],
                                             consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(30)
    finally:
        consumer.close()
    for internal in ("__transaction_state", "__consumer_offsets"):
        _wait(lambda: _fully_replicated(admin, internal), 30, f"{internal} has 3 replicas")
    assert _topic_config(admin, "__transaction_state")["min.insync.replicas"] == "2"


def test_acks_all_still_acknowledged_with_the_controller_node_killed(cluster, capsys):
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import NewTopic

    admin = _admin(cluster)
    topic = f"kill-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, 1, 3)])[topic].result(30)
    _wait(lambda: _fully_replicated(admin, topic), 30, f"{topic} has 3 in-sync replicas")

    # The active controller, to show the quorum elects another one.
    victim = cluster.node(_quorum_state(cluster.nodes[0])["leaderId"])
    old_pid = victim.pid
    assert localkafka.kill_node(cluster, victim.node_id)
    try:
        assert _gone(old_pid) and victim.pid is None
        assert not (victim.run_dir / "broker.pid").exists()
        assert localkafka.main(["status", "--run-dir", str(cluster.run_dir)]) == 1
        out = capsys.readouterr().out
        assert "2 of 3 nodes running" in out and f"node {victim.node_id}:" in out
        assert "not running" in out

        survivors = ",".join(n.bootstrap for n in cluster.nodes if n is not victim)
        producer = Producer({"bootstrap.servers": survivors, "acks": "all",
                             "enable.idempotence": True, "message.timeout.ms": 60_000})
        reports = []
        started = time.monotonic()
        for i in range(50):
            producer.produce(topic, value=b"m%d" % i,
                             on_delivery=lambda err, msg: reports.append(err))
        assert producer.flush(90) == 0
        print(f"50 acks=all writes with node {victim.node_id} down took "
              f"{time.monotonic() - started:.1f}s")
        assert reports == [None] * 50

        parts = _partitions(_admin(cluster), topic)
        assert victim.node_id not in parts[0].isrs and len(parts[0].isrs) == 2
        assert localkafka.out_of_sync(cluster)[f"{topic}-0"] == [victim.node_id]
        others = [n for n in cluster.nodes if n is not victim]
        _wait(lambda: _quorum_state(others[0])["leaderId"] != victim.node_id, 30,
              "another controller is elected")
    finally:
        localkafka.start_node(cluster, victim.node_id)
        _remember(cluster)
    assert victim.pid is not None and victim.pid != old_pid
    localkafka.wait_in_sync(cluster, timeout_s=60)  # every partition, this one included

    consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": topic,
                         "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        values = []
        deadline = time.monotonic() + 60
        while len(values) < 50 and time.monotonic() < deadline:
            msg = consumer.poll(1)
            if msg is not None and msg.error() is None:
                values.append(msg.value())
    finally:
        consumer.close()
    assert values == [b"m%d" % i for i in range(50)]


def test_cli_status_and_stop_cover_every_node(cluster, capsys):
    _remember(cluster)
    pids = {n.node_id: n.pid for n in cluster.nodes}
    assert localkafka.main(["status", "--run-dir", str(cluster.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 nodes running" in out
    assert f"bootstrap: {cluster.bootstrap}" in out
    for node_id, pid in pids.items():
        assert f"node {node_id}: 127.0.0.1:" in out and f"(pid {pid})" in out

    assert localkafka.main(["stop", "--run-dir", str(cluster.run_dir)]) == 0
    out = capsys.readouterr().out
    for node_id, pid in pids.items():
        assert f"stopped node {node_id} (pid {pid})" in out
        assert _gone(pid)
        assert not (cluster.run_dir / f"node-{node_id}" / "broker.pid").exists()
    assert localkafka.status(cluster.run_dir) is None
    assert localkafka.main(["status", "--run-dir", str(cluster.run_dir)]) == 1
    assert "no broker running" in capsys.readouterr().out
