"""The one registry of ledger topics: name, partitions, key, value codec, config.

All ledger topics share the partition count and the key (account_id), so a
command and the events it causes live on the same partition number. Every
producer uses the murmur2 partitioner, as Kafka's Java client and aiokafka do
(librdkafka's default, CRC32, would put a key elsewhere).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from streams.config import Settings

# The replies topic's retention (streams/replies.py says why it may be finite).
REPLY_RETENTION_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    key: str
    value: str
    config: dict


def topic_specs(settings: Settings) -> list[TopicSpec]:
    forever = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}
    return [
        TopicSpec(settings.commands_topic, settings.partitions, "account_id (utf-8)",
                  "schemas/command.avsc, single-object encoding",
                  # Commands are replayable input; keep them a week.
                  {"retention.ms": str(7 * 24 * 3600 * 1000)}),
        TopicSpec(settings.events_topic, settings.partitions, "account_id (utf-8)",
                  "schemas/events/*.avsc, single-object encoding",
                  # The event log is the source of truth: never deleted.
                  forever),
        TopicSpec(settings.legs_topic, settings.partitions, "account_id (utf-8)",
                  "schemas/leg.avsc, single-object encoding; written only by workers",
                  # A leg must outlive any outage of its destination's worker.
                  forever),
        TopicSpec(settings.dead_letter_topic, settings.partitions, "original key",
                  "original bytes; headers ledger.error, ledger.source.*", forever),
        TopicSpec(settings.replies_topic, settings.partitions, "account_id (utf-8)",
                  "JSON, one reply per command (streams/replies.py); written only by workers",
                  # For waiting on outcomes; the event log stays the truth.
                  {"retention.ms": str(REPLY_RETENTION_MS), "cleanup.policy": "delete"}),
    ]


class TopicMismatch(RuntimeError):
    """A ledger topic is missing or has the wrong shape (partitions, retention)."""


def replication(settings: Settings, brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for new topics: as set, else
    min(3, brokers) and one less than that (but at least 1), so an event
    acknowledged by acks=all survives the loss of any one broker."""
    rf = settings.replication_factor or min(3, brokers)
    return rf, settings.min_insync_replicas or max(1, rf - 1)


class ClusterUnreachable(RuntimeError):
    """Kafka cannot be reached or refuses us (credentials, TLS trust)."""


# Errors that no retry will mend: say so at once instead of timing out.
_REFUSED_WORDS = ("authentication", "sasl", "ssl", "certificate", "handshake")


