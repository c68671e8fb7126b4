"""Transfers completed per second (both legs), and submit-to-completed latency.

    .venv/bin/python scripts/bench_transfers.py [--transfers 20000] [--accounts 1000]
                                                [--workers 1] [--rate 300] [--seconds 20]

Fresh topics; KAFKA_BOOTSTRAP_SERVERS or the local broker (started if needed).

  throughput  N transfers among funded accounts (all partitions) are already in
              the commands topic when the workers start; time from all workers
              ready to the last TransferCompleted visible (read_committed).
  latency     an open-loop sender submits transfers at a fixed rate (never
              waiting for outcomes); for each, the time from submit to its
              TransferCompleted visible to a read_committed consumer: p50/p99.

A transfer is three steps, each its own transaction: debit at the source,
credit leg at the destination, settle leg back at the source.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from benchkit import EventWatcher, fresh_ledger, fund, p50_p99, start_workers, stop_workers

from ledger import domain
from streams.client import LedgerClient


class CompletionWatcher(EventWatcher):
    """Records when each transfer's TransferCompleted becomes visible."""

    def __init__(self, settings):
        self.completed: dict[str, float] = {}
        super().__init__(settings, self._note)

    def _note(self, record):
        if isinstance(record, domain.TransferCompleted):
            self.completed[record.transfer_id] = time.monotonic()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transfers", type=int, default=20_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rate", type=int, default=300, help="latency run: transfers/s")
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    rng = random.Random(3)
    settings, data_root = fresh_ledger("btr")
    ids = [f"acct-{i}" for i in range(args.accounts)]
    processes = []
    try:
        with LedgerClient(settings) as client:
            fund(client, ids)
            batch = [domain.Transfer(f"bt-{n}", *rng.sample(ids, 2), rng.randrange(1, 1000),
                                     "EUR") for n in range(args.transfers)]
            for t in batch:
                client.send_nowait(t)
            client.flush(120)
            watcher = CompletionWatcher(settings)
            processes = start_workers(settings, data_root, args.workers, "btr")
            started = time.monotonic()
            wanted = {t.command_id for t in batch}
            while not wanted <= watcher.completed.keys():
                time.sleep(0.05)
            elapsed = time.monotonic() - started
            print(f"throughput: {args.transfers:,} transfers completed (3 steps each) in "
                  f"{elapsed:.1f}s = {args.transfers / elapsed:,.0f} transfers/s "
                  f"with {args.workers} worker(s)")

            submitted: dict[str, float] = {}
            interval = 1 / args.rate
            next_at = time.monotonic()
            end = next_at + args.seconds
            n = 0
            while next_at < end:  # open loop: the clock decides, not the outcomes
                now = time.monotonic()
                if now < next_at:
                    time.sleep(next_at - now)
                t = domain.Transfer(f"lt-{n}", *rng.sample(ids, 2), rng.randrange(1, 1000), "EUR")
                submitted[t.command_id] = time.monotonic()
                client.send_nowait(t)
                n += 1
                next_at += interval
            client.flush(60)
            deadline = time.monotonic() + 120
            while not submitted.keys() <= watcher.completed.keys() and time.monotonic() < deadline:
                time.sleep(0.05)
            watcher.close()
        latencies = [(watcher.completed[k] - v) * 1000 for k, v in submitted.items()
                     if k in watcher.completed]
        p50, p99 = p50_p99(latencies)
        print(f"latency at {args.rate}/s open loop for {args.seconds:.0f}s "
              f"({len(latencies):,} of {len(submitted):,} completed): "
              f"p50 {p50:.0f} ms, p99 {p99:.0f} ms submit -> completed")
    finally:
        stop_workers(processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
