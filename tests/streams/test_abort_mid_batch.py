"""A transaction given up in the middle of a batch reads the whole batch again.

The core applies a batch record by record inside one Kafka transaction; an
abortable error can stop it at any record (a produce refused while the
transaction is in an abortable state). The transaction is then aborted and
every partition of the batch must be sought back to its first record of
the batch, those the loop had not reached yet included: their records were
already fetched, so the consumer's position is past them, and the next
commit would have stepped over them for good.

Here a real broker and a real core under a load; the one change is that,
once, the first record of a batch that spans several partitions fails to
produce with an abortable error. Every command must still get exactly one
outcome, the one an independent model gives.
"""

from __future__ import annotations

import random

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams import processor
from tests.streams.faultload import (Sender, apply_all, check_against_model, core_on_a_thread,
                                     counter, make_load, model, wait_for_all_outcomes)

pytestmark = pytest.mark.kafka


def aborted() -> float:
    return counter("ledger_transactions_total", {"outcome": "aborted"})


def test_an_abort_before_the_batch_reaches_its_other_partitions_loses_nothing(
        settings, monkeypatch):
    real_process, real_produce = processor.Processor._process, processor.Processor._produce_event
    real_seek_back = processor.Processor._seek_back
    armed, fired, sought = [False], [], []
    batch: dict = {"partitions": [], "produced": None}  # None: outside a batch

    def process(self, messages):
        batch["partitions"] = [m.partition() for m in messages if not m.error()]
        batch["produced"] = 0
        try:
            return real_process(self, messages)
        finally:
            batch["produced"] = None

    def produce_event(self, raw, key, partition):
        # The first event of a batch whose records span several partitions:
        # the loop has not reached the others yet.
        if armed[0] and batch["produced"] == 0 and len(set(batch["partitions"])) > 1:
            armed[0] = False
            fired.append(sorted(set(batch["partitions"])))
            raise KafkaException(KafkaError(KafkaError._STATE, "injected: abortable"))
        if batch["produced"] is not None:
            batch["produced"] += 1
        return real_produce(self, raw, key, partition)

    def seek_back(self, first_offsets):
        sought.append(sorted(p for _t, p in first_offsets))
        return real_seek_back(self, first_offsets)

    monkeypatch.setattr(processor.Processor, "_process", process)
    monkeypatch.setattr(processor.Processor, "_produce_event", produce_event)
    monkeypatch.setattr(processor.Processor, "_seek_back", seek_back)
    with core_on_a_thread(settings) as (core, runner):
        aborted_before = aborted()
        rng = random.Random(11)
        setup, load = make_load(rng, 1_500)
        apply_all(settings, setup)
        armed[0] = True
        sender = Sender(settings, load, 1_500)  # fast: batches span partitions
        sender.start()
        sender.join(120)
        assert sender.error is None, sender.error
        expected, balances_expected = model(setup, load)
        records, outcomes = wait_for_all_outcomes(settings, expected, timeout_s=90)
        assert len(fired) == 1, "no batch spanned two partitions"
        assert aborted() == aborted_before + 1
        assert sought == fired  # every partition of the batch, not the first alone
        check_against_model(records, outcomes, expected, balances_expected)
        health, state = core.health()
        assert health, state
        assert runner.is_alive()
