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
drop is freed by reference counting as before; what other threads leave in
cycles meanwhile waits until then.
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
    with _lock:
        if _folds == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _folds += 1
    try:
        yield
    finally:
        with _lock:
            _folds -= 1
            if _folds == 0 and _was_enabled:
                gc.enable()