def connect_admin(settings: Settings, timeout_s: float = 20.0):
    """An admin client that has reached the cluster, and its metadata; raises
    ClusterUnreachable with librdkafka's reason (never a secret) otherwise."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    errors: list = []
    admin = AdminClient(settings.kafka(error_cb=errors.append))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return admin, admin.list_topics(timeout=1.0)
        except KafkaException as exc:
            errors.append(exc.args[0])
        refused = [e for e in errors if any(w in str(e).lower() for w in _REFUSED_WORDS)]
        if refused or time.monotonic() > deadline:
            reason = (refused or errors)[-1]
            raise ClusterUnreachable(
                f"cannot use Kafka at {settings.bootstrap_servers}: {reason.str()}"
                f"{' (check the credentials and the CA in LEDGER_KAFKA_*)' if refused else ''}")


def topic_id(settings: Settings, topic: str, timeout_s: float = 20.0) -> str:
    """The topic's id: a new one each time a topic of that name is created."""
    from confluent_kafka import TopicCollection

    admin, _metadata = connect_admin(settings, timeout_s)
    future = admin.describe_topics(TopicCollection([topic]),
                                   request_timeout=timeout_s)[topic]
    return str(future.result(timeout_s).topic_id)


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Create missing topics (unless settings.create_topics is off), then
    check every ledger topic's shape; raise TopicMismatch naming what is wrong
    (ClusterUnreachable if Kafka cannot be used at all)."""
    from confluent_kafka.admin import NewTopic
    from confluent_kafka import KafkaException, KafkaError

    admin, metadata = connect_admin(settings, min(timeout_s, 20.0))
    specs = topic_specs(settings)
    missing = [s for s in specs if s.name not in metadata.topics]
    if missing and not settings.create_topics:
        raise TopicMismatch(f"topics {', '.join(s.name for s in missing)} do not exist "
                            "(LEDGER_CREATE_TOPICS=0: create them with `ledger topics`)")
    if missing:
        rf, min_isr = replication(settings, len(metadata.brokers))
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, rf,
                      config={**s.config, "min.insync.replicas": str(min_isr)})
             for s in missing],
            operation_timeout=timeout_s,
        )
        for name, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    topics = _wait_for_leaders(admin, [s.name for s in specs], timeout_s)
    for spec in specs:
        have = len(topics[spec.name].partitions)
        if have != spec.partitions:
            raise TopicMismatch(
                f"topic {spec.name} has {have} partitions, the ledger needs {spec.partitions}"
            )
    _check_configs(admin, specs, timeout_s)


def _check_configs(admin, specs: list[TopicSpec], timeout_s: float) -> None:
    """The event log (and legs, dead letters) must keep everything forever."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import ConfigResource, ResourceType

    pending = [s for s in specs if s.config.get("retention.ms") == "-1"]
    deadline = time.monotonic() + timeout_s
    while pending:
        futures = admin.describe_configs(
            [ConfigResource(ResourceType.TOPIC, s.name) for s in pending],
            request_timeout=timeout_s)
        unknown = []
        for resource, future in futures.items():
            spec = next(s for s in pending if s.name == resource.name)
            try:
                described = future.result()
            except KafkaException as exc:
                # On a cluster the broker asked may not know a topic created
                # a moment ago (another broker took the creation): ask again.
                error = exc.args[0] if exc.args else None
                if (isinstance(error, KafkaError)
                        and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
                        and time.monotonic() < deadline):
                    unknown.append(spec)
                    continue
                raise
            actual = {name: entry.value for name, entry in described.items()}
            for name in ("retention.ms", "retention.bytes", "cleanup.policy"):
                if actual.get(name) != spec.config[name]:
                    raise TopicMismatch(
                        f"topic {spec.name} has {name}={actual.get(name)}, the ledger needs "
                        f"{spec.config[name]} (it must never delete an event)")
        pending = unknown
        if pending:
            time.sleep(0.2)


def _wait_for_leaders(admin, names: list[str], timeout_s: float):
    """A topic just created has no partition leaders for a moment; wait for them."""
    deadline = time.monotonic() + timeout_s
    while True:
        topics = admin.list_topics(timeout=timeout_s).topics
        if all(name in topics and topics[name].partitions and
               all(p.leader >= 0 for p in topics[name].partitions.values())
               for name in names):
            return topics
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics {names} have no leaders after {timeout_s}s")
        time.sleep(0.1)


def consume_ready(consumer, max_records: int, timeout_s: float) -> list:
    """What the consumer has fetched already, up to ``max_records``; if
    nothing, wait up to ``timeout_s`` for the first message and then take
    what else has arrived. ``consume(n, timeout)`` itself returns only once
    it has n messages or the timeout has passed: a read's last few records
    and its end-of-partition events waited out the whole timeout (0.2 s of
    a 0.55 s replay of 31,000 events), an idle step of a transfer 100 ms,
    and a benchmark's watcher saw outcomes up to the timeout late.

    A group member may have a rebalance callback served inside any of these
    calls, after records already returned: see Processor._give_back."""
    messages = consumer.consume(max_records, timeout=0)
    if not messages:
        messages = consumer.consume(1, timeout=timeout_s)
        if messages and max_records > 1:
            messages += consumer.consume(max_records - 1, timeout=0)
    return messages


def watermarks(consumer, topic: str, partition: int, timeout_s: float = 30.0):
    """(low, high) offsets, retrying the transient errors of a young topic."""
    from confluent_kafka import KafkaException, TopicPartition

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout_s)
        except KafkaException as exc:
            if time.monotonic() > deadline or not exc.args[0].retriable() and \
                    exc.args[0].code() not in _TRANSIENT:
                raise
            time.sleep(0.2)


def _transient() -> tuple[int, ...]:
    from confluent_kafka import KafkaError

    return (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART,
            KafkaError.LEADER_NOT_AVAILABLE)


_TRANSIENT = _transient()
