"""streams/gcpause.py: folds raise the collector's first threshold, and put it back."""

from __future__ import annotations

import gc
import threading

import pytest

from streams import gcpause, processor, replay
from streams.config import Settings


@pytest.fixture(autouse=True)
def default_thresholds():
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*before)


def test_a_fold_raises_the_first_threshold_and_puts_all_back():
    with gcpause.fewer_collections():
        assert gc.get_threshold() == (gcpause.FOLD_GC_THRESHOLD, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)


def test_the_last_of_overlapping_folds_puts_them_back_even_on_error():
    outer = gcpause.fewer_collections()
    outer.__enter__()
    with pytest.raises(KeyError), gcpause.fewer_collections():
        raise KeyError("inner")
    assert gc.get_threshold()[0] == gcpause.FOLD_GC_THRESHOLD  # the outer still runs
    outer.__exit__(None, None, None)
    assert gc.get_threshold() == (700, 10, 10)


def test_folds_on_two_threads_put_them_back_once_both_end():
    inside, release = threading.Barrier(3), threading.Event()

    def fold():
        with gcpause.fewer_collections():
            inside.wait()
            release.wait()

    threads = [threading.Thread(target=fold) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait()
    assert gc.get_threshold()[0] == gcpause.FOLD_GC_THRESHOLD
    release.set()
    for t in threads:
        t.join()
    assert gc.get_threshold() == (700, 10, 10)


def test_a_higher_threshold_is_never_lowered():
    gc.set_threshold(10 * gcpause.FOLD_GC_THRESHOLD, 5, 5)
    with gcpause.fewer_collections():
        assert gc.get_threshold() == (10 * gcpause.FOLD_GC_THRESHOLD, 5, 5)
    assert gc.get_threshold() == (10 * gcpause.FOLD_GC_THRESHOLD, 5, 5)


class _Seen(Exception):
    pass


class _Reader:
    """Stands in for the log reader only to see the threshold a fold runs with."""

    def start(self, *args, **kwargs):
        raise _Seen(gc.get_threshold())


def test_a_catch_up_and_a_replay_fold_with_fewer_collections(monkeypatch):
    with pytest.raises(_Seen) as seen:
        processor.fold_log(Settings(), _Reader(), {}, {}, {0: 1}, threading.Event())
    assert seen.value.args[0][0] == gcpause.FOLD_GC_THRESHOLD

    def read_log(*args, **kwargs):
        raise _Seen(gc.get_threshold())

    monkeypatch.setattr(replay, "read_log", read_log)
    with pytest.raises(_Seen) as seen:
        replay._fold(Settings(), replay.Ledger.empty(1), None, None, None, None, lambda: None)
    assert seen.value.args[0][0] == gcpause.FOLD_GC_THRESHOLD
    assert gc.get_threshold() == (700, 10, 10)
