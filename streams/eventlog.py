"""Reading the committed event log from the start (read_committed)."""

from __future__ import annotations

import time

from streams.config import Settings


def read_log(settings: Settings, timeout_s: float = 30.0, raw: bool = False,
             start_offsets: dict[int, int] | None = None,
             stop_offsets: dict[int, int] | None = None):
    """Yield (partition, offset, record) of the committed event log, then stop.

    Reads each partition from ``start_offsets`` (default 0) to its end as it
    was when reading began, or to ``stop_offsets`` (exclusive) if given.
    """
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    from schemas import codec
    from streams.topics import watermarks

    consumer = Consumer(settings.kafka(**{
        "group.id": f"{settings.topic_prefix}-reader",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        # The end of a partition is an EOF event with its offset: the position
        # does not move past a trailing abort marker (see processor._catch_up).
        "enable.partition.eof": True,
    }))
    topic = settings.events_topic
    try:
        starts = {p: (start_offsets or {}).get(p, 0) for p in range(settings.partitions)}
        ends = {p: watermarks(consumer, topic, p)[1] for p in range(settings.partitions)}
        if stop_offsets is not None:
            ends = {p: min(end, stop_offsets.get(p, 0)) for p, end in ends.items()}
        todo = {p for p, end in ends.items() if end > starts[p]}
        if not todo:
            return
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in todo])
        deadline = time.monotonic() + timeout_s
        while todo:
            for msg in consumer.consume(1000, timeout=0.2):
                if msg.error():
                    if (msg.error().code() == KafkaError._PARTITION_EOF
                            and msg.offset() >= ends[msg.partition()]):
                        todo.discard(msg.partition())
                    continue
                if msg.partition() not in todo:
                    continue
                if msg.offset() >= ends[msg.partition()]:
                    todo.discard(msg.partition())  # past the stop offset: done
                    continue
                value = msg.value() if raw else codec.decode_outcome(msg.value())[0]
                yield msg.partition(), msg.offset(), value
                deadline = time.monotonic() + timeout_s
            if time.monotonic() > deadline:
                raise TimeoutError(f"event log did not reach its end within {timeout_s}s")
    finally:
        consumer.close()
