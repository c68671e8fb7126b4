"""Catching stores up from the log in several processes at once.

A worker that takes over partitions whose stores are far behind the event log
(a new host, a lost disk, a peer's partitions after it died) folds every
record it missed into them before it applies a command there
(``Processor._catch_up``). That fold runs on one Python thread, so it uses
one core however many the host has. The partitions' stores are independent
(one RocksDB directory each), so the worker splits them into groups
(:func:`split`), keeps the first group and hands each other group to a
helper process (:class:`Helper`, ``python -m streams.catchup``): the same
fold (``processor.fold_log``) on its own reader of the committed log, to
the ends the worker found, into
the same store directories, which the worker has closed meanwhile and opens
again once the helper has exited.

Nothing about a store changes: a helper writes what the worker would have
written, in the same atomic batches, and a helper killed half-way leaves a
store that the next catch-up continues from (``events_offset``), as after a
kill -9 of the worker. A helper that fails fails the worker's catch-up at
once, the way the same fault in the worker's own fold would: killed, or no
progress for three transaction timeouts (exit 3), the worker rebuilds its
clients and catches up again; any other error (a store that cannot be
written) stops the worker, for its supervisor. A helper gets SIGTERM if its
worker dies (PR_SET_PDEATHSIG), so no helper is left holding a store's lock.

Helpers are used only when ``Settings.catch_up_parallel_records`` records or
more are behind across at least two partitions, and at most
``Settings.catch_up_processes`` processes (the worker included; 0: one per
core) run at once.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import threading

from streams.processes import _die_with_parent

log = logging.getLogger("ledger.catchup")

EXIT_REBUILD = 3  # the helper's fold raised Rebuild (no progress): catch up again
HELPER_POLL_S = 0.2  # how often a worker waiting for a helper looks at its stop flag
HELPER_STOP_S = 5.0  # after SIGTERM, then SIGKILL


class CatchUpFailed(RuntimeError):
    """A helper exited without catching its partitions up. ``retry``: as a
    Rebuild of the worker's own fold would (it made no progress, or it was
    killed); otherwise as an error of the worker's own fold (a store that
    cannot be written): the worker stops, for its supervisor."""

    def __init__(self, message: str, retry: bool):
        super().__init__(message)
        self.retry = retry


def processes_for(settings) -> int:
    """How many processes may fold the log at once (``catch_up_processes``;
    0: the cores this process may run on)."""
    if settings.catch_up_processes:
        return settings.catch_up_processes
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def split(starts: dict[int, int], ends: dict[int, int], processes: int, min_records: int,
          keep=frozenset()) -> list[list[int]]:
    """Partitions in groups: the first for the worker itself, one per helper.

    One group (no helper) unless at least ``min_records`` records are behind
    across two partitions or more. Groups are balanced by records behind,
    largest first; partitions in ``keep`` (their stores cannot be closed) and
    those with nothing behind stay with the worker.
    """
    behind = {p: ends[p] - starts.get(p, 0) for p in ends if ends[p] > starts.get(p, 0)}
    movable = {p: n for p, n in behind.items() if p not in keep}
    count = min(processes, len(behind))
    if count < 2 or not movable or sum(behind.values()) < min_records:
        return [sorted(ends)]
    groups: list[list[int]] = [[] for _ in range(count)]
    loads = [0] * count
    for p in sorted(p for p in ends if p not in movable):
        groups[0].append(p)
        loads[0] += behind.get(p, 0)
    for p in sorted(movable, key=lambda p: (-movable[p], p)):
        i = loads.index(min(loads))
        groups[i].append(p)
        loads[i] += movable[p]
    return [sorted(groups[0])] + [sorted(g) for g in groups[1:] if g]


def check(helpers) -> None:
    """Raise :class:`CatchUpFailed` if one of ``helpers`` has failed already."""
    for helper in helpers:
        helper.check()


class Helper:
    """One helper process catching up the stores of some partitions to the
    ends the worker found (``ends``: partition -> offset)."""

    def __init__(self, settings, ends: dict[int, int]):
        self.partitions = sorted(ends)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams.catchup"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, preexec_fn=_die_with_parent)
        # Settings hold the Kafka client's secrets: a pipe, never argv or env.
        self.process.stdin.write(pickle.dumps((settings, ends)))
        self.process.stdin.close()
        log.info("catch-up helper pid %d: partitions %s", self.process.pid, self.partitions)

    def check(self) -> None:
        """Raise :class:`CatchUpFailed` if the helper has failed already."""
        code = self.process.poll()
        if code is not None and code != 0:
            raise self._failed(code)

    def _failed(self, code: int) -> CatchUpFailed:
        return CatchUpFailed(f"catch-up helper pid {self.process.pid} (partitions "
                             f"{self.partitions}) exited {code}",
                             retry=code < 0 or code == EXIT_REBUILD)

    def wait(self, stop: threading.Event) -> int | None:
        """The number of records the helper applied once it is done; None if
        ``stop`` was set first. Raises :class:`CatchUpFailed`."""
        while True:
            try:
                code = self.process.wait(HELPER_POLL_S)
                break
            except subprocess.TimeoutExpired:
                if stop.is_set():
                    return None
        out = self.process.stdout.read().decode(errors="replace").strip().splitlines()
        if code != 0:
            raise self._failed(code)
        return int(json.loads(out[-1])["records"])  # its last line, whatever came before

    def end(self) -> None:
        """Make sure the helper is gone (its stores are closed)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(HELPER_STOP_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()


def main() -> int:
    settings, ends = pickle.load(sys.stdin.buffer)
    logging.basicConfig(level=logging.INFO,
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    # Imported here: the worker imports this module.
    from streams import processor
    from streams.eventlog import CommittedLog
    from streams.store import open_store

    stores = {p: open_store(settings, p) for p in ends}
    reader = CommittedLog(settings, f"{settings.group_id}-catch-up")
    try:
        starts = {p: store.events_offset for p, store in stores.items()}
        records = processor.fold_log(settings, reader, stores, starts, ends,
                                     threading.Event())
    except processor.Rebuild as exc:
        log.error("catch-up of partitions %s failed: %s", sorted(ends), exc)
        return EXIT_REBUILD
    finally:
        reader.close()
        for store in stores.values():
            store.close()
    sys.stdout.write(json.dumps({"records": records}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
