"""One-command benchmark of the ledger against a plain Kafka ceiling (and,
optionally, an external reference ledger on the same broker).

    scripts/bench [--commands 30000] [--accounts 1000] [--workers 1,2,3] ...
    scripts/bench --reference-cmd 'python DRIVER --bootstrap {bootstrap} --prefix {prefix} ...'
    scripts/bench --compare tls        # SASL_SSL vs PLAINTEXT, one secured broker
    scripts/bench --compare cluster    # 3-node cluster (RF 3, acks=all) vs one broker

(``scripts/bench`` installs into .venv if needed and runs this file with
.venv/bin/python; ``.venv/bin/python scripts/bench.py`` is the same.)

Where: a private Kafka broker in a temporary directory on free ports, stopped
by pid at the end, as is every worker, ceiling loop and driver it starts,
also on failure and Ctrl-C; or, when KAFKA_BOOTSTRAP_SERVERS or
LEDGER_KAFKA_CONFIG / LEDGER_KAFKA_* name a cluster, that cluster. Every Kafka
client of the bench takes its configuration from ``streams.config.Settings``
(``Settings.kafka()``), one per role: the workers and the ceiling loop as the
worker principal (workers get ``Settings.to_env()``), the loader, latency
generator and outcome watchers as the app principal, topic creation as the
admin principal. On a cluster from the environment one principal serves all
three unless BENCH_{WORKER,APP,ADMIN}_KAFKA_CONFIG names a properties file per
role; it needs the ledger's rights on the topics, groups
(``<prefix>-worker``, ``<prefix>-client-*``) and transactional ids
(``<prefix>-worker-*``, ``<prefix>-loader``) of every prefix ``bench-*``
(a super user, or PREFIXED ACLs on ``bench-``). Every scenario gets fresh
topics (its own LEDGER_TOPIC_PREFIX), created first by the admin; workers run
with LEDGER_CREATE_TOPICS=0 and, unless ``--read-models on``, without read
models (LEDGER_READ_MODELS=0: the money path, the job of a reference ledger).

Scenarios, in this order:

ceiling    ``scripts/bench_ceiling.py`` in its own interpreter: a plain
           confluent-kafka transactional consume-produce loop (read_committed,
           one transaction per ``consume(batch_size)``,
           send_offsets_to_transaction with the group metadata, output
           partition = input partition) copying pre-loaded command records
           (the credit/debit backlog, repeated), one output record per input;
           no ledger logic. ``--ceiling-runs`` (3) runs of at least
           ``--ceiling-seconds`` (10) each; the median.
ledger     ``python -m streams.cli worker`` processes (1, 2, 3 by default)
           draining a backlog of credit/debit commands, exactly-once,
           ``--repeat`` times each (1; 3 with a reference or --compare),
           alternating with the reference's runs when one is given; then one
           run of transfers. CPU µs per command: the worker processes' CPU
           time (/proc/<pid>/stat utime+stime: every thread, librdkafka's
           included) from release to the last outcome, divided by commands.
reference  ``--reference-cmd``: an external driver (e.g. the Kafka Streams
           ledger's drive.py) run against the same broker on fresh topics
           ({bootstrap}, {prefix}, {threads} filled in), in the run's
           temporary directory; it prints its rate as a JSON line.
recovery   on the log of the first 1-worker run: a fresh worker (empty data
           dir) catches up all partitions (its ledger_recovery_seconds), and
           ``ledger replay --from-scratch``'s rebuild reads it in its own
           interpreter; events per second of each.
latency    one worker (``--latency-workers N``: N); an open-loop generator
           sends credit/debits on a fixed clock at 10% and 50%
           (``--latency-loads``) of the median credit/debit rate of as many
           workers for ``--latency-seconds``; latency = outcome visible to a
           read_committed consumer minus send time, per command_id.

``--compare tls|cluster`` runs only alternating one-worker backlogs on two
Kafka setups it starts: tls = one secured broker (``start_broker(secure=True,
plaintext_port=0)``) over its SASL_SSL listener as the ledger's principals
(ACLs granted per prefix) and over its loopback PLAINTEXT listener; cluster =
a single broker and a three-node cluster (``start_cluster``: RF 3, min ISR 2,
acks=all), with the brokers' resident memory sampled meanwhile.

How a backlog is "released": the accounts' OpenAccount commands are committed
first (workers apply them while starting). The measured commands are then
written by a transactional producer whose transaction is left open, so they
are in the topic but invisible to read_committed readers. Once every worker
(or the ceiling loop) owns its partitions and has caught up, the transaction
is committed: the whole backlog becomes visible at once, at ``t0``, with no
worker half-started or rebalancing. The rate is N / (time the last outcome is
visible to a read_committed consumer on the output topic - ``t0``). The same
release is used for the ceiling, so the ratio compares like with like; the
ceiling's rate by its own clock (first record consumed to last commit) is
reported too.

After each backlog run every outcome record is decoded and checked: each
command has exactly one outcome (each transfer exactly one final record).
The load average is recorded with every run: on a shared machine read the
medians with it.

``--profile`` (or BENCH_PROFILE=1) adds one more 1-worker credit/debit run
whose worker runs under pyinstrument (the ledger-core thread only, from the
first batch after release until it idles; needs ``pip install pyinstrument``
in the venv); its numbers are not comparable. It prints the top functions by
self and by inclusive time and copies the profile next to the JSON.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import dataclasses
import datetime as dt
import importlib.util
import itertools
import json
import os
import platform
import random
import shutil
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import confluent_kafka  # noqa: E402
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

import interpreter  # noqa: E402  (scripts/interpreter.py, beside this file)
from ledger import domain, frozen  # noqa: E402
from schemas import codec  # noqa: E402
from streams import legauth  # noqa: E402
from streams.cli import _positive_int  # noqa: E402  (what `ledger worker --processes` takes)
from streams.client import PRODUCER_SETTINGS as CLIENT_PRODUCER_SETTINGS  # noqa: E402
from streams.localkafka import free_port  # noqa: E402
from streams.config import Settings, kafka_properties_from_env  # noqa: E402
from streams.topics import consume_ready, ensure_topics  # noqa: E402
from streams.processor import CONSUMER_TUNING, PHASES  # noqa: E402  (the worker loop's)


PYTHON = sys.executable
T_START = time.monotonic()
STALL_TIMEOUT_S = 30.0  # a run fails if no new output record shows up for this long
READY_TIMEOUT_S = 120.0

# Log record type by the first 10 bytes (magic + schema fingerprint): lets the
# watchers count outcomes without decoding them while the clock runs.
TYPE_BY_HEADER = {schema.header: cls.type for cls, schema in codec._OUTCOMES.items()}
HEADER_LENGTH = codec.HEADER_LENGTH
FINAL_TRANSFER_TYPES = (domain.TransferCompleted.type, domain.TransferRefunded.type)


def say(message: str) -> None:
    print(f"[{time.monotonic() - T_START:6.1f}s] {message}", flush=True)


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------
# Processes: everything started here is stopped by pid
# --------------------------------------------------------------------------


class Processes:
    def __init__(self):
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], env: dict, log_path: Path,
              stdout_pipe: bool = False, cwd: Path = REPO) -> subprocess.Popen:
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else log_file,
                stderr=log_file,
                # Own session: Ctrl-C reaches only this script, whose finally
                # stops them in order.
                start_new_session=True)
        self.started.append((name, proc))
        return proc

    def stop(self, procs: list[subprocess.Popen], timeout_s: float = 15.0) -> None:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def stop_all(self) -> None:
        self.stop([proc for _name, proc in self.started])


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------
# Workload
# --------------------------------------------------------------------------


def account_ids(n: int) -> list[str]:
    return [f"acct-{i:05d}" for i in range(n)]


def encode(commands) -> list[tuple[bytes, bytes]]:
    """(key, value) per command, encoded once before any clock runs."""
    now_ms = int(time.time() * 1000)
    return [(c.account_id.encode(), codec.encode_command(c, now_ms)) for c in commands]


def opens(accounts: list[str], overdraft: int, tag: str) -> list:
    return [domain.OpenAccount(f"{tag}-open-{a}", a, "EUR", overdraft) for a in accounts]


def credit_debits(n: int, accounts: list[str], rng: random.Random, tag: str) -> list:
    # 60% credits, 40% debits, small amounts, overdraft 100.00: about 1.3% of
    # the commands are debits rejected as insufficient_funds.
    out = []
    for i in range(n):
        kind = domain.Credit if rng.random() < 0.6 else domain.Debit
        out.append(kind(f"{tag}-{i}", rng.choice(accounts), rng.randrange(1, 5_000), "EUR"))
    return out


def transfers(n: int, accounts: list[str], rng: random.Random, tag: str) -> list:
    out = []
    for i in range(n):
        src, dst = rng.sample(accounts, 2)
        out.append(domain.Transfer(f"{tag}-{i}", src, dst, rng.randrange(1, 5_000), "EUR"))
    return out


# --------------------------------------------------------------------------
# Kafka helpers
# --------------------------------------------------------------------------


class Loader:
    """Transactional producer that pre-loads records, optionally holding the
    last transaction open until :meth:`release`."""

    def __init__(self, settings: Settings, transactional_id: str):
        self._errors: list[str] = []
        self._producer = Producer(settings.kafka(**{
            "transactional.id": transactional_id,
            # Long enough to hold the backlog while workers start.
            "transaction.timeout.ms": 300_000,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "partitioner": "murmur2_random",  # as every ledger producer
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
        }))
        self._producer.init_transactions(30)
        self.held = False

    def _on_delivery(self, err, _msg) -> None:
        if err is not None:
            self._errors.append(str(err))

    def load(self, topic: str, records: list[tuple[bytes, bytes]], hold: bool) -> None:
        p = self._producer
        p.begin_transaction()
        for key, value in records:
            while True:
                try:
                    p.produce(topic, value, key, on_delivery=self._on_delivery)
                    break
                except BufferError:
                    p.poll(0.05)
        if p.flush(120) or self._errors:
            raise BenchError(f"pre-loading {topic} failed: {self._errors[:3]}")
        if hold:
            self.held = True
        else:
            p.commit_transaction(60)

    def release(self) -> tuple[float, float]:
        """Commit the held transaction: (t0 just before the commit, commit seconds)."""
        t0 = time.monotonic()
        self._producer.commit_transaction(60)
        self.held = False
        return t0, time.monotonic() - t0

    def abort(self) -> None:
        if self.held:
            with contextlib.suppress(Exception):
                self._producer.abort_transaction(10)
            self.held = False


def delete_topics(admin: Settings, prefix: str) -> int:
    """Delete this run's topics (on a cluster that outlives the run)."""
    from confluent_kafka.admin import AdminClient

    client = AdminClient(admin.kafka())
    names = [t for t in client.list_topics(timeout=10).topics if t.startswith(prefix)]
    if names:
        for future in client.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result()
    return len(names)


