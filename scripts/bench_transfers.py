"""Transfers completed per second (both legs), and submit-to-completed latency.

    .venv/bin/python scripts/bench_transfers.py [--transfers 20000] [--accounts 1000]
                                                [--workers 1] [--rate 300] [--seconds 20]

Fresh topics; KAFKA_BOOTSTRAP_SERVERS or the local broker (started if needed).

  throughput  N transfers among funded accounts (all partitions) are already in
              the commands topic when the workers start; time from all workers
              ready to the last TransferCompleted visible (read_committed).
  latency     an open-loop sender submits transfers at a fixed rate (never
              waiting for outcomes); for each, the time from submit to its
              TransferCompleted visible to a read_committed consumer: p50/p99.

A transfer is three steps, each its own transaction: debit at the source,
credit leg at the destination, settle leg back at the source.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from confluent_kafka import Consumer, TopicPartition  # noqa: E402

from ledger import domain  # noqa: E402
from schemas import codec  # noqa: E402
from streams.cli import _settings_with_local_broker, _wait_http  # noqa: E402
from streams.client import LedgerClient  # noqa: E402
from streams.topics import ensure_topics, watermarks  # noqa: E402


class CompletionWatcher:
    """Records when each transfer's TransferCompleted becomes visible."""

    def __init__(self, settings):
        self.completed: dict[str, float] = {}
        self._stop = threading.Event()
        # Named as a ledger client (<prefix>-client-*): the app principal's ACLs.
        self._consumer = Consumer(settings.kafka(**{
            "group.id": f"{settings.topic_prefix}-client-bench-{uuid.uuid4()}",
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 20,
            "enable.auto.commit": False}))
        topic = settings.events_topic
        self._consumer.assign([TopicPartition(topic, p, watermarks(self._consumer, topic, p)[1])
                               for p in range(settings.partitions)])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            for msg in self._consumer.consume(1000, timeout=0.1):
                if msg.error() or codec.is_tick(msg.value()):
                    continue  # a PartitionTick marks time on a partition
                record, _ = codec.decode_outcome(msg.value())
                if isinstance(record, domain.TransferCompleted):
                    self.completed[record.transfer_id] = time.monotonic()

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transfers", type=int, default=20_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rate", type=int, default=300, help="latency run: transfers/s")
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    rng = random.Random(3)
    settings = _settings_with_local_broker(start=True).with_(
        topic_prefix=f"btr-{uuid.uuid4().hex[:8]}")
    ensure_topics(settings)
    ids = [f"acct-{i}" for i in range(args.accounts)]
    data_root = Path(tempfile.mkdtemp(prefix="ledger-btr-"))
    processes = []
    try:
        with LedgerClient(settings) as client:
            for a in ids:
                client.open_account(a, "EUR", command_id=f"open-{a}")
                client.credit(a, 10**12, "EUR", command_id=f"fund-{a}")
            batch = [domain.Transfer(f"bt-{n}", *rng.sample(ids, 2), rng.randrange(1, 1000),
                                     "EUR") for n in range(args.transfers)]
            for t in batch:
                client.send_nowait(t)
            client.flush(120)
            watcher = CompletionWatcher(settings)
            for w in range(args.workers):
                env = {**os.environ, "PYTHONPATH": str(REPO), **settings.with_(
                    data_dir=data_root / f"w{w}", worker_id=f"btr-{w}",
                    web_port=16100 + w).to_env()}
                log = open(data_root / f"w{w}.log", "w")
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "streams.cli", "worker", "--loglevel", "warning"],
                    env=env, stdout=log, stderr=subprocess.STDOUT))
            for w in range(args.workers):
                _wait_http(f"http://127.0.0.1:{16100 + w}/v1/health", 120)
            started = time.monotonic()
            wanted = {t.command_id for t in batch}
            while not wanted <= watcher.completed.keys():
                time.sleep(0.05)
            elapsed = time.monotonic() - started
            print(f"throughput: {args.transfers:,} transfers completed (3 steps each) in "
                  f"{elapsed:.1f}s = {args.transfers / elapsed:,.0f} transfers/s "
                  f"with {args.workers} worker(s)")

            submitted: dict[str, float] = {}
            interval = 1 / args.rate
            next_at = time.monotonic()
            end = next_at + args.seconds
            n = 0
            while next_at < end:  # open loop: the clock decides, not the outcomes
                now = time.monotonic()
                if now < next_at:
                    time.sleep(next_at - now)
                t = domain.Transfer(f"lt-{n}", *rng.sample(ids, 2), rng.randrange(1, 1000), "EUR")
                submitted[t.command_id] = time.monotonic()
                client.send_nowait(t)
                n += 1
                next_at += interval
            client.flush(60)
            deadline = time.monotonic() + 120
            while not submitted.keys() <= watcher.completed.keys() and time.monotonic() < deadline:
                time.sleep(0.05)
            watcher.close()
        latencies = sorted((watcher.completed[k] - v) * 1000 for k, v in submitted.items()
                           if k in watcher.completed)
        p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99) - 1]
        print(f"latency at {args.rate}/s open loop for {args.seconds:.0f}s "
              f"({len(latencies):,} of {len(submitted):,} completed): "
              f"p50 {p50:.0f} ms, p99 {p99:.0f} ms submit -> completed")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
