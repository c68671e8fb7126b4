"""Records in hand when a rebalance is served are neither lost nor applied twice.

The core's consume_ready makes up to three consume calls, and librdkafka
serves a rebalance callback inside whichever call finds it queued, after the
records that call or an earlier one already returned. A CI run's worker
stopped with ``KeyError: 5`` that way: its peer was killed under load, the
eager rebalance revoked partition 5 in the middle of a fetch, and the
records of partition 5 already in hand met a closed store. Under the eager
protocol a partition revoked and assigned again is worse: its fetch
restarts at the committed offset, so the records in hand come a second time.

Here a real broker and a real core; the only change is that, twice under a
load, the list consume_ready returns is made to span a rebalance on
purpose: a second member of the core's group joins (taking half the
partitions for good) or leaves (the core's partitions are revoked and
assigned again) between a fetch and the next consume call, which goes on
until the rebalance has been served. Every command must still get exactly
one outcome, the one an independent model gives.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
from confluent_kafka import Consumer

from streams import processor, topics
from tests.streams.faultload import (Sender, apply_all, check_against_model, core_on_a_thread,
                                     counter, make_load, model, wait_for_all_outcomes)

pytestmark = pytest.mark.kafka


class Interloper:
    """A plain member of the core's consumer group, which holds the
    partitions it is given without reading or committing anything."""

    def __init__(self, settings):
        self.settings = settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def join(self) -> None:
        s = self.settings
        consumer = Consumer(s.kafka(**{
            "group.id": s.group_id,
            "partition.assignment.strategy": "range",  # as the core's
            "enable.auto.commit": False,
        }))
        consumer.subscribe([s.commands_topic, s.legs_topic])

        def poll():
            try:
                while not self._stop.is_set():
                    consumer.consume(100, timeout=0.1)  # stays a member; applies nothing
            finally:
                consumer.close()  # leaves the group at once

        self._thread = threading.Thread(target=poll, name="interloper", daemon=True)
        self._thread.start()

    def leave(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(30)
            self._thread = None


def test_a_fetch_that_spans_a_rebalance_loses_and_doubles_nothing(settings, monkeypatch):
    interloper = Interloper(settings)
    revokes = [0]
    real_revoke, real_consume_ready = processor.Processor._on_revoke, topics.consume_ready

    def counting_revoke(self, consumer, partitions):
        revokes[0] += 1
        real_revoke(self, consumer, partitions)

    # Each step: an action, and what the records in hand must cover first.
    plan: list = []  # armed once the load runs
    spans: list[dict] = []
    problems: list[str] = []

    def both_halves(in_hand: set) -> bool:
        # Range gives one member partitions 0-2, the other 3-5: records of
        # both halves in hand means some belong to the interloper's half.
        return bool(in_hand & {0, 1, 2}) and bool(in_hand & {3, 4, 5})

    def spanning(consumer, max_records, timeout_s):
        """consume_ready, whose list is made to span a rebalance while the plan lasts."""
        messages = real_consume_ready(consumer, max_records, timeout_s)
        if not plan or not messages:
            return messages
        action, covers = plan.pop(0)
        deadline = time.monotonic() + 60
        in_hand = {m.partition() for m in messages if not m.error()}
        while not covers(in_hand):  # what consume_ready could have returned too
            if time.monotonic() > deadline:
                problems.append(f"{action.__name__}: records of {in_hand} only")
                return messages
            messages += consumer.consume(max_records, timeout=0.1)
            in_hand = {m.partition() for m in messages if not m.error()}
        before = revokes[0]
        action()
        while not (revokes[0] > before and consumer.assignment()):
            if time.monotonic() > deadline:
                problems.append(f"{action.__name__}: no rebalance served within 60 s")
                break
            messages += consumer.consume(max_records, timeout=0.1)
        owned_after = {tp.partition for tp in consumer.assignment()}
        spans.append({"action": action.__name__, "in_hand": in_hand,
                      "revoked_for_good": in_hand - owned_after, "records": len(messages)})
        return messages

    monkeypatch.setattr(processor.Processor, "_on_revoke", counting_revoke)
    monkeypatch.setattr(topics, "consume_ready", spanning)
    with core_on_a_thread(settings) as (core, runner):
        rebuilds = counter("ledger_core_rebuilds_total")
        try:
            rng = random.Random(5)
            setup, load = make_load(rng, 3_000)  # 10 s: both steps happen under it
            apply_all(settings, setup)
            sender = Sender(settings, load, 300)
            sender.start()
            plan.extend([(interloper.join, both_halves), (interloper.leave, bool)])
            sender.join(120)
            assert sender.error is None, sender.error
            assert runner.is_alive()  # not stopped by records of a revoked partition
            expected, balances_expected = model(setup, load)
            records, outcomes = wait_for_all_outcomes(settings, expected)
            assert problems == []
            # Both spans happened, and the first held records of a partition
            # that went to the interloper: what stopped the CI worker.
            assert [s["action"] for s in spans] == ["join", "leave"], spans
            assert spans[0]["revoked_for_good"], spans
            check_against_model(records, outcomes, expected, balances_expected)
            # Given back and sought, not recovered by rebuilding the clients.
            assert counter("ledger_core_rebuilds_total") == rebuilds
            health, state = core.health()
            assert health, state
            assert runner.is_alive()
        finally:
            interloper.leave()
