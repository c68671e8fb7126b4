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
