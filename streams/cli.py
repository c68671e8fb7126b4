"""The ``ledger`` command.

    ledger kafka install|start|stop|status   the local single-node broker
    ledger topics                            create the ledger topics
    ledger worker                            run a Faust worker (the core + HTTP)
    ledger send credit ACCOUNT --amount N   send one command (--wait for its outcome)
    ledger events [--account ID]             print the committed event log as JSON lines
    ledger replay --as-of T --out FILE       every account as of T (JSON lines)
    ledger verify                            invariants of the log + live RocksDB state
    ledger snapshot [--every S]              write a ledger-wide snapshot
    ledger demo                              all of the above, end to end

Settings come from the environment (see ``streams.config`` and README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

from streams.config import Settings
from streams.eventlog import read_log


def _settings_with_local_broker(start: bool) -> Settings:
    """Settings; without KAFKA_BOOTSTRAP_SERVERS, point at (and maybe start) the local broker."""
    settings = Settings.from_env()
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return settings
    from streams import localkafka

    if settings.leg_key_file is None and settings.leg_auth:
        # The local development broker gets a development leg key beside it;
        # any other cluster needs LEDGER_LEG_KEY_FILE set on purpose.
        settings = settings.with_(leg_key_file=_dev_leg_key(localkafka.default_cache_dir()))
    run_dir = localkafka.default_cache_dir() / "broker"
    broker = localkafka.status(run_dir)
    if broker is None and start:
        broker = localkafka.start_broker(run_dir, port=9092,
                                         controller_port=9093)
    if broker is not None:
        settings = settings.with_(bootstrap_servers=broker.bootstrap)
    return settings


def _dev_leg_key(cache_dir: Path) -> Path:
    from streams import legauth

    path = cache_dir / "leg.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(legauth.new_key() + "\n")
    return path


def cmd_keygen(args) -> int:
    from streams import legauth

    print(legauth.new_key())
    return 0


def cmd_topics(args) -> int:
    from streams.topics import ClusterUnreachable, TopicMismatch, ensure_topics, topic_specs

    settings = _settings_with_local_broker(start=False).with_(create_topics=True)
    if args.replication_factor:
        settings = settings.with_(replication_factor=args.replication_factor)
    if args.min_insync_replicas:
        settings = settings.with_(min_insync_replicas=args.min_insync_replicas)
    try:
        ensure_topics(settings)
    except (TopicMismatch, ClusterUnreachable) as exc:
        print(f"ledger topics: {exc}", file=sys.stderr)
        return 2
    for spec in topic_specs(settings):
        print(f"{spec.name}: {spec.partitions} partitions, key {spec.key}")
    return 0


def cmd_worker(args) -> int:
    from streams.app import run_worker
    from streams.topics import ensure_topics

    from streams.legauth import LegKeyError
    from streams.topics import ClusterUnreachable, TopicMismatch

    settings = _settings_with_local_broker(start=False)
    try:
        settings.leg_auth_keys()
        ensure_topics(settings)
    except (LegKeyError, TopicMismatch, ClusterUnreachable) as exc:
        print(f"ledger worker: {exc}", file=sys.stderr)
        return 2
    sys.argv = [sys.argv[0], "worker"]  # faust.Worker parses argv itself
    run_worker(settings, loglevel=args.loglevel)
    return 0


def cmd_send(args) -> int:
    from ledger import domain
    from streams.client import LedgerClient

    settings = _settings_with_local_broker(start=False)
    cid = args.command_id or None
    if args.type == "open":
        command = domain.OpenAccount(cid, args.account_id, args.currency, args.overdraft_limit)
    elif args.type == "credit":
        command = domain.Credit(cid, args.account_id, args.amount, args.currency)
    elif args.type == "debit":
        command = domain.Debit(cid, args.account_id, args.amount, args.currency)
    else:
        command = domain.CloseAccount(cid, args.account_id)
    if command.command_id is None:
        import uuid

        command = type(command)(**{**asdict(command), "command_id": str(uuid.uuid4())})
    with LedgerClient(settings, watch_outcomes=args.wait) as client:
        result = client.send(command, wait=args.wait, timeout_s=args.timeout)
    if args.wait:
        print(json.dumps(_outcome_json(result)))
        return 0 if result.status == "applied" else 3
    print(json.dumps({"command_id": result, "status": "accepted"}))
    return 0


def _outcome_json(outcome) -> dict:
    return {"command_id": outcome.command_id, "status": outcome.status,
            "reason": outcome.reason,
            "events": [{"type": e.type, **asdict(e)} for e in outcome.events]}


def cmd_events(args) -> int:
    settings = _settings_with_local_broker(start=False)
    for partition, offset, record in read_log(settings):
        if args.account and record.account_id != args.account:
            continue
        print(json.dumps({"partition": partition, "offset": offset, "type": record.type,
                          **asdict(record)}))
    return 0


def cmd_replay(args) -> int:
    from streams.api.requests import InvalidRequest, parse_instant
    from streams import replay

    settings = _settings_with_local_broker(start=False)
    try:
        as_of_ms = parse_instant("--as-of", args.as_of) if args.as_of else None
    except InvalidRequest as exc:
        print(f"ledger replay: {exc.message}", file=sys.stderr)
        return 2
    started = time.monotonic()
    ledger = replay.rebuild(settings, as_of_ms, use_snapshots=not args.from_scratch)
    count = replay.write_accounts(ledger, Path(args.out))
    print(f"wrote {count} accounts as of {args.as_of or 'now'} to {args.out} "
          f"in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


def cmd_verify(args) -> int:
    from streams import replay

    settings = _settings_with_local_broker(start=False)
    data_dir = None if args.no_store else Path(args.data_dir or settings.data_dir)
    if args.pending_max_s < 0:
        print("ledger verify: --pending-max-s must not be negative", file=sys.stderr)
        return 2
    return replay.verify(settings, data_dir, pending_max_s=args.pending_max_s)


def cmd_snapshot(args) -> int:
    from streams import replay

    settings = _settings_with_local_broker(start=False)
    while True:
        path = replay.take_snapshot(settings)
        print(f"snapshot written: {path}")
        if not args.every:
            return 0
        time.sleep(args.every)


def cmd_kafka(args) -> int:
    from streams import localkafka

    return localkafka.main(args.rest) or 0


def _wait_http(url: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body = json.loads(response.read())
                if body.get("caught_up"):
                    return body
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready after {timeout_s}s")
        time.sleep(0.3)


def cmd_demo(args) -> int:
    """Start broker (unless KAFKA_BOOTSTRAP_SERVERS), topics and a worker; run a story."""
    import uuid

    from streams.client import LedgerClient
    from streams.topics import ensure_topics

    settings = _settings_with_local_broker(start=True)
    if not os.environ.get("LEDGER_TOPIC_PREFIX"):
        # A fresh ledger per demo run, so its output is the same every time.
        settings = settings.with_(topic_prefix=f"demo-{uuid.uuid4().hex[:8]}")
    data_dir = Path(tempfile.mkdtemp(prefix="ledger-demo-"))
    settings = settings.with_(data_dir=data_dir, worker_id="demo-1")
    print(f"kafka: {settings.bootstrap_servers}; topics: {settings.topic_prefix}.*")
    ensure_topics(settings)
    env = {**os.environ, **settings.to_env()}
    log_path = data_dir / "worker.log"
    with open(log_path, "w") as log_file:
        worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env,
                                  stdout=log_file, stderr=subprocess.STDOUT)
    try:
        print(f"worker pid {worker.pid}, log {log_path}; waiting for it to own its partitions")
        _wait_http(f"http://{settings.web_host}:{settings.web_port}/v1/health", 90)
        story = [
            ("open alice (EUR)", lambda c: c.open_account("alice", "EUR", wait=True)),
            ("open bob (EUR, overdraft 50.00)",
             lambda c: c.open_account("bob", "EUR", 50_00, wait=True)),
            ("credit alice 100.00", lambda c: c.credit("alice", 100_00, "EUR", wait=True)),
            ("debit alice 30.00", lambda c: c.debit("alice", 30_00, "EUR", wait=True)),
            ("debit bob 80.00 (overdraft is 50.00)",
             lambda c: c.debit("bob", 80_00, "EUR", wait=True)),
            ("credit alice 5.00 in USD", lambda c: c.credit("alice", 5_00, "USD", wait=True)),
        ]
        with LedgerClient(settings) as client:
            for title, step in story:
                outcome = step(client)
                verdict = outcome.status if outcome.reason is None else \
                    f"{outcome.status}: {outcome.reason}"
                print(f"  {title:<40} -> {verdict}")
        print("balances (GET /v1/accounts/{id}):")
        for account_id in ("alice", "bob"):
            url = f"http://{settings.web_host}:{settings.web_port}/v1/accounts/{account_id}"
            with urllib.request.urlopen(url, timeout=5) as response:
                print("  " + response.read().decode())
        print("event log (read_committed):")
        for partition, offset, record in read_log(settings):
            fields = {k: v for k, v in asdict(record).items() if k != "account_id"}
            print(f"  p{partition}@{offset} {record.account_id:<6} {record.type:<17} {fields}")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
    print("demo done; the broker keeps running (`ledger kafka stop` stops it)")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["kafka"]:
        # Its own parser, options and --help (streams/localkafka.py).
        from streams import localkafka

        return localkafka.main(argv[1:]) or 0
    parser = argparse.ArgumentParser(prog="ledger", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("kafka", help="install/start/stop/status of the local broker")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_kafka)

    p = sub.add_parser("keygen", help="print a new secret for LEDGER_LEG_KEY_FILE")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("topics", help="create (or check) the ledger topics")
    p.add_argument("--replication-factor", type=int,
                   help="for new topics (default: min(3, brokers))")
    p.add_argument("--min-insync-replicas", type=int,
                   help="for new topics (default: replication factor - 1, at least 1)")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("worker", help="run a worker (transactional core + HTTP)")
    p.add_argument("--loglevel", default="info")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("send", help="send one command")
    p.add_argument("type", choices=["open", "credit", "debit", "close"])
    p.add_argument("account_id")
    p.add_argument("--amount", type=int, default=0,
                   help="minor units (cents), an integer")
    p.add_argument("--currency", default="EUR")
    p.add_argument("--overdraft-limit", type=int, default=0)
    p.add_argument("--command-id", help="idempotency key (default: a new UUID)")
    p.add_argument("--wait", action="store_true", help="wait for and print the outcome")
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("events", help="print the committed event log")
    p.add_argument("--account")
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("replay", help="rebuild every account as of a moment, as JSON lines")
    p.add_argument("--as-of", help="RFC 3339 or epoch ms (default: now)")
    p.add_argument("--out", required=True, help="output file (JSON lines, sorted by account)")
    p.add_argument("--from-scratch", action="store_true",
                   help="ignore ledger-wide snapshots; read the log from offset 0")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("verify", help="check the log's invariants and the live RocksDB state")
    p.add_argument("--data-dir", help="worker data dir to compare (default LEDGER_DATA_DIR)")
    p.add_argument("--no-store", action="store_true", help="check the log only")
    p.add_argument("--pending-max-s", type=float, default=300.0,
                   help="report a transfer debited this many seconds before the log's "
                        "newest event and still neither completed nor refunded "
                        "(default 300)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("snapshot", help="write a ledger-wide snapshot (LEDGER_SNAPSHOT_DIR)")
    p.add_argument("--every", type=float, default=0,
                   help="keep running, one snapshot every this many seconds")
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("demo", help="start everything locally and run a short story")
    p.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
