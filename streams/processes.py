"""``ledger worker --processes N``: N worker processes on one host.

A worker applies commands on one Python thread (its transactional core), so
one worker process uses about one core however many the host has. N
processes share the ledger's partitions exactly as N hosts would: each is a
static member of the worker group with its own worker id (``<id>-1`` ..
``<id>-N``), transactional id, data dir (``<data dir>/process-<i>``) and HTTP
port (``<port>`` .. ``<port>+N-1``). This parent holds no Kafka client and no
store: it starts them, starts again one that exits (after a backoff), and on
SIGTERM or SIGINT stops them all and waits for them. A child that exits with
the usage/configuration code (2: a bad leg key, topics of the wrong shape)
would fail the same way again, so the parent stops all and exits 2 for its
own supervisor to report. Each child gets SIGTERM if the parent dies
(PR_SET_PDEATHSIG), so a kill -9 of the parent leaves no worker behind.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from streams.config import Settings

log = logging.getLogger("ledger.processes")

EXIT_CONFIG = 2  # a child's configuration error: the same again on every start
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # for a child that keeps exiting
STEADY_S = 60.0  # a child that ran this long starts over at the first backoff
STOP_TIMEOUT_S = 30.0  # after SIGTERM, then SIGKILL
POLL_S = 0.2
_PR_SET_PDEATHSIG = 1


def child_settings(settings: Settings, index: int) -> Settings:
    """The settings of worker process ``index`` (1-based) of a host."""
    return settings.with_(worker_id=f"{settings.worker_id}-{index}",
                          data_dir=Path(settings.data_dir) / f"process-{index}",
                          web_port=settings.web_port + index - 1)


def _die_with_parent() -> None:  # runs in the child, between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the parent's SIGTERM still stops them
        pass


@dataclass
class _Child:
    index: int
    settings: Settings
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    failures: int = 0  # exits in a row, each within STEADY_S of its start
    due_at: float = 0.0  # when to start it again


class Supervisor:
    def __init__(self, settings: Settings, processes: int, loglevel: str = "info"):
        self.children = [_Child(i, child_settings(settings, i))
                         for i in range(1, processes + 1)]
        self.loglevel = loglevel
        self._stopping = False

    def _start(self, child: _Child) -> None:
        env = {**os.environ, **child.settings.to_env()}
        child.process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--loglevel", self.loglevel],
            env=env, preexec_fn=_die_with_parent)
        child.started_at = time.monotonic()
        log.info("worker process %s: pid %d, HTTP port %d, data dir %s",
                 child.settings.worker_id, child.process.pid, child.settings.web_port,
                 child.settings.data_dir)

    def _on_signal(self, signum, _frame) -> None:
        log.info("%s: stopping %d worker processes", signal.Signals(signum).name,
                 len(self.children))
        self._stopping = True

    def run(self) -> int:
        """Until SIGTERM/SIGINT (0), or a child's configuration error (2)."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for child in self.children:
            self._start(child)
        code = 0
        while not self._stopping:
            time.sleep(POLL_S)
            now = time.monotonic()
            for child in self.children:
                if child.process is None:
                    if now >= child.due_at and not self._stopping:
                        self._start(child)
                    continue
                returncode = child.process.poll()
                if returncode is None or self._stopping:
                    continue
                if returncode == EXIT_CONFIG:
                    log.error("worker process %s exited with %d (its configuration): "
                              "stopping all", child.settings.worker_id, returncode)
                    self._stopping, code = True, EXIT_CONFIG
                    break
                ran_s = now - child.started_at
                child.failures = 1 if ran_s >= STEADY_S else child.failures + 1
                wait_s = RESTART_BACKOFF_S[min(child.failures, len(RESTART_BACKOFF_S)) - 1]
                how = (f"was killed by signal {-returncode}" if returncode < 0
                       else f"exited with {returncode}")
                log.warning("worker process %s (pid %d) %s after %.1f s; starting it again "
                            "in %.0f s", child.settings.worker_id, child.process.pid, how,
                            ran_s, wait_s)
                child.process, child.due_at = None, now + wait_s
        self._stop_all()
        return code

    def _stop_all(self) -> None:
        running = [c.process for c in self.children
                   if c.process is not None and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop within %.0f s: killing it",
                            process.pid, STOP_TIMEOUT_S)
                process.kill()
                process.wait(10)


def run_processes(settings: Settings, processes: int, loglevel: str = "info") -> int:
    logging.basicConfig(level=getattr(logging, loglevel.upper(), logging.INFO),
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    return Supervisor(settings, processes, loglevel).run()
