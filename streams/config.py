"""Settings for workers, clients and scripts, read from the environment.

Every knob has one name here; ``README.md`` lists them. Tests override them
through the same environment variables so that a worker started as a
subprocess sees exactly what the test meant.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value in (None, "") else value


KAFKA_ENV_PREFIX = "LEDGER_KAFKA_"
KAFKA_CONFIG_FILE_ENV = "LEDGER_KAFKA_CONFIG"
# librdkafka's longest pause between reconnects to a broker (Settings.kafka).
RECONNECT_BACKOFF_MAX_MS = 1000
# Properties whose values are never shown (logs, errors, health, repr).
_SECRET_WORDS = ("password", "secret", "key", "token", "jaas", "credentials")


def read_properties(path: Path | str) -> dict[str, str]:
    """A client properties file as a dict for confluent_kafka (all values strings).

    The Java properties subset librdkafka users write: one ``key=value`` (or
    ``key: value``) a line, whitespace around key and value stripped, blank
    lines and lines starting with ``#`` or ``!`` ignored.  Line continuations
    and backslash escapes are not supported; a line without a separator is a
    ValueError naming the file and line (never the line itself: it may be a
    password).
    """
    result: dict[str, str] = {}
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        cut = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
        if cut <= 0:
            raise ValueError(f"{path}:{number}: expected key=value")
        result[line[:cut].strip()] = line[cut + 1:].strip()
    return result


def kafka_properties_from_env(environ=os.environ) -> dict[str, str]:
    """``LEDGER_KAFKA_CONFIG=<file>`` first, then ``LEDGER_KAFKA_<PROPERTY>``
    variables on top (``LEDGER_KAFKA_SASL_MECHANISM`` -> ``sasl.mechanism``)."""
    props = {}
    if environ.get(KAFKA_CONFIG_FILE_ENV):
        props.update(read_properties(Path(environ[KAFKA_CONFIG_FILE_ENV])))
    for name, value in environ.items():
        if name.startswith(KAFKA_ENV_PREFIX) and name != KAFKA_CONFIG_FILE_ENV and value:
            props[name[len(KAFKA_ENV_PREFIX):].lower().replace("_", ".")] = value
    return props


def redacted(props: dict[str, str]) -> dict[str, str]:
    return {k: ("***" if any(w in k.lower() for w in _SECRET_WORDS) else v)
            for k, v in props.items()}


def given(name: str) -> bool:
    """Whether the environment sets ``name`` to something: for defaults that
    apply only when a setting is not given (the CLI's local broker, the
    demo's fresh topic prefix)."""
    return bool(os.environ.get(name))


def local_cache_dir() -> Path | None:
    """``LEDGER_CACHE_DIR``: where the Kafka jars and the local broker's data
    live (streams/localkafka.py); None means its default."""
    value = os.environ.get("LEDGER_CACHE_DIR")
    return Path(value).expanduser() if value else None


def _path_env(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


@dataclass(frozen=True)
class Settings:
    # Where Kafka is. Unset means "the local broker started by `ledger kafka start`".
    bootstrap_servers: str = "127.0.0.1:9092"
    # Any other librdkafka property for every Kafka client of the project
    # (security.protocol, sasl.*, ssl.*, ...), as (name, value) pairs: from
    # LEDGER_KAFKA_CONFIG and LEDGER_KAFKA_* (see kafka()). Never printed.
    kafka_properties: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # Topic names derive from one prefix so a test (or a second ledger) can
    # run beside another on the same cluster without sharing anything.
    topic_prefix: str = "ledger"
    partitions: int = 6
    worker_id: str = field(default_factory=socket.gethostname)
    data_dir: Path = Path("data")
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    # One Kafka transaction covers at most this many commands.
    batch_size_max: int = 1000
    # How long the broker waits before aborting a transaction whose producer
    # vanished (kill -9 on another host). Short in tests, where a killed
    # worker's partitions move to a survivor.
    transaction_timeout_ms: int = 60_000
    # How long the group coordinator waits for a silent worker before giving
    # its partitions to the others. It must outlast a coordinator's failover
    # on a cluster (the dead broker fenced, plus an election when it was the
    # active controller: 8-11 s on the local three-node cluster), or every
    # worker is dropped from the group, gets "static consumer fenced" when it
    # rejoins and rebuilds its clients (issue 14: 10 s turned 8 s outages into
    # 12-20 s pauses). A worker restarted under its id gets its partitions
    # back at once (static membership); one gone for good is replaced after
    # this. Kafka's own default is 45 s.
    session_timeout_ms: int = 30_000
    # Ledger-wide snapshot files (``ledger snapshot``); keep them off the
    # workers' disks, like a backup.
    snapshot_root: Path = Path("snapshots")
    # The secret that authenticates transfer legs between workers
    # (streams/legauth.py). Required by workers unless leg_auth is off.
    leg_key_file: Path | None = None
    # Off only to show, on a throwaway ledger, what verify catches without it.
    leg_auth: bool = True
    # Workers create missing topics; off (LEDGER_CREATE_TOPICS=0), a worker
    # without create rights only checks them and refuses to start if wrong.
    create_topics: bool = True
    # New topics: None means min(3, brokers) and min.insync.replicas one less
    # (at least 1); streams/topics.py replication().
    replication_factor: int | None = None
    min_insync_replicas: int | None = None
    # HTTP API bearer tokens (streams/api/auth.py): a file of lines
    # "<token> <scope>[,<scope>]", scopes read and write, re-read on SIGHUP.
    # None: the API is open, and the worker binds to a loopback host only.
    api_tokens_file: Path | None = None
    # The bearer token the CLI's HTTP commands send (LEDGER_API_TOKEN).
    api_token: str | None = field(default=None, repr=False)
    # Serve an open API (no tokens) on a non-loopback web_host anyway.
    api_insecure: bool = False
    # TLS for the HTTP server (PEM certificate chain and key; the key may be
    # in the certificate file). Forwarding between workers then uses https.
    web_tls_cert: Path | None = None
    web_tls_key: Path | None = None
    # What a worker trusts for other workers' https; default web_tls_cert.
    web_tls_ca: Path | None = None
    # The secret that authenticates lookups forwarded between workers
    # (streams/api/forwarding.py). None: derived from the leg key.
    forward_secret_file: Path | None = None
    # Read models (streams/readmodels.py): Faust agents folding the event log
    # into totals and account statements. Off (LEDGER_READ_MODELS=0) the
    # worker runs the money path and HTTP only. Statement days are calendar
    # days in this IANA time zone (LEDGER_STATEMENT_TZ).
    read_models: bool = True
    statement_tz: str = "UTC"
    # An event-log partition where nothing was recorded for this long gets a
    # PartitionTick from its owner (after a fifth of it when an as-of read
    # waits for it): the bound on how far an idle partition's watermark
    # trails the clock (streams/processor.py, LEDGER_TICK_MS).
    tick_ms: int = 500
    # Tests only: added to this worker's clock (ms; negative: behind), to
    # show that a worker whose clock is behind never records anything at or
    # before a partition's published watermark (LEDGER_CLOCK_OFFSET_MS).
    clock_offset_ms: int = 0
    # The store keeps a snapshot of an account every this many events, so an
    # as-of read folds at most this many minus one events after one seek
    # (streams/store.py). Stores rebuilt with another value differ only in
    # which snapshots exist (LEDGER_SNAPSHOT_EVERY).
    snapshot_every: int = 64
    # A long stretch of the log is folded in this many processes at once, one
    # group of partitions each: a worker catching up stores far behind (a
    # new host, a lost disk; streams/catchup.py), and replay, verify and
    # snapshots (streams/replay.py); 0: one per core. Only when at least
    # catch_up_parallel_records records are to be read: below that a
    # helper's start (about half a second) costs more than it saves
    # (LEDGER_CATCH_UP_PROCESSES, LEDGER_CATCH_UP_PARALLEL_RECORDS).
    catch_up_processes: int = 0
    catch_up_parallel_records: int = 50_000
    # Store checkpoints (streams/checkpoints.py): the owner of a partition
    # copies its store here every checkpoint_every events, and a worker taking
    # the partition over starts from the newest copy instead of the whole log.
    # Storage every worker reaches (a shared volume); None: off
    # (LEDGER_CHECKPOINT_DIR, LEDGER_CHECKPOINT_EVERY).
    checkpoint_root: Path | None = None
    checkpoint_every: int = 100_000

    # The names below are derived from the fields and asked for on every
    # record the worker produces: computed once (the instance is frozen;
    # cached_property writes its __dict__ directly).
    @cached_property
    def snapshot_dir(self) -> Path:
        return self.snapshot_root / self.events_topic

    @cached_property
    def commands_topic(self) -> str:
        return f"{self.topic_prefix}.commands"

    @cached_property
    def events_topic(self) -> str:
        return f"{self.topic_prefix}.events"

    @cached_property
    def legs_topic(self) -> str:
        # Internal: transfer legs between workers. Only workers write here.
        return f"{self.topic_prefix}.legs"

    @cached_property
    def replies_topic(self) -> str:
        # One reply per command (streams/replies.py); finite retention.
        return f"{self.topic_prefix}.replies"

    @cached_property
    def dead_letter_topic(self) -> str:
        return f"{self.topic_prefix}.commands.dlq"

    @cached_property
    def group_id(self) -> str:
        return f"{self.topic_prefix}-worker"

    @cached_property
    def transactional_id(self) -> str:
        # Stable per worker: a restarted worker fences its own zombie and the
        # broker aborts the zombie's open transaction at once (init_transactions).
        return f"{self.topic_prefix}-worker-{self.worker_id}"

    def kafka(self, **overrides) -> dict:
        """The configuration of one Kafka client: the cluster, its security
        settings, then what this client sets for itself (spelled out at the
        call site, with why). The one place every client's config starts."""
        config = {"bootstrap.servers": self.bootstrap_servers,
                  # A request to a dead broker (a killed transaction or group
                  # coordinator) is failed and re-routed only when librdkafka
                  # next tries to reconnect to it, and those tries back off
                  # to reconnect.backoff.max.ms: at the default 10 s one
                  # send_offsets_to_transaction waited 10 s for a coordinator
                  # that had moved long before (issue 14). 1 s costs one
                  # connection attempt per second to a broker that is down.
                  "reconnect.backoff.max.ms": RECONNECT_BACKOFF_MAX_MS,
                  **dict(self.kafka_properties)}
        config.update(overrides)
        return config

    def kafka_description(self) -> dict[str, str]:
        """The client properties with secrets masked: safe to log."""
        return redacted({"bootstrap.servers": self.bootstrap_servers,
                         **dict(self.kafka_properties)})

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)

    @classmethod
    def from_env(cls) -> "Settings":
        d = cls()
        return cls(
            bootstrap_servers=_env("KAFKA_BOOTSTRAP_SERVERS", d.bootstrap_servers),
            kafka_properties=tuple(sorted(kafka_properties_from_env().items())),
            topic_prefix=_env("LEDGER_TOPIC_PREFIX", d.topic_prefix),
            partitions=int(_env("LEDGER_PARTITIONS", str(d.partitions))),
            worker_id=_env("LEDGER_WORKER_ID", d.worker_id),
            data_dir=Path(_env("LEDGER_DATA_DIR", str(d.data_dir))),
            web_host=_env("LEDGER_WEB_HOST", d.web_host),
            web_port=int(_env("LEDGER_WEB_PORT", str(d.web_port))),
            batch_size_max=int(_env("LEDGER_BATCH_SIZE_MAX", str(d.batch_size_max))),
            transaction_timeout_ms=int(
                _env("LEDGER_TRANSACTION_TIMEOUT_MS", str(d.transaction_timeout_ms))
            ),
            session_timeout_ms=int(
                _env("LEDGER_SESSION_TIMEOUT_MS", str(d.session_timeout_ms))
            ),
            snapshot_root=Path(_env("LEDGER_SNAPSHOT_DIR", str(d.snapshot_root))),
            leg_key_file=Path(os.environ["LEDGER_LEG_KEY_FILE"])
            if os.environ.get("LEDGER_LEG_KEY_FILE") else None,
            leg_auth=_env("LEDGER_LEG_AUTH", "1") != "0",
            create_topics=_env("LEDGER_CREATE_TOPICS", "1") != "0",
            replication_factor=int(os.environ["LEDGER_REPLICATION_FACTOR"])
            if os.environ.get("LEDGER_REPLICATION_FACTOR") else None,
            min_insync_replicas=int(os.environ["LEDGER_MIN_INSYNC_REPLICAS"])
            if os.environ.get("LEDGER_MIN_INSYNC_REPLICAS") else None,
            api_tokens_file=_path_env("LEDGER_API_TOKENS"),
            api_token=os.environ.get("LEDGER_API_TOKEN") or None,
            api_insecure=_env("LEDGER_API_INSECURE", "0").lower() in ("1", "true", "yes"),
            web_tls_cert=_path_env("LEDGER_WEB_TLS_CERT"),
            web_tls_key=_path_env("LEDGER_WEB_TLS_KEY"),
            web_tls_ca=_path_env("LEDGER_WEB_TLS_CA"),
            forward_secret_file=_path_env("LEDGER_FORWARD_SECRET_FILE"),
            read_models=_env("LEDGER_READ_MODELS", "1") != "0",
            statement_tz=_env("LEDGER_STATEMENT_TZ", d.statement_tz),
            tick_ms=int(_env("LEDGER_TICK_MS", str(d.tick_ms))),
            clock_offset_ms=int(_env("LEDGER_CLOCK_OFFSET_MS", str(d.clock_offset_ms))),
            snapshot_every=max(1, int(_env("LEDGER_SNAPSHOT_EVERY", str(d.snapshot_every)))),
            catch_up_processes=max(0, int(_env("LEDGER_CATCH_UP_PROCESSES",
                                               str(d.catch_up_processes)))),
            catch_up_parallel_records=max(0, int(_env("LEDGER_CATCH_UP_PARALLEL_RECORDS",
                                                      str(d.catch_up_parallel_records)))),
            checkpoint_root=_path_env("LEDGER_CHECKPOINT_DIR"),
            checkpoint_every=max(1, int(_env("LEDGER_CHECKPOINT_EVERY",
                                             str(d.checkpoint_every)))),
        )

    def to_env(self) -> dict[str, str]:
        """The environment variables that give a subprocess these settings."""
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "LEDGER_TOPIC_PREFIX": self.topic_prefix,
            "LEDGER_PARTITIONS": str(self.partitions),
            "LEDGER_WORKER_ID": self.worker_id,
            "LEDGER_DATA_DIR": str(self.data_dir),
            "LEDGER_WEB_HOST": self.web_host,
            "LEDGER_WEB_PORT": str(self.web_port),
            "LEDGER_BATCH_SIZE_MAX": str(self.batch_size_max),
            "LEDGER_TRANSACTION_TIMEOUT_MS": str(self.transaction_timeout_ms),
            "LEDGER_SESSION_TIMEOUT_MS": str(self.session_timeout_ms),
            "LEDGER_SNAPSHOT_DIR": str(self.snapshot_root),
            "LEDGER_LEG_AUTH": "1" if self.leg_auth else "0",
            "LEDGER_CREATE_TOPICS": "1" if self.create_topics else "0",
            "LEDGER_READ_MODELS": "1" if self.read_models else "0",
            "LEDGER_STATEMENT_TZ": self.statement_tz,
            "LEDGER_TICK_MS": str(self.tick_ms),
            "LEDGER_CLOCK_OFFSET_MS": str(self.clock_offset_ms),
            "LEDGER_SNAPSHOT_EVERY": str(self.snapshot_every),
            "LEDGER_CATCH_UP_PROCESSES": str(self.catch_up_processes),
            "LEDGER_CATCH_UP_PARALLEL_RECORDS": str(self.catch_up_parallel_records),
            "LEDGER_CHECKPOINT_EVERY": str(self.checkpoint_every),
        }
        if self.replication_factor is not None:
            env["LEDGER_REPLICATION_FACTOR"] = str(self.replication_factor)
        if self.min_insync_replicas is not None:
            env["LEDGER_MIN_INSYNC_REPLICAS"] = str(self.min_insync_replicas)
        if self.leg_key_file is not None:
            env["LEDGER_LEG_KEY_FILE"] = str(self.leg_key_file)
        env["LEDGER_API_INSECURE"] = "1" if self.api_insecure else "0"
        if self.api_token:
            env["LEDGER_API_TOKEN"] = self.api_token
        for name, path in (("LEDGER_CHECKPOINT_DIR", self.checkpoint_root),
                           ("LEDGER_API_TOKENS", self.api_tokens_file),
                           ("LEDGER_WEB_TLS_CERT", self.web_tls_cert),
                           ("LEDGER_WEB_TLS_KEY", self.web_tls_key),
                           ("LEDGER_WEB_TLS_CA", self.web_tls_ca),
                           ("LEDGER_FORWARD_SECRET_FILE", self.forward_secret_file)):
            if path is not None:
                env[name] = str(path)
        for name, value in self.kafka_properties:
            env[KAFKA_ENV_PREFIX + name.upper().replace(".", "_")] = value
        return env

    def leg_auth_keys(self):
        """The leg keys (streams/legauth.py), None when authentication is off."""
        from streams import legauth

        if not self.leg_auth:
            return None
        if self.leg_key_file is None:
            raise legauth.LegKeyError(
                "LEDGER_LEG_KEY_FILE is not set: workers need a shared secret to "
                "authenticate transfer legs (create one with `ledger keygen > FILE`)")
        return legauth.load_keys(self.leg_key_file)
