"""The read models (streams/readmodels.py): Faust agents folding the event log.

Against a real broker and real workers:

1. Ledger-wide totals (GET /v1/ledger/totals) equal what the log says
   (streams/replay.py's Ledger fold, and a sum of every record) after a random
   load with transfers during which the worker is SIGKILLed twice, and again
   after the worker's Faust data dir (its read-model store) is wiped: exact
   sums, and exactly as many records folded per partition as the log holds.
2. Account statements equal a fold of GET /v1/accounts/{id}/events for every
   account and day of a history seeded straight into the event log across
   several days (transactional producer, well-formed events), asked of two
   workers (so half the answers are forwarded).
3. A forged transfer credit produced into the log (no debit: money out of
   nothing) turns ledger_invariant_ok to 0 within 10 s and /v1/ledger/totals
   reports the currency broken; an aborted forgery before it changes nothing.

4. The log reader that checks every batch Faust delivers lists exactly the
   committed records a batch lacks, across aborted transactions and markers.

And without a broker: the folds, the in-flight check under lag, date parsing,
the deploy files. LEDGER_READ_MODEL_BENCH=1 runs the measurements (printed).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import shutil
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from ledger import domain
from schemas import codec
from streams import readmodels
from streams.readmodels import (InvariantEvaluator, PartitionView, Snapshot, TOTALS_KINDS,
                                derived, empty_totals, fold_statement, fold_totals,
                                statement_day)

EUR_ACCOUNTS = 24
USD_ACCOUNTS = 6
LOAD_COMMANDS = 3_000
SEND_RATE_PER_S = 400
WAIT_S = 120


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def get(worker, path: str):
    try:
        with urllib.request.urlopen(worker.url + path, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def metric(worker, name: str, **labels) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(worker.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def wait_for(condition, timeout_s: float = WAIT_S, what: str = "condition", every_s=0.3):
    """Poll ``condition`` (returns a truthy value when met) until the deadline."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"{what} not met within {timeout_s}s (last: {last!r})")


def log_facts(settings):
    """What the committed log says, read once and folded two ways: by
    streams/replay.py's Ledger (what `ledger replay` and `ledger verify` use)
    and by a plain sum of every record's amount by kind."""
    from streams import replay
    from streams.eventlog import read_log

    ledger = replay.Ledger.empty(settings.partitions)
    sums: dict[str, Counter] = defaultdict(Counter)
    records = Counter()
    for partition, offset, record in read_log(settings):
        ledger.apply(partition, offset, record)
        records[partition] += 1
        if isinstance(record, domain.CommandRejected):
            continue
        kind = {domain.Credited: "credited", domain.Debited: "debited",
                domain.TransferDebited: "transfer_debited",
                domain.TransferCredited: "transfer_credited",
                domain.TransferRefunded: "transfer_refunded"}.get(type(record))
        sums[record.currency][kind] += record.amount_minor if kind else 0
    balances = Counter()
    for state in ledger.accounts.values():
        balances[state.currency] += state.balance_minor
    money = {c: {"balances": balances[c], "in_flight": ledger.in_flight[c],
                 "external_credits": sums[c]["credited"],
                 "external_debits": sums[c]["debited"]}
             for c in sorted(set(balances) | set(sums))}
    # The ledger's fold and the plain one agree on what is external.
    for c in money:
        assert ledger.external[c] == sums[c]["credited"] - sums[c]["debited"], c
    return money, dict(ledger.offsets), dict(records)


class Mismatch:
    """A falsy answer that says what differed (wait_for shows the last one)."""

    def __init__(self, why: str):
        self.why = why

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return self.why


def totals_match(worker, settings):
    """The totals if they equal what the log says (sums, offsets, record
    counts), else a Mismatch saying how they differ."""
    money, offsets, records = log_facts(settings)
    status, totals = get(worker, "/v1/ledger/totals")
    if status != 200 or totals["missing_partitions"]:
        return Mismatch(f"{status}: {totals}")
    got = {c: {k: v[k] for k in ("balances", "in_flight", "external_credits",
                                 "external_debits")}
           for c, v in totals["currencies"].items()}
    if got != money:
        return Mismatch(f"money {got} != log {money}; partitions {totals['partitions']}; "
                        f"log offsets {offsets}, records {records}")
    for p in range(settings.partitions):
        view = totals["partitions"][str(p)]
        if view["offset"] + 1 != offsets.get(p, 0) or view["records"] != records.get(p, 0):
            return Mismatch(f"partition {p}: {view} != log next offset {offsets.get(p, 0)}, "
                            f"records {records.get(p, 0)}")
    return totals


def log_end(settings) -> int:
    from confluent_kafka import Consumer

    from streams.topics import watermarks

    consumer = Consumer(settings.kafka(**{"group.id": "probe", "enable.auto.commit": False}))
    try:
        return sum(watermarks(consumer, settings.events_topic, p)[1]
                   for p in range(settings.partitions))
    finally:
        consumer.close()


def transactional_producer(settings, name: str):
    from confluent_kafka import Producer

    producer = Producer(settings.kafka(**{"transactional.id": f"{settings.topic_prefix}-{name}",
                                          "partitioner": "murmur2_random"}))
    producer.init_transactions(30)
    return producer


def encode(record) -> bytes:
    return codec.encode_outcome(record, hashlib.sha256(record.command_id.encode()).hexdigest())


