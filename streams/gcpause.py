"""Fewer garbage collections while a long fold of the log runs.

A fold (a worker's catch-up, ``ledger replay``, ``verify``) makes a few
objects per record (the decoded record, the account state after it, an
index entry) and keeps many of them until its batch is written. None of
them is in a reference cycle, so the cyclic collector frees nothing there,
but with CPython's first threshold (700 allocations) it ran every few
records and walked every young object each time: 3.5% of the instructions
of a catch-up's fold (callgrind, 30,000 records). While a fold runs, the
first threshold is FOLD_GC_THRESHOLD; cycles are still collected, less
often, and the old thresholds come back when the last fold ends.
"""

from __future__ import annotations

import contextlib
import gc
import threading

FOLD_GC_THRESHOLD = 50_000  # allocations between young collections while folding

_lock = threading.Lock()
_folds = 0  # folds running in this process (a worker may run more than one)
_saved: tuple[int, ...] = ()


@contextlib.contextmanager
def fewer_collections():
    global _folds, _saved
    with _lock:
        if _folds == 0:
            _saved = gc.get_threshold()
            gc.set_threshold(max(FOLD_GC_THRESHOLD, _saved[0]), *_saved[1:])
        _folds += 1
    try:
        yield
    finally:
        with _lock:
            _folds -= 1
            if _folds == 0:
                gc.set_threshold(*_saved)
