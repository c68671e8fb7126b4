"""Reading the committed event log from the start (read_committed).

The log holds account records (events and rejections) and, on every
partition, ``PartitionTick`` records that only mark time (see
``streams/processor.py``). :func:`read_log` yields the account records; with
``ticks=True`` it yields the ticks too.

**Finality as of T.** Every record of a partition is stamped later than every
record committed before it there. So once a reader of partition p has seen a
record stamped *after* T, it has seen every record of p stamped at or before
T, and no such record will ever be added: p is final as of T. With
``final_after_ms=T``, :func:`read_log` reads each partition to its end and
then, for partitions not final as of T yet, keeps reading their new records
(for up to ``wait_s``) until each is; then it raises :class:`NotFinal`
naming the partitions that are still not.
"""

from __future__ import annotations

import time

from streams.config import Settings


class NotFinal(Exception):
    """Some partitions have no record stamped after T yet: a record stamped
    at or before T may still be committed there."""

    def __init__(self, as_of_ms: int, watermarks: dict[int, int | None]):
        self.as_of_ms = as_of_ms
        # partition -> newest recorded_at read on it (None: no record read)
        self.watermarks = dict(sorted(watermarks.items()))
        parts = ", ".join(f"{p} ({'nothing read' if w is None else f'recorded up to {w}'})"
                          for p, w in self.watermarks.items())
        super().__init__(f"partitions not final as of {as_of_ms} yet: {parts}")


def read_log(settings: Settings, timeout_s: float = 30.0, raw: bool = False,
             start_offsets: dict[int, int] | None = None,
             stop_offsets: dict[int, int] | None = None, *, ticks: bool = False,
             final_after_ms: int | None = None, wait_s: float = 0.0):
    """Yield (partition, offset, record) of the committed event log, then stop.

    Reads each partition from ``start_offsets`` (default 0) to its end as it
    was when reading began, or to ``stop_offsets`` (exclusive) if given.
    Records are account records (``domain`` events and ``CommandRejected``),
    decoded unless ``raw``; ``PartitionTick`` records are skipped unless
    ``ticks`` (the ticks are decoded too, unless ``raw``).

    ``final_after_ms``: then follow (see the module doc), up to ``wait_s``,
    and raise :class:`NotFinal` if some partition is not final as of it.
    """
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    from schemas import codec
    from streams.topics import watermarks

    if final_after_ms is not None and stop_offsets is not None:
        raise ValueError("final_after_ms reads past the ends: not with stop_offsets")
    consumer = Consumer(settings.kafka(**{
        "group.id": f"{settings.topic_prefix}-reader",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        # The end of a partition is an EOF event with its offset: the position
        # does not move past a trailing abort marker (see processor._catch_up).
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 20,  # following the tail: see streams/processor.py
    }))
    topic = settings.events_topic
    partitions = range(settings.partitions)
    follow = final_after_ms is not None
    try:
        starts = {p: (start_offsets or {}).get(p, 0) for p in partitions}
        ends = {p: watermarks(consumer, topic, p)[1] for p in partitions}
        if stop_offsets is not None:
            ends = {p: min(end, stop_offsets.get(p, 0)) for p, end in ends.items()}
        todo = {p for p, end in ends.items() if end > starts[p]}  # end not reached yet
        newest: dict[int, int | None] = {p: None for p in partitions}
        final: set[int] = set()  # saw a record stamped after final_after_ms
        stopped: set[int] = set()  # following: end reached and final
        assigned = set(partitions) if follow else todo
        if not assigned:
            return
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in sorted(assigned)])

        def stop(p: int) -> None:
            if p not in stopped:
                stopped.add(p)
                consumer.pause([TopicPartition(topic, p)])

        deadline = time.monotonic() + timeout_s
        wait_deadline = None
        while True:
            if not todo:
                if not follow or len(stopped) == len(partitions):
                    return
                if wait_deadline is None:
                    # Every end is read; now wait for the partitions not final yet.
                    wait_deadline = time.monotonic() + wait_s
                    for p in final:
                        stop(p)
                elif time.monotonic() > wait_deadline:
                    raise NotFinal(final_after_ms, {p: newest[p] for p in partitions
                                                    if p not in final})
            for msg in consumer.consume(1000, timeout=0.05 if wait_deadline else 0.2):
                p = msg.partition()
                if msg.error():
                    if (msg.error().code() == KafkaError._PARTITION_EOF
                            and msg.offset() >= ends[p]):
                        todo.discard(p)
                        if p in final:
                            stop(p)
                    continue
                if p in stopped:
                    continue  # fetched before the pause
                if msg.offset() >= ends[p]:
                    todo.discard(p)
                    if not follow:
                        continue  # past the stop offset: done
                    if p in final:
                        stop(p)  # records past a final end are all after T
                        continue
                value = msg.value()
                tick = codec.is_tick(value)
                if follow or not raw:
                    record = codec.decode_tick(value) if tick else codec.decode_outcome(value)[0]
                    if newest[p] is None or record.recorded_at_ms > newest[p]:
                        newest[p] = record.recorded_at_ms
                    if follow and record.recorded_at_ms > final_after_ms:
                        final.add(p)
                if not (tick and not ticks):
                    yield p, msg.offset(), value if raw else record
                deadline = time.monotonic() + timeout_s
            if wait_deadline is None and time.monotonic() > deadline:
                raise TimeoutError(f"event log did not reach its end within {timeout_s}s")
    finally:
        consumer.close()