# --------------------------------------------------------------------------
# 1. Totals == the log, through two SIGKILLs and a wiped store
# --------------------------------------------------------------------------


def make_load(rng: random.Random):
    eur = [f"eur-{i:02d}" for i in range(EUR_ACCOUNTS)]
    usd = [f"usd-{i}" for i in range(USD_ACCOUNTS)]
    setup = []
    for a in eur:
        setup += [domain.OpenAccount(f"open-{a}", a, "EUR", rng.choice([0, 500])),
                  domain.Credit(f"fund-{a}", a, 50_000, "EUR")]
    for a in usd:
        setup += [domain.OpenAccount(f"open-{a}", a, "USD"),
                  domain.Credit(f"fund-{a}", a, 20_000, "USD")]
    load = []
    for n in range(LOAD_COMMANDS):
        roll = rng.random()
        pool, currency = (usd, "USD") if rng.random() < 0.2 else (eur, "EUR")
        source = rng.choice(pool)
        if roll < 0.25:
            load.append(domain.Credit(f"c{n}", source, rng.randrange(1, 5_000), currency))
        elif roll < 0.45:
            # Some beyond the balance: rejected, a record that moves no money.
            load.append(domain.Debit(f"d{n}", source, rng.randrange(1, 20_000), currency))
        else:
            if roll < 0.50:
                target = f"ghost-{rng.randrange(10)}"  # refunded: unknown account
            elif roll < 0.53:
                target = rng.choice(usd if currency == "EUR" else eur)  # refunded: currency
            else:
                target = rng.choice(pool)
            if target == source:
                continue
            load.append(domain.Transfer(f"t{n}", source, target, rng.randrange(1, 3_000),
                                        currency))
    return setup, load


@pytest.mark.kafka
def test_totals_equal_the_log_after_kills_and_a_wiped_store(settings, workers, paced_sender,
                                                            ledger_cli):
    seed = int(os.environ.get("LEDGER_READ_MODEL_SEED", random.randrange(2**32)))
    print(f"read model test seed: {seed} (LEDGER_READ_MODEL_SEED={seed} to replay)")
    rng = random.Random(seed)
    setup, load = make_load(rng)

    worker = workers.start(settings)
    from streams.client import LedgerClient

    with LedgerClient(settings) as client:
        for command in setup[:-1]:
            client.send_nowait(command)
        client.send(setup[-1], wait=True, timeout_s=60)
    start_end = log_end(settings)
    sender = paced_sender(settings, load, SEND_RATE_PER_S)
    try:
        for kill, progress in enumerate((0.25, 0.6)):
            # Kill while the load is arriving: once this much of it is in the log.
            wait_for(lambda: log_end(settings) >= start_end + progress * len(load),
                     what=f"load progress {progress:.0%}")
            before = metric(worker, "ledger_read_model_events_total", model="totals")
            workers.kill(worker)
            print(f"kill {kill + 1}: worker had folded {before} records this run")
            worker = workers.start(settings)
    finally:
        sender.join()

    # The backlog applied and every transfer settled: the log stands still.
    ids = {c.command_id for c in setup + load}

    def log_settled():
        from streams.eventlog import read_log

        seen, in_flight = set(), Counter()
        for _p, _o, record in read_log(settings):
            seen.add(record.command_id)
            if isinstance(record, domain.TransferDebited):
                in_flight[record.currency] += record.amount_minor
            elif isinstance(record, (domain.TransferCredited, domain.TransferRefunded)):
                in_flight[record.currency] -= record.amount_minor
        return ids <= seen and not any(in_flight.values())

    wait_for(log_settled, what="every command applied, every transfer settled", every_s=1)
    totals = wait_for(lambda: totals_match(worker, settings), what="totals == log")
    print("after two kills:", json.dumps(totals["currencies"], sort_keys=True))
    print("records read again and skipped after the restart:",
          metric(worker, "ledger_read_model_replayed_total", model="totals"))
    assert totals["invariant_ok"], totals
    assert all(v["invariant_ok"] for v in totals["currencies"].values())
    assert {"EUR", "USD"} <= set(totals["currencies"])
    verify = ledger_cli(settings, "verify", "--no-store")
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # Wipe the read-model store: the tables come back from their changelogs.
    workers.stop(worker)
    shutil.rmtree(settings.data_dir / "faust")
    worker = workers.start(settings)
    again = wait_for(lambda: totals_match(worker, settings), what="totals == log after wipe")
    assert again["currencies"] == totals["currencies"]  # the log has not moved since
    assert {p: v["offset"] for p, v in again["partitions"].items()} == \
        {p: v["offset"] for p, v in totals["partitions"].items()}
    assert wait_for(lambda: metric(worker, "ledger_invariant_ok", currency="EUR") == 1.0,
                    what="invariant_ok metric")


# --------------------------------------------------------------------------
# 2. Statements == a fold of the account's events, over several days
# --------------------------------------------------------------------------

DAY0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
SEED_DAYS = 5


