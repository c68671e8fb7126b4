"""Commands per second applied end to end, exactly-once, on this machine.

    .venv/bin/python scripts/measure_throughput.py [--commands 50000] [--accounts 1000]

Uses KAFKA_BOOTSTRAP_SERVERS or starts the local broker. Fresh topics each
run. Two figures:

  backlog  N commands are in the commands topic before the worker starts;
           time from the worker owning its partitions to the last outcome
           visible to a read_committed consumer.
  online   N commands sent by a client while the worker runs; time from the
           first send to the last outcome visible.

One worker process (a Faust worker with the transactional core), the broker
and the load generator all share this machine's 2 cores.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ledger import domain  # noqa: E402
from streams.cli import _settings_with_local_broker, _wait_http  # noqa: E402
from streams.client import LedgerClient  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402


def load(n: int, accounts: int, rng: random.Random, tag: str) -> list:
    ids = [f"acct-{i}" for i in range(accounts)]
    out = [domain.OpenAccount(f"{tag}-open-{a}", a, "EUR", 10_000) for a in ids]
    while len(out) < n:
        kind = domain.Credit if rng.random() < 0.6 else domain.Debit
        out.append(kind(f"{tag}-{len(out)}", rng.choice(ids), rng.randrange(1, 5_000), "EUR"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=50_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--batch-size-max", type=int, default=1000)
    args = parser.parse_args()

    settings = _settings_with_local_broker(start=True).with_(
        topic_prefix=f"tput-{uuid.uuid4().hex[:8]}",
        data_dir=Path(tempfile.mkdtemp(prefix="ledger-tput-")),
        worker_id="tput-1", batch_size_max=args.batch_size_max)
    ensure_topics(settings)
    rng = random.Random(1)
    backlog = load(args.commands, args.accounts, rng, "b")

    with LedgerClient(settings) as client:
        t0 = time.monotonic()
        for c in backlog:
            client.send_nowait(c)
        client.flush(120)
        print(f"preloaded {len(backlog)} commands in {time.monotonic() - t0:.1f}s")

        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
               "LEDGER_TOPIC_PREFIX": settings.topic_prefix,
               "LEDGER_DATA_DIR": str(settings.data_dir), "LEDGER_WORKER_ID": "tput-1",
               "LEDGER_BATCH_SIZE_MAX": str(args.batch_size_max),
               "PYTHONPATH": str(REPO)}
        log = open(settings.data_dir / "worker.log", "w")
        worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker",
                                   "--loglevel", "warning"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
        try:
            _wait_http(f"http://{settings.web_host}:{settings.web_port}/v1/health", 120)
            t1 = time.monotonic()
            client.wait_for(backlog[-1].command_id, 600)
            backlog_s = time.monotonic() - t1
            print(f"backlog: {len(backlog)} commands applied in {backlog_s:.2f}s "
                  f"= {len(backlog) / backlog_s:,.0f} commands/s")

            online = load(args.commands, args.accounts, rng, "o")[args.accounts:]
            t2 = time.monotonic()
            for c in online:
                client.send_nowait(c)
            client.flush(120)
            client.wait_for(online[-1].command_id, 600)
            online_s = time.monotonic() - t2
            print(f"online:  {len(online)} commands sent and applied in {online_s:.2f}s "
                  f"= {len(online) / online_s:,.0f} commands/s")
        finally:
            worker.terminate()
            worker.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
