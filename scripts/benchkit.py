"""Shared by the small single-purpose benchmarks (bench_transfers.py,
bench_holds.py): a fresh ledger on the local broker, funded accounts, worker
processes started and stopped by pid, a read_committed watcher of the event
log, and quantiles."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from confluent_kafka import Consumer, TopicPartition  # noqa: E402

from schemas import codec  # noqa: E402
from streams.cli import _settings_with_local_broker, _wait_http  # noqa: E402
from streams.localkafka import free_port  # noqa: E402
from streams.topics import consume_ready, ensure_topics, watermarks  # noqa: E402


def fresh_ledger(name: str):
    """Settings of a ledger on fresh topics (KAFKA_BOOTSTRAP_SERVERS or the
    local broker, started if needed) and a temporary data root."""
    settings = _settings_with_local_broker(start=True).with_(
        topic_prefix=f"{name}-{uuid.uuid4().hex[:8]}")
    ensure_topics(settings)
    return settings, Path(tempfile.mkdtemp(prefix=f"ledger-{name}-"))


def fund(client, account_ids, currency: str = "EUR") -> None:
    """Open each account and credit it far more than any benchmark spends."""
    for a in account_ids:
        client.open_account(a, currency, command_id=f"open-{a}")
        client.credit(a, 10**12, currency, command_id=f"fund-{a}")


def start_workers(settings, data_root: Path, count: int, name: str) -> list:
    """Start ``count`` workers (own data dir, free web port, log in
    ``data_root``) and wait until each answers its health check."""
    processes, ports = [], [free_port() for _ in range(count)]
    for w, port in enumerate(ports):
        env = {**os.environ, "PYTHONPATH": str(REPO), **settings.with_(
            data_dir=data_root / f"w{w}", worker_id=f"{name}-{w}", web_port=port).to_env()}
        with open(data_root / f"w{w}.log", "w") as log:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", "--loglevel", "warning"],
                env=env, stdout=log, stderr=subprocess.STDOUT))
    for port in ports:
        _wait_http(f"http://127.0.0.1:{port}/v1/health", 120)
    return processes


def stop_workers(processes: list) -> None:
    """SIGTERM each worker started here, SIGKILL whichever is not gone in 30 s."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


class EventWatcher:
    """Calls ``on_record(record)`` for every account record that becomes
    visible (read_committed) on the event log from now on."""

    def __init__(self, settings, on_record):
        self._on_record = on_record
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
            for msg in consume_ready(self._consumer, 1000, 0.1):
                if msg.error() or codec.is_tick(msg.value()):
                    continue  # a PartitionTick marks time on a partition
                self._on_record(codec.decode_outcome(msg.value())[0])

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


def p50_p99(values_ms: list[float]) -> tuple[float, float]:
    """Median and 99th percentile (nearest rank) of a non-empty list."""
    ordered = sorted(values_ms)
    return ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99) - 1]
