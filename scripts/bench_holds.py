"""Holds placed and captured per second with one worker, and retry -> reply latency.

    .venv/bin/python scripts/bench_holds.py [--holds 10000] [--accounts 1000]
                                            [--workers 1] [--retries 200]

Fresh topics; KAFKA_BOOTSTRAP_SERVERS or the local broker (started if needed).

  throughput  N holds and then a capture of each (no destination: one step)
              are already in the commands topic when the worker starts; time
              from the worker ready to the last HoldCaptured visible
              (read_committed). Reported as holds placed and captured per
              second (2 commands each).
  retry       R commands already applied are sent again with wait=True, one
              at a time (a client retrying after a timeout): the time from the
              send to its reply ("duplicate": true), p50/p99/max.
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
from streams.localkafka import free_port  # noqa: E402
from streams.topics import ensure_topics, watermarks  # noqa: E402


class CaptureWatcher:
    """Counts HoldCaptured records as they become visible."""

    def __init__(self, settings):
        self.captured = 0
        self.last_at = 0.0
        self._stop = threading.Event()
        self._consumer = Consumer(settings.kafka(**{
            "group.id": f"{settings.topic_prefix}-client-bench-{uuid.uuid4()}",
            "isolation.level": "read_committed", "fetch.wait.max.ms": 20,
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
                    continue
                record, _ = codec.decode_outcome(msg.value())
                if isinstance(record, domain.HoldCaptured):
                    self.captured += 1
                    self.last_at = time.monotonic()

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holds", type=int, default=10_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--retries", type=int, default=200)
    args = parser.parse_args()
    rng = random.Random(11)
    settings = _settings_with_local_broker(start=True).with_(
        topic_prefix=f"bho-{uuid.uuid4().hex[:8]}")
    ensure_topics(settings)
    ids = [f"acct-{i}" for i in range(args.accounts)]
    data_root = Path(tempfile.mkdtemp(prefix="ledger-bho-"))
    processes, ports = [], [free_port() for _ in range(args.workers)]
    try:
        with LedgerClient(settings) as client:
            for a in ids:
                client.open_account(a, "EUR", command_id=f"open-{a}")
                client.credit(a, 10**12, "EUR", command_id=f"fund-{a}")
            holds = [domain.PlaceHold(f"h-{n}", rng.choice(ids), rng.randrange(1, 1000), "EUR")
                     for n in range(args.holds)]
            for h in holds:
                client.send_nowait(h)
            for h in holds:
                client.send_nowait(domain.CaptureHold(f"k-{h.command_id}", h.account_id,
                                                      h.command_id))
            client.flush(120)
            watcher = CaptureWatcher(settings)
            for w, port in enumerate(ports):
                env = {**os.environ, "PYTHONPATH": str(REPO), **settings.with_(
                    data_dir=data_root / f"w{w}", worker_id=f"bho-{w}",
                    web_port=port).to_env()}
                log = open(data_root / f"w{w}.log", "w")
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "streams.cli", "worker", "--loglevel", "warning"],
                    env=env, stdout=log, stderr=subprocess.STDOUT))
            for port in ports:
                _wait_http(f"http://127.0.0.1:{port}/v1/health", 120)
            started = time.monotonic()
            while watcher.captured < args.holds:
                time.sleep(0.05)
            elapsed = watcher.last_at - started
            watcher.close()
            print(f"throughput: {args.holds:,} holds placed and captured ({2 * args.holds:,} "
                  f"commands) in {elapsed:.2f}s = {args.holds / elapsed:,.0f} holds/s "
                  f"({2 * args.holds / elapsed:,.0f} commands/s) with {args.workers} "
                  f"worker(s)")

            took = []
            for h in rng.sample(holds, min(args.retries, len(holds))):
                sent = time.monotonic()
                outcome = client.send(h, wait=True, timeout_s=30)
                took.append((time.monotonic() - sent) * 1000)
                assert outcome.duplicate and outcome.status == "applied", outcome
        took.sort()
        print(f"retry -> reply: {len(took)} retries of applied holds, one at a time: "
              f"p50 {took[len(took) // 2]:.1f} ms, p99 {took[int(len(took) * 0.99) - 1]:.1f} "
              f"ms, max {took[-1]:.1f} ms")
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
