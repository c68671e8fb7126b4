"""Holds end exactly once, through kill -9 (issue 11, proof 2).

Two workers share the partitions of 100 accounts. 5,000 seeded random holds
are placed while a worker is SIGKILLed three times: some are captured in
full or in part, with a destination named by the hold or by the capture, or
without one (the money leaves the ledger); some are released; the rest have
short expiries (1-10 s) and are left to the workers to expire. A few holds
and captures are sent twice with the same id. Every account is funded far
beyond what its holds reserve, so each hold's end depends only on what was
sent: an independent model knows every hold's terminal state and every
balance. At the end, captures of expired holds are refused as hold_expired.
The seed is printed; LEDGER_CRASH_SEED=<n> replays it.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter, defaultdict

import pytest

from ledger import domain
from streams.client import LedgerClient
from streams.eventlog import read_log
from tests.conftest import send_all
from tests.streams.httpkit import start_pair

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ACCOUNTS = 100
HOLDS = 5_000
FUNDING = 10_000_000  # far above what the holds of an account can reserve
SEND_RATE_PER_S = 1_000
LONG_EXPIRY_MS = 10 * 60 * 1000  # holds that a capture or release ends


def build_load(rng):
    accounts = [f"acc-{i:03d}" for i in range(ACCOUNTS)]
    setup = []
    for a in accounts:
        setup += [domain.OpenAccount(f"open-{a}", a, "EUR"),
                  domain.Credit(f"fund-{a}", a, FUNDING, "EUR")]
    load, later = [], []  # later: (position in load, command) sent after their hold
    expected: dict[tuple[str, str], tuple[str, int]] = {}  # -> (status, captured)
    balances = {a: FUNDING for a in accounts}
    short = []
    for n in range(HOLDS):
        while later and later[0][0] <= len(load):
            load.append(later.pop(0)[1])
        account = rng.choice(accounts)
        other = rng.choice([a for a in accounts if a != account])
        amount = rng.randrange(1, 1_000)
        fate = rng.choices(["capture", "release", "expire"], [5, 2, 3])[0]
        to_on_hold = rng.random() < 0.3
        hold = domain.PlaceHold(f"h{n}", account, amount, "EUR",
                                other if to_on_hold else "", 0,
                                rng.randrange(1_000, 10_001) if fate == "expire"
                                else LONG_EXPIRY_MS)
        load.append(hold)
        if rng.random() < 0.02:
            load.append(hold)  # an exact retry: the same hold
        key = (account, hold.command_id)
        if fate == "expire":
            expected[key] = ("expired", 0)
            short.append(hold)
            continue
        if fate == "release":
            end = domain.ReleaseHold(f"r{n}", account, hold.command_id)
            expected[key] = ("released", 0)
        else:
            captured = amount if rng.random() < 0.5 else rng.randrange(1, amount + 1)
            to = "" if to_on_hold else (other if rng.random() < 0.5 else "")
            end = domain.CaptureHold(f"k{n}", account, hold.command_id,
                                     0 if captured == amount else captured, to)
            expected[key] = ("captured", captured)
            balances[account] -= captured
            if to_on_hold or to:
                balances[other] += captured
        position = len(load) + rng.randrange(0, 300)
        later.append((position, end))
        later.sort(key=lambda pair: pair[0])
        if rng.random() < 0.02:
            later.append((position + 1, end))  # an exact retry of the end
            later.sort(key=lambda pair: pair[0])
    load += [command for _position, command in later]
    return accounts, setup, load, expected, balances, short


def test_holds_end_exactly_once_through_kills(settings, workers, paced_sender, ledger_cli):
    seed = int(os.environ.get("LEDGER_CRASH_SEED", random.randrange(2**32)))
    print(f"hold crash test seed: {seed} (LEDGER_CRASH_SEED={seed} to replay)")
    rng = random.Random(seed)
    accounts, setup, load, expected, balances, short = build_load(rng)

    w1, w2 = start_pair(workers, settings)
    w1.wait_ready()
    w2.wait_ready()
    send_all(settings, setup)
    started = time.monotonic()
    sender = paced_sender(settings, load, SEND_RATE_PER_S)
    live = {"w1": w1, "w2": w2}
    try:
        for _kill in range(3):
            time.sleep(rng.uniform(1.0, 3.0))
            victim = rng.choice(sorted(live))
            workers.kill(live[victim])
            live[victim] = workers.start(live[victim].settings, wait=False)
    finally:
        sender.join()
    for w in live.values():
        w.wait_ready(120)
    print(f"load sent after {time.monotonic() - started:.1f}s")

    # Settle: every hold ended, every transfer of a capture settled.
    deadline = time.monotonic() + 180
    while True:
        records = [r for _p, _o, r in read_log(settings, timeout_s=60)]
        ended = {(r.account_id, r.hold_id) for r in records
                 if isinstance(r, domain.HoldEvent) and not isinstance(r, domain.HoldPlaced)}
        debited = {(r.account_id, r.transfer_id) for r in records
                   if isinstance(r, domain.TransferDebited)}
        settled = {(r.account_id, r.transfer_id) for r in records
                   if isinstance(r, (domain.TransferCompleted, domain.TransferRefunded))}
        if (set(expected) <= ended and debited <= settled) or time.monotonic() > deadline:
            break
        time.sleep(1)
    print(f"settled after {time.monotonic() - started:.1f}s")

    # Captures of expired holds are refused: never captured after expiry.
    with LedgerClient(settings) as client:
        for hold in short[:20]:
            late = client.capture(hold.account_id, hold.command_id,
                                  command_id=f"late-{hold.command_id}", wait=True)
            assert ("rejected", "hold_expired") == (late.status, late.reason)
    records = [r for _p, _o, r in read_log(settings, timeout_s=60)]

    # Every hold: one terminal event, the model's; never captured after expiry.
    placed, ends = {}, defaultdict(list)
    for r in records:
        if isinstance(r, domain.HoldPlaced):
            assert (r.account_id, r.hold_id) not in placed, r  # placed once
            placed[(r.account_id, r.hold_id)] = r
        elif isinstance(r, domain.HoldEvent):
            ends[(r.account_id, r.hold_id)].append(r)
    assert set(expected) == set(placed)
    assert {} == {k: [e.type for e in v] for k, v in ends.items() if len(v) != 1}
    status = {domain.HoldCaptured: "captured", domain.HoldReleased: "released",
              domain.HoldExpired: "expired"}
    fates = {k: (status[type(v[0])], v[0].amount_minor if isinstance(v[0], domain.HoldCaptured)
                 else 0) for k, v in ends.items()}
    assert expected == fates
    for k, (end,) in ends.items():
        expires_at = placed[k].expires_at_ms
        if isinstance(end, domain.HoldCaptured):
            assert end.recorded_at_ms < expires_at, end
        if isinstance(end, domain.HoldExpired):
            assert expires_at <= end.recorded_at_ms, end
    print(f"holds: {dict(Counter(s for s, _c in fates.values()))}")

    # Every balance is the model's; nothing held; exactly one event per sequence.
    last = {}
    seqs = defaultdict(list)
    for r in records:
        if isinstance(r, domain.CommandRejected):
            continue
        seqs[r.account_id].append(r.sequence)
        last[r.account_id] = r.balance_after_minor
    for account_id, s in seqs.items():
        assert list(range(1, len(s) + 1)) == s, account_id
    assert balances == last
    result = ledger_cli(settings, "verify", "--no-store")
    assert 0 == result.returncode, result.stdout + result.stderr
    print(f"hold crash test wall time {time.monotonic() - started:.1f}s")