def seed_history(rng: random.Random):
    """Well-formed events (and rejections) of a few accounts over SEED_DAYS
    days, in the order a worker would have written them."""
    accounts = {f"s-{i:02d}": {"currency": "EUR" if i % 4 else "USD", "balance": 0,
                               "seq": 0, "pending": 0} for i in range(12)}
    records = []  # (account_id, record)
    moments = sorted(rng.randrange(SEED_DAYS * 86_400_000) for _ in range(220))
    # Moments on both sides of midnight, to the millisecond.
    moments += [86_400_000 - 1, 86_400_000, 2 * 86_400_000 - 1, 2 * 86_400_000]
    moments.sort()

    def event(cls, account_id, ms, amount, **extra):
        a = accounts[account_id]
        a["seq"] += 1
        sign = {domain.Credited: 1, domain.Debited: -1, domain.TransferDebited: -1,
                domain.TransferCredited: 1, domain.TransferRefunded: 1}.get(cls, 0)
        a["balance"] += sign * amount
        record = cls(account_id=account_id, sequence=a["seq"],
                     command_id=extra.pop("command_id"), currency=a["currency"],
                     amount_minor=amount, balance_after_minor=a["balance"],
                     recorded_at_ms=int(DAY0.timestamp() * 1000) + ms, **extra)
        records.append((account_id, record))

    for account_id in accounts:
        event(domain.AccountOpened, account_id, 0, 0, command_id=f"open-{account_id}",
              overdraft_limit_minor=0)
    for n, ms in enumerate(moments):
        account_id = rng.choice(list(accounts))
        a = accounts[account_id]
        roll = rng.random()
        if roll < 0.35:
            event(domain.Credited, account_id, ms, rng.randrange(1, 10_000), command_id=f"c{n}")
        elif roll < 0.55 and a["balance"] > 0:
            event(domain.Debited, account_id, ms, rng.randrange(1, a["balance"] + 1),
                  command_id=f"d{n}")
        elif roll < 0.62:
            records.append((account_id, domain.CommandRejected(
                account_id=account_id, command_id=f"r{n}", command_type="debit",
                reason="insufficient_funds", detail="", recorded_at_ms=int(
                    DAY0.timestamp() * 1000) + ms)))
        elif a["balance"] > 0:
            peers = [b for b in accounts if b != account_id
                     and accounts[b]["currency"] == a["currency"]]
            target = rng.choice(peers)
            amount = rng.randrange(1, a["balance"] + 1)
            tid = f"t{n}"
            event(domain.TransferDebited, account_id, ms, amount, command_id=tid,
                  transfer_id=tid, counterparty_account_id=target)
            if rng.random() < 0.8:
                event(domain.TransferCredited, target, ms + 1, amount,
                      command_id=f"{tid}#credit:{account_id}", transfer_id=tid,
                      counterparty_account_id=account_id)
                event(domain.TransferCompleted, account_id, ms + 2, amount,
                      command_id=f"{tid}#settle", transfer_id=tid,
                      counterparty_account_id=target)
            else:
                event(domain.TransferRefunded, account_id, ms + 2, amount,
                      command_id=f"{tid}#settle", transfer_id=tid,
                      counterparty_account_id=target, reason="account_closed")
    # One account emptied and closed on the last day.
    last = max(moments) + 10
    for account_id, a in accounts.items():
        if a["balance"] > 0:
            event(domain.Debited, account_id, last, a["balance"], command_id=f"empty-{account_id}")
            event(domain.AccountClosed, account_id, last + 1, 0,
                  command_id=f"close-{account_id}")
            break
    return accounts, records


def fold_events_by_day(events: list[dict], zone) -> dict[str, dict]:
    """The reference: a fold of GET /v1/accounts/{id}/events, day by day."""
    sign = {"credited": 1, "debited": -1, "transfer_debited": -1, "transfer_credited": 1,
            "transfer_refunded": 1}
    column = {"credited": "credited", "debited": "debited", "transfer_credited": "transfer_in",
              "transfer_debited": "transfer_out", "transfer_refunded": "refunds"}
    days: dict[str, dict] = {}
    for e in events:
        ms = int(datetime.fromisoformat(e["recorded_at"].replace("Z", "+00:00"))
                 .timestamp() * 1000)
        day = datetime.fromtimestamp(ms / 1000, zone).date().isoformat()
        row = days.get(day)
        if row is None:
            row = days[day] = {
                "date": day, "account_id": e["account_id"], "currency": e["currency"],
                "opening_balance": e["balance_after"] - sign.get(e["type"], 0) * e["amount"],
                "credited": 0, "debited": 0, "transfer_in": 0, "transfer_out": 0,
                "refunds": 0, "events": 0, "first_sequence": e["sequence"]}
        if e["type"] in column:
            row[column[e["type"]]] += e["amount"]
        row["events"] += 1
        row["closing_balance"] = e["balance_after"]
        row["last_sequence"] = e["sequence"]
    return days


def account_events(worker, account_id: str) -> list[dict] | None:
    """Every event of the account, or None while no worker can answer for
    its partition (a 503 during a rebalance: ask again)."""
    events, cursor = [], None
    while True:
        path = f"/v1/accounts/{account_id}/events?limit=1000" + (
            f"&cursor={cursor}" if cursor else "")
        status, page = get(worker, path)
        if status == 503 and page.get("error") == "partition_unavailable":
            return None
        assert status == 200, page
        events += page["events"]
        cursor = page["next_cursor"]
        if cursor is None:
            return events


