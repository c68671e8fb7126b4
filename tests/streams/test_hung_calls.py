"""A transactional call that ignores its timeout does not stall a partition.

librdkafka's send_offsets_to_transaction can block far past the timeout it
was given when the group coordinator it cached has left the cluster
(confluentinc/librdkafka#5456, #5511): a worker sat in one for 51 s after a
broker was killed (issue 14). The core runs those calls on a thread of its
own and gives one up after processor.HUNG_CALL_S. These tests make the real
producer's call hang that way (a subclass that sleeps inside it, on a real
broker) in the middle of a load, and check that every command still gets
exactly one outcome equal to an independent model's:

- hung in send_offsets_to_transaction, after the offsets went to the
  transaction: a new producer fences the old one and aborts its transaction,
  and the batch is read again;
- hung in commit_transaction after the commit went through: the clients are
  rebuilt and the store caught up from the log, so the committed batch is not
  applied a second time.
"""

from __future__ import annotations

import random
import threading

import pytest
from confluent_kafka import Producer

from streams import processor
from tests.streams.faultload import (Sender, apply_all, check_against_model, core_on_a_thread,
                                     counter, make_load, model, wait_for_all_outcomes)

pytestmark = pytest.mark.kafka


def _hanging_producer(call: str, hangs: list[int], release: threading.Event):
    """The real Producer, whose ``call``, after it has done its work, blocks
    until ``release`` is set (as librdkafka's does until some broker changes
    state), as many times as ``hangs`` counts."""

    class Hanging(Producer):
        def _after(self):
            if hangs[0] > 0:
                hangs[0] -= 1
                release.wait(300)

    def hang(self, *args, _name=call):
        result = getattr(Producer, _name)(self, *args)
        self._after()
        return result

    hang.__name__ = call
    setattr(Hanging, call, hang)
    return Hanging


@pytest.mark.parametrize("call", ["send_offsets_to_transaction", "commit_transaction"])
def test_a_hung_transactional_call_is_given_up_and_nothing_is_lost_or_doubled(
        settings, monkeypatch, call):
    hangs, release = [0], threading.Event()
    monkeypatch.setattr(processor, "Producer", _hanging_producer(call, hangs, release))
    with core_on_a_thread(settings) as (core, _runner):
        try:
            rng = random.Random(14)
            setup, load = make_load(rng, 400)
            apply_all(settings, setup)
            before = counter("ledger_hung_kafka_calls_total")
            hangs[0] = 2  # the next two batches hang
            sender = Sender(settings, load, 200)
            sender.start()
            sender.join(120)
            assert sender.error is None, sender.error
            expected, balances_expected = model(setup, load)
            records, outcomes = wait_for_all_outcomes(settings, expected)
            assert hangs[0] == 0
            assert counter("ledger_hung_kafka_calls_total") - before == 2
            check_against_model(records, outcomes, expected, balances_expected)
            health, state = core.health()
            assert health, state
        finally:
            release.set()  # the given-up calls return; their threads end
