"""Recovery speed on a big log: a worker's catch-up and ``ledger replay --from-scratch``.

    .venv/bin/python scripts/bench_recovery.py [--events N] [--accounts A] [--repeat R]
        [--only catch-up|replay|takeover] [--tail N] [--profile DIR]

Writes a log of N events (account opens, then credits and debits decided by
the domain, so verify would pass) straight to a fresh ledger's event-log
topic, in transactions of 5,000 records, on a broker started here (or on
$KAFKA_BOOTSTRAP_SERVERS). Then, R times alternating:

- **catch-up**: an idle :class:`streams.processor.Processor` catches fresh,
  empty stores of every partition up from the log (what a worker taking the
  partitions over does before it handles a command);
- **replay**: ``replay.rebuild(settings, use_snapshots=False)``, what
  ``ledger replay --from-scratch`` runs;
- **takeover** (only with ``--only takeover``): the catch-up of a worker
  that finds store checkpoints (streams/checkpoints.py) written ``--tail``
  records per partition before the log's end.

Prints events/s of each run and the medians as one JSON line at the end.
``--profile DIR`` also writes a cProfile of each run there and prints its
top functions. Issue 10's targets: catch-up >= 100,000 events/s, replay
>= 200,000 events/s. Everything it starts (the broker) is stopped by pid.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import json
import os
import pstats
import random
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from confluent_kafka import Producer  # noqa: E402

from ledger import domain  # noqa: E402
from schemas import codec  # noqa: E402
from streams import processor, replay  # noqa: E402
from streams.config import Settings  # noqa: E402
from streams.partitioner import partition_for  # noqa: E402
from streams.store import open_store  # noqa: E402
from streams.topics import ensure_topics, topic_id as topic_id_of  # noqa: E402

TRANSACTION_RECORDS = 5_000


def write_log(settings: Settings, events: int, accounts: int, seed: int) -> int:
    """Write about ``events`` outcome records; returns how many were written."""
    rng = random.Random(seed)
    producer = Producer(settings.kafka(**{
        "transactional.id": f"{settings.topic_prefix}-bench-recovery",
        "linger.ms": 20, "batch.size": 1_000_000,
    }))
    producer.init_transactions()
    states: dict[str, domain.AccountState | None] = {}
    ids = [f"acct-{i:05d}" for i in range(accounts)]
    now = int(time.time() * 1000) - 10_000_000
    written = in_txn = 0
    producer.begin_transaction()

    def put(command) -> None:
        nonlocal written, in_txn, now
        now += 1
        result = domain.decide(states.get(command.account_id), command, now)
        digest = domain.command_hash(command)
        records = [domain.rejected(command, result, now)] \
            if isinstance(result, domain.Rejection) else list(result)
        for record in records:
            if not isinstance(record, domain.CommandRejected):
                states[command.account_id] = domain.evolve(states.get(command.account_id),
                                                           record)
            key = command.account_id.encode()
            while True:
                try:
                    producer.produce(settings.events_topic, codec.encode_outcome(record, digest),
                                     key, partition=partition_for(key, settings.partitions))
                    break
                except BufferError:
                    producer.poll(0.05)
            written += 1
            in_txn += 1

    for account_id in ids:
        put(domain.OpenAccount(f"open-{account_id}", account_id, "EUR", 10_000))
    while written < events:
        account_id = rng.choice(ids)
        kind = domain.Credit if rng.random() < 0.6 else domain.Debit
        put(kind(uuid.UUID(int=rng.getrandbits(128)).hex, account_id,
                 rng.randint(1, 5_000), "EUR"))
        if in_txn >= TRANSACTION_RECORDS:
            producer.commit_transaction()
            producer.begin_transaction()
            in_txn = 0
    producer.commit_transaction()
    producer.flush(60)
    return written


def log_size(settings: Settings) -> int:
    """Records on the event-log topic (ends minus starts; commit markers included)."""
    from confluent_kafka import Consumer

    from streams.topics import watermarks
    consumer = Consumer(settings.kafka(**{"group.id": f"{settings.topic_prefix}-size"}))
    try:
        return sum(high - low for low, high in (
            watermarks(consumer, settings.events_topic, p) for p in range(settings.partitions)))
    finally:
        consumer.close()


def run_catch_up(settings: Settings, data_dir: Path) -> None:
    shutil.rmtree(data_dir, ignore_errors=True)
    proc = processor.Processor(settings.with_(data_dir=data_dir))
    try:
        for p in range(settings.partitions):
            proc._stores[p] = open_store(proc.settings, p)
        proc._catch_up(list(range(settings.partitions)))
    finally:
        proc._close()


def prepare_takeover(settings: Settings, data_dir: Path, tail: int) -> int:
    """Fold each partition's log but its last ``tail`` records into a store
    and leave a checkpoint of it (streams/checkpoints.py): the newest
    checkpoint a takeover finds when the owner wrote its last one ``tail``
    records ago. Returns the records the checkpoints hold."""
    from streams import checkpoints
    from streams.eventlog import CommittedLog

    shutil.rmtree(data_dir, ignore_errors=True)
    settings = settings.with_(data_dir=data_dir)
    partitions = list(range(settings.partitions))
    stores = {p: open_store(settings, p) for p in partitions}
    reader = CommittedLog(settings, f"{settings.topic_prefix}-prepare")
    topic_id = functools.partial(topic_id_of, settings, settings.events_topic)
    writer = checkpoints.Writer(settings.with_(checkpoint_every=1), topic_id)
    try:
        ends = {p: max(0, end - tail) for p, (_s, end) in reader.log_bounds(partitions).items()}
        processor.fold_log(settings, reader, stores, {p: 0 for p in partitions}, ends,
                           threading.Event())
        held = 0
        for p, store in stores.items():
            held += store.events_offset
            writer.after_apply(p, store, store.events_offset)
    finally:
        writer.close(timeout_s=3600)
        reader.close()
        for store in stores.values():
            store.close()
    shutil.rmtree(data_dir, ignore_errors=True)
    return held


def run_replay(settings: Settings, _data_dir: Path) -> None:
    replay.rebuild(settings, None, use_snapshots=False, progress=False)


def _cpu_s() -> float:
    """CPU seconds of this process and of its children that have exited."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(name: str, run, settings: Settings, data_dir: Path, events: int,
          profile_dir: Path | None, index: int) -> float:
    profiler = cProfile.Profile() if profile_dir else None
    started, cpu = time.perf_counter(), _cpu_s()
    if profiler:
        profiler.enable()
    run(settings, data_dir)
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - started
    cpu = _cpu_s() - cpu
    rate = events / seconds
    # CPU time (this process, librdkafka's threads included, and catch-up
    # helpers) is steadier than wall time on a shared machine: events per CPU
    # second is quoted too.
    print(f"{name} #{index}: {events:,} events in {seconds:.2f} s = {rate:,.0f} events/s; "
          f"{cpu:.2f} s CPU = {events / cpu:,.0f} events per CPU s, load "
          f"{os.getloadavg()[0]:.1f}{' (profiled)' if profiler else ''}", flush=True)
    if profiler:
        path = profile_dir / f"{name}-{index}.prof"
        profiler.dump_stats(path)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        print(out.getvalue(), flush=True)
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=250_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("catch-up", "replay", "takeover"), default=None,
                        help="takeover: a catch-up that starts from store checkpoints "
                             "(LEDGER_CHECKPOINT_DIR) written --tail records before the end")
    parser.add_argument("--tail", type=int, default=Settings.checkpoint_every,
                        help="records per partition after the checkpoints (takeover)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="write a cProfile of each run to this folder and print its top")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--prefix", default=None,
                        help="reuse the log of an earlier run with this topic prefix "
                             "(--keep printed it) instead of writing one")
    parser.add_argument("--catch-up-processes", type=int, default=Settings.catch_up_processes,
                        help="processes a catch-up may use (LEDGER_CATCH_UP_PROCESSES; "
                             "0: one per core, 1: the worker alone)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the topics for a later --prefix run")
    args = parser.parse_args()

    from streams import localkafka

    tmp = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    broker = settings = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    try:
        if not bootstrap:
            localkafka.ensure_jars()
            broker = localkafka.start_broker(tmp / "kafka")
            bootstrap = broker.bootstrap
        settings = Settings(bootstrap_servers=bootstrap,
                            topic_prefix=args.prefix or f"rec{uuid.uuid4().hex[:10]}",
                            partitions=args.partitions, worker_id="w1",
                            data_dir=tmp / "data", snapshot_root=tmp / "snapshots",
                            leg_key_file=tmp / "leg.key",
                            catch_up_processes=args.catch_up_processes)
        from streams import legauth
        (tmp / "leg.key").write_text(legauth.new_key() + "\n")
        ensure_topics(settings)
        if args.prefix:
            events = log_size(settings)
            print(f"reusing {settings.events_topic}: {events:,} records", flush=True)
        else:
            started = time.perf_counter()
            events = write_log(settings, args.events, args.accounts, args.seed)
            print(f"wrote {events:,} events in {time.perf_counter() - started:.1f} s to "
                  f"prefix {settings.topic_prefix}", flush=True)
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
        runs = [(n, f) for n, f in (("catch-up", run_catch_up), ("replay", run_replay),
                                    ("takeover", run_catch_up))
                if args.only == n or args.only is None and n != "takeover"]
        if args.only == "takeover":
            settings = settings.with_(checkpoint_root=tmp / "checkpoints")
            started = time.perf_counter()
            held = prepare_takeover(settings, tmp / "data", args.tail)
            print(f"checkpoints of {held:,} records written in "
                  f"{time.perf_counter() - started:.1f} s: the takeover folds "
                  f"{events - held:,}", flush=True)
        rates: dict[str, list[float]] = {n: [] for n, _f in runs}
        for i in range(args.repeat):
            for name, run in runs:
                rates[name].append(timed(name, run, settings, tmp / "data", events,
                                         args.profile, i + 1))
        print(json.dumps({"events": events, **{
            f"{n}_events_per_s": round(statistics.median(r)) for n, r in rates.items()},
            "runs": {n: [round(x) for x in r] for n, r in rates.items()}}))
    finally:
        if not args.keep and settings is not None:
            from tests.conftest import delete_topics
            delete_topics(settings)
        if broker is not None:
            localkafka.stop_broker(broker)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