@pytest.mark.kafka
def test_statements_equal_a_fold_of_the_events_over_several_days(settings, workers, tmp_path,
                                                                 ledger_cli):
    from streams.partitioner import partition_for

    rng = random.Random(12)
    accounts, records = seed_history(rng)
    producer = transactional_producer(settings, "seed")
    producer.begin_transaction()
    for account_id, record in records:
        producer.produce(settings.events_topic, encode(record), account_id.encode(),
                         partition=partition_for(account_id.encode(), settings.partitions))
    producer.commit_transaction(30)
    days_seen = {statement_day(r.recorded_at_ms, timezone.utc) for _a, r in records}
    assert len(days_seen) >= SEED_DAYS

    from tests.conftest import free_port

    w1 = workers.start(settings)
    w2 = workers.start(settings.with_(worker_id="w2", data_dir=tmp_path / "data-w2",
                                      web_port=free_port()))
    first = DAY0.date().isoformat()
    last = (DAY0.date() + timedelta(days=SEED_DAYS + 1)).isoformat()

    def all_equal():
        for account_id in accounts:
            events = account_events(w1, account_id)
            if events is None:
                return Mismatch(f"{account_id}: its partition is unavailable for now")
            expected = list(fold_events_by_day(events, timezone.utc).values())
            for worker in (w1, w2):
                status, body = get(worker, f"/v1/accounts/{account_id}/statements"
                                           f"?from={first}&to={last}")
                if status != 200 or body["days"] != expected:
                    return Mismatch(f"{account_id} from {worker.settings.worker_id}: "
                                    f"{status} {body} != {expected}")
        return True

    wait_for(all_equal, what="statements == fold of events, on both workers", every_s=1)
    rows = [d for a in accounts for d in get(w1, f"/v1/accounts/{a}/statements"
                                                 f"?from={first}&to={last}")[1]["days"]]
    print(f"{len(rows)} statement rows of {len(accounts)} accounts over "
          f"{len({d['date'] for d in rows})} days")
    assert len({d["date"] for d in rows}) >= SEED_DAYS
    # `ledger statement` prints the same days, as JSON and as CSV.
    month = DAY0.strftime("%Y-%m")
    status, body = get(w2, f"/v1/accounts/s-01/statements?from={month}-01&to={month}-31")
    assert status == 200 and body["days"]
    printed = ledger_cli(settings, "statement", "s-01", "--month", month, "--format", "json",
                         "--url", w1.url)
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["days"] == body["days"]
    printed = ledger_cli(settings, "statement", "s-01", "--month", month, "--url", w2.url)
    rows = list(csv.DictReader(io.StringIO(printed.stdout)))
    assert [{k: int(v) if k not in ("date", "account_id", "currency") else v
             for k, v in row.items()} for row in rows] == body["days"]
    # The closed account's last day ends at zero; days without events are absent.
    status, body = get(w2, f"/v1/accounts/s-00/statements?from={first}&to={last}")
    assert status == 200 and body["time_zone"] == "UTC"
    assert [d["date"] for d in body["days"]] == sorted(d["date"] for d in body["days"])
    # Bad ranges: 400 naming the field and the reason.
    for query, field, reason in (
            ("from=2026-03-01", "to", "missing"),
            ("from=2026-02-30&to=2026-03-01", "from", "malformed"),
            ("from=2026-3-1&to=2026-03-01", "from", "malformed"),
            ("from=2026-03-02&to=2026-03-01", "to", "out_of_range"),
            ("from=2025-01-01&to=2026-03-01", "to", "too_large")):
        status, body = get(w1, f"/v1/accounts/s-01/statements?{query}")
        assert (status, body["field"], body["reason"]) == (400, field, reason), (query, body)
    # Totals gathered over both workers equal the log too, each worker holding
    # some of the partitions (so the answers above were partly forwarded).
    totals = wait_for(lambda: totals_match(w2, settings), what="totals over two workers")
    assert {v["worker_id"] for v in totals["partitions"].values()} == {"w1", "w2"}


# --------------------------------------------------------------------------
# 3. Money out of nothing turns the invariant to 0
# --------------------------------------------------------------------------


