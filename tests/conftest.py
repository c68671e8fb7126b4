"""Shared fixtures: one real Kafka broker per test session, and worker processes.

The broker is the project's own single-node Kafka (streams/localkafka.py),
started once per session on free loopback ports in a temporary directory and
stopped by its pid at the end, even when tests fail. With
KAFKA_BOOTSTRAP_SERVERS set, that cluster is used and nothing is started.

Every test gets its own topic prefix, so tests never see each other's data.
Worker processes are started as ``python -m streams.cli worker`` (the real
Faust worker) and killed by pid at teardown.

Timeouts used in tests (production defaults in streams/config.py):
  transaction.timeout.ms = 10000   a dead worker's open transaction is aborted
                                   by the broker within 10 s
  session.timeout.ms     = 6000    a dead worker leaves the group within 6 s
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streams.config import Settings  # noqa: E402
from streams.localkafka import free_port  # noqa: E402,F401  (tests import it from here)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> str:
    existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if existing:
        yield existing
        return
    from streams import localkafka

    localkafka.ensure_jars()
    broker = localkafka.start_broker(tmp_path_factory.mktemp("kafka"))
    try:
        yield broker.bootstrap
    finally:
        localkafka.stop_broker(broker)


@pytest.fixture(scope="session")
def leg_key_file(tmp_path_factory) -> Path:
    """The secret every test worker shares to authenticate transfer legs."""
    from streams import legauth

    path = tmp_path_factory.mktemp("legkey") / "leg.key"
    path.write_text(legauth.new_key() + "\n")
    return path


def ledger_settings(bootstrap: str, tmp_path: Path, leg_key_file: Path, **changes) -> Settings:
    """A fresh ledger (its own topic prefix) with the tests' timings."""
    return Settings(
        bootstrap_servers=bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:12]}",
        partitions=6,
        worker_id="w1",
        data_dir=tmp_path / "data-w1",
        web_port=free_port(),
        batch_size_max=500,
        transaction_timeout_ms=10_000,
        session_timeout_ms=6_000,
        snapshot_root=tmp_path / "snapshots",
        leg_key_file=leg_key_file,
    ).with_(**changes)


@pytest.fixture
def settings(kafka_bootstrap, tmp_path, leg_key_file) -> Settings:
    from streams.topics import ensure_topics

    s = ledger_settings(kafka_bootstrap, tmp_path, leg_key_file)
    ensure_topics(s)
    yield s
    delete_topics(s)


def delete_topics(settings: Settings) -> None:
    """Drop a test ledger's topics (Faust's included): one broker serves the
    whole suite, and every partition holds files open on it."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka())
    names = [name for name in admin.list_topics(timeout=10).topics
             if name.startswith((f"{settings.topic_prefix}.", f"{settings.topic_prefix}-"))]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            try:
                future.result()
            except Exception:  # already gone, or the broker is busy: not the test's result
                pass


def start_workers(pool: "Workers", base: Settings, tmp_path: Path, count: int,
                  ready_timeout_s: float = 60) -> list:
    """``count`` workers w1..wN on ``base``'s ledger, each with its own data
    dir and port, started together and waited for."""
    started = [pool.start(base.with_(worker_id=f"w{i}", data_dir=tmp_path / f"data-w{i}",
                                     web_port=free_port()), wait=False)
               for i in range(1, count + 1)]
    for worker in started:
        worker.wait_ready(ready_timeout_s)
    return started


def wait_until(condition, timeout_s: float, what: str, log_path: Path | None = None):
    """``condition()``'s first truthy value, asked until ``timeout_s`` has
    passed; then fail, with the tail of ``log_path`` when given."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            tail = "" if log_path is None else \
                "\n" + "\n".join(log_path.read_text().splitlines()[-60:])
            raise AssertionError(f"{what}: not within {timeout_s}s{tail}")
        time.sleep(0.05)


def dump_stores(settings: Settings) -> dict[int, list[tuple[bytes, bytes]]]:
    """Every key and value of every partition store (worker stopped)."""
    from streams.store import PartitionStore, store_path

    out = {}
    for p in range(settings.partitions):
        store = PartitionStore(store_path(settings, p))
        try:
            out[p] = [(k, v) for k, v in store.items(b"")]
        finally:
            store.close()
    return out


