"""As-of query latency for accounts with 1,000 / 100,000 / 1,000,000 events, and replay speed.

    .venv/bin/python scripts/bench_asof.py [--sizes 1000,100000,1000000] [--queries 1000]

1. Builds one account per size in real partition stores (RocksDB), through
   the same code path the worker uses to fold events (streams.processor),
   then times ``version_at`` + ``state_at_version`` (what the HTTP view does)
   for random instants T over the account's history: p50/p99 in-process.
2. Starts a real worker on that data dir (fresh topics, so nothing to catch
   up) and times ``GET /v1/accounts/{id}?as_of=T`` over HTTP: p50/p99.
3. Writes the generated events to the event log and times ``ledger replay``
   (streams.replay.rebuild, read_committed) from scratch: events/s.

Uses KAFKA_BOOTSTRAP_SERVERS or the local broker (started if needed). Prints a
table and writes JSON to bench/results/asof-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from confluent_kafka import Producer  # noqa: E402

from ledger import domain  # noqa: E402
from streams import replay  # noqa: E402
from streams.cli import _settings_with_local_broker, _wait_http  # noqa: E402
from streams.partitioner import partition_for  # noqa: E402
from streams.processor import handle_command  # noqa: E402
from streams.store import Batch, PartitionStore, store_path  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402

FLUSH_EVERY = 20_000


def build_account(store: PartitionStore, account_id: str, events: int, rng) -> list[int]:
    """Fold ``events`` events into the store; return each event's recorded_at_ms."""
    t = 1_700_000_000_000
    times = []
    batch = Batch(store)
    handle_command(batch, domain.OpenAccount(f"{account_id}-open", account_id, "EUR", 10**9), t)
    times.append(t)
    for n in range(1, events):
        t += rng.randrange(0, 3)  # several events can share a millisecond
        kind = domain.Credit if rng.random() < 0.55 else domain.Debit
        handle_command(batch, kind(f"{account_id}-{n}", account_id, rng.randrange(1, 1000),
                                   "EUR"), t)
        times.append(t)
        if n % FLUSH_EVERY == 0:
            store.apply(batch, 0)
            batch = Batch(store)
            print(f"\r  {account_id}: {n:,}/{events:,} events", end="", file=sys.stderr)
    store.apply(batch, 0)
    print(f"\r  {account_id}: {events:,} events built      ", file=sys.stderr)
    return times


def percentiles(samples_s: list[float]) -> dict:
    ordered = sorted(samples_s)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 4),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 4),
            "n": len(ordered)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--replay-max-events", type=int, default=200_000,
                        help="events written to the log for the replay timing")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = random.Random(42)

    settings = _settings_with_local_broker(start=True).with_(
        topic_prefix=f"asof-{uuid.uuid4().hex[:8]}",
        data_dir=Path(tempfile.mkdtemp(prefix="ledger-asof-")), worker_id="asof-1")
    ensure_topics(settings)
    accounts = {}
    print("building accounts (RocksDB, through the worker's fold code):", file=sys.stderr)
    for size in sizes:
        account_id = f"acct-{size}"
        p = partition_for(account_id.encode(), settings.partitions)
        store = PartitionStore(store_path(settings, p))
        accounts[account_id] = (p, build_account(store, account_id, size, rng))
        store.close()

    results = {"sizes": sizes, "queries": args.queries, "in_process": {}, "http": {}}
    for account_id, (p, times) in accounts.items():
        store = PartitionStore(store_path(settings, p), read_only=True)
        samples = []
        for _ in range(args.queries):
            t = rng.randrange(times[0], times[-1] + 1)
            started = time.perf_counter()
            state = store.state_at_version(account_id, store.version_at(account_id, t))
            samples.append(time.perf_counter() - started)
            assert state is not None and state.updated_at_ms <= t
        store.close()
        results["in_process"][account_id] = percentiles(samples)

    env = {**os.environ, "PYTHONPATH": str(REPO), **settings.to_env()}
    with open(settings.data_dir / "worker.log", "w") as log_file:
        worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--loglevel",
                                   "warning"], env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        base = f"http://{settings.web_host}:{settings.web_port}"
        _wait_http(base + "/v1/health", 120)
        for account_id, (_p, times) in accounts.items():
            samples = []
            for _ in range(args.queries):
                t = rng.randrange(times[0], times[-1] + 1)
                started = time.perf_counter()
                with urllib.request.urlopen(f"{base}/v1/accounts/{account_id}?as_of={t}",
                                            timeout=10) as response:
                    response.read()
                samples.append(time.perf_counter() - started)
            results["http"][account_id] = percentiles(samples)
    finally:
        worker.terminate()
        worker.wait(30)

    # Replay speed: the accounts' events (up to a cap) into the log, then rebuild.
    producer = Producer(settings.kafka(**{"linger.ms": 20, "enable.idempotence": True}))
    written = 0
    for account_id, (p, _times) in accounts.items():
        store = PartitionStore(store_path(settings, p), read_only=True)
        for raw in store.history(account_id):
            if written >= args.replay_max_events:
                break
            while True:
                try:
                    producer.produce(settings.events_topic, raw, account_id.encode(), partition=p)
                    break
                except BufferError:
                    producer.poll(0.05)
            written += 1
        store.close()
    producer.flush(120)
    started = time.perf_counter()
    ledger = replay.rebuild(settings, use_snapshots=False, progress=False)
    elapsed = time.perf_counter() - started
    results["replay"] = {"events": written, "seconds": round(elapsed, 2),
                         "events_per_s": round(written / elapsed)}
    assert sum(s.version for s in ledger.accounts.values()) == written

    first, last = f"acct-{sizes[0]}", f"acct-{sizes[-1]}"
    ratio = results["http"][last]["p99_ms"] / results["http"][first]["p99_ms"]
    results["http_p99_growth"] = round(ratio, 2)
    print(f"\n{'events':>10} | {'in-process p50':>14} {'p99':>8} | {'HTTP p50':>9} {'p99':>8}")
    for account_id in accounts:
        a, h = results["in_process"][account_id], results["http"][account_id]
        print(f"{account_id.split('-')[1]:>10} | {a['p50_ms']:>11.3f} ms {a['p99_ms']:>5.3f} ms"
              f" | {h['p50_ms']:>6.2f} ms {h['p99_ms']:>5.2f} ms")
    print(f"HTTP p99 growth {sizes[0]:,} -> {sizes[-1]:,} events: {ratio:.2f}x")
    print(f"replay from scratch: {written:,} events in {elapsed:.2f}s = "
          f"{written / elapsed:,.0f} events/s")
    out = REPO / "bench" / "results" / f"asof-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
