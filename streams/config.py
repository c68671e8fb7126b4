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
    # The secret that authenticates transfer legs between workers
    # (streams/legauth.py). Required by workers unless leg_auth is off.
    leg_key_file: Path | None = None
    # Off only to show, on a throwaway ledger, what verify catches without it.
    leg_auth: bool = True

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
            leg_key_file=Path(os.environ["LEDGER_LEG_KEY_FILE"])
            if os.environ.get("LEDGER_LEG_KEY_FILE") else None,
            leg_auth=_env("LEDGER_LEG_AUTH", "1") != "0",
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
        }
        if self.leg_key_file is not None:
            env["LEDGER_LEG_KEY_FILE"] = str(self.leg_key_file)
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
