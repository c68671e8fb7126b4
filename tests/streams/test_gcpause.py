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


@pytest.fixture
def frozen_reset(monkeypatch):
    """Whatever a test freezes is unfrozen again, and the opt-in reset."""
    monkeypatch.setattr(gcpause, "_freeze_after_catch_up", False)
    try:
        yield
    finally:
        gc.unfreeze()


def _frozen(obj) -> bool:
    """Tracked, yet in no generation a collection walks."""
    return gc.is_tracked(obj) and not any(o is obj for o in gc.get_objects())


def test_caught_up_freezes_nothing_unless_the_process_asked(frozen_reset):
    alive = [object()]
    gcpause.caught_up()
    assert not _frozen(alive)


def test_a_worker_freezes_what_is_alive_after_collecting_what_is_not(frozen_reset):
    gcpause.freeze_after_catch_up()
    alive, gone = [object()], _cycle()
    gc.disable()  # only caught_up's own collection may free the cycle
    try:
        gcpause.caught_up()
    finally:
        gc.enable()
    assert gone() is None  # collected, not frozen with the rest
    assert _frozen(alive)
    later = [object()]  # what comes after is collected as before
    assert not _frozen(later)


def test_ledger_worker_asks_for_the_freeze(frozen_reset, monkeypatch):
    from streams import app
    from streams.api import auth

    def create_app(settings):
        raise _Seen(gcpause._freeze_after_catch_up)

    monkeypatch.setattr(auth, "startup_problem", lambda settings: None)
    monkeypatch.setattr(app, "create_app", create_app)
    with pytest.raises(_Seen) as seen:
        app.run_worker(Settings())
    assert seen.value.args == (True,)


@pytest.mark.kafka
def test_the_core_calls_caught_up_after_catching_up_before_it_serves(settings, monkeypatch):
    from tests.streams.faultload import core_on_a_thread

    seen = []
    core_box = []

    def caught_up():
        core = core_box[0]
        seen.append((sorted(core._stores), core.caught_up.is_set()))

    monkeypatch.setattr(gcpause, "caught_up", caught_up)
    real_init = processor.Processor.__init__

    def init(self, *args, **kwargs):
        core_box.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(processor.Processor, "__init__", init)
    with core_on_a_thread(settings):
        pass
    assert seen and seen[0] == (list(range(settings.partitions)), False), seen
