"""No cyclic garbage collection while a long fold of the log runs.

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
