"""``replay.rebuild`` reading groups of partitions in helper processes gives
exactly what one process reading them all gives (streams/replay.py)."""

from __future__ import annotations

import random
import time

import pytest

from ledger import domain
from streams import replay
from streams.client import LedgerClient
from streams.eventlog import NotFinal


@pytest.mark.kafka
def test_rebuild_in_groups_equals_rebuild_in_one(settings, workers):
    rng = random.Random(5)
    accounts = [f"acct-{i}" for i in range(30)]
    commands = [domain.OpenAccount(f"o-{a}", a, "EUR", 2_000) for a in accounts]
    for n in range(600):
        roll = rng.random()
        a = rng.choice(accounts)
        if roll < 0.45:
            commands.append(domain.Credit(f"c{n}", a, rng.randrange(1, 5000), "EUR"))
        elif roll < 0.7:
            commands.append(domain.Debit(f"d{n}", a, rng.randrange(1, 5000), "EUR"))
        else:  # money crossing partitions: in flight sums over groups
            commands.append(domain.Transfer(f"t{n}", a, rng.choice(accounts),
                                            rng.randrange(1, 3000), "EUR"))
    worker = workers.start(settings)
    with LedgerClient(settings) as client:
        for command in commands:
            client.send_nowait(command)
        for command in commands:
            if isinstance(command, domain.Transfer):
                client.wait_for_transfer(command.from_account_id, command.command_id, 60)
            else:
                client.wait_for(command.account_id, command.command_id, 60)
    workers.stop(worker)  # the log stands still (no ticks): whole ledgers compare
    one = settings.with_(catch_up_processes=1)
    many = settings.with_(catch_up_processes=3, catch_up_parallel_records=0)
    groups, ends = replay._groups(many, {}, None)
    assert 3 == len(groups) and set(ends) == set(range(settings.partitions))

    whole = replay.rebuild(one, use_snapshots=False, progress=False)
    assert len(whole.accounts) == len(accounts)
    assert sum(whole.external.values()) == sum(s.balance_minor for s in whole.accounts.values())
    assert whole == replay.rebuild(many, use_snapshots=False, progress=False)

    # From a ledger-wide snapshot plus the log after it, final as of a
    # moment the log has passed (ticks), the same again.
    replay.take_snapshot(one)
    worker = workers.start(settings)
    with LedgerClient(settings) as client:
        for n, a in enumerate(accounts):
            client.credit(a, n + 1, "EUR", command_id=f"late-{n}")
        client.credit(accounts[0], 1, "EUR", command_id="last", wait=True)
    t = int(time.time() * 1000)
    a = replay.rebuild(one, as_of_ms=t, final_wait_s=30, progress=False)
    b = replay.rebuild(many, as_of_ms=t, final_wait_s=30, progress=False)
    # Offsets and watermarks differ: ticks go on between the two reads.
    assert (a.accounts, a.in_flight, a.external, a.max_recorded_at_ms) == \
        (b.accounts, b.in_flight, b.external, b.max_recorded_at_ms)
    assert a.accounts != whole.accounts

    # Not final: every group says which of its partitions are not, and the
    # parent names them all.
    workers.stop(worker)
    future = int(time.time() * 1000) + 3_600_000
    with pytest.raises(NotFinal) as caught:
        replay.rebuild(many, as_of_ms=future, final_wait_s=0.5, progress=False)
    assert list(range(settings.partitions)) == sorted(caught.value.watermarks)
