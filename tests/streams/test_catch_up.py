"""Catching a store up from the log (Processor._catch_up, streams/catchup.py).

- A takeover waits for a transaction a previous owner left open, and keeps
  what it commits (a zombie's commit landing after the takeover).
- Helper processes: the pure split; then, against the broker, a worker whose
  data dir is wiped catches up with helpers, one helper is killed with kill -9
  while every partition waits behind an open transaction, and the stores that
  come back are byte for byte those the worker wrote itself.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time

import pytest
from confluent_kafka import Producer

from ledger import domain
from schemas import codec
from streams import catchup
from streams.client import LedgerClient
from streams.localkafka import _alive
from streams.partitioner import partition_for
from tests.conftest import data_only, dump_stores, wait_until


@pytest.mark.kafka
def test_a_takeover_waits_for_an_open_transaction_and_keeps_what_it_commits(
        settings, workers):
    # A previous owner (a zombie: paused, then back) has a transaction open
    # on the event log with an account's first event, its commit not sent yet.
    command = domain.OpenAccount("open-late", "late", "EUR", 0)
    now = int(time.time() * 1000)
    (event,) = domain.decide(None, command, now)
    p = partition_for(b"late", settings.partitions)
    zombie = Producer(settings.kafka(**{"transactional.id": f"{settings.topic_prefix}-zombie",
                                        "transaction.timeout.ms": 120_000}))
    zombie.init_transactions(30)
    zombie.begin_transaction()
    zombie.produce(settings.events_topic, codec.encode_outcome(event, domain.command_hash(command)),
                   b"late", partition=p)
    zombie.flush(30)
    try:
        worker = workers.start(settings, wait=False)
        # The worker takes partition p and must wait for that transaction:
        # whether it commits decides what p's store holds.
        wait_until(lambda: re.search(rf"catching up partitions \[[\d, ]*\b{p}\b[\d, ]*\] "
                                     rf"to offsets {{[^}}]*\b{p}: 1\b",
                                     worker.log_path.read_text()), 60,
                   f"a catch-up of partition {p} to past the open transaction", worker.log_path)
        status, body = worker.get("/v1/health")
        assert (503, "catching_up") == (status, body["reason"]), body
        zombie.commit_transaction(30)
    except BaseException:
        zombie.abort_transaction(30)
        raise
    worker.wait_ready()
    status, body = worker.get("/v1/accounts/late")
    assert (200, 1, "open") == (status, body["version"], body["status"]), body


def test_one_group_when_little_is_behind():
    starts, ends = {0: 0, 1: 0, 2: 0}, {0: 10, 1: 10, 2: 10}
    assert [[0, 1, 2]] == catchup.split(starts, ends, 4, min_records=31)
    assert [[0, 1, 2]] == catchup.split(starts, ends, 1, min_records=0)
    # Only one partition behind: nothing to share.
    assert [[0, 1, 2]] == catchup.split({0: 0, 1: 10, 2: 10}, ends, 4, min_records=0)


def test_groups_are_balanced_and_keep_what_cannot_move():
    starts = {p: 0 for p in range(6)}
    ends = {0: 100, 1: 90, 2: 50, 3: 40, 4: 10, 5: 0}
    groups = catchup.split(starts, ends, 3, min_records=0)
    assert sorted(p for g in groups for p in g) == list(range(6))
    assert 3 == len(groups)
    assert 5 in groups[0]  # nothing behind: stays with the worker
    loads = [sum(ends[p] for p in g) for g in groups]
    assert max(loads) - min(loads) <= 20, groups
    # A store the HTTP API is serving stays with the worker, whatever its size.
    groups = catchup.split(starts, ends, 2, min_records=0, keep={0})
    assert 0 in groups[0] and 0 not in groups[1]


def _helpers_in(log_text: str) -> list[tuple[int, str]]:
    return [(int(pid), parts) for pid, parts in
            re.findall(r"catch-up helper pid (\d+): partitions (\[[\d, ]+\])", log_text)]


@pytest.mark.kafka
def test_helpers_rebuild_the_same_bytes_and_a_killed_helper_is_started_again(
        settings, workers):
    rng = random.Random(11)
    commands = [domain.OpenAccount(f"o{i}", f"acct-{i}", "EUR", 1000) for i in range(40)]
    for n in range(1500):
        kind = domain.Credit if rng.random() < 0.6 else domain.Debit
        commands.append(kind(f"c{n}", f"acct-{rng.randrange(40)}", rng.randrange(1, 5000), "EUR"))
    worker = workers.start(settings)
    with LedgerClient(settings) as client:
        for command in commands:
            client.send_nowait(command)
        for command in commands:
            client.wait_for(command.account_id, command.command_id, 60)
    workers.stop(worker)
    before = dump_stores(settings)

    # Every event-log partition gets an open transaction: read_committed
    # stops short of it, so each catch-up (the worker's and its helpers')
    # waits there until the transaction ends.
    blocker = Producer(settings.kafka(**{"transactional.id": f"{settings.topic_prefix}-blocker",
                                         "transaction.timeout.ms": 120_000}))
    blocker.init_transactions(30)
    blocker.begin_transaction()
    for p in range(settings.partitions):
        blocker.produce(settings.events_topic, b"never committed", b"x", partition=p)
    blocker.flush(30)
    try:
        shutil.rmtree(settings.data_dir)
        parallel = settings.with_(catch_up_processes=3, catch_up_parallel_records=0)
        worker = workers.start(parallel, wait=False)
        first = wait_until(lambda: len(_helpers_in(worker.log_path.read_text())) >= 2 and
                           _helpers_in(worker.log_path.read_text()), 60,
                           "two catch-up helpers started", worker.log_path)
        lent = sorted(p for _pid, parts in first for p in json.loads(parts))
        assert len(lent) >= 2 and len(set(lent)) == len(lent), first
        victim = first[0][0]
        os.kill(victim, 9)
        # The worker notices at once, ends its other helpers, rebuilds and
        # starts new ones, which wait behind the open transactions again.
        wait_until(lambda: len(_helpers_in(worker.log_path.read_text())) >= 4, 60,
                   "new helpers after the kill", worker.log_path)
        assert f"catch-up helper pid {victim} (partitions" in worker.log_path.read_text()
        for pid, _parts in first:
            wait_until(lambda: not _alive(pid), 10, f"helper {pid} gone", worker.log_path)
        status, body = worker.get("/v1/health")
        assert 503 == status and not body["caught_up"], body
    finally:
        blocker.abort_transaction(30)
    worker.wait_ready()
    second = _helpers_in(worker.log_path.read_text())[len(first):]
    workers.stop(worker)
    for pid, _parts in second:
        assert not _alive(pid), "a helper outlived its worker"

    after = dump_stores(settings)
    assert before.keys() == after.keys()
    for p in before:
        assert data_only(before[p]) == data_only(after[p]), p