def data_only(items: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A store's keys and values without its own bookkeeping (b"m" keys: the
    log position a rebuilt store reached may differ, the data may not)."""
    return [kv for kv in items if not kv[0].startswith(b"m")]


def read_topic(settings: Settings, topic: str, count: int, timeout_s: float = 30) -> list:
    """The first ``count`` committed records of ``topic`` (waits for them)."""
    from confluent_kafka import Consumer

    consumer = Consumer(settings.kafka(**{
        "group.id": f"read-{uuid.uuid4()}", "auto.offset.reset": "earliest",
        "isolation.level": "read_committed"}))
    consumer.subscribe([topic])
    found = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(found) < count and time.monotonic() < deadline:
            found += [m for m in consumer.consume(100, timeout=0.5) if not m.error()]
    finally:
        consumer.close()
    return found


@dataclass
class Worker:
    settings: Settings
    process: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.settings.web_host}:{self.settings.web_port}"

    def get(self, path: str):
        """(status, json) of a GET on this worker's web server."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited {self.process.returncode}:\n{self.log_tail()}")
            try:
                status, body = self.get("/v1/health")
                if status == 200 and body["caught_up"]:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker not ready in {timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"


def worker_env(settings: Settings) -> dict:
    """The environment that gives a subprocess exactly these settings."""
    return {**os.environ, "PYTHONPATH": str(REPO), **settings.to_env()}


def run_ledger(settings: Settings, *args: str, timeout_s: float = 300):
    """Run ``ledger <args>`` as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=worker_env(settings),
                          cwd=REPO, capture_output=True, text=True, timeout=timeout_s)


@pytest.fixture
def ledger_cli():
    return run_ledger


def send_all(settings: Settings, commands: list, timeout_s: float = 60) -> None:
    """Send ``commands`` in order and wait until the last one has its outcome
    (a setup that the test's load builds on)."""
    from streams.client import LedgerClient

    with LedgerClient(settings) as client:
        for command in commands:
            client.send_nowait(command)
        client.flush()
        last = commands[-1]
        client.wait_for(getattr(last, "account_id", None) or last.from_account_id,
                        last.command_id, timeout_s)


def send_paced(settings: Settings, commands: list, rate_per_s: int) -> threading.Thread:
    """Send ``commands`` in order from a background thread at about
    ``rate_per_s`` (tenth-of-a-second chunks, each flushed), so a test can kill
    workers while the load is still arriving. ``thread.flush_s`` holds the
    time each chunk took; join the thread to wait for the last send."""
    from streams.client import LedgerClient

    def send():
        with LedgerClient(settings, watch_outcomes=False) as client:
            chunk = max(1, rate_per_s // 10)
            for i in range(0, len(commands), chunk):
                tick = time.monotonic()
                for c in commands[i:i + chunk]:
                    client.send_nowait(c)
                client.flush()
                thread.flush_s.append(time.monotonic() - tick)
                time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))

    thread = threading.Thread(target=send, name="paced-load")
    thread.flush_s = []
    thread.start()
    return thread


@pytest.fixture
def paced_sender():
    return send_paced


class Workers:
    """Starts workers as subprocesses; stops exactly those pids at teardown."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.started: list[Worker] = []

    def start(self, settings: Settings, wait: bool = True) -> Worker:
        env = worker_env(settings)
        log_path = self.tmp_path / f"worker-{settings.worker_id}-{len(self.started)}.log"
        with open(log_path, "w") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", "--loglevel", "info"],
                env=env, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
            )
        worker = Worker(settings, process, log_path)
        self.started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    @staticmethod
    def kill(worker: Worker) -> None:
        """kill -9: no chance to flush, commit or close anything."""
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait(10)

    @staticmethod
    def stop(worker: Worker, timeout_s: float = 30) -> None:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
            try:
                worker.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait(10)

    def stop_all(self) -> None:
        for worker in self.started:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait(10)


@pytest.fixture
def workers(tmp_path):
    pool = Workers(tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()