@pytest.mark.kafka
def test_a_forged_credit_breaks_the_invariant_within_10s(settings, workers, ledger_cli):
    from streams.client import LedgerClient
    from streams.partitioner import partition_for

    worker = workers.start(settings)
    with LedgerClient(settings) as client:
        for account_id, currency in (("alice", "EUR"), ("bob", "EUR"), ("ursula", "USD")):
            client.open_account(account_id, currency, command_id=f"open-{account_id}")
        client.credit("alice", 100_00, "EUR", command_id="fund-alice")
        client.credit("ursula", 5_00, "USD", command_id="fund-ursula")
        assert client.transfer("alice", "bob", 30_00, "EUR", transfer_id="t-1",
                               wait=True).status == "completed"
    wait_for(lambda: totals_match(worker, settings), what="totals == log")
    wait_for(lambda: metric(worker, "ledger_invariant_ok", currency="EUR") == 1.0,
             what="invariant ok before the forgery")

    def forged_credit():
        """A transfer credit to bob that no debit pays for, well-formed (next
        sequence, balance_after following its amount)."""
        status, bob = get(worker, "/v1/accounts/bob")
        assert status == 200
        return domain.TransferCredited(
            account_id="bob", sequence=bob["version"] + 1, command_id="forged#credit:alice",
            currency="EUR", amount_minor=1_000_000,
            balance_after_minor=bob["balance"] + 1_000_000,
            recorded_at_ms=int(time.time() * 1000), transfer_id="forged",
            counterparty_account_id="alice")

    partition = partition_for(b"bob", settings.partitions)
    producer = transactional_producer(settings, "forger")
    # An aborted forgery is never read (read_committed): nothing changes.
    producer.begin_transaction()
    producer.produce(settings.events_topic, encode(forged_credit()), b"bob",
                     partition=partition)
    producer.abort_transaction(30)
    with LedgerClient(settings) as client:  # something committed after the abort marker
        client.credit("bob", 1, "EUR", command_id="after-abort", wait=True)
    wait_for(lambda: totals_match(worker, settings), what="totals == log after an abort")
    assert metric(worker, "ledger_invariant_ok", currency="EUR") == 1.0

    producer.begin_transaction()
    producer.produce(settings.events_topic, encode(forged_credit()), b"bob",
                     partition=partition)
    producer.commit_transaction(30)
    committed = time.monotonic()
    wait_for(lambda: metric(worker, "ledger_invariant_ok", currency="EUR") == 0.0,
             timeout_s=10, what="ledger_invariant_ok{currency=EUR} == 0", every_s=0.1)
    print(f"invariant broken after {time.monotonic() - committed:.2f}s")
    # /v1/ledger/totals gathers its own ledger-wide views (the in-flight
    # check pairs two of them so lag never looks like created money): wait
    # for it to judge too, within the same bound.
    wait_for(lambda: get(worker, "/v1/ledger/totals")[1]["invariant_ok"] is False,
             timeout_s=10, what="/v1/ledger/totals says EUR is broken", every_s=0.1)
    status, totals = get(worker, "/v1/ledger/totals")
    assert status == 200 and totals["invariant_ok"] is False
    eur, usd = totals["currencies"]["EUR"], totals["currencies"]["USD"]
    assert eur["invariant_ok"] is False and eur["in_flight"] == -1_000_000, eur
    assert "out of nothing" in " ".join(eur["problems"])
    assert usd["invariant_ok"] is True and metric(worker, "ledger_invariant_ok",
                                                  currency="USD") == 1.0
    # The ledger's own check agrees.
    verify = ledger_cli(settings, "verify", "--no-store")
    assert verify.returncode == 1 and "credit_without_debit" in verify.stdout


# --------------------------------------------------------------------------
# Without a broker
# --------------------------------------------------------------------------


def _event(cls, seq, amount, balance, ms=0, **extra):
    return cls(account_id="a", sequence=seq, command_id=f"c{seq}", currency="EUR",
               amount_minor=amount, balance_after_minor=balance, recorded_at_ms=ms, **extra)


def test_totals_fold_counts_each_offset_once():
    value = empty_totals()
    credit = _event(domain.Credited, 2, 500, 500)
    assert fold_totals(value, 7, credit)
    assert not fold_totals(value, 7, credit)  # replayed: skipped
    assert not fold_totals(value, 3, credit)  # older than the value: skipped
    assert fold_totals(value, 9, None)  # undecodable or rejection: counted, no money
    assert (value["offset"], value["records"]) == (9, 2)
    assert value["currencies"]["EUR"]["credited"] == 500


def test_statement_fold_and_days_in_a_time_zone():
    berlin = ZoneInfo("Europe/Berlin")
    # 2026-03-28T23:30Z is already the 29th in Berlin (UTC+1).
    ms = int(datetime(2026, 3, 28, 23, 30, tzinfo=timezone.utc).timestamp() * 1000)
    assert statement_day(ms, timezone.utc) == date(2026, 3, 28)
    assert statement_day(ms, berlin) == date(2026, 3, 29)
    value = None
    for offset, e in enumerate([
            _event(domain.Credited, 5, 1000, 1200),
            _event(domain.TransferDebited, 6, 300, 900, transfer_id="t",
                   counterparty_account_id="b"),
            _event(domain.TransferRefunded, 7, 300, 1200, transfer_id="t",
                   counterparty_account_id="b", reason="x"),
            _event(domain.Debited, 8, 200, 1000)]):
        value = fold_statement(value, offset + 10, e)
    assert fold_statement(value, 12, _event(domain.Debited, 8, 200, 1000)) is None
    assert {k: value[k] for k in ("opening_balance", "credited", "debited", "transfer_out",
                                  "refunds", "closing_balance", "events", "first_sequence",
                                  "last_sequence")} == {
        "opening_balance": 200, "credited": 1000, "debited": 200, "transfer_out": 300,
        "refunds": 300, "closing_balance": 1000, "events": 4, "first_sequence": 5,
        "last_sequence": 8}


def _view(offset, position, end, **sums) -> PartitionView:
    return PartitionView(offset=offset, records=0, position=position, end=end,
                         caught_up=position >= end,
                         currencies={"EUR": {k: sums.get(k, 0) for k in TOTALS_KINDS}})


