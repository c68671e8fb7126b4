"""The worker's per-command CPU without Kafka: decode, decide, fold, encode
and store writes of scripts/bench's credit/debit workload, in this process.

    .venv/bin/python scripts/bench_hotpath.py [--commands 30000] [--repeat 3] [--profile]

Each run decodes every command record (the opens first), applies it with
streams.processor.handle_command to a Batch of a fresh RocksDB partition
store, and applies the store every --batch-size commands, as the worker
does after each commit; it prints the process CPU µs per command. What it
leaves out is Kafka: consuming, producing, the transaction. Steadier than
scripts/bench (no broker, no other process), so a change to the hot path
can be compared run by run; scripts/bench remains the measure (issue 10).
--profile: cProfile of one more run, by self time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (scripts/: the workload of scripts/bench)

from schemas import codec  # noqa: E402
from streams import processor  # noqa: E402
from streams.store import Batch, PartitionStore  # noqa: E402


def run_once(records: list[bytes], batch_size: int, now_ms: int) -> float:
    """CPU µs per command of one pass over ``records`` into a fresh store."""
    with tempfile.TemporaryDirectory() as tmp:
        store = PartitionStore(Path(tmp) / "p0")
        started = time.process_time()
        for start in range(0, len(records), batch_size):
            batch = Batch(store)
            for raw in records[start:start + batch_size]:
                command, _issued = codec.decode_command(raw)
                processor.handle_command(batch, command, now_ms)
            store.apply(batch, start + batch_size)
            now_ms += 5
        spent = time.process_time() - started
        store.close()
    return spent / len(records) * 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=30_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)

    accounts = bench.account_ids(args.accounts)
    commands = (bench.opens(accounts, 10_000, "hot")
                + bench.credit_debits(args.commands, accounts, random.Random(args.seed), "hot"))
    records = [raw for _key, raw in bench.encode(commands)]
    now_ms = int(time.time() * 1000)
    runs = [run_once(records, args.batch_size, now_ms) for _ in range(args.repeat)]
    print(f"{len(records):,} commands, batches of {args.batch_size}: "
          f"{statistics.median(runs):.1f} CPU µs/command (median; runs "
          f"{' / '.join(f'{r:.1f}' for r in runs)})")
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(run_once, records, args.batch_size, now_ms)
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