class LogWatcher(threading.Thread):
    """Reads a topic from the beginning, read_committed, and counts records.

    Counting is by header (no decoding) while a clock runs. ``decode_types``
    are decoded on the fly (e.g. ``command_rejected`` to tell a rejected
    transfer); with ``latency=True`` every record is decoded and the time its
    command_id was first seen is recorded. ``keep=True`` keeps the raw values
    for the checks after the clock stops.
    """

    def __init__(self, reader: Settings, topic: str, *, keep: bool = False,
                 decode_types: tuple = (), latency: bool = False):
        partitions = reader.partitions
        super().__init__(name=f"watch-{topic}", daemon=True)
        self.topic = topic
        self.keep, self.decode_types, self.latency = keep, decode_types, latency
        self.count = 0
        self.by_type: collections.Counter = collections.Counter()
        self.rejected_transfers = 0
        self.raw: list[bytes] = []
        self.seen_at: dict[str, float] = {}
        self.last_progress = time.monotonic()
        self._cond = threading.Condition()
        self._stop_event = threading.Event()
        self._consumer = Consumer(reader.kafka(**{
            # Assigned, never committed; named as a client of the ledger
            # (<prefix>-client-*) so that the app principal's ACLs cover it.
            "group.id": f"{reader.topic_prefix}-client-bench-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            # The worker's wait, but not its fetch.min.bytes: an outcome is
            # seen as soon as it is committed.
            "fetch.wait.max.ms": CONSUMER_TUNING["fetch.wait.max.ms"],
        }))
        self._consumer.assign([TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                               for p in range(partitions)])
        self._waiters: list[list] = []  # [predicate, event, done_at]

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                messages = consume_ready(self._consumer, 10_000, 0.1)
                now = time.monotonic()
                if not messages:
                    continue
                with self._cond:
                    for msg in messages:
                        if msg.error():
                            continue
                        self._take(msg.value(), now)
                    self.last_progress = now
                    for waiter in self._waiters:
                        if waiter[2] is None and waiter[0](self):
                            waiter[2] = now
                            waiter[1].set()
        finally:
            self._consumer.close()

    def _take(self, value: bytes, now: float) -> None:
        if codec.is_tick(value):
            return  # a PartitionTick marks time on a partition: not an outcome
        self.count += 1
        kind = TYPE_BY_HEADER.get(bytes(value[:HEADER_LENGTH]), "unknown")
        self.by_type[kind] += 1
        if self.keep:
            self.raw.append(value)
        if self.latency:
            record, _digest = codec.decode_outcome(value)
            self.seen_at.setdefault(record.command_id, now)
        elif kind in self.decode_types:
            record, _digest = codec.decode_outcome(value)
            if kind == domain.CommandRejected.type and \
                    record.command_type == domain.Transfer.type:
                self.rejected_transfers += 1

    def wait_for(self, predicate, what: str, stall_s: float = STALL_TIMEOUT_S,
                 check=None) -> float:
        """Block until ``predicate(self)``; return the monotonic time of the
        batch that made it true. Fails if nothing new arrives for ``stall_s``."""
        event = threading.Event()
        waiter = [predicate, event, None]
        with self._cond:
            if predicate(self):
                return time.monotonic()
            self._waiters.append(waiter)
        while not event.wait(0.5):
            if check is not None:
                check()
            if time.monotonic() - self.last_progress > stall_s:
                raise BenchError(f"waiting for {what}: no new record on {self.topic} "
                                 f"for {stall_s:.0f}s (have {self.count})")
        return waiter[2]

    def close(self) -> None:
        self._stop_event.set()
        self.join(10)


# --------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------

# Run as `python -c PROFILE_BOOTSTRAP OUT worker ...` (only with
# --profile): replaces the processor module's Consumer with a subclass whose
# main (group) consumer profiles the ledger-core thread with pyinstrument from
# the first batch after the bench arms it (file OUT.armed exists) until the
# loop has idled for 3 consecutive polls, then writes OUT.txt (call tree) and
# OUT.top.txt (functions by self time and by inclusive time).
PROFILE_BOOTSTRAP = r'''
import collections, os, runpy, sys
out = sys.argv.pop(1)
sys.argv[0] = "streams.cli"
import confluent_kafka
from pyinstrument import Profiler
from pyinstrument.renderers import ConsoleRenderer
import streams.processor as processor


def top_tables(session, n=25):
    root = session.root_frame()
    self_time, inclusive = collections.Counter(), collections.Counter()

    def key(frame):
        return f"{frame.function}  {frame.file_path_short}:{frame.line_no}"

    def walk(frame, path):
        k = key(frame)
        if k not in path:  # count a recursive function once per stack
            inclusive[k] += frame.time
        for child in frame.children:
            if child.is_synthetic:  # "[self]": time in the frame itself
                self_time[k] += child.time
            else:
                walk(child, path | {k})

    walk(root, frozenset())
    total = root.time or 1.0
    lines = [f"core thread, {total:.2f} s wall ({session.sample_count} samples)", "",
             "by self time:"]
    lines += [f"  {100 * t / total:5.1f}%  {k}" for k, t in self_time.most_common(n)]
    lines += ["", "by inclusive time:"]
    lines += [f"  {100 * t / total:5.1f}%  {k}" for k, t in inclusive.most_common(n)]
    return "\n".join(lines) + "\n"


class ProfilingConsumer(confluent_kafka.Consumer):
    def __init__(self, config):
        super().__init__(config)
        self._main = "group.instance.id" in config
        self._profiler = None
        self._idle = 0
        self._done = False

    def consume(self, *args, **kwargs):
        messages = super().consume(*args, **kwargs)
        if not self._main or self._done:
            return messages
        if self._profiler is None:
            if messages and os.path.exists(out + ".armed"):
                self._profiler = Profiler(interval=0.0005, async_mode="disabled")
                self._profiler.start()
            return messages
        self._idle = 0 if messages else self._idle + 1
        if self._idle >= 3:
            self._profiler.stop()
            self._done = True
            session = self._profiler.last_session
            with open(out + ".txt", "w") as f:
                f.write(ConsoleRenderer(unicode=False, color=False, show_all=False,
                                        time="percent_of_total").render(session))
            with open(out + ".top.txt", "w") as f:
                f.write(top_tables(session))
            with open(out + ".done", "w") as f:
                f.write(str(session.duration))
        return messages

processor.Consumer = ProfilingConsumer
runpy.run_module("streams.cli", run_name="__main__", alter_sys=True)
'''


class Worker:
    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path, worker_id: str):
        self.proc, self.port, self.log_path, self.worker_id = proc, port, log_path, worker_id

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/health",
                                        timeout=2) as response:
                return json.loads(response.read())
        except (OSError, ValueError):
            return None

    def metrics(self) -> dict[str, float]:
        """The worker's transaction and batch counters (Prometheus text)."""
        wanted = {
            'ledger_transactions_total{outcome="committed"}': "transactions",
            "ledger_transaction_seconds_sum": "transaction_seconds",
            "ledger_batch_commands_sum": "batched_commands",
            "ledger_recovery_seconds_sum": "recovery_seconds",
            **{f'ledger_batch_phase_seconds_total{{phase="{phase}"}}': f"phase_{phase}"
               for phase in PHASES},
        }
        out = {v: 0.0 for v in wanted.values()}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",
                                        timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return out
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            if name in wanted:
                out[wanted[name]] = float(value)
        return out

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"worker {self.worker_id} exited with {self.proc.returncode}:\n"
                             f"{tail(self.log_path)}")


def start_workers(ctx, settings: Settings, count: int, run_dir: Path,
                  profile_out: Path | None = None, ports: list[int] | None = None
                  ) -> list[Worker]:
    workers = []
    for i in range(1, count + 1):
        worker_id = f"w{i}"
        port = ports[i - 1] if ports else free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO), **settings.with_(
            worker_id=worker_id, data_dir=run_dir / f"data-{worker_id}",
            web_port=port).to_env()}
        argv = ["-m", "streams.cli", "worker", "--loglevel", "warning"]
        if profile_out is not None and i == 1:
            argv = ["-c", PROFILE_BOOTSTRAP, str(profile_out)] + argv[2:]
        log_path = run_dir / f"worker-{worker_id}.log"
        proc = ctx.procs.start(f"worker {worker_id}", [PYTHON] + argv, env, log_path)
        workers.append(Worker(proc, port, log_path, worker_id))
    return workers


def metrics_of(workers: list[Worker]) -> dict[str, float]:
    total = collections.Counter()
    for w in workers:
        total.update(w.metrics())
    return total


