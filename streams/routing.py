"""Which worker owns which partition, and at what HTTP address.

Every worker's transactional consumer sets ``client.id`` to
``ledger|<worker_id>|<web host:port>``; the group's description (an admin
call, cached for a second) then says who owns each partition and where to
reach it. No extra topic or registry to keep in sync: the consumer group is
the truth about ownership.
"""

from __future__ import annotations

import threading
import time

from confluent_kafka.admin import AdminClient

from streams.config import Settings

CACHE_SECONDS = 1.0


def client_id(settings: Settings) -> str:
    return f"ledger|{settings.worker_id}|{settings.web_host}:{settings.web_port}"


class Router:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._admin = AdminClient(settings.kafka())
        self._lock = threading.Lock()
        self._owners: dict[int, tuple[str, str]] = {}
        self._fetched_at = 0.0

    def owners(self) -> dict[int, tuple[str, str]]:
        """partition -> (worker_id, "host:port") for the commands topic."""
        with self._lock:
            if time.monotonic() - self._fetched_at > CACHE_SECONDS:
                self._owners = self._describe()
                self._fetched_at = time.monotonic()
            return dict(self._owners)

    def owner(self, partition: int) -> tuple[str, str] | None:
        return self.owners().get(partition)

    def workers(self) -> dict[str, str]:
        """worker_id -> "host:port" of every worker in the group."""
        return {worker: address for worker, address in self.owners().values()}

    def _describe(self) -> dict[int, tuple[str, str]]:
        group = self.settings.group_id
        description = self._admin.describe_consumer_groups([group])[group].result(timeout=10)
        owners = {}
        for member in description.members:
            parts = member.client_id.split("|")
            if len(parts) != 3 or parts[0] != "ledger":
                continue
            for tp in member.assignment.topic_partitions:
                if tp.topic == self.settings.commands_topic:
                    owners[tp.partition] = (parts[1], parts[2])
        return owners
