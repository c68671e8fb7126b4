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
    ]


class TopicMismatch(RuntimeError):
    """An existing topic does not have the partition count the ledger needs."""


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Create missing topics; refuse to run on topics with the wrong shape."""
    from confluent_kafka.admin import AdminClient, NewTopic
    from confluent_kafka import KafkaException, KafkaError

    admin = AdminClient(settings.kafka())
    specs = topic_specs(settings)
    existing = admin.list_topics(timeout=timeout_s).topics
    missing = [s for s in specs if s.name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, 1 if _single_node(admin) else 3, config=s.config)
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


_TRANSIENT = (6, 3, 5)  # NOT_LEADER_OR_FOLLOWER, UNKNOWN_TOPIC_OR_PART, LEADER_NOT_AVAILABLE


def _single_node(admin) -> bool:
    return len(admin.list_topics(timeout=10).brokers) < 3
