"""Install and run a real Apache Kafka broker (or a three-node cluster) without Docker.

Why this exists: the ledger's guarantees (exactly-once transactions, consumer
group fencing, per-topic retention) are only worth testing against a real
broker, but the development and CI machines have no Docker engine and no
network beyond package registries.  Kafka itself is published to Maven Central,
so we fetch the broker jars with ``mvn`` (once, into a cache directory) and run
``kafka.Kafka`` directly on the machine's Java 17.  People who do have Docker
can use ``docker-compose.yml`` at the repo root instead; both set up the same
single-node broker.

Three shapes, all KRaft (no ZooKeeper: Kafka 4 removed it), every process a
combined broker + controller, every one started and stopped by its own pid:

**A single node** (the default).  The storage is formatted with
``--standalone``, which makes this node the sole voter of a dynamic quorum, so
the quorum is named through ``controller.quorum.bootstrap.servers`` (the static
``controller.quorum.voters`` conflicts with ``--standalone``).  A single node
also needs the internal topics' replication settings lowered, otherwise
consumer groups and transactions never become available: Kafka's defaults
(replication factor 3, min ISR 2 for ``__transaction_state``) cannot be met by
one broker.  See ``_server_properties`` for the full list and why each setting
is there.

**A three-node cluster** (``--brokers 3``, ``start_cluster``): three processes
forming a three-voter quorum, named statically by ``controller.quorum.voters``
(kraft.version 0; every node is formatted without ``--standalone`` /
``--initial-controllers``, which is what the static form requires).  Internal
topics and new topics get replication factor 3 and min.insync.replicas 2, so
one node can die and producers with ``acks=all`` still get their acks.  Node
``i`` (1, 2, 3) lives in ``<run dir>/node-<i>/`` (config, data, log, pid file);
with ``--port P`` its client port is ``P + 2(i-1)`` and its controller port
``P + 2(i-1) + 1`` (9092/9093, 9094/9095, 9096/9097 by default); the Python
API picks free ports.  Each node runs with ``-Xmx512m`` and compiles with C1
only (``CLUSTER_JVM_OPTIONS``, with why).  Measured on the
2-core, 24 GiB machine (other people's brokers running too): resident memory
310-335 MB per node right after start, 350-380 MB after 20,000 transactional
writes (about 1.1 GB for the three); starting takes 14-19 s (the three
storage formats run in parallel), restarting one node 9 s, stopping all 6 s
(the last node, left without a quorum for its clean shutdown, is SIGKILLed:
``_terminate``).
With a node killed, ``acks=all`` writes to a partition it led or followed
wait until the controller fences it after ``broker.session.timeout.ms``
(``BROKER_SESSION_MS``, 8 s, heartbeats every 1 s; Kafka's defaults are 9 s
and 2 s).  Measured 2026-12-02 on the quiet 2-core machine: fenced 7.3-8.2 s
after the kill of a node that is not the active controller, 9.7-10.0 s after
the active controller's (a quorum election comes first, and the new
controller gives every node a fresh session); 7.7-11.5 s on 2026-12-03
under tests/streams/test_cluster.py's load (``scripts/bench_outage.py``
prints each).  Shorter sessions fenced live nodes (see
``_server_properties``).  ``wait_in_sync``
waits for a restarted node to be back in every ISR, as a rolling restart
should before taking the next node down.

**A secured single node** (``--secure``, ``start_broker(secure=True)``): the
client listener speaks SASL_SSL (SCRAM-SHA-512 over TLS 1.2/1.3); the
CONTROLLER listener stays PLAINTEXT on loopback.  Inter-broker traffic (the
transaction coordinator writing commit markers to itself) uses the same
SASL_SSL listener as principal ``ledger-broker``, the only super user, so
there is no unauthenticated listener that serves data.  ``User:ANONYMOUS``
is a super user too, because that is who the broker is on the PLAINTEXT
controller listener, and the controller authorizes broker registration and
forwarded requests (CLUSTER_ACTION); ACLs cannot grant it, since there are
none before the broker has registered.  So any local process that can reach
the loopback controller port is trusted: fine on a development machine; a
shared host would want SSL with client certificates on that listener too.
Generated into the run dir on the first start, and kept:

- ``tls/ca.pem`` (a private CA; ``tls/ca-key.pem`` is 0600) and
  ``tls/broker-keystore.pem`` (0600): the broker's key and certificate, with
  SANs ``localhost`` and ``127.0.0.1`` (librdkafka checks the host name);
- ``credentials.json`` (0600): random passwords of ``ledger-broker``,
  ``ledger-worker``, ``ledger-app`` and ``ledger-admin``, written into the
  cluster metadata by ``StorageTool format --add-scram`` (KIP-900; the
  arguments go through a 0600 java @argfile, so no password is ever on a
  command line);
- ``clients/{worker,app,admin}.properties`` (0600, rewritten on every start):
  librdkafka settings in Java properties form, read by
  ``read_client_properties``.

ACLs (StandardAuthorizer, ``allow.everyone.if.no.acl.found=false``) are
created at every start for ``--topic-prefix`` (default ``ledger``); the one
list is ``ledger_acls(prefix)``, rendered by ``acl_table_markdown(prefix)``.
Passwords are never printed or logged; the CLI prints file paths only.  The
first start (CA, certificate, format) takes about 8 s, a restart about 5 s.

Usage from a shell (``ledger kafka ...`` is the same)::

    python -m streams.localkafka install                 # fetch the jars (once)
    python -m streams.localkafka start [--port N]        # default 127.0.0.1:9092
    python -m streams.localkafka start --brokers 3       # <cache>/cluster, 9092,9094,9096
    python -m streams.localkafka start --secure [--topic-prefix P]   # <cache>/broker-secure
    python -m streams.localkafka status                  # every default run dir
    python -m streams.localkafka stop                    # ... or --run-dir D

and from Python (tests start private brokers on free ports)::

    broker = start_broker(tmp_path / "kafka")                 # or secure=True
    try:
        ...  # use broker.bootstrap (and broker.client_properties)
    finally:
        stop_broker(broker)

    cluster = start_cluster(tmp_path / "cluster")             # three nodes
    try:
        kill_node(cluster, 2); ...; start_node(cluster, 2)
    finally:
        stop_cluster(cluster)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from streams import config
from streams.config import read_properties
from streams.files import atomic_file

KAFKA_VERSION = "4.1.1"
# Kafka's jars log through SLF4J but ship no backend; without one the broker
# prints nothing at all.  log4j2 is what Kafka's own distribution uses.
LOG4J_VERSION = "2.24.3"
SLF4J_VERSION = "2.0.16"

# The CLI's fixed ports (what a developer's shell and the app's defaults expect).
# The Python API picks free ports instead so tests never clash with it.
CLI_PORT = 9092

# Heap per JVM: a single broker, and each node of a cluster (three of them
# must fit next to other people's brokers on a 2-core, 24 GiB machine).
SINGLE_HEAP = "768m"
CLUSTER_HEAP = "512m"
# A cluster's nodes compile with C1 only. Three JVMs on two cores spend their
# first minutes in C2 compiler threads (20 s of CPU each in the first two
# minutes of tests/streams/test_cluster.py), and a failover runs code not
# compiled yet: in one run both surviving nodes logged nothing for 3 s right
# after a fence, the controller lost its quorum and resigned, and the
# workers' new producers waited 10 s for a producer id. Measured with
# scripts/bench_outage.py's scenario, three runs each, alternating,
# 2026-12-03: fence to first applied outcome 2.0-3.6 s (median 2.2) with C1
# only, 1.5-6.5 s (median 3.8) with C2; the longest pause of a partition at
# most 12.5 s against 16.3 s; each run 120-127 s against 149-178 s. It
# costs no throughput here either: scripts/bench --compare cluster, one
# worker, 5,570 and 5,464 commands/s with C1 only against 2,948 and 3,773
# with C2 (broker CPU 198-202 against 381-498 µs per command). A single
# broker keeps C2: it is the one the benchmarks compare the ledger on.
CLUSTER_JVM_OPTIONS = ("-XX:TieredStopAtLevel=1",)

# The principals of the secured broker.  The broker's own is the only super
# user (besides ANONYMOUS on the loopback controller listener, see above).
BROKER_PRINCIPAL = "ledger-broker"
CLIENT_PRINCIPALS = {"worker": "ledger-worker", "app": "ledger-app", "admin": "ledger-admin"}
DEFAULT_TOPIC_PREFIX = "ledger"
SASL_MECHANISM = "SCRAM-SHA-512"

_HOST = "127.0.0.1"
_DONE_MARKER = ".complete"

# A "pom"-packaged project whose only purpose is to let
# `mvn dependency:copy-dependencies` resolve the broker's runtime classpath.
_POM = f"""\
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by streams/localkafka.py: only used to fetch the Kafka broker jars. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.ledger</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId>
      <version>{LOG4J_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>{LOG4J_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-api</artifactId>
      <version>{SLF4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
"""


@dataclass
class LocalBroker:
    """A single-node broker.  The last three fields are set for a secured one."""

    pid: int
    bootstrap: str
    run_dir: Path
    secure: bool = False
    # principal ("ledger-worker", "ledger-app", "ledger-admin") -> its client
    # properties file (read it with read_client_properties).
    client_properties: dict[str, Path] = field(default_factory=dict)
    ca_path: Path | None = None
    # Benchmarks only (start_broker(plaintext_port=...)): a second, loopback
    # PLAINTEXT listener on the secured broker, None otherwise.
    plaintext_bootstrap: str | None = None


@dataclass
class ClusterNode:
    """One combined broker + controller process of a LocalCluster."""

    node_id: int
    port: int
    controller_port: int
    run_dir: Path  # <cluster run dir>/node-<node_id>
    pid: int | None = None  # None while the node is down

    @property
    def bootstrap(self) -> str:
        return f"{_HOST}:{self.port}"


@dataclass
class LocalCluster:
    run_dir: Path
    nodes: list[ClusterNode]
    heap: str = CLUSTER_HEAP

    @property
    def bootstrap(self) -> str:
        """Every node's client address, comma separated."""
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes if n.pid is not None]

    def node(self, node_id: int) -> ClusterNode:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(f"no node {node_id} in the cluster of {self.run_dir}")


@dataclass(frozen=True)
class AclRule:
    """One ALLOW rule: ``principal`` may do ``operations`` on a resource.

    Field values are Kafka's names, which are also those of confluent_kafka's
    enums (ResourceType, ResourcePatternType, AclOperation), except that
    confluent_kafka calls the CLUSTER resource type BROKER.
    """

    principal: str       # without "User:"
    resource_type: str   # TOPIC, GROUP, TRANSACTIONAL_ID, CLUSTER
    pattern_type: str    # LITERAL or PREFIXED
    resource_name: str
    operations: tuple[str, ...]
    why: str


# --------------------------------------------------------------------------- jars


def default_cache_dir() -> Path:
    """``$LEDGER_CACHE_DIR`` (streams/config.py), else ``<repo root>/.cache``."""
    return config.local_cache_dir() or Path(__file__).resolve().parent.parent / ".cache"


def _kafka_home(cache_dir: Path | None) -> Path:
    return (cache_dir or default_cache_dir()) / f"kafka-{KAFKA_VERSION}"


def _pom_digest() -> str:
    # Stored in the marker, so editing the pom (e.g. a version bump) re-fetches.
    return hashlib.sha256(_POM.encode()).hexdigest()


def _jars_complete(libs: Path) -> bool:
    marker = libs / _DONE_MARKER
    return marker.is_file() and marker.read_text().strip() == _pom_digest()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise concurrent installers (e.g. parallel test processes)."""
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _require(tool: str, why: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"'{tool}' was not found on PATH; it is needed {why}")
    return path


def ensure_jars(cache_dir: Path | None = None, progress: Callable[[str], None] = print) -> Path:
    """Fetch the Kafka broker jars from Maven Central once; return the libs dir.

    Idempotent: a marker file written only after a successful download makes
    later calls return at once.  Maven writes into a temporary directory that is
    renamed into place at the end, so an interrupted download never leaves a
    half-populated ``libs`` directory behind.
    """
    home = _kafka_home(cache_dir)
    libs = home / "libs"
    if _jars_complete(libs):
        return libs

    mvn = _require("mvn", "once, to fetch the Kafka jars from Maven Central (apt-get install maven)")
    home.mkdir(parents=True, exist_ok=True)
    with _file_lock(home / ".install.lock"):
        if _jars_complete(libs):  # another process finished while we waited
            return libs
        # Leftovers of killed downloads; safe to delete while we hold the lock.
        for stale in home.glob("libs.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)

        progress(f"fetching Kafka {KAFKA_VERSION} jars from Maven Central (once, ~45 MB)...")
        pom = home / "pom.xml"
        pom.write_text(_POM)
        partial = Path(tempfile.mkdtemp(prefix="libs.partial-", dir=home))
        try:
            result = subprocess.run(
                [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
                 f"-DoutputDirectory={partial}"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            if result.returncode != 0 or not any(partial.glob("kafka_2.13-*.jar")):
                raise RuntimeError(
                    f"mvn failed to fetch the Kafka jars (exit {result.returncode}):\n"
                    + _last_lines(result.stdout, 30)
                )
            (partial / _DONE_MARKER).write_text(_pom_digest() + "\n")
            partial.chmod(0o755)  # mkdtemp made it private; the jars are not secret
            if libs.exists():  # incomplete or for an older pom
                shutil.rmtree(libs)
            partial.rename(libs)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    progress(f"Kafka {KAFKA_VERSION} jars ready in {libs}")
    return libs


# ------------------------------------------------------------------ configuration


# A cluster node's heartbeat to the controller, and the silence after which the
# controller fences it (see the cluster part of _server_properties).
BROKER_HEARTBEAT_MS = 1000
BROKER_SESSION_MS = 8000


def _server_properties(
    port: int,
    controller_port: int,
    data_dir: Path,
    *,
    node_id: int = 1,
    voters: dict[int, int] | None = None,
    tls: _BrokerTls | None = None,
    plaintext_port: int | None = None,
) -> str:
    """The config of one node.

    ``voters`` (node id -> controller port) makes it one node of a static
    multi-voter quorum; None is the single node.  ``tls`` makes the client
    listener SASL_SSL with ACLs; ``plaintext_port`` (with ``tls`` only, for
    scripts/bench's TLS cost measurement) adds a loopback PLAINTEXT listener,
    whose clients are ``User:ANONYMOUS``, a super user: never on a shared host.
    """
    if voters is None:
        quorum = f"""\
# KRaft single node: this process is both the broker and the only controller.
process.roles=broker,controller
node.id={node_id}
controller.quorum.bootstrap.servers={_HOST}:{controller_port}"""
        replication = """\
# One broker cannot meet the default replication of the internal topics; without
# these, consumer groups and transactions would never become available.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1"""
    else:
        quorum_voters = ",".join(f"{n}@{_HOST}:{c}" for n, c in sorted(voters.items()))
        quorum = f"""\
# KRaft cluster of {len(voters)} nodes, each both a broker and a controller; the
# voters are named statically (storage formatted without --standalone).
process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={quorum_voters}"""
        replication = f"""\
# Every partition on three nodes, and an acks=all write needs two of them: one
# node may be down (killed, restarting) without stopping producers, and no
# acknowledged write lives on one disk only.  The same for the internal topics
# (consumer offsets, transaction state, share-group state).
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
# 50 partitions each (the defaults) mean 300 replicas to elect and load on a
# 2-core machine; 12 are plenty for local work.
offsets.topic.num.partitions=12
transaction.state.log.num.partitions=12
# A SIGKILLed node stops heartbeating; only when the controller fences it do
# its partitions get new leaders and leave the ISRs, so until then acks=all
# writes and transactions touching it wait.  An outage costs the fencing time:
# the session after the node's last heartbeat, and when the node was the active
# controller, first an election (after Kafka's 2 s fetch timeout), after which
# the new controller gives every node a fresh session.  Kafka's 9 s / 2 s
# fenced 8.1 s (11.4 s for the controller) after a kill, too close to issue
# 14's 15 s once the clients' own recovery is added (1-3 s).  Heartbeats every
# 1 s and an 8 s session fence a dead node 7-8 s after its kill (about 10 s
# for the controller) and leave a live node eight heartbeats to get one
# through.  Shorter sessions fenced live nodes: 7 s / 1 s fenced the active
# controller's own live node 10 s after it had fenced a killed one (1 of 3
# runs, this machine running only that test); 6 s / 1 s and 4 s / 0.5 s did
# the same under a load average of 15-65.  A 1 s controller fetch timeout was
# tried and not kept: it called a needless election right after a fence, and
# the controller was away for 4 s when it was needed.
broker.heartbeat.interval.ms={BROKER_HEARTBEAT_MS}
broker.session.timeout.ms={BROKER_SESSION_MS}"""

    if tls is None:
        listeners = f"""\
listeners=PLAINTEXT://{_HOST}:{port},CONTROLLER://{_HOST}:{controller_port}
advertised.listeners=PLAINTEXT://{_HOST}:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"""
    else:
        # The broker's own password is in here: the file is written mode 0600.
        # Kafka logs its config with password values (sasl.jaas.config) hidden.
        bench = (f",BENCH://{_HOST}:{plaintext_port}", ",BENCH:PLAINTEXT") \
            if plaintext_port else ("", "")
        listeners = f"""\
# Clients: SASL_SSL (SCRAM-SHA-512 over TLS).  The broker talks to itself
# (e.g. transaction markers) over the same listener as {BROKER_PRINCIPAL}.
# The controller listener stays PLAINTEXT on loopback.  A BENCH listener, if
# any, is scripts/bench's loopback PLAINTEXT comparison (ANONYMOUS, super user).
listeners=CLIENT://{_HOST}:{port}{bench[0]},CONTROLLER://{_HOST}:{controller_port}
advertised.listeners=CLIENT://{_HOST}:{port}{bench[0]}
controller.listener.names=CONTROLLER
inter.broker.listener.name=CLIENT
listener.security.protocol.map=CLIENT:SASL_SSL,CONTROLLER:PLAINTEXT{bench[1]}
sasl.enabled.mechanisms={SASL_MECHANISM}
sasl.mechanism.inter.broker.protocol={SASL_MECHANISM}
listener.name.client.{SASL_MECHANISM.lower()}.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required \
username="{BROKER_PRINCIPAL}" password="{tls.broker_password}";
ssl.keystore.type=PEM
ssl.keystore.location={tls.keystore}
ssl.truststore.type=PEM
ssl.truststore.location={tls.ca}
ssl.client.auth=none

# ACLs in the cluster metadata.  ANONYMOUS is the broker itself on the
# PLAINTEXT controller listener (registration, forwarded requests); see the
# module docstring.  Everyone else needs an ACL.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:{BROKER_PRINCIPAL};User:ANONYMOUS
allow.everyone.if.no.acl.found=false"""

    return f"""\
# Generated by streams/localkafka.py; rewritten on every start.
{quorum}
{listeners}
log.dirs={data_dir}

{replication}

# Topics are created explicitly by the project (with their own partition count
# and retention); a typo in a topic name must fail instead of creating a topic.
num.partitions=6
auto.create.topics.enable=false

# Test friendliness: no 3 s wait before the first rebalance, timed-out
# transactions are aborted within a second instead of a minute, and tests may
# use short consumer sessions (classic and KIP-848 protocols).
group.initial.rebalance.delay.ms=0
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
group.min.session.timeout.ms=1000
group.consumer.min.session.timeout.ms=1000
"""


def _log4j2_properties(log_file: Path) -> str:
    # Without a config log4j2 only prints its own errors; send the broker's INFO
    # log to a size-capped file so a long-running dev broker cannot fill the disk.
    return f"""\
# Generated by streams/localkafka.py
status = warn
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = {log_file}
appender.file.filePattern = {log_file}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
# Per-request logging is far too chatty at INFO.
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def _cluster_id(run_dir: Path) -> str:
    """The run dir's cluster id, created once so a restart reuses the data dir."""
    path = run_dir / "cluster.id"
    if path.is_file():
        return path.read_text().strip()
    cluster_id = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
    path.write_text(cluster_id + "\n")
    return cluster_id


def default_run_dir(brokers: int = 1, secure: bool = False, cache_dir: Path | None = None) -> Path:
    """The CLI's run dir of each shape: ``<cache>/broker``, ``cluster``, ``broker-secure``.

    Separate dirs, because a data dir is formatted for one shape (one or
    three voters; with or without SCRAM credentials) and cannot change later.
    """
    cache = cache_dir or default_cache_dir()
    if brokers > 1:
        return cache / "cluster"
    return cache / ("broker-secure" if secure else "broker")


def _default_run_dirs(cache_dir: Path | None = None) -> list[Path]:
    return [default_run_dir(1, False, cache_dir), default_run_dir(3, False, cache_dir),
            default_run_dir(1, True, cache_dir)]


def find_running(cache_dir: Path | None = None) -> LocalBroker | LocalCluster | None:
    """What runs from the CLI's default run dirs (single, cluster, secure; first found), or None."""
    for run_dir in _default_run_dirs(cache_dir):
        found = status(run_dir)
        if found is not None:
            return found
    return None


# ----------------------------------------------------------------------- security


@dataclass(frozen=True)
class _BrokerTls:
    ca: Path
    keystore: Path
    broker_password: str


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (0600), atomically."""
    with atomic_file(path, private=True) as fh:
        fh.write(text)


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _credentials_file(run_dir: Path) -> Path:
    return run_dir / "credentials.json"


def _passwords(run_dir: Path, create: bool) -> dict[str, str]:
    """principal -> password, generated once per run dir (kept 0600)."""
    path = _credentials_file(run_dir)
    if path.is_file():
        return json.loads(path.read_text())
    if not create:
        raise RuntimeError(f"{path} is missing: the SCRAM passwords of this run dir are lost; "
                           f"delete {run_dir} to start a new secured broker")
    # token_urlsafe: letters, digits, '-' and '_' only, which need no quoting in
    # --add-scram, a JAAS line or a properties file.
    passwords = {p: secrets.token_urlsafe(24)
                 for p in (BROKER_PRINCIPAL, *CLIENT_PRINCIPALS.values())}
    _write_private(path, json.dumps(passwords, indent=2) + "\n")
    return passwords


def _tls_dir(run_dir: Path) -> Path:
    return run_dir / "tls"


def _openssl_config(tls_dir: Path) -> Path:
    path = tls_dir / "openssl.cnf"
    path.write_text("""\
# Generated by streams/localkafka.py: extensions of the local CA and broker certificates.
[req]
distinguished_name = dn
prompt = no
[dn]
[ca_ext]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[broker_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
""")
    return path


def _ensure_tls(run_dir: Path) -> tuple[Path, Path]:
    """A private CA and a broker certificate signed by it (once); (ca.pem, keystore.pem).

    The keystore is one PEM file (key, certificate, CA certificate) that Kafka
    reads with ``ssl.keystore.type=PEM``; the key is unencrypted and the file
    is 0600.
    """
    tls = _tls_dir(run_dir)
    tls.mkdir(parents=True, exist_ok=True)  # the CA is public; keys are 0600
    ca, ca_key, keystore = tls / "ca.pem", tls / "ca-key.pem", tls / "broker-keystore.pem"
    if ca.is_file() and keystore.is_file():
        return ca, keystore
    openssl = _require("openssl", "to generate the secured broker's TLS certificates")
    config = _openssl_config(tls)
    tag = secrets.token_hex(4)  # two run dirs never issue look-alike CAs

    def run(*args: str) -> None:
        result = subprocess.run([openssl, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=tls)
        if result.returncode != 0:
            raise RuntimeError(f"openssl {args[0]} failed:\n{_last_lines(result.stdout, 20)}")

    old_umask = os.umask(0o077)  # keys are created 0600
    try:
        run("req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650",
            "-config", str(config), "-extensions", "ca_ext",
            "-subj", f"/O=kafka-ledger local/CN=ledger local CA {tag}",
            "-keyout", str(ca_key), "-out", str(ca))
        key, csr, cert = tls / "broker-key.pem", tls / "broker.csr", tls / "broker.pem"
        run("req", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256", "-config", str(config),
            "-subj", "/O=kafka-ledger local/CN=localhost", "-keyout", str(key), "-out", str(csr))
        run("x509", "-req", "-sha256", "-days", "825", "-in", str(csr), "-CA", str(ca),
            "-CAkey", str(ca_key), "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
            "-extfile", str(config), "-extensions", "broker_ext", "-out", str(cert))
        _write_private(keystore, key.read_text() + cert.read_text() + ca.read_text())
        for leftover in (key, csr, cert):
            leftover.unlink()
    finally:
        os.umask(old_umask)
    ca.chmod(0o644)  # public; clients need it
    return ca, keystore


def _client_properties_text(principal: str, password: str, bootstrap: str, ca: Path) -> str:
    return f"""\
# {principal}: settings for librdkafka / confluent-kafka clients of the local
# secured broker.  Generated by streams/localkafka.py, rewritten on every start.
# Secret (a password): keep this file mode 0600.
bootstrap.servers={bootstrap}
security.protocol=SASL_SSL
sasl.mechanism={SASL_MECHANISM}
sasl.username={principal}
sasl.password={password}
ssl.ca.location={ca}
"""


def _client_properties_paths(run_dir: Path) -> dict[str, Path]:
    clients = run_dir / "clients"
    return {principal: clients / f"{role}.properties"
            for role, principal in CLIENT_PRINCIPALS.items()}


def _write_client_properties(run_dir: Path, bootstrap: str, passwords: dict[str, str],
                             ca: Path) -> dict[str, Path]:
    _private_dir(run_dir / "clients")
    paths = _client_properties_paths(run_dir)
    for principal, path in paths.items():
        _write_private(path, _client_properties_text(principal, passwords[principal],
                                                     bootstrap, ca))
    return paths


# Written once, in streams/config.py (Settings reads LEDGER_KAFKA_CONFIG with it).
read_client_properties = read_properties


def _superuser_config(run_dir: Path, bootstrap: str) -> dict[str, str]:
    """librdkafka settings as the broker's own (super user) principal."""
    return {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": SASL_MECHANISM,
        "sasl.username": BROKER_PRINCIPAL,
        "sasl.password": _passwords(run_dir, create=False)[BROKER_PRINCIPAL],
        "ssl.ca.location": str(_tls_dir(run_dir) / "ca.pem"),
    }


# Who may do what, for a topic prefix <p>.  One fact, one place: ACL creation,
# the tests and the README table all come from this list (see ledger_acls).
# Topics are LITERAL: a PREFIXED "<p>.commands" would also match
# "<p>.commands.dlq" and let the app write dead letters.  Groups and
# transactional ids are PREFIXED, since their names carry a worker id or uuid.
_ACL_TEMPLATE: tuple[tuple[str, str, str, str, tuple[str, ...], str], ...] = (
    ("worker", "TOPIC", "LITERAL", "{p}.commands", ("READ", "DESCRIBE"),
     "consumes commands"),
    ("worker", "TOPIC", "LITERAL", "{p}.legs", ("READ", "WRITE", "DESCRIBE"),
     "sends and applies transfer legs"),
    ("worker", "TOPIC", "LITERAL", "{p}.events", ("READ", "WRITE", "DESCRIBE"),
     "appends events; reads them back to rebuild state when it takes a partition "
     "(streams/processor.py _catch_up)"),
    ("worker", "TOPIC", "LITERAL", "{p}.commands.dlq", ("WRITE", "DESCRIBE"),
     "dead letters"),
    ("worker", "TOPIC", "LITERAL", "{p}.replies", ("READ", "WRITE", "DESCRIBE"),
     "writes one reply per command; reads them for HTTP ?wait=1 (streams/replies.py)"),
    ("worker", "TOPIC", "PREFIXED", "{p}.", ("DESCRIBE_CONFIGS",),
     "checks the ledger topics' shape at start (LEDGER_CREATE_TOPICS=0, streams/topics.py)"),
    ("worker", "TOPIC", "PREFIXED", "{p}-faust-", ("CREATE", "READ", "WRITE", "DESCRIBE"),
     "Faust's own topic <p>-faust-__assignor-__leader (app id <p>-faust)"),
    ("worker", "GROUP", "PREFIXED", "{p}-", ("READ",),
     "groups <p>-worker, <p>-worker-catch-up, <p>-faust, <p>-reader; READ implies "
     "DESCRIBE (describe_consumer_groups in streams/routing.py)"),
    ("worker", "TRANSACTIONAL_ID", "PREFIXED", "{p}-", ("WRITE", "DESCRIBE"),
     "transactional.id <p>-worker-<worker id>"),
    ("app", "TOPIC", "LITERAL", "{p}.commands", ("WRITE", "DESCRIBE"),
     "sends commands (idempotent producer: WRITE on a topic is enough)"),
    ("app", "TOPIC", "LITERAL", "{p}.events", ("READ", "DESCRIBE"),
     "tails outcomes (streams/client.py)"),
    ("app", "TOPIC", "LITERAL", "{p}.replies", ("READ", "DESCRIBE"),
     "waits for replies (streams/client.py wait=True)"),
    ("app", "GROUP", "PREFIXED", "{p}-client", ("READ",),
     "LedgerClient's group id <p>-client-<uuid4>"),
    ("admin", "TOPIC", "PREFIXED", "{p}", ("CREATE", "DESCRIBE", "DESCRIBE_CONFIGS",
                                          "ALTER_CONFIGS"),
     "creates and configures the ledger topics (streams/topics.py ensure_topics)"),
    ("admin", "CLUSTER", "LITERAL", "kafka-cluster", ("DESCRIBE",),
     "describes the cluster"),
)


def ledger_acls(topic_prefix: str = DEFAULT_TOPIC_PREFIX) -> list[AclRule]:
    """The ALLOW rules of the secured broker for ``topic_prefix``; nothing else is allowed."""
    if not topic_prefix or any(c in topic_prefix for c in "{}*"):
        raise ValueError(f"bad topic prefix {topic_prefix!r}")
    return [AclRule(CLIENT_PRINCIPALS[role], rtype, pattern,
                    name.format(p=topic_prefix), ops, why.replace("<p>", topic_prefix))
            for role, rtype, pattern, name, ops, why in _ACL_TEMPLATE]


def acl_table_markdown(topic_prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    """``ledger_acls`` as a Markdown table (for the README)."""
    rows = ["| principal | resource | pattern | name | operations | why |",
            "| --- | --- | --- | --- | --- | --- |"]
    for r in ledger_acls(topic_prefix):
        rows.append(f"| {r.principal} | {r.resource_type.lower()} | {r.pattern_type.lower()} "
                    f"| `{r.resource_name}` | {', '.join(r.operations)} | {r.why} |")
    return "\n".join(rows) + "\n"


_CONFLUENT_RESOURCE_TYPE = {"CLUSTER": "BROKER"}


def grant_ledger_acls(broker: LocalBroker, topic_prefix: str = DEFAULT_TOPIC_PREFIX,
                      timeout_s: float = 30) -> list[AclRule]:
    """Create ``ledger_acls(topic_prefix)`` on a secured broker (idempotent).

    Runs as the broker's super user principal; call it again for more prefixes.
    """
    from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType,
                                       AdminClient, ResourcePatternType, ResourceType)

    if not broker.secure:
        raise RuntimeError("ACLs need a secured broker (start_broker(secure=True))")
    rules = ledger_acls(topic_prefix)
    bindings = [
        AclBinding(ResourceType[_CONFLUENT_RESOURCE_TYPE.get(r.resource_type, r.resource_type)],
                   r.resource_name,
                   ResourcePatternType[r.pattern_type], f"User:{r.principal}", "*",
                   AclOperation[op], AclPermissionType.ALLOW)
        for r in rules for op in r.operations
    ]
    admin = AdminClient(_superuser_config(broker.run_dir, broker.bootstrap))
    for future in admin.create_acls(bindings, request_timeout=timeout_s).values():
        future.result()
    return rules


# ---------------------------------------------------------------------- processes


def free_port() -> int:
    """A free loopback port (for a test's or a benchmark's worker)."""
    return _free_ports(1)[0]


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all sockets held open together)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind((_HOST, 0))
        return [s.getsockname()[1] for s in socks]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((_HOST, port)) == 0


def _pid_file(run_dir: Path) -> Path:
    return run_dir / "broker.pid"


def _read_pid(run_dir: Path) -> int | None:
    try:
        return int(_pid_file(run_dir).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


# Brokers started by this process (as in tests), kept so that they are reaped:
# an exited child stays a zombie, which still "exists" for kill(pid, 0), until
# its parent waits for it.  (A dying JVM's main thread even shows as a zombie in
# /proc while its other threads are still exiting; only waitpid() can tell.)
_CHILDREN: dict[int, subprocess.Popen] = {}


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    try:  # a zombie waiting for its parent (not us) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _is_our_broker(pid: int, run_dir: Path) -> bool:
    """True if ``pid`` is alive and is the broker of ``run_dir`` (or of a cluster node dir).

    Guards against pid reuse: a stale pid file must never make us signal an
    unrelated process, so the command line must name this run dir's config.
    """
    if not _alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (not Linux): trust the pid file
    return os.fsencode(str(run_dir / "server.properties")) in cmdline


def _running_pid(run_dir: Path) -> int | None:
    """The pid of the broker running from ``run_dir`` (a node dir for clusters), or None."""
    pid = _read_pid(run_dir)
    return pid if pid is not None and _is_our_broker(pid, run_dir) else None


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _kill_and_wait(pid: int, timeout_s: float = 30) -> None:
    """SIGKILL one pid and wait until it is gone (reaped, if it is our child)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_gone(pid, timeout_s):
        raise RuntimeError(f"pid {pid} still exists {timeout_s}s after SIGKILL")


def _terminate(pids: Iterable[int], timeout_s: float, quorum: int = 0) -> None:
    """SIGTERM every pid, wait up to ``timeout_s`` for all, then SIGKILL the rest.

    ``quorum``: the pids are voters of a controller quorum that needs that
    many of them, and no other voter runs. A node's clean shutdown asks the
    active controller to move its leaderships away, which needs a quorum;
    once fewer than ``quorum`` are left, the rest can never finish (the last
    node of a three-node cluster waited out the whole 60 s), so they are
    SIGKILLed then: what they wrote is in the page cache already.
    """
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # Kafka shuts down cleanly on SIGTERM
    deadline = time.monotonic() + timeout_s
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [pid for pid in left if not _wait_gone(pid, 0.1)]
        if quorum and len(left) < quorum:
            break
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 10)


def _last_lines(text: str, n: int) -> str:
    return "\n".join(text.splitlines()[-n:])


def _log_tail(run_dir: Path, n: int = 40) -> str:
    parts = []
    for name in ("broker.out", "broker.log"):
        path = run_dir / name
        if path.is_file() and path.stat().st_size:
            text = path.read_text(errors="replace")
            parts.append(f"--- {path} (last {n} lines) ---\n{_last_lines(text, n)}")
    return "\n".join(parts) or f"(the broker in {run_dir} wrote no log)"


def _answers_as(bootstrap: str, node_id: int | None = None,
                config: dict[str, str] | None = None) -> bool:
    """True once the broker at ``bootstrap`` serves metadata listing itself (i.e. is unfenced).

    A fresh client knows only the bootstrap address, so its first metadata
    request goes there; ``node_id`` is the id the answer must list (None: any).
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({**(config or {}), "bootstrap.servers": bootstrap})
    try:
        brokers = admin.list_topics(timeout=5).brokers
    except KafkaException:
        return False
    return bool(brokers) if node_id is None else node_id in brokers


def _broker_answers(bootstrap: str) -> bool:
    """True once the broker serves metadata and lists itself (i.e. is unfenced)."""
    return _answers_as(bootstrap)


def _java_and_classpath(cache_dir: Path | None) -> tuple[str, str]:
    java = _require("java", "to run the Kafka broker (Java 17+)")
    return java, f"{ensure_jars(cache_dir)}/*"


def _format_command(java: str, classpath: str, run_dir: Path, node_dir: Path,
                    quorum_args: list[str], scram: dict[str, str] | None) -> list[str]:
    """The StorageTool format command; SCRAM passwords go through a 0600 java @argfile.

    "--cluster-id=ID", not "-t ID": a random id may start with "-", which the
    tool's argument parser would take for an option.
    """
    args = ["kafka.tools.StorageTool", "format", f"--cluster-id={_cluster_id(run_dir)}",
            "-c", str(node_dir / "server.properties"), *quorum_args]
    if not scram:
        return [java, "-cp", classpath, *args]
    for name, password in scram.items():
        args += ["--add-scram", f"{SASL_MECHANISM}=[name={name},password={password}]"]
    for arg in args:
        if any(c in arg for c in '"\\\n#'):
            raise ValueError("an argument cannot be written to a java @argfile")
    argfile = node_dir / "format.args"
    _write_private(argfile, "".join(f'"{arg}"\n' for arg in args))
    return [java, "-cp", classpath, f"@{argfile}"]


def _redact(text: str, secret_values: Iterable[str]) -> str:
    for value in secret_values:
        text = text.replace(value, "***")
    return text


def _format_storage(java: str, classpath: str, run_dir: Path, data_dir: Path,
                    node_dir: Path | None = None, quorum_args: list[str] | None = None,
                    scram: dict[str, str] | None = None) -> None:
    if (data_dir / "meta.properties").is_file():
        return  # formatted by an earlier start; keep the data
    node_dir = node_dir or run_dir
    cmd = _format_command(java, classpath, run_dir, node_dir,
                          ["--standalone"] if quorum_args is None else quorum_args, scram)
    try:
        result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finally:
        (node_dir / "format.args").unlink(missing_ok=True)
    if result.returncode != 0:
        output = _redact(result.stdout, (scram or {}).values())
        raise RuntimeError(f"formatting {data_dir} failed:\n{_last_lines(output, 30)}")


# A broker keeps ~3 files open per partition segment; a test suite that makes
# hundreds of topics on one broker went past a 20,000 limit ("Too many open
# files", the broker died). Raised in the broker's process only, as far as
# the machine lets us.
OPEN_FILES_WANTED = 1 << 20


def _raise_open_files_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in (OPEN_FILES_WANTED, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, limit), max(hard, limit)))
            return
        except (ValueError, OSError):
            continue


def _launch(java: str, classpath: str, node_dir: Path, heap: str,
            jvm_options: tuple[str, ...] = ()) -> subprocess.Popen:
    """Start the broker of ``node_dir`` (its server.properties) and write its pid file."""
    log4j_config = node_dir / "log4j2.properties"
    log4j_config.write_text(_log4j2_properties(node_dir / "broker.log"))
    with open(node_dir / "broker.out", "ab") as out:
        proc = subprocess.Popen(
            [java, f"-Xmx{heap}", *jvm_options, "-Djava.awt.headless=true",
             f"-Dlog4j2.configurationFile={log4j_config}",
             "-cp", classpath, "kafka.Kafka", str(node_dir / "server.properties")],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=node_dir,
            start_new_session=True,  # outlives the CLI; ^C in the shell does not reach it
            preexec_fn=_raise_open_files_limit,
        )
    _CHILDREN[proc.pid] = proc
    _pid_file(node_dir).write_text(f"{proc.pid}\n")
    return proc


def _check_ports_free(ports: Iterable[int]) -> None:
    ports = list(ports)
    if len(set(ports)) != len(ports):
        raise RuntimeError(f"ports must all differ: {ports}")
    for p in ports:
        if _port_open(p):
            raise RuntimeError(f"port {p} on {_HOST} is already in use")


# ------------------------------------------------------------------ single broker


def _mode_file(run_dir: Path) -> Path:
    return run_dir / "mode"


def _formatted_secure(run_dir: Path) -> bool | None:
    """How the single broker's data dir was formatted: True (secure), False, None (not yet)."""
    mode = _mode_file(run_dir)
    if mode.is_file():
        return mode.read_text().strip() == "secure"
    # Run dirs formatted before the mode file existed were plaintext.
    return False if (run_dir / "data" / "meta.properties").is_file() else None


def _secure_fields(run_dir: Path) -> dict:
    return {"secure": True, "client_properties": _client_properties_paths(run_dir),
            "ca_path": _tls_dir(run_dir) / "ca.pem"}


def start_broker(
    run_dir: Path,
    port: int | None = None,
    controller_port: int | None = None,
    heap: str = SINGLE_HEAP,
    ready_timeout_s: float = 90,
    cache_dir: Path | None = None,
    secure: bool | None = None,
    topic_prefix: str = DEFAULT_TOPIC_PREFIX,
    plaintext_port: int | None = None,
) -> LocalBroker:
    """Start a broker whose config, data and logs live in ``run_dir``.

    Free loopback ports are picked when ``port``/``controller_port`` are None.
    Starting an existing run dir again (e.g. after ``kill_broker``) keeps its
    data; pass the same ports to keep the same address.  Returns once the
    broker answers metadata requests; raises RuntimeError (with the tail of its
    log) if it exits or does not become ready in time.

    ``secure=True`` makes a secured broker (module docstring) and grants
    ``ledger_acls(topic_prefix)``; None means "as the run dir was formatted"
    (plaintext for a new one).  A run dir cannot change between the two.

    ``plaintext_port`` (secured broker only; off by default) adds a loopback
    PLAINTEXT listener on that port (0: a free one), for measuring what TLS
    costs on the same broker (scripts/bench --compare tls): its clients are
    ``User:ANONYMOUS``, a super user, so it is for benchmarks only.
    """
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    running = status(run_dir)
    if running:
        raise RuntimeError(f"Kafka is already running from {run_dir} "
                           f"at {running.bootstrap}")
    formatted = _formatted_secure(run_dir)
    if secure is None:
        secure = bool(formatted)
    elif formatted is not None and formatted != secure:
        raise RuntimeError(
            f"{run_dir} was formatted {'with' if formatted else 'without'} --secure and cannot "
            f"change; use another run dir (or delete this one and its data)")
    ledger_acls(topic_prefix)  # validates the prefix before anything starts
    java, classpath = _java_and_classpath(cache_dir)

    # Three candidates, so two remain even if one equals a port given by the caller.
    free = [p for p in _free_ports(3) if p not in (port, controller_port)]
    port = port or free.pop()
    controller_port = controller_port or free.pop()
    if port == controller_port:
        raise RuntimeError("port and controller_port must differ")
    _check_ports_free((port, controller_port))
    if plaintext_port is not None:
        if not secure:
            raise RuntimeError("plaintext_port is a second listener of a secured broker")
        plaintext_port = plaintext_port or free.pop()
        _check_ports_free((plaintext_port,))

    data_dir = run_dir / "data"
    tls = scram = None
    if secure:
        passwords = _passwords(run_dir, create=formatted is None)
        ca, keystore = _ensure_tls(run_dir)
        tls = _BrokerTls(ca=ca, keystore=keystore, broker_password=passwords[BROKER_PRINCIPAL])
        scram = passwords
    _write_private(run_dir / "server.properties",
                   _server_properties(port, controller_port, data_dir, tls=tls,
                                      plaintext_port=plaintext_port))
    _format_storage(java, classpath, run_dir, data_dir, scram=scram)
    _mode_file(run_dir).write_text("secure\n" if secure else "plaintext\n")

    bootstrap = f"{_HOST}:{port}"
    proc = _launch(java, classpath, run_dir, heap)
    (run_dir / "bootstrap.txt").write_text(bootstrap + "\n")
    broker = LocalBroker(pid=proc.pid, bootstrap=bootstrap, run_dir=run_dir)
    probe_config = None
    if secure:
        broker = LocalBroker(pid=proc.pid, bootstrap=bootstrap, run_dir=run_dir,
                             **_secure_fields(run_dir))
        if plaintext_port:
            broker.plaintext_bootstrap = f"{_HOST}:{plaintext_port}"
        _write_client_properties(run_dir, bootstrap, passwords, tls.ca)
        probe_config = _superuser_config(run_dir, bootstrap)

    deadline = time.monotonic() + ready_timeout_s
    # Cheap silent socket probe first; the metadata check only once it listens.
    while not (_port_open(port) and _answers_as(bootstrap, config=probe_config)):
        if proc.poll() is not None:
            _CHILDREN.pop(proc.pid, None)
            _pid_file(run_dir).unlink(missing_ok=True)
            raise RuntimeError(f"Kafka broker exited with code {proc.returncode} during "
                               f"startup:\n{_log_tail(run_dir)}")
        if time.monotonic() >= deadline:
            stop_broker(broker)
            raise RuntimeError(f"Kafka broker not ready after {ready_timeout_s}s; "
                               f"stopped it:\n{_log_tail(run_dir)}")
        time.sleep(0.5)
    if secure:
        try:
            grant_ledger_acls(broker, topic_prefix)
        except BaseException:
            stop_broker(broker)
            raise
    return broker


def kill_broker(broker: LocalBroker | Path, timeout_s: float = 30) -> bool:
    """SIGKILL the broker of a run dir by its pid (no clean shutdown) and wait until it is gone.

    Returns whether it was running.  Its data stays; ``start_broker`` on the
    same run dir (and ports) recovers it.
    """
    run_dir = Path(getattr(broker, "run_dir", broker)).resolve()
    pid = _running_pid(run_dir)
    if pid is not None:
        _kill_and_wait(pid, timeout_s)
    _pid_file(run_dir).unlink(missing_ok=True)
    return pid is not None


def stop_broker(run_dir_or_broker: Path | LocalBroker, timeout_s: float = 30) -> bool:
    """Stop the broker of a run dir: SIGTERM, then SIGKILL after ``timeout_s``.

    Only the pid recorded in ``broker.pid`` is signalled (never processes found
    by name: other brokers may be running).  Returns whether a broker was
    running; not running is not an error.  Given a LocalCluster, stops all of
    its nodes (``stop_cluster``).
    """
    if isinstance(run_dir_or_broker, LocalCluster):
        return bool(stop_cluster(run_dir_or_broker, timeout_s=max(timeout_s, 60)))
    run_dir = Path(getattr(run_dir_or_broker, "run_dir", run_dir_or_broker)).resolve()
    pid = _running_pid(run_dir)
    if pid is not None:
        _terminate([pid], timeout_s)
    _pid_file(run_dir).unlink(missing_ok=True)
    return pid is not None


def status(run_dir: Path) -> LocalBroker | LocalCluster | None:
    """What runs from ``run_dir``: a LocalBroker, a LocalCluster (at least one node up), or None."""
    run_dir = Path(run_dir).resolve()
    pid = _running_pid(run_dir)
    if pid is not None:
        bootstrap = (run_dir / "bootstrap.txt").read_text().strip()
        extra = _secure_fields(run_dir) if _formatted_secure(run_dir) else {}
        return LocalBroker(pid=pid, bootstrap=bootstrap, run_dir=run_dir, **extra)
    cluster = cluster_status(run_dir)
    if cluster is not None and cluster.pids:
        return cluster
    return None


# ------------------------------------------------------------------------ cluster


def _layout_file(run_dir: Path) -> Path:
    return run_dir / "cluster.json"


def cluster_status(run_dir: Path) -> LocalCluster | None:
    """The cluster of ``run_dir`` with the pids of its running nodes (None for the
    others); None if ``run_dir`` holds no cluster."""
    run_dir = Path(run_dir).resolve()
    try:
        layout = json.loads(_layout_file(run_dir).read_text())
    except FileNotFoundError:
        return None
    nodes = []
    for n in layout["nodes"]:
        node_dir = run_dir / f"node-{n['node_id']}"
        nodes.append(ClusterNode(node_id=n["node_id"], port=n["port"],
                                 controller_port=n["controller_port"], run_dir=node_dir,
                                 pid=_running_pid(node_dir)))
    return LocalCluster(run_dir=run_dir, nodes=nodes, heap=layout.get("heap", CLUSTER_HEAP))


def cluster_ports(port: int, brokers: int = 3) -> list[tuple[int, int]]:
    """(client port, controller port) of nodes 1..n when node 1's client port is ``port``:
    node i gets ``port + 2(i-1)`` and the next one."""
    return [(port + 2 * i, port + 2 * i + 1) for i in range(brokers)]


def _write_node_config(cluster: LocalCluster, node: ClusterNode) -> None:
    node.run_dir.mkdir(parents=True, exist_ok=True)
    voters = {n.node_id: n.controller_port for n in cluster.nodes}
    node_config = _server_properties(node.port, node.controller_port, node.run_dir / "data",
                                     node_id=node.node_id, voters=voters)
    (node.run_dir / "server.properties").write_text(node_config)


def _wait_nodes_ready(cluster: LocalCluster, procs: dict[int, subprocess.Popen],
                      timeout_s: float) -> None:
    """Wait until every node in ``procs`` answers, listing itself; on failure stop them."""
    deadline = time.monotonic() + timeout_s
    waiting = dict(procs)
    while waiting:
        for node_id, proc in list(waiting.items()):
            node = cluster.node(node_id)
            if proc.poll() is not None:
                _CHILDREN.pop(proc.pid, None)
                _pid_file(node.run_dir).unlink(missing_ok=True)
                _stop_nodes(cluster, [n for n in procs if n != node_id])
                raise RuntimeError(f"Kafka node {node_id} exited with code {proc.returncode} "
                                   f"during startup:\n{_log_tail(node.run_dir)}")
            if _port_open(node.port) and _answers_as(node.bootstrap, node_id):
                del waiting[node_id]
        if waiting and time.monotonic() >= deadline:
            tails = "\n".join(_log_tail(cluster.node(n).run_dir, 15) for n in waiting)
            _stop_nodes(cluster, list(procs))
            raise RuntimeError(f"Kafka nodes {sorted(waiting)} not ready after {timeout_s}s; "
                               f"stopped the nodes started:\n{tails}")
        if waiting:
            time.sleep(0.5)


def start_cluster(
    run_dir: Path,
    brokers: int = 3,
    port: int | None = None,
    heap: str = CLUSTER_HEAP,
    ready_timeout_s: float = 180,
    cache_dir: Path | None = None,
) -> LocalCluster:
    """Start a ``brokers``-node KRaft cluster (combined broker + controller nodes) in ``run_dir``.

    ``port`` is node 1's client port, the others follow (``cluster_ports``);
    None picks free ports for a new run dir and reuses the recorded ones for an
    existing run dir, whose data is kept.  Nodes already running are left
    alone (only the others start); all running is an error.  Returns once every
    node answers metadata requests listing itself; on failure every node it
    started is stopped by pid.
    """
    if brokers < 3:
        raise ValueError("a cluster has at least 3 nodes (a single broker: start_broker)")
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if _running_pid(run_dir) is not None:
        raise RuntimeError(f"a single broker is running from {run_dir}")
    existing = cluster_status(run_dir)
    if existing is not None:
        if len(existing.nodes) != brokers:
            raise RuntimeError(f"{run_dir} holds a {len(existing.nodes)}-node cluster")
        recorded = [(n.port, n.controller_port) for n in existing.nodes]
        if port is not None and cluster_ports(port, brokers) != recorded:
            if existing.pids:
                raise RuntimeError(f"the cluster in {run_dir} runs on other ports "
                                   f"({existing.bootstrap})")
            recorded = cluster_ports(port, brokers)
        ports = recorded
        if all(n.pid for n in existing.nodes):
            raise RuntimeError(f"the cluster in {run_dir} is already running "
                               f"at {existing.bootstrap}")
    else:
        if port is None:
            free = _free_ports(2 * brokers)
            ports = list(zip(free[::2], free[1::2]))
        else:
            ports = cluster_ports(port, brokers)
    alive = {n.node_id: n.pid for n in existing.nodes} if existing else {}
    cluster = LocalCluster(run_dir=run_dir, heap=heap, nodes=[
        ClusterNode(node_id=i + 1, port=p, controller_port=c, run_dir=run_dir / f"node-{i + 1}",
                    pid=alive.get(i + 1))
        for i, (p, c) in enumerate(ports)])
    to_start = [n for n in cluster.nodes if n.pid is None]
    _check_ports_free(p for n in to_start for p in (n.port, n.controller_port))
    java, classpath = _java_and_classpath(cache_dir)

    (run_dir / "cluster.json").write_text(json.dumps({
        "brokers": brokers, "heap": heap,
        "nodes": [{"node_id": n.node_id, "port": n.port, "controller_port": n.controller_port}
                  for n in cluster.nodes],
    }, indent=2) + "\n")
    (run_dir / "bootstrap.txt").write_text(cluster.bootstrap + "\n")
    for node in to_start:
        _write_node_config(cluster, node)
    # Static voters: formatted with neither --standalone nor --initial-controllers.
    # The formats run in parallel (a JVM start each).
    formats = []
    for node in to_start:
        if not (node.run_dir / "data" / "meta.properties").is_file():
            cmd = _format_command(java, classpath, run_dir, node.run_dir, [], None)
            formats.append((node, subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                   stderr=subprocess.STDOUT, text=True)))
    failures = []
    for node, proc in formats:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            failures.append(f"node {node.node_id}:\n{_last_lines(out, 20)}")
    if failures:
        raise RuntimeError("formatting the cluster's storage failed:\n" + "\n".join(failures))

    procs = {}
    try:
        for node in to_start:
            procs[node.node_id] = proc = _launch(java, classpath, node.run_dir, heap,
                                                 CLUSTER_JVM_OPTIONS)
            node.pid = proc.pid
    except BaseException:
        _stop_nodes(cluster, list(procs))
        raise
    _wait_nodes_ready(cluster, procs, ready_timeout_s)
    return cluster


def start_node(cluster: LocalCluster, node_id: int, ready_timeout_s: float = 120,
               cache_dir: Path | None = None) -> ClusterNode:
    """Start one (stopped or killed) node again on its data dir and ports; wait until it answers."""
    node = cluster.node(node_id)
    if _running_pid(node.run_dir) is not None:
        raise RuntimeError(f"node {node_id} is already running (pid {_read_pid(node.run_dir)})")
    _check_ports_free((node.port, node.controller_port))
    java, classpath = _java_and_classpath(cache_dir)
    _write_node_config(cluster, node)
    proc = _launch(java, classpath, node.run_dir, cluster.heap, CLUSTER_JVM_OPTIONS)
    node.pid = proc.pid
    try:
        _wait_nodes_ready(cluster, {node_id: proc}, ready_timeout_s)
    except BaseException:
        node.pid = None
        raise
    return node


def out_of_sync(cluster: LocalCluster) -> dict[str, list[int]]:
    """Partitions whose in-sync replicas are not all their replicas ("topic-p":
    the missing node ids); {} when every replica has caught up.  Raises
    KafkaException when no node answers."""
    from confluent_kafka.admin import AdminClient

    topics = AdminClient({"bootstrap.servers": cluster.bootstrap}).list_topics(timeout=10).topics
    return {f"{name}-{p.id}": sorted(set(p.replicas) - set(p.isrs))
            for name, topic in topics.items() for p in topic.partitions.values()
            if set(p.replicas) - set(p.isrs)}


def wait_in_sync(cluster: LocalCluster, timeout_s: float = 120) -> float:
    """Wait until every partition's replicas are all in sync again (after a node
    restarted); the seconds it took.  A rolling restart waits for this before
    taking the next node down: until then a partition whose restarted replica is
    still catching up has only the in-sync replicas that remain, and losing one
    more node drops it below min.insync.replicas."""
    from confluent_kafka import KafkaException

    started = deadline = time.monotonic()
    deadline += timeout_s
    missing: dict[str, list[int]] | str = "no answer"
    while time.monotonic() < deadline:
        try:
            missing = out_of_sync(cluster)
        except KafkaException as exc:
            missing = str(exc)
        if not missing:
            return time.monotonic() - started
        time.sleep(0.5)
    raise RuntimeError(f"replicas not in sync after {timeout_s}s: {missing}")


def kill_node(cluster: LocalCluster, node_id: int, timeout_s: float = 30) -> bool:
    """SIGKILL one node by its pid and wait until it is gone; returns whether it was running."""
    node = cluster.node(node_id)
    pid = _running_pid(node.run_dir)
    if pid is not None:
        _kill_and_wait(pid, timeout_s)
    _pid_file(node.run_dir).unlink(missing_ok=True)
    node.pid = None
    return pid is not None


def _stop_nodes(cluster: LocalCluster, node_ids: list[int], timeout_s: float = 60) -> list[int]:
    """SIGTERM the given nodes together (SIGKILL after ``timeout_s``); the node ids that ran."""
    running = {}
    for node_id in node_ids:
        node = cluster.node(node_id)
        pid = _running_pid(node.run_dir)
        if pid is not None:
            running[node_id] = pid
    others = [n for n in cluster.nodes
              if n.node_id not in node_ids and _running_pid(n.run_dir) is not None]
    # Stopping the whole quorum (every other node is down): see _terminate.
    quorum = len(cluster.nodes) // 2 + 1 if len(cluster.nodes) > 1 and not others else 0
    _terminate(running.values(), timeout_s, quorum)
    for node_id in node_ids:
        node = cluster.node(node_id)
        _pid_file(node.run_dir).unlink(missing_ok=True)
        node.pid = None
    return sorted(running)


def stop_cluster(cluster_or_run_dir: LocalCluster | Path, timeout_s: float = 60) -> list[int]:
    """Stop every node of a cluster, each by its own pid; returns the ids of the nodes that ran."""
    cluster = cluster_or_run_dir
    if not isinstance(cluster, LocalCluster):
        cluster = cluster_status(Path(cluster_or_run_dir))
        if cluster is None:
            return []
    return _stop_nodes(cluster, [n.node_id for n in cluster.nodes], timeout_s)


# ----------------------------------------------------------------------------- CLI


def _describe(found: LocalBroker | LocalCluster) -> list[str]:
    """What status/start print about a running broker or cluster (never a secret)."""
    if isinstance(found, LocalCluster):
        up = len(found.pids)
        lines = [f"{len(found.nodes)}-node cluster in {found.run_dir}: "
                 f"{up} of {len(found.nodes)} nodes running",
                 f"bootstrap: {found.bootstrap}"]
        for n in found.nodes:
            state = f"running (pid {n.pid})" if n.pid else "not running"
            lines.append(f"  node {n.node_id}: {n.bootstrap} (controller {n.controller_port}) "
                         f"{state}; log: {n.run_dir / 'broker.log'}")
        return lines
    lines = [f"broker running at {found.bootstrap} (pid {found.pid}) from {found.run_dir}"]
    if found.secure:
        lines.append(f"  SASL_SSL ({SASL_MECHANISM}); CA certificate: {found.ca_path}")
        for principal, path in found.client_properties.items():
            lines.append(f"  client settings of {principal} (secret, mode 0600): {path}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ledger kafka",
        description=f"Run a local Kafka {KAFKA_VERSION} broker (KRaft) without Docker: one node, "
                    f"a three-node cluster (--brokers 3) or a secured node (--secure).",
        epilog="Default run dirs: <cache>/broker, <cache>/cluster (--brokers 3), "
               "<cache>/broker-secure (--secure); status and stop without --run-dir cover all "
               "three.  Cluster ports: node i listens on PORT+2(i-1) for clients and the next "
               "port for its controller (9092/9093, 9094/9095, 9096/9097).",
    )
    parser.add_argument("command", choices=["install", "start", "stop", "status"])
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="config, data and logs (default: by shape, see below)")
    parser.add_argument("--port", type=int, default=None,
                        help=f"client port on {_HOST}: start listens on it (node 1's for a "
                             f"cluster; default: {CLI_PORT}, or the ports an existing cluster "
                             f"run dir recorded); status and stop act on what listens on it "
                             f"(default: everything in the default run dirs)")
    start = parser.add_argument_group("start options")
    start.add_argument("--controller-port", type=int, default=None,
                       help="KRaft controller port of a single broker (default: --port + 1)")
    start.add_argument("--brokers", type=int, choices=[1, 3], default=1,
                       help="1 (default) or 3: a three-node cluster, replication factor 3, "
                            "min.insync.replicas 2")
    start.add_argument("--secure", action="store_true",
                       help="SASL_SSL (SCRAM-SHA-512 over TLS) client listener with ACLs; "
                            "writes clients/{worker,app,admin}.properties in the run dir")
    start.add_argument("--topic-prefix", default=DEFAULT_TOPIC_PREFIX,
                       help=f"topic prefix the --secure ACLs cover "
                            f"(default: {DEFAULT_TOPIC_PREFIX})")
    start.add_argument("--heap", default=None,
                       help=f"JVM heap per node (default: {SINGLE_HEAP}; "
                            f"{CLUSTER_HEAP} per cluster node)")
    args = parser.parse_args(argv)

    try:
        if args.command == "install":
            ensure_jars()
            return 0
        if args.command == "start":
            return _cli_start(args)
        run_dirs = [args.run_dir] if args.run_dir else _default_run_dirs()
        if args.port is not None:
            run_dirs = [d for d in run_dirs if args.port in _client_ports(status(d))]
            if not run_dirs:
                print(f"no broker listening on port {args.port}")
                return 0 if args.command == "stop" else 1
        if args.command == "stop":
            return _cli_stop(run_dirs)
        return _cli_status(run_dirs)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _client_ports(found) -> set[int]:
    """The client ports of a running broker or cluster (nothing for None)."""
    if found is None:
        return set()
    return {int(address.rsplit(":", 1)[1]) for address in found.bootstrap.split(",")}