def test_in_flight_check_is_not_fooled_by_lag_but_catches_money_from_nothing():
    """Partition 0 holds a transfer's source, partition 1 its destination."""
    evaluator = InvariantEvaluator(2, spacing_s=0)
    # The credit (p1) is folded while p0 has not folded the debit yet: an
    # instant view says in flight -100, but p0 is behind its log end.
    lagging = Snapshot({0: _view(4, 5, 9), 1: _view(3, 4, 4, transfer_credited=100)})
    assert derived(lagging.sums("EUR"))["in_flight"] == -100
    assert evaluator.observe(lagging)["EUR"].ok
    # p0 catches up: the debit is there.
    caught_up = Snapshot({0: _view(8, 9, 9, transfer_debited=100),
                          1: _view(3, 4, 4, transfer_credited=100)})
    assert evaluator.observe(caught_up)["EUR"].ok
    assert evaluator.observe(caught_up)["EUR"].ok
    # A credit without any debit, everything caught up: broken, and it stays so.
    forged = Snapshot({0: _view(8, 9, 9, transfer_debited=100),
                       1: _view(5, 6, 6, transfer_credited=100 + 50)})
    evaluator.observe(forged)
    verdict = evaluator.observe(Snapshot(dict(forged.partitions)))["EUR"]
    assert not verdict.ok and "50 created out of nothing" in verdict.problems[0]
    assert not evaluator.observe(Snapshot({0: forged.partitions[0]}))["EUR"].ok


def test_pending_refund_without_debit_is_broken_at_once():
    evaluator = InvariantEvaluator(2)
    verdict = evaluator.observe(Snapshot({0: _view(1, 2, 2, transfer_refunded=7)}))["EUR"]
    assert not verdict.ok and "exceed what they debited by 7" in verdict.problems[0]


def test_skipped_runs_cover_only_what_was_noted():
    runs = readmodels.SkippedOffsets()
    runs.note(0, 3, 4)  # a commit marker at 3
    runs.note(0, 6, 9)  # an aborted transaction at 6-7, its marker at 8
    assert runs.covers(0, 0, [0, 1, 2, 4, 5, 9], 10)
    assert runs.covers(0, 3, [], 4) and runs.covers(0, 6, [], 9)
    assert not runs.covers(0, 0, [0, 1, 2, 5, 9], 10)  # 4 is a record not delivered
    assert not runs.covers(0, 0, [0, 1, 2, 4, 5], 10)  # 9 neither
    assert not runs.covers(0, 7, [9], 10)  # a run starting where nothing was noted
    assert not runs.covers(1, 3, [], 4)  # another partition
    assert runs.covers(1, 0, [0, 1], 2)  # no gap at all
    runs.forget_below(0, 5)
    assert not runs.covers(0, 3, [], 4) and runs.covers(0, 6, [], 9)
    runs.keep_only({1})
    assert not runs.covers(0, 6, [], 9)


def test_statement_ranges():
    pytest.importorskip("faust")
    from streams.api.ledger_views import parse_date_range
    from streams.api.requests import InvalidRequest

    assert parse_date_range({"from": "2024-02-28", "to": "2024-03-01"}) == (
        date(2024, 2, 28), date(2024, 3, 1))
    assert parse_date_range({"from": "2024-01-01", "to": "2024-12-31"})  # 366 days
    for query, field, reason in (
            ({}, "from", "missing"),
            ({"from": "2024-01-01"}, "to", "missing"),
            ({"from": "20240101", "to": "2024-01-02"}, "from", "malformed"),
            ({"from": "2023-02-29", "to": "2024-01-02"}, "from", "malformed"),
            ({"from": "2024-01-01", "to": "2025-01-01"}, "to", "too_large"),
            ({"from": "2024-01-02", "to": "2024-01-01"}, "to", "out_of_range")):
        with pytest.raises(InvalidRequest) as caught:
            parse_date_range(query)
        assert (caught.value.field, caught.value.reason) == (field, reason), query


def test_openapi_repeats_the_statement_limit():
    from streams.api import openapi

    assert openapi.STATEMENT_DAYS_MAX == readmodels.STATEMENT_DAYS_MAX
    paths = openapi.openapi_document()["paths"]
    assert {"/v1/ledger/totals", "/v1/ledger/totals/local",
            "/v1/accounts/{account_id}/statements"} <= set(paths)


