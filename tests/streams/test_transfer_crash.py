"""Transfers move money exactly once across partitions, through kill -9 and rebalances.

Two workers share the partitions. 10,000 seeded random transfers among 120
accounts (all partitions) are sent while a worker is SIGKILLed at least 3
times at random moments and a third worker joins and leaves (a forced
rebalance). Some transfers are sent twice with the same id, some with the same
id and another amount. Sources are funded so that a transfer's fate depends
only on static facts (unknown, closed or other-currency destination; an
amount beyond any balance), so an independent model knows every outcome and
every final balance. The seed is printed; LEDGER_CRASH_SEED=<n> replays it.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter, defaultdict
from dataclasses import replace

import pytest

from ledger import domain
from streams.eventlog import read_log
from tests.conftest import free_port, send_all
from tests.streams.httpkit import start_pair

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ACCOUNTS = 120
TRANSFERS = 10_000
FUNDING = 10_000_000  # far above what any account can send in this test
SEND_RATE_PER_S = 800


def test_transfers_survive_kills_and_rebalance(settings, workers, paced_sender):
    seed = int(os.environ.get("LEDGER_CRASH_SEED", random.randrange(2**32)))
    print(f"transfer crash test seed: {seed} (LEDGER_CRASH_SEED={seed} to replay)")
    rng = random.Random(seed)

    eur = [f"eur-{i:03d}" for i in range(ACCOUNTS - 10)]
    usd = [f"usd-{i}" for i in range(5)]
    closed = [f"closed-{i}" for i in range(5)]
    setup = []
    for a in eur:
        setup += [domain.OpenAccount(f"open-{a}", a, "EUR", rng.choice([0, 1000])),
                  domain.Credit(f"fund-{a}", a, FUNDING, "EUR")]
    setup += [domain.OpenAccount(f"open-{a}", a, "USD") for a in usd]
    for a in closed:
        setup += [domain.OpenAccount(f"open-{a}", a, "EUR"), domain.CloseAccount(f"close-{a}", a)]

    # The model: every transfer's fate, from static facts only.
    transfers, expected, sent_ids = [], {}, []
    for n in range(TRANSFERS):
        roll = rng.random()
        if sent_ids and roll < 0.02:
            transfers.append(rng.choice(transfers[:len(sent_ids)]))  # exact retry
            continue
        if sent_ids and roll < 0.03:
            original = rng.choice(transfers[:len(sent_ids)])
            transfers.append(replace(original, amount_minor=original.amount_minor + 1))
            continue  # same id, other body: command_id_reused, original stands
        source = rng.choice(eur)
        if roll < 0.05:
            target, fate = f"ghost-{rng.randrange(50)}", ("failed", "unknown_account")
        elif roll < 0.07:
            target, fate = rng.choice(closed), ("failed", "account_closed")
        elif roll < 0.09:
            target, fate = rng.choice(usd), ("failed", "currency_mismatch")
        elif roll < 0.10:
            target, fate = rng.choice(eur), ("failed", "insufficient_funds")
        else:
            target, fate = rng.choice(eur), ("completed", None)
        if target == source:
            fate = ("failed", "same_account")
        amount = 10**12 if fate[1] == "insufficient_funds" else rng.randrange(1, 1000)
        t = domain.Transfer(f"t{n}", source, target, amount, "EUR",
                            (("n", str(n)),) if n % 7 == 0 else ())
        transfers.append(t)
        sent_ids.append(t.command_id)
        expected[t.command_id] = (t, fate)
    balances = {a: FUNDING for a in eur} | {a: 0 for a in usd + closed}
    for t, (status, _reason) in expected.values():
        if status == "completed":
            balances[t.from_account_id] -= t.amount_minor
            balances[t.to_account_id] += t.amount_minor

    w1, w2 = start_pair(workers, settings)
    w1.wait_ready()
    w2.wait_ready()
    send_all(settings, setup)
    started = time.monotonic()
    sender = paced_sender(settings, transfers, SEND_RATE_PER_S)
    live = {"w1": w1, "w2": w2}
    try:
        for kill in range(3):
            time.sleep(rng.uniform(1.0, 3.0))
            victim = rng.choice(sorted(live))
            workers.kill(live[victim])
            live[victim] = workers.start(live[victim].settings, wait=False)
            if kill == 1:
                # Forced rebalance: a third member joins, then leaves.
                w3 = workers.start(settings.with_(
                    worker_id="w3", data_dir=settings.data_dir.parent / "w3",
                    web_port=free_port()))
                time.sleep(rng.uniform(0.5, 2.0))
                workers.kill(w3)
    finally:
        sender.join()
    for w in live.values():
        w.wait_ready(120)
    print(f"load sent after {time.monotonic() - started:.1f}s")

    # Settle: every transfer completed or failed.
    deadline = time.monotonic() + 240
    while True:
        records = [r for _p, _o, r in read_log(settings, timeout_s=60)]
        settled = {r.transfer_id for r in records
                   if isinstance(r, (domain.TransferCompleted, domain.TransferRefunded))}
        settled |= {r.command_id for r in records if isinstance(r, domain.CommandRejected)
                    and r.command_type == "transfer"}
        if set(expected) <= settled or time.monotonic() > deadline:
            break
        time.sleep(2)
    print(f"settled after {time.monotonic() - started:.1f}s")

    # Exactly one fate per transfer, the model's.
    by_kind = defaultdict(Counter)
    fates = {}
    for r in records:
        if isinstance(r, domain.CommandRejected) and r.command_type == "transfer":
            by_kind[r.reason == "command_id_reused" and "reused" or "rejected"][r.command_id] += 1
            if r.reason != "command_id_reused":
                fates[r.command_id] = ("failed", r.reason)
        elif isinstance(r, (domain.TransferDebited, domain.TransferCredited,
                            domain.TransferCompleted, domain.TransferRefunded)):
            by_kind[r.type][r.transfer_id] += 1
            if isinstance(r, domain.TransferCompleted):
                fates[r.transfer_id] = ("completed", None)
            elif isinstance(r, domain.TransferRefunded):
                fates[r.transfer_id] = ("failed", r.reason)
    for kind, counts in by_kind.items():
        if kind != "reused":
            assert {} == {tid: n for tid, n in counts.items() if n != 1}, kind
    assert {tid: fate for tid, (_t, fate) in expected.items()} == fates
    assert set(by_kind["transfer_credited"]) == set(by_kind["transfer_completed"])
    assert set(by_kind["transfer_debited"]) == (set(by_kind["transfer_completed"])
                                                | set(by_kind["transfer_refunded"]))

    # Balances, sequences, overdraft limits and the money invariant.
    last, limits, external = {}, {}, Counter()
    seqs = defaultdict(list)
    for r in records:
        if isinstance(r, domain.CommandRejected):
            continue
        seqs[r.account_id].append(r.sequence)
        last[r.account_id] = r.balance_after_minor
        if isinstance(r, domain.AccountOpened):
            limits[r.account_id] = r.overdraft_limit_minor
        assert r.balance_after_minor >= -limits[r.account_id], r
        if isinstance(r, domain.Credited):
            external[r.currency] += r.amount_minor
        elif isinstance(r, domain.Debited):
            external[r.currency] -= r.amount_minor
    for account_id, s in seqs.items():
        assert list(range(1, len(s) + 1)) == s, account_id
    assert balances == last
    in_flight = sum(n for n in by_kind["transfer_debited"].values()) - sum(
        n for n in by_kind["transfer_credited"].values()) - sum(
        n for n in by_kind["transfer_refunded"].values())
    assert 0 == in_flight
    assert external["EUR"] == sum(v for a, v in last.items() if not a.startswith("usd"))

    # Any live worker answers for any account and any transfer (forwarding).
    def answered(worker, path):
        """The first 200 within 30 s: a partition may still be moving after
        the rebalance (503 partition_unavailable is a 'retry', not an answer)."""
        deadline = time.monotonic() + 30
        while True:
            status, body = worker.get(path)
            if status == 200 or time.monotonic() > deadline:
                return status, body
            time.sleep(0.2)

    for account_id in rng.sample(sorted(balances), 20):
        status, body = answered(live["w1"], f"/v1/accounts/{account_id}")
        assert (200, balances[account_id]) == (status, body.get("balance")), account_id
    for tid in rng.sample(sorted(expected), 20):
        source = expected[tid][0].from_account_id
        status, body = answered(live["w2"], f"/v1/transfers/{tid}?account_id={source}")
        assert (200,) + expected[tid][1] == (status, body["status"], body["reason"]), tid
    print(f"transfer crash test wall time {time.monotonic() - started:.1f}s")
