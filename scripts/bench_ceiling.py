"""The ceiling for scripts/bench: a plain transactional copy loop, no ledger logic.

    python scripts/bench_ceiling.py --input T --output T --group G \
        --transactional-id ID --batch-size 1000 --partitions 6 --expect N

Its clients take their configuration from ``streams.config.Settings``
(KAFKA_BOOTSTRAP_SERVERS, LEDGER_KAFKA_CONFIG, LEDGER_KAFKA_*: scripts/bench
gives it a worker's ``Settings.to_env()``), so it runs as the worker principal
on a secured cluster; ``--bootstrap`` overrides the address.

The same shape as the ledger's core (streams/processor.py) with everything
ledger-specific taken out: one confluent-kafka consumer (read_committed,
range assignment, no auto commit) and one transactional producer; per
``consume(batch_size)`` one Kafka transaction that produces one record per
input record (the input's key and bytes) to the output partition with the
same number as the input's, then ``send_offsets_to_transaction`` with the
consumer's group metadata and ``commit_transaction``. No decoding, no state,
no RocksDB, no explicit flush (``commit_transaction`` flushes).

It is run by scripts/bench as a subprocess, so it has an interpreter of its
own like a worker. It prints ``READY`` once it owns all its partitions, then,
after ``--expect`` records, one JSON line with its own timings
(``time.monotonic()``: CLOCK_MONOTONIC, the same clock in every
process on Linux) and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition  # noqa: E402

from streams.config import Settings  # noqa: E402
from streams.processor import CONSUMER_TUNING, PRODUCER_TUNING  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=None,
                        help="default: KAFKA_BOOTSTRAP_SERVERS (streams.config.Settings)")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--transactional-id", required=True)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--expect", type=int, required=True)
    args = parser.parse_args()

    stop = False

    def on_term(_signum, _frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)

    settings = Settings.from_env()
    if args.bootstrap:
        settings = settings.with_(bootstrap_servers=args.bootstrap)
    consumer = Consumer(settings.kafka(**{
        "group.id": args.group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "range",
        **CONSUMER_TUNING,  # as the ledger's consumer
    }))
    producer = Producer(settings.kafka(**{
        "transactional.id": args.transactional_id,
        "transaction.timeout.ms": 60_000,
        "enable.idempotence": True,
        **PRODUCER_TUNING,  # as the ledger's producer
        # Experiments only (scripts/bench never sets it): extra producer settings.
        **json.loads(os.environ.get("BENCH_CEILING_PRODUCER_CONFIG", "{}")),
    }))
    producer.init_transactions(30)

    assigned: set[int] = set()

    def on_assign(_consumer, partitions):
        assigned.update(tp.partition for tp in partitions)
        if len(assigned) == args.partitions:
            print("READY", flush=True)

    consumer.subscribe([args.input], on_assign=on_assign)
    first_consumed = None
    records = transactions = 0
    # Where the loop's time goes, once the first record has arrived.
    spent = {"consume": 0.0, "produce": 0.0, "send_offsets": 0.0, "commit": 0.0}
    try:
        while not stop and records < args.expect:
            t = time.perf_counter()
            messages = consumer.consume(args.batch_size, timeout=0.1)
            if not messages:
                continue
            if first_consumed is None:
                first_consumed = time.monotonic()
                cpu_first = time.process_time()
            else:
                spent["consume"] += time.perf_counter() - t
            t = time.perf_counter()
            producer.begin_transaction()
            offsets: dict[int, int] = {}
            for msg in messages:
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        print(f"consume error: {msg.error()}", file=sys.stderr)
                    continue
                p = msg.partition()
                while True:
                    try:
                        producer.produce(args.output, msg.value(), msg.key(), partition=p)
                        break
                    except BufferError:
                        producer.poll(0.01)
                offsets[p] = msg.offset() + 1
                records += 1
            spent["produce"] += time.perf_counter() - t
            t = time.perf_counter()
            producer.send_offsets_to_transaction(
                [TopicPartition(args.input, p, o) for p, o in offsets.items()],
                consumer.consumer_group_metadata(), 30)
            spent["send_offsets"] += time.perf_counter() - t
            t = time.perf_counter()
            producer.commit_transaction(30)
            spent["commit"] += time.perf_counter() - t
            transactions += 1
        last_commit = time.monotonic()
        cpu_seconds = time.process_time() - cpu_first if first_consumed else None
    finally:
        consumer.close()
    print(json.dumps({"first_consumed": first_consumed, "last_commit": last_commit,
                      "records": records, "transactions": transactions,
                      # This process's CPU time (every thread, librdkafka's
                      # too) from the first record consumed to the last commit.
                      "cpu_seconds": cpu_seconds,
                      "seconds": {k: round(v, 3) for k, v in spent.items()}}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