def test_alert_rules_are_mounted_and_name_real_metrics():
    import re
    from pathlib import Path

    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    from prometheus_client import REGISTRY

    import streams.metrics  # noqa: F401  (registers the metrics)

    repo = Path(__file__).resolve().parents[2]
    rules = yaml.safe_load((repo / "deploy/prometheus/alerts.yml").read_text())
    config = yaml.safe_load((repo / "deploy/prometheus/prometheus.yml").read_text())
    compose = yaml.safe_load((repo / "docker-compose.yml").read_text())
    assert "/etc/prometheus/alerts.yml" in config["rule_files"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in \
        compose["services"]["prometheus"]["volumes"]
    exported = {f.name + ("_total" if f.type == "counter" else "")
                for f in REGISTRY.collect()}
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert "ledger_invariant_ok" in alerts["LedgerMoneyInvariantBroken"]["expr"]
    assert "for" not in alerts["LedgerMoneyInvariantBroken"]  # at once: never a blip
    for rule in alerts.values():
        names = set(re.findall(r"ledger_[a-z_]+", rule["expr"]))
        assert names and names <= exported, rule
    dashboard = json.loads((repo / "deploy/grafana/dashboards/ledger.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for name in ("ledger_invariant_ok", "ledger_read_model_lag_events", "ledger_money_minor"):
        assert name in exprs


def test_register_is_a_no_op_when_switched_off():
    from streams.config import Settings

    class App:
        pass

    app = App()
    assert readmodels.register(app, Settings(read_models=False)) is None
    assert app.ledger_read_models is None


# --------------------------------------------------------------------------
# Measurements (opt-in: LEDGER_READ_MODEL_BENCH=1; prints, asserts little)
# --------------------------------------------------------------------------

BENCH_ACCOUNTS = 1_000
BENCH_COMMANDS = 20_000


def _cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _held_backlog(settings, commands):
    """Write the commands in one transaction left open (invisible to
    read_committed readers); returns the producer, whose commit releases them."""
    from streams.partitioner import partition_for

    producer = transactional_producer(settings, "bench")
    producer.begin_transaction()
    now = int(time.time() * 1000)
    for n, c in enumerate(commands):
        producer.produce(settings.commands_topic, codec.encode_command(c, now),
                         c.account_id.encode(),
                         partition=partition_for(c.account_id.encode(), settings.partitions))
        if n % 5000 == 0:
            producer.poll(0)
    producer.flush(60)
    return producer


def _bench_commands(rng):
    accounts = [f"b{i:04d}" for i in range(BENCH_ACCOUNTS)]
    commands = [domain.OpenAccount(f"o-{a}", a, "EUR", 10_000) for a in accounts]
    for n in range(BENCH_COMMANDS - len(commands)):
        a = rng.choice(accounts)
        cls = domain.Credit if rng.random() < 0.6 else domain.Debit
        commands.append(cls(f"c{n}", a, rng.randrange(1, 10_000), "EUR"))
    return commands


def _commands_done(worker) -> float:
    with urllib.request.urlopen(worker.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ledger_commands_total{"))


def _folded(worker) -> int:
    status, body = get(worker, "/v1/ledger/totals/local")
    return sum(v["records"] for v in body["partitions"].values()) if status == 200 else -1


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LEDGER_READ_MODEL_BENCH") != "1",
                    reason="measurement: set LEDGER_READ_MODEL_BENCH=1")
def test_measure_read_models(settings, workers, tmp_path, paced_sender):
    from confluent_kafka.admin import AdminClient

    from streams.topics import ensure_topics

    results = {}
    for label, enabled in (("without read models", False), ("with read models", True)):
        s = settings.with_(topic_prefix=f"{settings.topic_prefix}{int(enabled)}",
                           read_models=enabled, worker_id=f"bench{int(enabled)}",
                           data_dir=tmp_path / f"bench{int(enabled)}")
        ensure_topics(s)
        commands = _bench_commands(random.Random(5))
        producer = _held_backlog(s, commands)
        worker = workers.start(s)
        time.sleep(3)  # let startup settle (same for both)
        cpu0, t0 = _cpu_s(worker.process.pid), time.monotonic()
        producer.commit_transaction(60)
        wait_for(lambda: _commands_done(worker) >= len(commands), timeout_s=300,
                 what="backlog applied", every_s=0.2)
        t_core, cpu_core = time.monotonic() - t0, _cpu_s(worker.process.pid) - cpu0
        row = {"core_s": round(t_core, 2), "commands_per_s": round(len(commands) / t_core),
               "cpu_s_at_core_done": round(cpu_core, 2)}
        if enabled:
            wait_for(lambda: _folded(worker) >= len(commands), timeout_s=300,
                     what="read models caught up", every_s=0.2)
            t_rm, cpu_rm = time.monotonic() - t0, _cpu_s(worker.process.pid) - cpu0
            row.update(read_models_caught_up_s=round(t_rm, 2),
                       cpu_s_at_read_models_done=round(cpu_rm, 2))
        results[label] = row
        print(label, row)
        if not enabled:
            workers.stop(worker)
            continue
        # Refold everything from the event log alone (the core idle): a new
        # Faust group and no changelogs, as for a new read model.
        workers.stop(worker)
        admin = AdminClient(s.kafka())
        group = f"{s.topic_prefix}-faust"

        def group_deleted():
            # A static member stays until its session times out.
            try:
                admin.delete_consumer_groups([group])[group].result(30)
                return True
            except Exception as exc:
                return "NON_EMPTY_GROUP" not in str(exc) and "GROUP_ID_NOT_FOUND" in str(exc)

        wait_for(group_deleted, what="Faust group deleted", every_s=1)
        changelogs = [t for t in admin.list_topics(timeout=10).topics
                      if t.startswith(f"{s.topic_prefix}-faust-")]
        for future in admin.delete_topics(changelogs, operation_timeout=30).values():
            future.result()
        wait_for(lambda: not any(t.startswith(f"{s.topic_prefix}-faust-")
                                 for t in admin.list_topics(timeout=10).topics),
                 what="changelogs deleted")
        shutil.rmtree(s.data_dir / "faust")
        worker = workers.start(s)
        cpu0, t0 = _cpu_s(worker.process.pid), time.monotonic()
        wait_for(lambda: _folded(worker) >= len(commands), timeout_s=300,
                 what="refold from the log", every_s=0.2)
        t_refold, cpu_refold = time.monotonic() - t0, _cpu_s(worker.process.pid) - cpu0
        results["refold"] = {"s": round(t_refold, 2),
                             "records_per_s": round(len(commands) / t_refold),
                             "cpu_s": round(cpu_refold, 2)}
        print("refold from the log, core idle:", results["refold"])

        # Lag under an open-loop load at a fixed rate.
        rate, seconds = 1_000, 15
        load = [domain.Credit(f"l{n}", f"b{n % BENCH_ACCOUNTS:04d}", 1, "EUR")
                for n in range(rate * seconds)]
        base = _folded(worker)
        sender = paced_sender(s, load, rate)
        lags = []
        while sender.is_alive():
            lags.append(sum(metric(worker, "ledger_read_model_lag_events", model=m,
                                   partition=str(p)) or 0
                            for m in ("totals",) for p in range(s.partitions)))
            time.sleep(0.5)
        sender.join()
        sent_at = time.monotonic()
        wait_for(lambda: _folded(worker) >= base + len(load), timeout_s=300,
                 what="read models caught up after the load", every_s=0.1)
        lags.sort()
        results["lag_under_load"] = {
            "rate_per_s": rate, "samples": len(lags), "p50": lags[len(lags) // 2],
            "p95": lags[int(len(lags) * 0.95)], "max": lags[-1],
            "caught_up_s_after_last_send": round(time.monotonic() - sent_at, 2)}
        print("totals lag (offsets, all partitions) under load:", results["lag_under_load"])
    off, on = results["without read models"], results["with read models"]
    extra = on["cpu_s_at_read_models_done"] - off["cpu_s_at_core_done"]
    print(json.dumps(results, indent=2))
    print(f"extra worker CPU per command with read models: "
          f"{extra / BENCH_COMMANDS * 1e6:.0f} us "
          f"({off['cpu_s_at_core_done'] / BENCH_COMMANDS * 1e6:.0f} us without)")


def write_transaction(producer, topic: str, n: int, commit: bool) -> list[int]:
    """``n`` records to partition 0 of ``topic`` in one transaction, committed
    or aborted; their offsets."""
    delivered = []
    producer.begin_transaction()
    for i in range(n):
        producer.produce(topic, b"r%d" % i, b"k", partition=0,
                         on_delivery=lambda err, msg: delivered.append(msg.offset()))
    producer.flush(30)
    (producer.commit_transaction if commit else producer.abort_transaction)(30)
    return delivered


@pytest.mark.kafka
def test_faust_consumer_notes_markers_and_aborted_records_as_skipped(settings):
    """What lets a read-model batch skip its look at the log: aiokafka (the
    fetcher Faust's consumer uses, read_committed) notes, as it fetches,
    exactly the offsets that hold no committed record, across committed and
    aborted transactions; the records it yields and those runs together
    cover the whole log."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition

    assert readmodels._note_skipped_runs()
    readmodels.SKIPPED.topic = settings.events_topic
    producer = transactional_producer(settings, "runs")
    written = {"committed": [], "aborted": []}

    def write(n: int, commit: bool):
        written["committed" if commit else "aborted"] += write_transaction(
            producer, settings.events_topic, n, commit)

    for n, commit in ((3, True), (4, False), (1, True), (1, True), (2, False), (2, True)):
        write(n, commit)
    committed, aborted = written["committed"], written["aborted"]
    end = committed[-1] + 2  # the last commit marker is the log's last offset

    async def consume():
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers,
                                    isolation_level="read_committed",
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(settings.events_topic, 0)
            consumer.assign([tp])
            consumer.seek(tp, 0)
            got = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and \
                    not readmodels.SKIPPED.covers(0, 0, got, end):
                for records in (await consumer.getmany(tp, timeout_ms=500)).values():
                    got += [r.offset for r in records]
            return got
        finally:
            await consumer.stop()

    got = asyncio.run(consume())
    assert got == committed
    assert readmodels.SKIPPED.fetched[0] == committed[-1]  # the last record fetched
    assert readmodels.SKIPPED.covers(0, 0, got, end)
    for offset in committed:  # a committed record is never a skipped run
        assert not readmodels.SKIPPED.covers(0, 0, [o for o in got if o != offset], end)
    # 3 a marker, 4-7 aborted, 8 a marker: one run, from the first record's end
    assert committed[2] + 1 < aborted[0] < committed[3]
    assert readmodels.SKIPPED.covers(0, committed[2] + 1, [], committed[3])
    readmodels.SKIPPED.keep_only(set())


@pytest.mark.kafka
def test_the_log_reader_lists_what_faust_did_not_deliver(settings):
    """The check every read-model batch gets (streams/readmodels.LogReader):
    committed records in a range that were not delivered, whatever aborted
    transactions and markers lie between; and whether anything committed
    lies between a position and the log's end."""
    from streams.readmodels import LogReader

    producer = transactional_producer(settings, "reader")
    offsets = {"committed": [], "aborted": []}

    def write(n: int, commit: bool):
        offsets["committed" if commit else "aborted"] += write_transaction(
            producer, settings.events_topic, n, commit)

    write(3, True)
    write(4, False)
    write(2, True)
    committed = offsets["committed"]  # [0, 1, 2, 9, 10]: 3 a marker, 4-7 aborted, 8 a marker
    reader = LogReader(settings, f"{settings.topic_prefix}-faust")
    try:
        assert reader.committed(0) == 0  # the group has no offset: the log's start
        delivered = frozenset({committed[0], committed[4]})
        found = reader.missing({0: (committed[0], committed[4], delivered)})[0]
        assert sorted(found) == committed[1:4]
        assert found[committed[3]] == b"r0"
        assert reader.missing({0: (committed[0], committed[4], frozenset(committed))}) == {0: {}}
        end = committed[-1] + 2  # the last commit marker is the log's last offset
        assert reader.first_record(0, committed[2] + 1, end) == committed[3]
        assert reader.first_record(0, committed[4] + 1, end) is None
    finally:
        reader.close()
