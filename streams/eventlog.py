"""Reading the committed event log (read_committed): the one reader.

:class:`CommittedLog` is the only consumer of the event log for reading it
back: a worker's catch-up (``streams/processor.py``), replay, verify and
snapshots (``streams/replay.py``) and the CLI all read through it. It reads
each partition from a start offset to an end, or a stop offset,
read_committed: the end is known by the EOF event carrying the end offset,
since the position does not move past a trailing control record (an abort
marker) when no message follows it. Two ends: :meth:`CommittedLog.end_offsets`
is what is committed now (the broker's last stable offset, short of the
first record of a transaction still open), what replay reads to;
:meth:`CommittedLog.log_bounds` ends at the high watermark, records of open
transactions included, what a worker's catch-up reads to: a previous
owner's transaction still open holds read_committed short of it until the
broker commits or aborts it, so a caller measures progress
(``CommittedLog.progress_at``) to tell waiting from stalled.

The log holds account records (events and rejections) and, on every
partition, ``PartitionTick`` records that only mark time (see
``streams/processor.py``). :func:`read_log` yields the account records
decoded; with ``ticks=True`` it yields the ticks too.

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

from confluent_kafka import Consumer, KafkaError, TopicPartition

from schemas import codec
from streams.config import Settings
from streams.topics import consume_ready, watermarks

_EOF = KafkaError._PARTITION_EOF

# librdkafka stops fetching a partition whose local queue holds more than
# queued.min.messages (100,000) and looks again fetch.queue.backoff.ms later:
# 1,000 ms by default. A reader of the whole log drains a partition faster
# than that, so one consumer read 160,000 records/s and sat idle between
# (1,000,000 records, 6 partitions, read_committed; replay was bound by it,
# not by its CPU). Looking again after 50 ms: 550,000-650,000 records/s for
# the same CPU per record (librdkafka 2.16, CONFIGURATION.md).
READER_FETCH_QUEUE_BACKOFF_MS = 50


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

    def __reduce__(self):  # raised in a helper process, re-raised in its parent
        return NotFinal, (self.as_of_ms, self.watermarks)


class CommittedLog:
    """One read_committed pass over some partitions of the event log.

    ``start(starts, ends)`` assigns each partition at ``starts[p]``; then
    each :meth:`batch` returns the next committed records (confluent-kafka
    Messages, data only, in offset order per partition). A partition has
    *reached its end* once a record or EOF at or past ``ends[p]`` was seen:
    it is then in ``reached`` and leaves ``remaining``. With ``cut`` (the
    default) records at or past the end are dropped and the partition is
    paused; without it they keep coming (a follower, or a catch-up that
    takes everything committed) until :meth:`stop` is called for it.
    ``positions[p]`` is the next offset to read (past a trailing commit
    marker once its EOF is seen).
    """

    def __init__(self, settings: Settings, group_id: str, **config):
        self.topic = settings.events_topic
        self._settings = settings
        self._group_id = group_id
        self._consumer = Consumer(settings.kafka(**{
            "group.id": group_id,  # never commits: positions are the caller's
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "fetch.queue.backoff.ms": READER_FETCH_QUEUE_BACKOFF_MS,
            **config,
        }))
        self.ends: dict[int, int] = {}
        self.positions: dict[int, int] = {}
        self.eofs: dict[int, int] = {}  # partition -> offset of the last EOF seen
        self.remaining: set[int] = set()  # end not reached yet
        self.reached: set[int] = set()
        self.stopped: set[int] = set()
        self.cut = True
        self.progress_at = time.monotonic()  # the last time anything arrived

    def end_offsets(self, partitions) -> dict[int, int]:
        """The end of each partition's committed records, now: read_committed,
        the broker answers the last stable offset, which stops before the
        first record of a transaction still open."""
        return {p: watermarks(self._consumer, self.topic, p)[1] for p in partitions}

    def log_bounds(self, partitions) -> dict[int, tuple[int, int]]:
        """(start, end) offsets of each partition, now. The end is the high
        watermark, records of transactions still open included: the end a
        catch-up must pass before its store may be acted on. Reaching it waits
        for every such transaction to commit or abort (a previous owner's
        commit landing after we took over would otherwise be missing from the
        store)."""
        probe = Consumer(self._settings.kafka(**{
            "group.id": self._group_id, "isolation.level": "read_uncommitted"}))
        try:
            return {p: watermarks(probe, self.topic, p) for p in partitions}
        finally:
            probe.close()

    def start(self, starts: dict[int, int], ends: dict[int, int], *, cut: bool = True,
              also: tuple[int, ...] = ()) -> None:
        """Read the partitions of ``ends`` whose end is past their start (and
        the partitions in ``also``, even if at their end: a follower)."""
        self.cut = cut
        self.ends = dict(ends)
        self.positions = {p: starts.get(p, 0) for p in set(ends) | set(also)}
        self.remaining = {p for p, end in ends.items() if end > self.positions[p]}
        self.reached = set(ends) - self.remaining
        assigned = sorted(self.remaining | set(also))
        if assigned:
            self._consumer.assign([TopicPartition(self.topic, p, self.positions[p])
                                   for p in assigned])
        self.progress_at = time.monotonic()

    def stop(self, p: int) -> None:
        """No more records of partition p (those already fetched are dropped)."""
        if p not in self.stopped:
            self.stopped.add(p)
            self._consumer.pause([TopicPartition(self.topic, p)])

    def _reach(self, p: int) -> None:
        self.remaining.discard(p)
        self.reached.add(p)
        if self.cut:
            self.stop(p)

    def batch(self, timeout_s: float, max_records: int = 5000) -> list:
        messages = consume_ready(self._consumer, max_records, timeout_s)
        if not messages:
            return messages
        self.progress_at = time.monotonic()
        out = []
        append = out.append
        stopped, remaining, ends, positions = self.stopped, self.remaining, self.ends, \
            self.positions
        for msg in messages:
            p = msg.partition()
            if p in stopped:
                continue  # fetched before the pause
            offset = msg.offset()
            if msg.error() is not None:
                if msg.error().code() == _EOF:
                    self.eofs[p] = offset
                    if offset > positions[p]:
                        positions[p] = offset
                    if p in remaining and offset >= ends[p]:
                        self._reach(p)
                continue
            if p in remaining and offset >= ends[p]:
                self._reach(p)
            if self.cut and offset >= ends.get(p, 0):
                continue  # past the end
            positions[p] = offset + 1
            append(msg)
        return out

    def close(self) -> None:
        self._consumer.close()


def read_log(settings: Settings, timeout_s: float = 30.0,
             start_offsets: dict[int, int] | None = None,
             stop_offsets: dict[int, int] | None = None, *, ticks: bool = False,
             final_after_ms: int | None = None, wait_s: float = 0.0,
             partitions=None, ends: dict[int, int] | None = None):
    """Yield (partition, offset, record) of the committed event log, then stop.

    Reads each partition from ``start_offsets`` (default 0) to its end as it
    was when reading began, or to ``stop_offsets`` (exclusive) if given.
    Records are account records (``domain`` events and ``CommandRejected``),
    decoded; ``PartitionTick`` records are skipped unless ``ticks``.
    Raises TimeoutError if nothing arrives for ``timeout_s`` before the ends.

    ``final_after_ms``: then follow (see the module doc), up to ``wait_s``,
    and raise :class:`NotFinal` if some partition is not final as of it.
    ``partitions``: read only these (default all). ``ends``: the committed
    ends (:meth:`CommittedLog.end_offsets`) if the caller asked already.
    """
    if final_after_ms is not None and stop_offsets is not None:
        raise ValueError("final_after_ms reads past the ends: not with stop_offsets")
    follow = final_after_ms is not None
    partitions = range(settings.partitions) if partitions is None else sorted(partitions)
    reader = CommittedLog(settings, f"{settings.topic_prefix}-reader",
                          **{"fetch.wait.max.ms": 20})  # following the tail
    decode = codec.decode_record
    try:
        ends = reader.end_offsets(partitions) if ends is None else \
            {p: ends[p] for p in partitions}
        if stop_offsets is not None:
            ends = {p: min(end, stop_offsets.get(p, 0)) for p, end in ends.items()}
        reader.start(start_offsets or {}, ends, cut=not follow,
                     also=tuple(partitions) if follow else ())
        if not follow and not reader.remaining:
            return
        newest: dict[int, int | None] = {p: None for p in partitions}
        final: set[int] = set()  # saw a record stamped after final_after_ms
        wait_deadline = None
        while True:
            if not reader.remaining:
                if not follow or len(reader.stopped) == len(partitions):
                    return
                if wait_deadline is None:
                    # Every end is read; now wait for the partitions not final yet.
                    wait_deadline = time.monotonic() + wait_s
                elif time.monotonic() > wait_deadline:
                    raise NotFinal(final_after_ms, {p: newest[p] for p in partitions
                                                    if p not in final})
            for msg in reader.batch(0.05 if wait_deadline else 0.2, 1000):
                p = msg.partition()
                if follow and p in final and p in reader.reached:
                    reader.stop(p)  # records past a final end are all after T
                    continue
                record, command_hash = decode(msg.value())
                if follow:
                    if newest[p] is None or record.recorded_at_ms > newest[p]:
                        newest[p] = record.recorded_at_ms
                    if record.recorded_at_ms > final_after_ms:
                        final.add(p)
                if ticks or command_hash is not None:  # None: a PartitionTick
                    yield p, msg.offset(), record
            if follow:
                for p in final & reader.reached:
                    reader.stop(p)
            if wait_deadline is None and time.monotonic() - reader.progress_at > timeout_s:
                raise TimeoutError(f"event log did not reach its end within {timeout_s}s")
    finally:
        reader.close()