def metrics_delta(before: dict, after: dict) -> dict:
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    txns = d.get("transactions", 0.0)
    return {
        "transactions": int(txns),
        "mean_batch_commands": round(d["batched_commands"] / txns, 1) if txns else None,
        "mean_transaction_ms": round(1000 * d["transaction_seconds"] / txns, 1)
        if txns else None,
        # Sum over workers of time inside _process (consume wait excluded).
        "busy_seconds_in_transactions": round(d["transaction_seconds"], 2),
        # Mean ms per transaction in each phase of the worker's loop ("wait":
        # for commands, per loop turn that found some or waited in vain).
        "phase_ms_per_transaction": {
            phase: round(1000 * d.get(f"phase_{phase}", 0.0) / txns, 2) for phase in PHASES}
        if txns else None,
    }


def wait_workers_ready(workers: list[Worker], partitions: int) -> float:
    """Every worker caught up and the partitions split among them, twice in a
    row 0.25 s apart (no rebalance under way). Returns the seconds it took."""
    started = time.monotonic()
    stable = 0
    while True:
        for w in workers:
            w.check_alive()
        bodies = [w.health() for w in workers]
        owned = sorted(p for b in bodies if b for p in b.get("partitions", []))
        if all(b and b.get("caught_up") for b in bodies) and owned == list(range(partitions)):
            stable += 1
            if stable >= 2:
                return time.monotonic() - started
        else:
            stable = 0
        if time.monotonic() - started > READY_TIMEOUT_S:
            raise BenchError(f"workers not ready after {READY_TIMEOUT_S:.0f}s: {bodies}\n"
                             f"{tail(workers[0].log_path)}")
        time.sleep(0.25)


# --------------------------------------------------------------------------
# Where a scenario runs: a Kafka target and the principals its clients use
# --------------------------------------------------------------------------

# Every Kafka client of the bench takes its configuration from a Settings
# (Settings.kafka()), one per role:
#   worker  the worker processes (Settings.to_env()) and the ceiling loop;
#   app     the loader (a transactional producer, transactional.id
#           <prefix>-loader), the latency generator, the outcome watchers;
#   admin   creates the topics (streams.topics.ensure_topics) and deletes them.
ROLES = ("worker", "app", "admin")
ROLE_CONFIG_ENV = {role: f"BENCH_{role.upper()}_KAFKA_CONFIG" for role in ROLES}
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Target:
    """A Kafka cluster and the client properties of each role on it."""

    name: str
    bootstrap: str
    properties: dict  # role -> tuple of (librdkafka property, value)
    # Called once per topic prefix before it is used (ACLs on a secured
    # broker this bench started); None when nothing needs granting.
    grant: object = None
    describe: str = ""
    broker_pids: list = dataclasses.field(default_factory=list)

    def settings(self, role: str, **fields) -> Settings:
        return Settings(bootstrap_servers=self.bootstrap,
                        kafka_properties=self.properties[role], **fields)


def _split_bootstrap(props: dict) -> tuple[str | None, tuple]:
    props = dict(props)
    bootstrap = props.pop("bootstrap.servers", None)
    return bootstrap, tuple(sorted(props.items()))


def target_from_env(environ=os.environ) -> Target | None:
    """The cluster of KAFKA_BOOTSTRAP_SERVERS / LEDGER_KAFKA_CONFIG /
    LEDGER_KAFKA_* (streams.config), None when neither names a cluster (the
    bench then starts its own broker). One principal serves every role unless
    BENCH_{WORKER,APP,ADMIN}_KAFKA_CONFIG names a properties file for a role."""
    env_bootstrap = environ.get("KAFKA_BOOTSTRAP_SERVERS") or None
    bootstrap, common = _split_bootstrap(kafka_properties_from_env(environ))
    properties = {}
    for role in ROLES:
        path = environ.get(ROLE_CONFIG_ENV[role])
        if path:
            role_env = {**environ, "LEDGER_KAFKA_CONFIG": path}
            role_bootstrap, properties[role] = _split_bootstrap(
                kafka_properties_from_env(role_env))
            bootstrap = bootstrap or role_bootstrap
        else:
            properties[role] = common
    bootstrap = env_bootstrap or bootstrap
    if not bootstrap:
        return None
    secured = dict(common).get("security.protocol", "PLAINTEXT")
    return Target("ext", bootstrap, properties, describe=f"external cluster {bootstrap} "
                  f"({secured})")


def plain_target(name: str, bootstrap: str, describe: str, pids=()) -> Target:
    return Target(name, bootstrap, {role: () for role in ROLES}, describe=describe,
                  broker_pids=list(pids))


