"""kill -9 a worker in the middle of a load, again and again; nothing is lost or doubled.

A seeded random load of 20,000 commands over 200 accounts (some sent twice
with the same command_id on purpose) is sent while the worker is SIGKILLed
at random moments at least 3 times and restarted. Afterwards the committed
event log (read_committed) and the restarted worker's RocksDB state are
compared with an independent model that knows nothing of ledger.domain.
The seed is printed; LEDGER_CRASH_SEED=<n> replays a run.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter, defaultdict

import pytest

from ledger import domain
from streams.eventlog import read_log

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ACCOUNTS = 200
COMMANDS = 20_000
KILLS = 3
SEND_RATE_PER_S = 1_500  # slow enough that every kill lands mid-load


class Model:
    """An independent reference: balances and verdicts by the ledger's rules."""

    def __init__(self):
        self.accounts: dict[str, dict] = {}
        self.verdicts: dict[str, tuple[str, str | None]] = {}

    def apply(self, c) -> None:
        if c.command_id in self.verdicts:
            return  # a retry: applied once, outcome stands
        a = self.accounts.get(c.account_id)
        kind = type(c).__name__
        if kind == "OpenAccount":
            verdict = ("rejected", "account_exists") if a else ("applied", None)
            if not a:
                self.accounts[c.account_id] = {"currency": c.currency, "balance": 0,
                                               "limit": c.overdraft_limit_minor,
                                               "closed": False, "version": 1}
        elif a is None:
            verdict = ("rejected", "unknown_account")
        elif a["closed"]:
            verdict = ("rejected", "account_closed")
        elif kind == "CloseAccount":
            if a["balance"] != 0:
                verdict = ("rejected", "balance_not_zero")
            else:
                a["closed"], verdict = True, ("applied", None)
        elif c.currency != a["currency"]:
            verdict = ("rejected", "currency_mismatch")
        elif kind == "Debit" and a["balance"] - c.amount_minor < -a["limit"]:
            verdict = ("rejected", "insufficient_funds")
        else:
            a["balance"] += c.amount_minor if kind == "Credit" else -c.amount_minor
            verdict = ("applied", None)
        if verdict[0] == "applied" and kind != "OpenAccount":
            a["version"] += 1
        self.verdicts[c.command_id] = verdict


def make_load(rng: random.Random) -> list:
    ids = [f"acct-{i:03d}" for i in range(ACCOUNTS)]
    commands = [domain.OpenAccount(f"open-{a}", a, "EUR", rng.choice([0, 0, 500, 5_000]))
                for a in ids]
    sent = []
    while len(commands) < COMMANDS:
        n = len(commands)
        roll = rng.random()
        if sent and roll < 0.03:
            commands.append(rng.choice(sent))  # the same command again, same command_id
            continue
        account = rng.choice(ids) if roll > 0.05 else f"ghost-{rng.randrange(20)}"
        if roll < 0.06:
            c = domain.CloseAccount(f"c{n}", account)
        elif roll < 0.08:
            c = domain.Credit(f"c{n}", account, rng.randrange(1, 1000), "USD")
        elif roll < 0.55:
            c = domain.Credit(f"c{n}", account, rng.randrange(1, 10_000), "EUR")
        else:
            c = domain.Debit(f"c{n}", account, rng.randrange(1, 10_000), "EUR")
        commands.append(c)
        sent.append(c)
    return commands


def test_sigkill_during_load_loses_and_doubles_nothing(settings, workers, paced_sender):
    seed = int(os.environ.get("LEDGER_CRASH_SEED", random.randrange(2**32)))
    print(f"crash test seed: {seed} (LEDGER_CRASH_SEED={seed} to replay)")
    rng = random.Random(seed)
    commands = make_load(rng)
    model = Model()
    for c in commands:
        model.apply(c)
    unique_ids = set(model.verdicts)
    started = time.monotonic()

    worker = workers.start(settings)
    sender = paced_sender(settings, commands, SEND_RATE_PER_S)
    kills = 0
    try:
        while kills < KILLS or (sender.is_alive() and kills < KILLS + 3):
            time.sleep(rng.uniform(0.5, 3.0))
            workers.kill(worker)
            kills += 1
            worker = workers.start(settings, wait=False)
            if kills < KILLS:
                worker.wait_ready()
    finally:
        sender.join()
    worker.wait_ready()
    print(f"{kills} kills; load sent after {time.monotonic() - started:.1f}s; "
          f"slowest chunk {max(sender.flush_s):.2f}s, sum {sum(sender.flush_s):.1f}s")

    # Wait until every command has an outcome in the committed log.
    deadline = time.monotonic() + 180
    while True:
        records = [r for _p, _o, r in read_log(settings)]
        seen = {r.command_id for r in records}
        if unique_ids <= seen or time.monotonic() > deadline:
            break
        time.sleep(1)
    elapsed = time.monotonic() - started
    print(f"all outcomes committed after {elapsed:.1f}s ({len(commands)} sends)")

    # 1. Every command has exactly one outcome, and it is the model's verdict.
    outcomes = Counter(r.command_id for r in records)
    assert set() == unique_ids - set(outcomes), "commands without an outcome"
    assert {} == {cid: n for cid, n in outcomes.items() if n != 1}, "doubled outcomes"
    actual = {r.command_id: ("rejected", r.reason) if isinstance(r, domain.CommandRejected)
              else ("applied", None) for r in records}
    assert model.verdicts == actual

    # 2. Per account, sequences are 1..n with no gap or repeat, and the
    #    balances follow the model.
    events = defaultdict(list)
    for r in records:
        if not isinstance(r, domain.CommandRejected):
            events[r.account_id].append(r)
    for account_id, evs in events.items():
        assert list(range(1, len(evs) + 1)) == [e.sequence for e in evs], account_id
    assert {a: m["balance"] for a, m in model.accounts.items()} == {
        a: evs[-1].balance_after_minor for a, evs in events.items()}
    assert {a: m["version"] for a, m in model.accounts.items()} == {
        a: len(evs) for a, evs in events.items()}

    # 3. The restarted worker's RocksDB state agrees with the model too.
    for account_id, m in model.accounts.items():
        status, body = worker.get(f"/v1/accounts/{account_id}")
        assert (200, m["balance"], m["version"], "closed" if m["closed"] else "open") == (
            status, body["balance"], body["version"], body["status"]), account_id
