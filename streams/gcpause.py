"""No cyclic garbage collection while a long fold of the log runs, and none
over what a worker keeps for good (:func:`caught_up`).

A fold (a worker's catch-up, ``ledger replay``, ``verify``) makes a few
objects per record (the decoded record, the account state after it, an
index entry) and keeps many of them until its batch is written. None of
them is in a reference cycle, so the cyclic collector frees nothing there;
but it ran every 700 allocations and walked every object that survived,
again and again as they aged: 3.5% of the instructions of a catch-up's
fold (callgrind, 30,000 records), and with a first threshold of 50,000
still 5.5% of a catch-up's time (perf: gc_collect_main, visit_decref,
visit_reachable). So the collector is off while a fold runs, and on again
(if it was) when the last fold of the process ends. Everything the folds
drop is freed by reference counting as before.

A worker folds on its core's thread while its other threads (the event
loop, the HTTP API) go on, for as long as a catch-up takes (minutes on a
long log, or while a previous owner's transaction holds it). So a fold that
runs in a worker calls :func:`collect_young` each time it writes a batch
and each time the log gives it nothing: the young generations, everything
made since the last call, are collected then, cycles of other threads
included, and the objects the fold keeps for its batch are gone by then.
"""

from __future__ import annotations

import contextlib
import gc
import threading

_lock = threading.Lock()
_folds = 0  # folds running in this process (a worker may run more than one)
_was_enabled = False


@contextlib.contextmanager
def no_collections():
    global _folds, _was_enabled
    counted = False
    try:
        with _lock:
            if _folds == 0:
                _was_enabled = gc.isenabled()
                gc.disable()
            _folds += 1
            counted = True
        yield
    finally:
        if counted:
            with _lock:
                _folds -= 1
                if _folds == 0 and _was_enabled:
                    gc.enable()


def collect_young() -> None:
    """Collect generations 0 and 1 now (also while the collector is off)."""
    gc.collect(1)


_freeze_after_catch_up = False


def freeze_after_catch_up() -> None:
    """This process is a worker of its own: after each catch-up, freeze what
    is alive (see :func:`caught_up`). Set by ``ledger worker`` only; a core
    run in another process (the tests run cores on threads of pytest) would
    freeze that process's objects too."""
    global _freeze_after_catch_up
    _freeze_after_catch_up = True


def caught_up() -> None:
    """A worker's core has caught up: collect everything, then leave what is
    left out of every later collection (gc.freeze), if the process asked.

    What is alive then lives as long as the worker: its modules, classes and
    functions (60,000-85,000 objects) and the account states the catch-up
    cached. The hot path makes no cycles (gc.DEBUG_SAVEALL in a worker
    under scripts/bench: 14 objects of cyclic garbage in 15 s), so what it
    leaves is freed by reference counting; yet the full collections that
    still come (when what the young collections promote grows by a quarter)
    walked all of them again: two pauses of 64-98 ms in each 15 s run at
    6,500 commands/s, 1-2.5 ms each once frozen. The collection here costs
    35-55 ms, once per assignment, before the partitions are served. A
    frozen object that later joins a cycle of garbage is never freed; the
    collection just before the freeze keeps what is garbage already out."""
    if _freeze_after_catch_up:
        gc.collect()
        gc.freeze()