def _cli_start(args) -> int:
    if args.brokers > 1 and args.secure:
        raise RuntimeError("--secure runs a single node; it cannot be combined with --brokers 3")
    if args.brokers > 1 and args.controller_port is not None:
        raise RuntimeError("--controller-port is for a single broker; cluster nodes use "
                           "their client port + 1")
    run_dir = (args.run_dir or default_run_dir(args.brokers, args.secure)).resolve()
    if args.brokers > 1:
        existing = cluster_status(run_dir)
        if existing is not None and all(n.pid for n in existing.nodes):
            print("\n".join(["cluster already running", *_describe(existing)]))
            return 0
        if _running_pid(run_dir) is not None:
            raise RuntimeError(f"a single broker is running from {run_dir}")
        port = args.port if args.port or existing else CLI_PORT
        if existing is not None and existing.pids:
            down = [n.node_id for n in existing.nodes if n.pid is None]
            print(f"starting node(s) {', '.join(map(str, down))} of the cluster in {run_dir} ...")
        else:
            print(f"starting a {args.brokers}-node Kafka {KAFKA_VERSION} cluster "
                  f"in {run_dir} ...")
        started = time.monotonic()
        cluster = start_cluster(run_dir, brokers=args.brokers, port=port,
                                heap=args.heap or CLUSTER_HEAP)
        print(f"cluster ready in {time.monotonic() - started:.0f}s")
        print("\n".join(_describe(cluster)))
        return 0
    running = status(run_dir)
    if running:
        print("\n".join(["already running", *_describe(running)]))
        return 0
    port = args.port or CLI_PORT
    print(f"starting Kafka {KAFKA_VERSION} in {run_dir} ...")
    broker = start_broker(run_dir, port=port, controller_port=args.controller_port or port + 1,
                          heap=args.heap or SINGLE_HEAP, secure=True if args.secure else None,
                          topic_prefix=args.topic_prefix)
    print("\n".join(_describe(broker)))
    if broker.secure:
        print(f"  ACLs granted for topic prefix {args.topic_prefix!r} "
              f"(streams.localkafka.ledger_acls)")
    print(f"log: {run_dir / 'broker.log'}")
    return 0


def _cli_stop(run_dirs: list[Path]) -> int:
    for run_dir in run_dirs:
        run_dir = run_dir.resolve()
        pid = _running_pid(run_dir)
        if pid is not None and stop_broker(run_dir):
            print(f"stopped broker (pid {pid}) in {run_dir}")
            continue
        cluster = cluster_status(run_dir)
        if cluster is not None and cluster.pids:
            pids = {n.node_id: n.pid for n in cluster.nodes}
            for node_id in stop_cluster(cluster):
                print(f"stopped node {node_id} (pid {pids[node_id]}) in {run_dir}")
            continue
        print(f"no broker running in {run_dir}")
    return 0


def _cli_status(run_dirs: list[Path]) -> int:
    """Exit 0 if something runs and every node of everything found is up."""
    found_any, all_up = False, True
    for run_dir in run_dirs:
        found = status(run_dir)
        if found is None:
            print(f"no broker running in {run_dir.resolve()}")
            continue
        print("\n".join(_describe(found)))
        found_any = True
        if isinstance(found, LocalCluster) and len(found.pids) < len(found.nodes):
            all_up = False
    return 0 if found_any and all_up else 1


if __name__ == "__main__":
    sys.exit(main())
