"""Reading the committed event log from the start (read_committed)."""

from __future__ import annotations

import time

from streams.config import Settings


def read_log(settings: Settings, timeout_s: float = 30.0, raw: bool = False):
    """Yield (partition, offset, record) of the committed event log, then stop."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    from schemas import codec
    from streams.topics import watermarks

    consumer = Consumer({
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": f"{settings.topic_prefix}-reader",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        # The end of a partition is an EOF event with its offset: the position
        # does not move past a trailing abort marker (see processor._catch_up).
        "enable.partition.eof": True,
    })
    topic = settings.events_topic
    try:
        ends = {p: watermarks(consumer, topic, p)[1] for p in range(settings.partitions)}
        todo = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, 0) for p in todo])
        deadline = time.monotonic() + timeout_s
        while todo:
            for msg in consumer.consume(1000, timeout=0.2):
                if msg.error():
                    if (msg.error().code() == KafkaError._PARTITION_EOF
                            and msg.offset() >= ends[msg.partition()]):
                        todo.discard(msg.partition())
                    continue
                value = msg.value() if raw else codec.decode_outcome(msg.value())[0]
                yield msg.partition(), msg.offset(), value
                deadline = time.monotonic() + timeout_s
            if time.monotonic() > deadline:
                raise TimeoutError(f"event log did not reach its end within {timeout_s}s")
    finally:
        consumer.close()