def secured_target(name: str, broker) -> Target:
    """The principals of a secured broker this bench started: ledger-worker,
    ledger-app and ledger-admin, with the ledger's ACLs granted for each
    scenario's prefix, plus the loader's transactional id for the app."""
    from streams import localkafka

    properties = {}
    for role, principal in localkafka.CLIENT_PRINCIPALS.items():
        _b, properties[role] = _split_bootstrap(
            localkafka.read_client_properties(broker.client_properties[principal]))

    def grant(prefix: str) -> None:
        from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType,
                                           AdminClient, ResourcePatternType, ResourceType)

        localkafka.grant_ledger_acls(broker, prefix)
        # The bench's loader holds a transaction open: a transactional id for
        # the app principal, which the ledger's own ACLs do not give it.
        admin = AdminClient(localkafka._superuser_config(broker.run_dir, broker.bootstrap))
        bindings = [AclBinding(ResourceType.TRANSACTIONAL_ID, f"{prefix}-loader",
                               ResourcePatternType.LITERAL,
                               f"User:{localkafka.CLIENT_PRINCIPALS['app']}", "*", op,
                               AclPermissionType.ALLOW)
                    for op in (AclOperation.WRITE, AclOperation.DESCRIBE)]
        for future in admin.create_acls(bindings, request_timeout=30).values():
            future.result()

    return Target(name, broker.bootstrap, properties, grant=grant,
                  describe=f"secured broker {broker.bootstrap} (SASL_SSL, SCRAM-SHA-512, "
                           f"ACLs; principals ledger-worker/-app/-admin)",
                  broker_pids=[broker.pid])


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (librdkafka's too)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def median(values):
    return statistics.median(values) if values else None


# --------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------


class Context:
    def __init__(self, args, target: Target, tmp: Path):
        self.args = args
        self.target = target
        self.tmp = tmp
        self.run_id = uuid.uuid4().hex[:6]
        self.seq = itertools.count(1)
        # The workers' shared secret for transfer legs (streams/legauth.py).
        self.leg_key_file = tmp / "leg.key"
        self.leg_key_file.write_text(legauth.new_key() + "\n")
        self.procs = Processes()
        self.loaders: list[Loader] = []
        self.accounts = account_ids(args.accounts)
        rng = random.Random(args.seed)
        self.cd_opens = encode(opens(self.accounts, 10_000, "cd"))
        self.cd_commands = credit_debits(args.commands, self.accounts, rng, "cd")
        self.cd_encoded = encode(self.cd_commands)
        self.cd_ids = {c.command_id for c in self.cd_commands}

    @property
    def bootstrap(self) -> str:
        return self.target.bootstrap

    def on(self, target: Target) -> "Context":
        """The same workload, processes and loaders, on another target."""
        other = copy.copy(self)
        other.target = target
        return other

    def settings(self, name: str) -> Settings:
        """The worker settings of a fresh scenario (its own topic prefix, and
        its ACLs on a secured broker); ``role()`` gives the other principals'."""
        prefix = f"bench-{self.run_id}-{self.target.name}-{name}-{next(self.seq)}"
        if self.target.grant is not None:
            self.target.grant(prefix)
        return self.settings_for(prefix)

    def settings_for(self, prefix: str) -> Settings:
        """The worker settings of a scenario (its topic prefix)."""
        return self.target.settings(
            "worker", topic_prefix=prefix, partitions=self.args.partitions,
            batch_size_max=self.args.batch_size, leg_key_file=self.leg_key_file,
            # The bench creates every topic first, as the admin (ensure_topics).
            create_topics=False,
            # Off by default: the money path alone (LEDGER_READ_MODELS=0), the
            # job of a reference ledger; --read-models on as `ledger worker`.
            read_models=self.args.read_models == "on",
            # Off by default too; --checkpoint-dir measures what they cost.
            checkpoint_root=self.args.checkpoint_dir,
            checkpoint_every=self.args.checkpoint_every)

    def role(self, settings: Settings, role: str) -> Settings:
        return settings.with_(kafka_properties=self.target.properties[role],
                              create_topics=True)

    def create_topics(self, settings: Settings) -> None:
        # On a multi-broker cluster the broker asked may not know a topic
        # created a moment ago yet (describe_configs: UNKNOWN_TOPIC_OR_PART);
        # ensure_topics is idempotent, so ask again.
        from confluent_kafka import KafkaError, KafkaException

        for attempt in range(10):
            try:
                return ensure_topics(self.role(settings, "admin"))
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART or attempt == 9:
                    raise
                time.sleep(0.5)

    def loader(self, settings: Settings) -> Loader:
        loader = Loader(self.role(settings, "app"), f"{settings.topic_prefix}-loader")
        self.loaders.append(loader)
        return loader

    def watcher(self, settings: Settings, **kw) -> "LogWatcher":
        return LogWatcher(self.role(settings, "app"), settings.events_topic, **kw)

    def drop_loader(self, loader: Loader) -> None:
        """Abort its transaction if still held, and let the producer go."""
        loader.abort()
        with contextlib.suppress(ValueError):
            self.loaders.remove(loader)


def run_ceiling(ctx: Context, records: int | None = None,
                producer_config: dict | None = None) -> dict:
    """One ceiling run over ``records`` records (the credit/debit backlog,
    repeated as often as needed). The loop reads ``<prefix>.commands`` and
    writes ``<prefix>.events`` as the worker principal, in group
    ``<prefix>-worker``: the ledger's topics, configs and ACLs."""
    args = ctx.args
    settings = ctx.settings("ceiling" + ("-tuned" if producer_config else ""))
    prefix = settings.topic_prefix
    label = "ceiling" + (f" {producer_config}" if producer_config else "")
    topic_in, topic_out = settings.commands_topic, settings.events_topic
    ctx.create_topics(settings)
    base = ctx.cd_encoded
    n = max(records or len(base), 1)
    work = (base * (n // len(base) + 1))[:n]
    say(f"{label}: pre-loading {n:,} command records (held transaction); load average "
        f"{loadavg()}")
    load = loadavg()
    loader = ctx.loader(settings)
    try:
        loader.load(topic_in, work, hold=True)
    except BaseException:
        ctx.drop_loader(loader)
        raise
    watcher = ctx.watcher(settings)
    watcher.start()
    lines: list[str] = []
    ready = threading.Event()
    log_path = ctx.tmp / f"{prefix}.log"
    proc = ctx.procs.start("ceiling", [
        PYTHON, str(REPO / "scripts" / "bench_ceiling.py"),
        "--input", topic_in, "--output", topic_out,
        "--group", settings.group_id, "--transactional-id", f"{prefix}-worker-ceiling",
        "--batch-size", str(args.batch_size), "--partitions", str(args.partitions),
        "--expect", str(n)],
        {**os.environ, "PYTHONPATH": str(REPO), **settings.to_env(),
         "BENCH_CEILING_PRODUCER_CONFIG": json.dumps(producer_config or {})}, log_path,
        stdout_pipe=True)

    def read_stdout():
        for line in proc.stdout:
            line = line.decode().strip()
            lines.append(line)
            if line == "READY":
                ready.set()

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    try:
        t = time.monotonic()
        while not ready.wait(0.25):
            if proc.poll() is not None or time.monotonic() - t > READY_TIMEOUT_S:
                raise BenchError(f"{label} loop did not start:\n{tail(log_path)}")
        say(f"{label}: loop owns its partitions; releasing the backlog")
        t0, commit_s = loader.release()

        def alive():
            if proc.poll() not in (None, 0):
                raise BenchError(f"ceiling loop exited {proc.returncode}:\n{tail(log_path)}")

        t_end = watcher.wait_for(lambda w: w.count >= n, "ceiling output", check=alive)
        proc.wait(30)
        # Its last line (the JSON timings) may still be in the pipe: read to EOF.
        reader.join(30)
        if not lines or not lines[-1].startswith("{"):
            raise BenchError(f"{label} loop printed no timings (last line "
                             f"{lines[-1:]}):\n{tail(log_path)}")
        own = json.loads(lines[-1])
    finally:
        ctx.procs.stop([proc])
        watcher.close()
        ctx.drop_loader(loader)
    seconds = t_end - t0
    own_seconds = own["last_commit"] - own["first_consumed"]
    result = {
        "records": n, "seconds": round(seconds, 3), "rate": round(n / seconds),
        "release_commit_seconds": round(commit_s, 3),
        "first_consumed_after_release_seconds": round(own["first_consumed"] - t0, 3),
        "own_clock_seconds": round(own_seconds, 3),
        "rate_own_clock": round(n / own_seconds),
        "rate_first_consumed_to_last_visible": round(n / (t_end - own["first_consumed"])),
        # By the loop's own process_time() (it has exited by now).
        "cpu_us_per_record": round(1e6 * own["cpu_seconds"] / n, 1)
        if own.get("cpu_seconds") is not None else None,
        "transactions": own["transactions"],
        "loop_seconds": own["seconds"],
        "output_records": watcher.count,
        "loadavg": load,
    }
    if producer_config:
        result["producer_config"] = producer_config
    say(f"{label}: {n:,} records in {seconds:.2f}s = {result['rate']:,}/s "
        f"(first consumed -> last visible: {result['rate_first_consumed_to_last_visible']:,}/s, "
        f"{own['transactions']} transactions, {result['cpu_us_per_record']} CPU µs/record)")
    return result


def run_ceilings(ctx: Context) -> dict:
    """``--ceiling-runs`` runs of at least ``--ceiling-seconds`` each; the
    median of those. A run that ends sooner is kept in the JSON, not counted,
    and sizes the next ones (the fastest rate seen times 1.5 times the minimum:
    on a shared machine the rate moves a lot between runs)."""
    args = ctx.args
    records = args.ceiling_records or max(len(ctx.cd_encoded),
                                          int(25_000 * args.ceiling_seconds * 1.3))
    runs = []
    for _attempt in range(args.ceiling_runs + 3):
        r = run_ceiling(ctx, records)
        r["counted"] = r["seconds"] >= args.ceiling_seconds
        runs.append(r)
        if not r["counted"]:
            fastest = max(x["rate"] for x in runs)
            records = max(records, int(fastest * args.ceiling_seconds * 1.5))
        if sum(x["counted"] for x in runs) >= args.ceiling_runs:
            break
    counted = [r for r in runs if r["counted"]] or runs
    rate = round(median([r["rate"] for r in counted]))
    say(f"ceiling: median {rate:,} records/s of {[r['rate'] for r in counted]} "
        f"({[r['seconds'] for r in counted]} s)")
    return {"rate": rate, "rates": [r["rate"] for r in counted],
            "seconds": [r["seconds"] for r in counted],
            "records": [r["records"] for r in counted],
            "cpu_us_per_record": median([r["cpu_us_per_record"] for r in counted
                                         if r["cpu_us_per_record"] is not None]),
            "loadavg": [r["loadavg"] for r in counted], "runs": runs}


def verify_credit_debits(raw: list[bytes], expected_ids: set[str]) -> dict:
    seen = collections.Counter()
    outcomes = collections.Counter()
    for value in raw:
        record, _digest = codec.decode_outcome(value)
        seen[record.command_id] += 1
        if record.command_id in expected_ids:
            outcomes[record.type] += 1
    missing = len(expected_ids - seen.keys())
    duplicates = sum(1 for c in seen.values() if c > 1)
    return {"exactly_once": missing == 0 and duplicates == 0, "missing": missing,
            "duplicated": duplicates, "outcomes": dict(outcomes)}


def verify_transfers(raw: list[bytes], expected_ids: set[str]) -> dict:
    finals = collections.Counter()
    debited = collections.Counter()
    kinds = collections.Counter()
    for value in raw:
        record, _digest = codec.decode_outcome(value)
        kinds[record.type] += 1
        if isinstance(record, domain.CommandRejected):
            if record.command_type == domain.Transfer.type:
                finals[record.command_id] += 1
        elif record.type in FINAL_TRANSFER_TYPES:
            finals[record.transfer_id] += 1
        elif isinstance(record, domain.TransferDebited):
            debited[record.transfer_id] += 1
    missing = len(expected_ids - finals.keys())
    duplicates = sum(1 for c in finals.values() if c > 1) + \
        sum(1 for c in debited.values() if c > 1)
    return {"exactly_once": missing == 0 and duplicates == 0, "missing": missing,
            "duplicated": duplicates, "records": dict(kinds)}


def run_ledger(ctx: Context, workers_n: int, kind: str = "credit_debit",
               profile_out: Path | None = None) -> dict:
    args = ctx.args
    name = f"{kind.replace('_', '')}-{workers_n}w" + ("-profiled" if profile_out else "")
    settings = ctx.settings(name)
    run_dir = ctx.tmp / settings.topic_prefix
    run_dir.mkdir()
    ctx.create_topics(settings)
    load = loadavg()
    if kind == "credit_debit":
        open_records, work, ids = ctx.cd_opens, ctx.cd_encoded, ctx.cd_ids
        n = len(work)
    else:
        rng = random.Random(args.seed + 1)
        # Overdraft large enough that no transfer is refused at its source.
        open_records = encode(opens(ctx.accounts, 10**12, "tr"))
        commands = transfers(args.transfers, ctx.accounts, rng, "tr")
        work, ids = encode(commands), {c.command_id for c in commands}
        n = len(work)
    label = f"ledger {kind} x{workers_n} [{ctx.target.name}]" + \
        (" (profiled)" if profile_out else "")
    say(f"{label}: pre-loading {len(open_records):,} opens (committed) + {n:,} commands "
        f"(held transaction) into {settings.topic_prefix}.commands; load average {load}")
    loader = ctx.loader(settings)
    watcher = ctx.watcher(settings, keep=True, decode_types=(domain.CommandRejected.type,))
    watcher.start()
    workers: list[Worker] = []
    try:
        loader.load(settings.commands_topic, open_records, hold=False)
        loader.load(settings.commands_topic, work, hold=True)
        workers = start_workers(ctx, settings, workers_n, run_dir, profile_out)
        say(f"{label}: started worker pids {[w.proc.pid for w in workers]}; waiting for "
            f"/v1/health caught_up and all {args.partitions} partitions owned")
        opens_n = len(open_records)

        def alive():
            for w in workers:
                w.check_alive()

        watcher.wait_for(lambda w: w.count >= opens_n, "the accounts' opens", check=alive,
                         stall_s=READY_TIMEOUT_S)
        ready_s = wait_workers_ready(workers, args.partitions)
        before = watcher.count - opens_n
        metrics_before = metrics_of(workers)
        if profile_out is not None:
            Path(str(profile_out) + ".armed").touch()
        say(f"{label}: all ready; releasing {n:,} commands")
        pids = [w.proc.pid for w in workers]
        cpu0 = sum(proc_cpu_seconds(pid) for pid in pids)
        broker0 = sum(proc_cpu_seconds(pid) for pid in ctx.target.broker_pids)
        busy0 = machine_busy_seconds()
        t0, commit_s = loader.release()
        if kind == "credit_debit":
            target = opens_n + n
            t_end = watcher.wait_for(lambda w: w.count >= target, "outcomes", check=alive)
        else:
            t_end = watcher.wait_for(
                lambda w: sum(w.by_type[t] for t in FINAL_TRANSFER_TYPES)
                + w.rejected_transfers >= n, "final transfer records", check=alive)
        cpu_s = sum(proc_cpu_seconds(pid) for pid in pids) - cpu0
        broker_s = sum(proc_cpu_seconds(pid) for pid in ctx.target.broker_pids) - broker0
        busy_s = machine_busy_seconds() - busy0
        worker_metrics = metrics_delta(metrics_before, metrics_of(workers))
        if profile_out is not None:
            deadline = time.monotonic() + 15
            while not Path(str(profile_out) + ".done").exists() and \
                    time.monotonic() < deadline:
                time.sleep(0.2)
    finally:
        ctx.procs.stop([w.proc for w in workers])
        watcher.close()
        ctx.drop_loader(loader)
    seconds = t_end - t0
    check_started = time.monotonic()
    if kind == "credit_debit":
        check = verify_credit_debits(watcher.raw, ids)
    else:
        check = verify_transfers(watcher.raw, ids)
    result = {
        "scenario": kind, "workers": workers_n, "commands": n, "seconds": round(seconds, 3),
        "rate": round(n / seconds), "workers_ready_seconds": round(ready_s, 2),
        "release_commit_seconds": round(commit_s, 3),
        "outcomes_before_release": before, "event_records": watcher.count - opens_n,
        "log_events": watcher.count,
        "worker_ports": [w.port for w in workers],
        "worker_metrics": worker_metrics,
        # Worker processes' CPU time (all threads, librdkafka's included, from
        # /proc/<pid>/stat) from release to the last outcome, per command.
        "cpu_us_per_command": round(1e6 * cpu_s / n, 1),
        "worker_cores": round(cpu_s / seconds, 2),
        # The broker JVMs' CPU time over the same interval (brokers this
        # bench started; None on an external cluster), per command.
        "broker_cpu_us_per_command": round(1e6 * broker_s / n, 1)
        if ctx.target.broker_pids else None,
        "machine_cores_busy": round(busy_s / seconds, 2),
        "loadavg": load,
        "target": ctx.target.name,
        "check": check, "check_seconds": round(time.monotonic() - check_started, 2),
        "topic_prefix": settings.topic_prefix,
    }
    say(f"{label}: {n:,} commands in {seconds:.2f}s = {result['rate']:,} commands/s; "
        f"{result['cpu_us_per_command']} CPU µs/command, workers {result['worker_cores']} "
        f"cores, machine {result['machine_cores_busy']} cores busy; "
        f"exactly-once check {'passed' if check['exactly_once'] else 'FAILED'} {check}")
    if not check["exactly_once"]:
        raise BenchError(f"{label}: exactly-once check failed: {check}")
    return result


# Run as `python -c REPLAY_SCRIPT` with a worker's Settings.to_env(): times
# `ledger replay --from-scratch`'s rebuild (streams/replay.py) in its own
# interpreter, and prints the accounts and seconds as a JSON line.
REPLAY_SCRIPT = r'''
import json, time
from streams.config import Settings
from streams import replay
settings = Settings.from_env()
started = time.monotonic()
ledger = replay.rebuild(settings, None, use_snapshots=False, progress=False)
seconds = time.monotonic() - started
print(json.dumps({"seconds": seconds, "offsets": dict(ledger.offsets)}))
'''


def run_recovery(ctx: Context, done: dict) -> dict:
    """On the log a 1-worker credit/debit run left (``done``): a fresh worker
    (empty data dir) catches up every partition from the log (its
    ledger_recovery_seconds metric), and ``ledger replay --from-scratch``'s
    rebuild reads it all (own interpreter). Rates are the log's events
    (outcome records, opens included) per second."""
    settings = ctx.settings_for(done["topic_prefix"])
    events = done["log_events"]
    run_dir = ctx.tmp / (done["topic_prefix"] + "-recovery")
    run_dir.mkdir()
    load = loadavg()
    say(f"recovery: a fresh worker catches up {events:,} events of {settings.topic_prefix}; "
        f"load average {load}")
    # The same worker id and address as the run's own worker (Faust's group
    # remembers members' addresses), with an empty data dir.
    workers = start_workers(ctx, settings, 1, run_dir, ports=done["worker_ports"][:1])
    try:
        ready_s = wait_workers_ready(workers, ctx.args.partitions)
        recovery_s = workers[0].metrics()["recovery_seconds"]
    finally:
        ctx.procs.stop([w.proc for w in workers])
    log_path = run_dir / "replay.log"
    proc = ctx.procs.start("replay", [PYTHON, "-c", REPLAY_SCRIPT],
                           {**os.environ, "PYTHONPATH": str(REPO), **settings.to_env()},
                           log_path, stdout_pipe=True)
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        ctx.procs.stop([proc])
        raise BenchError(f"replay did not finish in 300 s:\n{tail(log_path)}")
    if proc.returncode != 0:
        raise BenchError(f"replay exited {proc.returncode}:\n{tail(log_path)}")
    replay_s = json.loads(out.decode().strip().splitlines()[-1])["seconds"]
    result = {"events": events, "catch_up_seconds": round(recovery_s, 3),
              "catch_up_rate": round(events / recovery_s) if recovery_s else None,
              "worker_ready_seconds": round(ready_s, 2),
              "replay_seconds": round(replay_s, 3), "replay_rate": round(events / replay_s),
              "loadavg": load}
    say(f"recovery: catch-up {result['catch_up_rate']:,} events/s "
        f"({recovery_s:.2f} s), replay --from-scratch {result['replay_rate']:,} events/s "
        f"({replay_s:.2f} s)")
    return result


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def run_latency(ctx: Context, rate: float) -> dict:
    args = ctx.args
    settings = ctx.settings("latency")
    run_dir = ctx.tmp / settings.topic_prefix
    run_dir.mkdir()
    ctx.create_topics(settings)
    load = loadavg()
    total = max(1, int(rate * args.latency_seconds))
    rng = random.Random(args.seed + 2)
    commands = credit_debits(total, ctx.accounts, rng, "lat")
    work = encode(commands)
    n_workers = args.latency_workers
    say(f"latency: {len(ctx.cd_opens):,} opens, then open loop at {rate:,.0f} commands/s "
        f"for {args.latency_seconds:g}s ({total:,} commands), {n_workers} worker(s)")
    loader = ctx.loader(settings)
    watcher = ctx.watcher(settings, latency=True)
    watcher.start()
    # The client's producer settings: commands are sent as a LedgerClient sends them.
    producer = Producer(ctx.role(settings, "app").kafka(**CLIENT_PRODUCER_SETTINGS))
    workers: list[Worker] = []
    try:
        loader.load(settings.commands_topic, ctx.cd_opens, hold=False)
        workers = start_workers(ctx, settings, n_workers, run_dir)

        def alive():
            for w in workers:
                w.check_alive()

        watcher.wait_for(lambda w: w.count >= len(ctx.cd_opens), "the accounts' opens",
                         check=alive, stall_s=READY_TIMEOUT_S)
        wait_workers_ready(workers, args.partitions)
        metrics_before = metrics_of(workers)
        say("latency: worker ready; sending")
        sent = [0.0] * total
        lag = [0.0] * total
        interval = 1.0 / rate
        start = time.monotonic() + 0.05
        topic = settings.commands_topic
        for i, (key, value) in enumerate(work):
            scheduled = start + i * interval
            now = time.monotonic()
            if scheduled > now:
                time.sleep(scheduled - now)
            while True:
                try:
                    producer.produce(topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.001)
            sent[i] = now = time.monotonic()
            lag[i] = now - scheduled
            producer.poll(0)
        send_seconds = time.monotonic() - start
        producer.flush(30)
        ids = [c.command_id for c in commands]
        try:
            expected = len(ctx.cd_opens) + total  # every command_id once (opens too)
            watcher.wait_for(lambda w: len(w.seen_at) >= expected, "latency outcomes",
                             check=alive)
        except BenchError as exc:
            say(f"latency: {exc}")
        worker_metrics = metrics_delta(metrics_before, metrics_of(workers))
    finally:
        ctx.procs.stop([w.proc for w in workers])
        watcher.close()
        ctx.drop_loader(loader)
        del producer
    latencies = sorted((watcher.seen_at[cid] - sent[i]) * 1000
                       for i, cid in enumerate(ids) if cid in watcher.seen_at)
    lags = sorted(x * 1000 for x in lag)
    # Per second of sending: is latency steady (keeping up) or growing (overload)?
    timeline = []
    per_second = collections.defaultdict(list)
    for i, cid in enumerate(ids):
        if cid in watcher.seen_at:
            per_second[int(sent[i] - start)].append((watcher.seen_at[cid] - sent[i]) * 1000)
    for second in sorted(per_second):
        values = sorted(per_second[second])
        timeline.append({"second": second, "sent": len(values),
                         "p50_ms": round(percentile(values, 50), 1),
                         "max_ms": round(values[-1], 1)})
    result = {
        "workers": n_workers, "target_rate": round(rate), "commands": total,
        "achieved_send_rate": round(total / send_seconds),
        "seconds": args.latency_seconds, "outcomes_seen": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p95_ms": round(percentile(latencies, 95), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "max_ms": round(latencies[-1], 1) if latencies else None,
        "send_lag_p99_ms": round(percentile(lags, 99), 2),
        "send_lag_max_ms": round(lags[-1], 2),
        "worker_metrics": worker_metrics,
        "loadavg": load,
        "timeline": timeline,
    }
    say(f"latency: p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, "
        f"p99 {result['p99_ms']} ms ({len(latencies):,}/{total:,} outcomes; "
        f"sender lag p99 {result['send_lag_p99_ms']} ms); per transaction "
        f"{worker_metrics.get('mean_batch_commands')} commands, ms by phase "
        f"{worker_metrics.get('phase_ms_per_transaction')}")
    return result


def run_reference(ctx: Context, threads: int) -> dict:
    """One run of the external reference driver (``--reference-cmd``) against
    this target's broker, on fresh topics of its own prefix. The driver prints
    its result as a JSON line with a ``rate``; it runs in the bench's
    temporary directory (its state and logs land there, not in the repo)."""
    args = ctx.args
    prefix = f"bench-{ctx.run_id}-{ctx.target.name}-ref{threads}t-{next(ctx.seq)}"
    argv = [part.format(bootstrap=ctx.bootstrap, prefix=prefix, threads=threads)
            for part in shlex.split(args.reference_cmd)]
    # It runs elsewhere: relative paths that exist from here are made absolute.
    argv = [os.path.abspath(a) if not a.startswith("-") and "/" in a and
            not os.path.isabs(a) and os.path.exists(a) else a for a in argv]
    cwd = ctx.tmp / prefix
    cwd.mkdir()
    load = loadavg()
    label = f"{args.reference_name} x{threads} [{ctx.target.name}]"
    say(f"{label}: {shlex.join(argv)}; load average {load}")
    log_path = cwd / "driver.log"
    proc = ctx.procs.start(label, argv, {**os.environ}, log_path, stdout_pipe=True, cwd=cwd)
    try:
        out, _ = proc.communicate(timeout=args.reference_timeout)
    except subprocess.TimeoutExpired:
        ctx.procs.stop([proc])
        raise BenchError(f"{label}: no result after {args.reference_timeout:.0f}s:\n"
                         f"{tail(log_path)}")
    found = None
    for line in out.decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict) and "rate" in value:
                found = value
    if proc.returncode != 0 or found is None:
        raise BenchError(f"{label}: exited {proc.returncode} without a JSON line with a "
                         f"rate:\n{tail(log_path)}")
    result = {"system": args.reference_name, "threads": threads, "rate": found["rate"],
              "seconds": found.get("seconds"), "commands": found.get("commands"),
              "check": found.get("check"), "loadavg": load, "target": ctx.target.name,
              "command": shlex.join(argv), "driver": found}
    say(f"{label}: {result['rate']:,} commands/s")
    return result


def run_alternating(ctx: Context, attempt, workers_n: int, repeat: int,
                    reference_threads: int | None) -> tuple[list, list]:
    """``repeat`` ledger runs with ``workers_n`` workers, alternating with
    reference runs (``reference_threads``, None: none), ABBA order."""
    ledger, reference = [], []
    for i in range(repeat):
        steps = ["ledger", "reference"] if i % 2 == 0 else ["reference", "ledger"]
        for step in steps:
            if step == "ledger":
                r = attempt(f"ledger x{workers_n}", run_ledger, ctx, workers_n)
                if r:
                    ledger.append(r)
            elif reference_threads is not None:
                r = attempt(f"reference x{reference_threads}", run_reference, ctx,
                            reference_threads)
                if r:
                    reference.append(r)
    return ledger, reference


def run_compare(ctxs: list[Context], attempt, workers_n: int, repeat: int) -> dict:
    """The same one-worker backlog on each target in turn (ABBA...), ``repeat``
    times each, and the RSS of each target's broker JVMs sampled meanwhile."""
    runs: dict[str, list] = {c.target.name: [] for c in ctxs}
    rss: dict[str, dict] = {c.target.name: {"max_mb": 0.0, "samples": []} for c in ctxs}
    stop = threading.Event()

    def sample():
        while not stop.wait(1.0):
            for c in ctxs:
                values = [rss_mb(pid) for pid in c.target.broker_pids]
                total = sum(v for v in values if v)
                entry = rss[c.target.name]
                entry["max_mb"] = max(entry["max_mb"], round(total, 1))
                entry["last_per_jvm_mb"] = values
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for i in range(repeat):
            for c in (ctxs if i % 2 == 0 else list(reversed(ctxs))):
                r = attempt(f"ledger x{workers_n} on {c.target.name}", run_ledger, c, workers_n)
                if r:
                    values = [rss_mb(pid) for pid in c.target.broker_pids]
                    r["broker_rss_mb"] = values
                    rss[c.target.name]["samples"].append(round(sum(v or 0 for v in values), 1))
                    runs[c.target.name].append(r)
    finally:
        stop.set()
        sampler.join(5)
    out = {"workers": workers_n, "targets": {}}
    for c in ctxs:
        rs = runs[c.target.name]
        out["targets"][c.target.name] = {
            "describe": c.target.describe,
            "rates": [r["rate"] for r in rs],
            "median": median([r["rate"] for r in rs]),
            "cpu_us_per_command": [r["cpu_us_per_command"] for r in rs],
            "loadavg": [r["loadavg"] for r in rs],
            "broker_jvms": len(c.target.broker_pids),
            "broker_rss_mb_after_each_run": rss[c.target.name]["samples"],
            "broker_rss_mb_max": rss[c.target.name]["max_mb"],
            "broker_rss_mb_last_per_jvm": rss[c.target.name].get("last_per_jvm_mb"),
        }
    for c in ctxs:
        t = out["targets"][c.target.name]
        t["broker_cpu_us_per_command"] = [r["broker_cpu_us_per_command"]
                                          for r in runs[c.target.name]]
    a, b = (out["targets"][c.target.name]["median"] for c in ctxs[:2])
    out["ratio"] = round(b / a, 3) if a and b else None
    out["ratio_of"] = f"{ctxs[1].target.name} / {ctxs[0].target.name}"
    # Runs i of both targets ran back to back: their ratio is less exposed to
    # the machine's load drifting over the whole comparison.
    ra, rb = (runs[c.target.name] for c in ctxs[:2])
    out["pair_ratios"] = [round(y["rate"] / x["rate"], 3) for x, y in zip(ra, rb)]
    out["pair_ratio_median"] = median(out["pair_ratios"])
    cpu_a, cpu_b = (median(out["targets"][c.target.name]["cpu_us_per_command"])
                    for c in ctxs[:2])
    out["cpu_ratio"] = round(cpu_b / cpu_a, 3) if cpu_a and cpu_b else None
    return out


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def code_version() -> dict:
    """The commit measured, and whether the code under test (ledger/, schemas/,
    streams/) differed from it."""
    def git(*argv):
        try:
            return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "--short", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--", "ledger", "schemas", "streams"))}


def _version(v) -> str:
    return v[0] if isinstance(v, tuple) else str(v)


def machine_info(kafka_version: str) -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        # What scripts/install chooses by (README, Performance, "The interpreter").
        "libpython_shared": interpreter.libpython_shared(),
        # Where each C module was loaded from (None: not built, its code runs
        # in Python). They are built into the installed tree, not kept in
        # git: a worktree run with that tree's venv loads that tree's build
        # (the editable install's finder), whatever its own C sources say.
        "c_modules": {name: getattr(module, "__file__", None) for name, module in
                      (("codec", codec._avro), ("frozen", frozen._frozen))},
        "platform": platform.platform(),
        "kafka": kafka_version,
        "confluent_kafka": _version(confluent_kafka.version()),
        "librdkafka": _version(confluent_kafka.libversion()),
        "loadavg_at_start": list(os.getloadavg()),
    }


def _rates(rs) -> str:
    return " / ".join(f"{r['rate']:,}" for r in rs)


def _loads(rs) -> str:
    return " / ".join(f"{r['loadavg'][0]:.2f}" for r in rs)


def _ratio(a, b) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def summary_rows(results: dict) -> list[tuple]:
    """One table: (measure, runs, median, per run, CPU µs, load average 1 min)."""
    rows = []
    ceiling = results.get("ceiling")
    if ceiling:
        rows.append((f"ceiling: plain transactional copy loop (runs >= "
                     f"{results['params']['ceiling_seconds']:g} s)",
                     str(len(ceiling["rates"])), f"{ceiling['rate']:,}/s",
                     " / ".join(f"{r:,}" for r in ceiling["rates"]),
                     f"{ceiling['cpu_us_per_record']}",
                     " / ".join(f"{x[0]:.2f}" for x in ceiling["loadavg"])))
    ledger = results.get("ledger", [])
    refs = results.get("reference", [])
    ref_name = results["params"].get("reference_name") or "reference"
    for n in sorted({r["workers"] for r in ledger if r["scenario"] == "credit_debit"}):
        rs = [r for r in ledger if r["scenario"] == "credit_debit" and r["workers"] == n]
        m = median([r["rate"] for r in rs])
        broker_cpu = median([r["broker_cpu_us_per_command"] for r in rs
                             if r.get("broker_cpu_us_per_command") is not None])
        rows.append((f"ledger credit/debit, {n} worker{'s' if n > 1 else ''}", str(len(rs)),
                     f"{round(m):,}/s", _rates(rs),
                     f"{median([r['cpu_us_per_command'] for r in rs])}"
                     + (f" (broker {round(broker_cpu, 1)})" if broker_cpu is not None else ""),
                     _loads(rs)))
        if ceiling:
            rows.append((f"  ledger / ceiling, {n} worker{'s' if n > 1 else ''}", "",
                         _ratio(m, ceiling["rate"]), "", "", ""))
        ref = [r for r in refs if r["threads"] == n]
        if ref:
            rm = median([r["rate"] for r in ref])
            rows.append((f"{ref_name}, {n} thread{'s' if n > 1 else ''}", str(len(ref)),
                         f"{round(rm):,}/s", _rates(ref), "", _loads(ref)))
            rows.append((f"  ledger / {ref_name}, {n} / {n}", "", _ratio(m, rm),
                         " / ".join(_ratio(a["rate"], b["rate"]) for a, b in zip(rs, ref)),
                         "", ""))
    tr = [r for r in ledger if r["scenario"] == "transfer"]
    if tr:
        rows.append((f"ledger transfers (3 steps each), {tr[0]['workers']} worker",
                     str(len(tr)), f"{round(median([r['rate'] for r in tr])):,}/s", _rates(tr),
                     f"{median([r['cpu_us_per_command'] for r in tr])} per transfer",
                     _loads(tr)))
    rec = results.get("recovery")
    if rec:
        rows.append((f"catch-up: fresh worker rebuilds its stores from the log "
                     f"({rec['events']:,} events)", "1", f"{rec['catch_up_rate']:,} events/s",
                     f"{rec['catch_up_seconds']} s", "", f"{rec['loadavg'][0]:.2f}"))
        rows.append(("replay --from-scratch (rebuild, own interpreter)", "1",
                     f"{rec['replay_rate']:,} events/s", f"{rec['replay_seconds']} s", "",
                     f"{rec['loadavg'][0]:.2f}"))
    for lat in results.get("latency", []):
        load = "" if lat.get("load_fraction") is None else f" at {lat['load_fraction']:.0%} load"
        txn = lat.get("worker_metrics") or {}
        rows.append((f"latency p50 / p95 / p99{load} ({lat['target_rate']:,}/s, open loop; "
                     f"{txn.get('mean_batch_commands')} commands, "
                     f"{txn.get('mean_transaction_ms')} ms per transaction)", str(lat["workers"]),
                     f"{lat['p50_ms']} / {lat['p95_ms']} / {lat['p99_ms']} ms",
                     f"{lat['outcomes_seen']:,}/{lat['commands']:,} outcomes", "",
                     f"{lat['loadavg'][0]:.2f}"))
    if "profiled" in results:
        r = results["profiled"]
        rows.append(("ledger credit/debit UNDER PROFILER (not comparable)", "1",
                     f"{r['rate']:,}/s", "", "", ""))
    return rows


def compare_rows(compare: dict, labels: dict) -> list[tuple]:
    rows = []
    for name, t in compare["targets"].items():
        rss = (f"{t['broker_rss_mb_max']:,.0f} MB max ({t['broker_jvms']} JVM"
               f"{'s' if t['broker_jvms'] > 1 else ''})")
        broker_cpu = median([x for x in t.get("broker_cpu_us_per_command", []) if x is not None])
        rows.append((labels.get(name, name), str(len(t["rates"])),
                     f"{round(t['median']):,}/s" if t["median"] else "-",
                     " / ".join(f"{r:,}" for r in t["rates"]),
                     f"{median(t['cpu_us_per_command'])}"
                     + (f" (broker {round(broker_cpu, 1)})" if broker_cpu is not None else ""),
                     " / ".join(f"{x[0]:.2f}" for x in t["loadavg"]) + f"; {rss}"))
    rows.append((f"  ratio {compare['ratio_of']}: of medians", "",
                 f"{compare['ratio']}" if compare["ratio"] is not None else "-", "", "", ""))
    rows.append(("  ... median of back-to-back pairs", "",
                 f"{compare['pair_ratio_median']}", " / ".join(
                     str(x) for x in compare["pair_ratios"]), "", ""))
    rows.append(("  ... worker CPU µs per command", "", f"{compare['cpu_ratio']}", "", "", ""))
    return rows


def print_rows(rows: list[tuple], header=("measure", "runs", "median", "per run",
                                          "CPU µs/cmd (worker)", "load avg 1 min")) -> None:
    rows = [header] + rows
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print()
    for j, row in enumerate(rows):
        print("  " + "  ".join(cell.ljust(widths[i]) if i in (0, 3, 5) else
                               cell.rjust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if j == 0:
            print("  " + "  ".join("-" * w for w in widths))


def print_table(results: dict, params: dict) -> None:
    if "compare" in results:
        print(f"\n  {results['compare']['title']}")
        print_rows(compare_rows(results["compare"], results["compare"]["labels"]))
    else:
        print_rows(summary_rows(results))
    print(f"\n  batch {params['batch_size']}, {params['partitions']} partitions, "
          f"{params['accounts']:,} accounts, {params['commands']:,} commands per backlog, "
          f"read models {params['read_models']}; "
          f"{results['machine']['nproc']} cores shared by the broker(s), workers, "
          f"generators and watchers (and anyone else on the machine: see the load "
          f"averages)\n")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__.split("\n\n")[0],
        epilog="Environment: KAFKA_BOOTSTRAP_SERVERS, LEDGER_KAFKA_CONFIG, LEDGER_KAFKA_* "
               "(use that cluster, with those client properties, as streams.config "
               "reads them); BENCH_WORKER_KAFKA_CONFIG, BENCH_APP_KAFKA_CONFIG, "
               "BENCH_ADMIN_KAFKA_CONFIG (a properties file per role instead); "
               "BENCH_PROFILE=1 (same as --profile).")
    parser.add_argument("--commands", type=int, default=30_000,
                        help="credit/debit commands per backlog run (default 30000)")
    parser.add_argument("--transfers", type=int, default=None,
                        help="transfers in the transfer run (default commands/3)")
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=1_000,
                        help="LEDGER_BATCH_SIZE_MAX, and the ceiling's consume batch")
    parser.add_argument("--workers", default="1,2,3",
                        help="worker counts for the credit/debit runs (default 1,2,3)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs per worker count (default 3 with --reference-cmd or "
                             "--compare, else 1); the table shows medians")
    parser.add_argument("--transfer-workers", type=int, default=1)
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument("--latency-loads", default="0.1,0.5",
                        help="open-loop rates as fractions of the median credit/debit rate "
                             "of --latency-workers workers (default 0.1,0.5)")
    parser.add_argument("--latency-workers", type=_positive_int, default=1,
                        help="workers in the latency runs (default 1; 2 is what "
                             "`ledger worker --processes 2` runs on a 2-core host)")
    parser.add_argument("--latency-rates", default=None,
                        help="open-loop rates in commands/s instead of --latency-loads "
                             "(e.g. 900,4500): the same load on every run, to compare "
                             "code before and after a change")
    parser.add_argument("--ceiling-runs", type=int, default=3)
    parser.add_argument("--ceiling-seconds", type=float, default=10.0,
                        help="minimum length of a counted ceiling run (default 10)")
    parser.add_argument("--ceiling-records", type=int, default=0,
                        help="records per ceiling run (default: sized for --ceiling-seconds)")
    parser.add_argument("--reference-cmd", default=None,
                        help="an external driver run against the same broker, alternating "
                             "with the ledger's runs: a command line with {bootstrap}, "
                             "{prefix} and optionally {threads}, printing a JSON line with "
                             "its 'rate'")
    parser.add_argument("--reference-name", default="reference")
    parser.add_argument("--reference-workers", default=None,
                        help="worker counts to pair with the reference (as its {threads}); "
                             "default 1, or every --workers count if the command has "
                             "{threads}")
    parser.add_argument("--reference-timeout", type=float, default=600.0)
    parser.add_argument("--compare", choices=("tls", "cluster"), default=None,
                        help="only alternate one-worker runs on two Kafka setups started "
                             "here: tls = one secured broker's SASL_SSL listener vs its "
                             "loopback PLAINTEXT listener; cluster = a 3-node cluster "
                             "(RF 3, min ISR 2, acks=all) vs a single broker")
    parser.add_argument("--compare-workers", type=int, default=1)
    parser.add_argument("--read-models", choices=("on", "off"), default="off",
                        help="the workers' read models (Faust agents folding the log into "
                             "totals and statements; LEDGER_READ_MODELS): off (default) "
                             "measures the money path alone, the job a reference ledger "
                             "does; on, as `ledger worker` runs by default")
    parser.add_argument("--checkpoint-dir", type=Path, default=None,
                        help="workers write store checkpoints here (LEDGER_CHECKPOINT_DIR)")
    parser.add_argument("--checkpoint-every", type=int, default=Settings.checkpoint_every,
                        help="events per partition between checkpoints")
    parser.add_argument("--skip-transfers", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-recovery", action="store_true",
                        help="no catch-up / replay measurement on the first 1-worker log")
    parser.add_argument("--skip-ceiling", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        default=os.environ.get("BENCH_PROFILE", "") not in ("", "0"),
                        help="one more 1-worker run under pyinstrument (not comparable)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results",
                        help="directory for the JSON result (default bench/results)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (logs, data) even on success")
    args = parser.parse_args(argv)
    args.worker_counts = [int(x) for x in args.workers.split(",") if x.strip()]
    args.latency_load_list = [float(x) for x in args.latency_loads.split(",") if x.strip()]
    args.latency_rate_list = [float(x) for x in (args.latency_rates or "").split(",")
                              if x.strip()]
    if args.repeat is None:
        args.repeat = 3 if (args.reference_cmd or args.compare) else 1
    if args.reference_workers:
        args.reference_worker_counts = [int(x) for x in args.reference_workers.split(",")]
    elif args.reference_cmd and "{threads}" in args.reference_cmd:
        args.reference_worker_counts = list(args.worker_counts)
    else:
        args.reference_worker_counts = [1] if args.reference_cmd else []
    if args.transfers is None:
        args.transfers = max(1, args.commands // 3)
    return args


def start_targets(args, tmp: Path, stack: list) -> tuple[list[Target], str]:
    """The Kafka setups to measure on; what this run starts is appended to
    ``stack`` as (kind, handle) and stopped by the caller."""
    from streams import localkafka

    if args.compare is None:
        target = target_from_env()
        if target is not None:
            say(f"using {target.describe}")
            return [target], "external cluster (version not probed)"
    localkafka.ensure_jars(progress=say)
    version = localkafka.KAFKA_VERSION
    if args.compare == "tls":
        say(f"starting a secured Kafka {version} broker with a loopback PLAINTEXT listener "
            f"in {tmp}/kafka-secure")
        broker = localkafka.start_broker(tmp / "kafka-secure", secure=True, plaintext_port=0)
        stack.append(("broker", broker))
        say(f"broker pid {broker.pid}: SASL_SSL {broker.bootstrap}, "
            f"PLAINTEXT {broker.plaintext_bootstrap}")
        return [plain_target("plaintext", broker.plaintext_bootstrap,
                             f"PLAINTEXT listener {broker.plaintext_bootstrap} of the secured "
                             f"broker (super user)", [broker.pid]),
                secured_target("sasl_ssl", broker)], version
    say(f"starting a private Kafka {version} broker in {tmp}/kafka")
    broker = localkafka.start_broker(tmp / "kafka")
    stack.append(("broker", broker))
    say(f"broker pid {broker.pid} at {broker.bootstrap}")
    single = plain_target("single", broker.bootstrap, f"single broker {broker.bootstrap} "
                          f"(RF 1)", [broker.pid])
    if args.compare != "cluster":
        return [single], version
    say(f"starting a private 3-node Kafka {version} cluster in {tmp}/cluster")
    cluster = localkafka.start_cluster(tmp / "cluster")
    stack.append(("cluster", cluster))
    say(f"cluster pids {cluster.pids} at {cluster.bootstrap}")
    return [single, plain_target("cluster3", cluster.bootstrap,
                                 f"3-node cluster {cluster.bootstrap} (RF 3, min ISR 2, "
                                 f"acks=all)", cluster.pids)], version


COMPARE_TITLES = {
    "tls": ("TLS cost: one worker over the secured broker's SASL_SSL listener vs its "
            "loopback PLAINTEXT listener, same broker, alternating",
            {"plaintext": "ledger x1 over PLAINTEXT", "sasl_ssl": "ledger x1 over SASL_SSL"}),
    "cluster": ("Replication cost: one worker on a 3-node cluster (RF 3, min ISR 2, acks=all) "
                "vs a single broker, same machine, alternating",
                {"single": "ledger x1, single broker", "cluster3": "ledger x1, 3-node cluster"}),
}


def main(argv=None) -> int:
    args = parse_args(argv)

    def on_term(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started_at = dt.datetime.now(dt.timezone.utc)
    tmp = Path(tempfile.mkdtemp(prefix="ledger-bench-"))
    stack: list = []
    ctx = None
    ctxs: list[Context] = []
    results: dict = {}
    errors: list[str] = []
    failed = False
    machine = None
    try:
        targets, kafka_version = start_targets(args, tmp, stack)
        machine = machine_info(kafka_version)
        code = code_version()
        say(f"{machine['nproc']} cores ({machine['cpu']}), load average "
            f"{loadavg()}; broker(s), workers and load generator share them")
        say(f"Python {machine['python']} ({machine['python_executable']}, libpython "
            f"{ {True: 'shared', False: 'linked in', None: 'unknown'}[machine['libpython_shared']] })")
        for name, path in machine["c_modules"].items():
            if path is None:
                say(f"WARNING: the {name} C module is not built: its code runs in Python, "
                    f"slower; scripts/install (or pip install -e .) builds it")
            elif not Path(path).resolve().is_relative_to(REPO):
                say(f"WARNING: the {name} C module was loaded from {path}, not from {REPO}: "
                    f"built from that tree's C source")
        say(f"encoding {args.commands:,} credit/debit commands over {args.accounts:,} accounts")
        ctx = Context(args, targets[0], tmp)
        ctxs = [ctx] + [ctx.on(t) for t in targets[1:]]

        def attempt(name, fn, *fn_args, **kw):
            try:
                return fn(*fn_args, **kw)
            except BenchError as exc:
                errors.append(f"{name}: {exc}")
                say(f"{name} FAILED: {exc}")
                return None

        if args.compare:
            title, labels = COMPARE_TITLES[args.compare]
            results["compare"] = run_compare(ctxs, attempt, args.compare_workers, args.repeat)
            results["compare"].update(title=title, labels=labels, kind=args.compare)
        else:
            if not args.skip_ceiling:
                r = attempt("ceiling", run_ceilings, ctx)
                if r:
                    results["ceiling"] = r
            results["ledger"] = []
            results["reference"] = []
            for n in args.worker_counts:
                ref_threads = n if n in args.reference_worker_counts else None
                ledger, reference = run_alternating(ctx, attempt, n, args.repeat, ref_threads)
                results["ledger"] += ledger
                results["reference"] += reference
            if not args.skip_transfers:
                r = attempt("transfers", run_ledger, ctx, args.transfer_workers, "transfer")
                if r:
                    results["ledger"].append(r)
            def credit_debit_runs(workers: int) -> list[dict]:
                return [r for r in results["ledger"]
                        if r["scenario"] == "credit_debit" and r["workers"] == workers]

            base = credit_debit_runs(1)
            one = median([r["rate"] for r in base])
            # The latency runs' load is a fraction of the rate of as many workers.
            latency_of = median([r["rate"] for r in credit_debit_runs(args.latency_workers)])
            if base and not args.skip_recovery:
                r = attempt("recovery", run_recovery, ctx, base[0])
                if r:
                    results["recovery"] = r
            if one and "ceiling" in results:
                results["ratio"] = round(one / results["ceiling"]["rate"], 4)
            results["latency"] = []
            if not args.skip_latency and args.latency_rate_list:
                for rate in args.latency_rate_list:
                    r = attempt(f"latency {rate:,.0f}/s", run_latency, ctx, rate)
                    if r:
                        r["load_fraction"] = round(rate / latency_of, 3) if latency_of else None
                        r["of_rate"] = latency_of
                        results["latency"].append(r)
            elif not args.skip_latency:
                if not latency_of:
                    errors.append(f"latency: no {args.latency_workers}-worker credit/debit "
                                  f"rate to base the load on (--workers)")
                for fraction in args.latency_load_list if latency_of else []:
                    r = attempt(f"latency {fraction:.0%}", run_latency, ctx, latency_of * fraction)
                    if r:
                        r["load_fraction"] = fraction
                        r["of_rate"] = latency_of
                        results["latency"].append(r)
            if args.profile and importlib.util.find_spec("pyinstrument") is None:
                errors.append("profile: pyinstrument is not installed")
                say(f"--profile needs pyinstrument: {PYTHON} -m pip install pyinstrument")
            elif args.profile:
                profile_out = tmp / "profile"
                r = attempt("profiled", run_ledger, ctx, 1, profile_out=profile_out)
                if r:
                    results["profiled"] = r
                    for suffix in (".top.txt", ".txt"):
                        src = Path(str(profile_out) + suffix)
                        if src.exists():
                            args.out.mkdir(parents=True, exist_ok=True)
                            dest = args.out / (started_at.strftime("%Y%m%dT%H%M%SZ")
                                               + "-profile" + suffix)
                            shutil.copy(src, dest)
                            r["profile" + suffix.replace(".", "_")] = str(dest)
                    top = Path(str(profile_out) + ".top.txt")
                    if top.exists():
                        print(top.read_text())
    except KeyboardInterrupt:
        say("interrupted; stopping everything this run started")
        errors.append("interrupted")
        failed = True
    except Exception as exc:  # noqa: BLE001 - report, clean up, exit non-zero
        say(f"FAILED: {exc!r}")
        errors.append(repr(exc))
        failed = True
        raise
    finally:
        if ctx is not None:
            for loader in ctx.loaders:
                loader.abort()
            ctx.procs.stop_all()
        if not stack and ctx is not None:
            with contextlib.suppress(Exception):
                admin = ctx.target.settings("admin")
                n = delete_topics(admin, f"bench-{ctx.run_id}-")
                say(f"deleted this run's {n} topics from {ctx.bootstrap}")
        from streams import localkafka

        for kind, handle in reversed(stack):
            if kind == "cluster":
                say(f"stopping cluster pids {handle.pids}")
                localkafka.stop_cluster(handle)
            else:
                say(f"stopping broker pid {handle.pid}")
                localkafka.stop_broker(handle)
        if not failed and ctx is not None:
            params = {k: v for k, v in vars(args).items() if k not in ("out",)}
            params["out"] = str(args.out)
            machine["loadavg_at_end"] = list(os.getloadavg())
            results["params"] = params
            results["machine"] = machine
            report = {"started_at": started_at.isoformat(timespec="seconds"),
                      "code": code,
                      "duration_seconds": round(time.monotonic() - T_START, 1),
                      "machine": machine, "params": params,
                      "targets": {c.target.name: c.target.describe for c in ctxs},
                      "results": {k: v for k, v in results.items()
                                  if k not in ("params", "machine")},
                      "errors": errors}
            args.out.mkdir(parents=True, exist_ok=True)
            path = args.out / (started_at.strftime("%Y%m%dT%H%M%SZ") + ".json")
            path.write_text(json.dumps(report, indent=2) + "\n")
            print_table(results, params)
            say(f"wrote {path}")
        if errors or failed or args.keep:
            say(f"logs and data kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
