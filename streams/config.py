"""Settings for workers, clients and scripts, read from the environment.

Every knob has one name here; ``README.md`` lists them. Tests override them
through the same environment variables so that a worker started as a
subprocess sees exactly what the test meant.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value in (None, "") else value


@dataclass(frozen=True)
class Settings:
    # Where Kafka is. Unset means "the local broker started by `ledger kafka start`".
    bootstrap_servers: str = "127.0.0.1:9092"
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
    session_timeout_ms: int = 10_000
    # Ledger-wide snapshot files (``ledger snapshot``); keep them off the
    # workers' disks, like a backup.
    snapshot_root: Path = Path("snapshots")

    @property
    def snapshot_dir(self) -> Path:
        return self.snapshot_root / self.events_topic

    @property
    def commands_topic(self) -> str:
        return f"{self.topic_prefix}.commands"

    @property
    def events_topic(self) -> str:
        return f"{self.topic_prefix}.events"

    @property
    def legs_topic(self) -> str:
        # Internal: transfer legs between workers. Only workers write here.
        return f"{self.topic_prefix}.legs"

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic_prefix}.commands.dlq"

    @property
    def group_id(self) -> str:
        return f"{self.topic_prefix}-worker"

    @property
    def transactional_id(self) -> str:
        # Stable per worker: a restarted worker fences its own zombie and the
        # broker aborts the zombie's open transaction at once (init_transactions).
        return f"{self.topic_prefix}-worker-{self.worker_id}"

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)

    @classmethod
    def from_env(cls) -> "Settings":
        d = cls()
        return cls(
            bootstrap_servers=_env("KAFKA_BOOTSTRAP_SERVERS", d.bootstrap_servers),
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
        )
