"""Holds placed and captured per second with one worker, and retry -> reply latency.

    .venv/bin/python scripts/bench_holds.py [--holds 10000] [--accounts 1000]
                                            [--workers 1] [--retries 200]

Fresh topics; KAFKA_BOOTSTRAP_SERVERS or the local broker (started if needed).

  throughput  N holds and then a capture of each (no destination: one step)
              are already in the commands topic when the worker starts; time
              from the worker ready to the last HoldCaptured visible
              (read_committed). Reported as holds placed and captured per
              second (2 commands each).
  retry       R commands already applied are sent again with wait=True, one
              at a time (a client retrying after a timeout): the time from the
              send to its reply ("duplicate": true), p50/p99/max.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from benchkit import EventWatcher, fresh_ledger, fund, p50_p99, start_workers, stop_workers

from ledger import domain
from streams.client import LedgerClient


class CaptureWatcher(EventWatcher):
    """Counts HoldCaptured records as they become visible."""

    def __init__(self, settings):
        self.captured = 0
        self.last_at = 0.0
        super().__init__(settings, self._note)

    def _note(self, record):
        if isinstance(record, domain.HoldCaptured):
            self.captured += 1
            self.last_at = time.monotonic()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holds", type=int, default=10_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--retries", type=int, default=200)
    args = parser.parse_args()
    rng = random.Random(11)
    settings, data_root = fresh_ledger("bho")
    ids = [f"acct-{i}" for i in range(args.accounts)]
    processes = []
    try:
        with LedgerClient(settings) as client:
            fund(client, ids)
            holds = [domain.PlaceHold(f"h-{n}", rng.choice(ids), rng.randrange(1, 1000), "EUR")
                     for n in range(args.holds)]
            for h in holds:
                client.send_nowait(h)
            for h in holds:
                client.send_nowait(domain.CaptureHold(f"k-{h.command_id}", h.account_id,
                                                      h.command_id))
            client.flush(120)
            watcher = CaptureWatcher(settings)
            processes = start_workers(settings, data_root, args.workers, "bho")
            started = time.monotonic()
            while watcher.captured < args.holds:
                time.sleep(0.05)
            elapsed = watcher.last_at - started
            watcher.close()
            print(f"throughput: {args.holds:,} holds placed and captured ({2 * args.holds:,} "
                  f"commands) in {elapsed:.2f}s = {args.holds / elapsed:,.0f} holds/s "
                  f"({2 * args.holds / elapsed:,.0f} commands/s) with {args.workers} "
                  f"worker(s)")

            took = []
            for h in rng.sample(holds, min(args.retries, len(holds))):
                sent = time.monotonic()
                outcome = client.send(h, wait=True, timeout_s=30)
                took.append((time.monotonic() - sent) * 1000)
                assert outcome.duplicate and outcome.status == "applied", outcome
        p50, p99 = p50_p99(took)
        print(f"retry -> reply: {len(took)} retries of applied holds, one at a time: "
              f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(took):.1f} ms")
    finally:
        stop_workers(processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
