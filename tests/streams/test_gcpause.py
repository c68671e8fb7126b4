"""streams/gcpause.py: folds turn the cyclic collector off, and on again."""

from __future__ import annotations

import gc
import threading

import pytest

from streams import gcpause, processor, replay
from streams.config import Settings


@pytest.fixture(autouse=True)
def collector_on():
    was = gc.isenabled()
    gc.enable()
    yield
    gc.enable() if was else gc.disable()


def test_a_fold_turns_the_collector_off_and_on_again():
    with gcpause.no_collections():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_the_last_of_overlapping_folds_turns_it_on_even_on_error():
    outer = gcpause.no_collections()
    outer.__enter__()
    with pytest.raises(KeyError), gcpause.no_collections():
        raise KeyError("inner")
    assert not gc.isenabled()  # the outer fold still runs
    outer.__exit__(None, None, None)
    assert gc.isenabled()


def test_folds_on_two_threads_turn_it_on_once_both_end():
    inside, release = threading.Barrier(3), threading.Event()

    def fold():
        with gcpause.no_collections():
            inside.wait()
            release.wait()

    threads = [threading.Thread(target=fold) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait()
    assert not gc.isenabled()
    release.set()
    for t in threads:
        t.join()
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off():
    gc.disable()
    with gcpause.no_collections():
        assert not gc.isenabled()
    assert not gc.isenabled()


class _Seen(Exception):
    pass


class _Reader:
    """Stands in for the log reader only to see how a fold runs."""

    def start(self, *args, **kwargs):
        raise _Seen(gc.isenabled())


def test_a_catch_up_and_a_replay_fold_without_collections(monkeypatch):
    with pytest.raises(_Seen) as seen:
        processor.fold_log(Settings(), _Reader(), {}, {}, {0: 1}, threading.Event())
    assert seen.value.args == (False,)

    def read_log(*args, **kwargs):
        raise _Seen(gc.isenabled())

    monkeypatch.setattr(replay, "read_log", read_log)
    with pytest.raises(_Seen) as seen:
        replay._fold(Settings(), replay.Ledger.empty(1), None, None, None, None, lambda: None)
    assert seen.value.args == (False,)
    assert gc.isenabled()


class _Garbage:
    pass


def _cycle():
    """A reference cycle, unreachable, and a weak reference that says when it is freed."""
    import weakref

    a, b = _Garbage(), _Garbage()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_collect_young_frees_a_cycle_while_the_collector_is_off():
    with gcpause.no_collections():
        gone = _cycle()
        assert gone() is not None  # off: nothing collects it
        gcpause.collect_young()
        assert gone() is None


class _IdleLog:
    """Stands in for the log reader: a log that gives nothing, while another
    thread of the process leaves a cycle behind."""

    remaining, reached = {0}, set()
    progress_at = float("inf")  # never stalled

    def __init__(self):
        self.turns, self.gone = 0, None

    def start(self, *args, **kwargs):
        pass

    def batch(self, timeout_s):
        self.turns += 1
        if self.turns == 1:
            made = []
            thread = threading.Thread(target=lambda: made.append(_cycle()))
            thread.start()
            thread.join()
            self.gone = made[0]
            return []
        raise _Seen(self.gone())


def test_a_catch_up_waiting_on_the_log_collects_other_threads_cycles():
    reader = _IdleLog()
    with pytest.raises(_Seen) as seen:
        processor.fold_log(Settings(), reader, {0: object()}, {0: 0}, {0: 1},
                           threading.Event())
    assert seen.value.args == (None,)  # the cycle was freed on the idle turn
