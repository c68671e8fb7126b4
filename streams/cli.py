"""The ledger command.

    ledger kafka install|start|stop|status   the local single-node broker
    ledger topics                            create the ledger topics
    ledger worker                            run a Faust worker (the core + HTTP)
    ledger send TYPE ACCOUNT [...]           send one command (--wait for its outcome):
                                             open, credit, debit, transfer, close,
                                             hold, capture, release
    ledger events [--account ID]             print the committed event log as JSON lines
    ledger replay --as-of T --out FILE       every account as of T (JSON lines)
    ledger verify                            invariants of the log + live RocksDB state
    ledger snapshot [--every S]              write a ledger-wide snapshot
    ledger statement ACCOUNT --month YYYY-MM an account's daily statements (CSV or JSON)
    ledger demo                              all of the above, end to end

Settings come from the environment (streams/config.py; README.md lists them).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

from streams.config import Settings, given
from streams.eventlog import read_log


def _settings_with_local_broker(start: bool) -> Settings:
    """Settings; without KAFKA_BOOTSTRAP_SERVERS, point at (and maybe start) the local broker."""
    settings = Settings.from_env()
    if given("KAFKA_BOOTSTRAP_SERVERS"):
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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a whole number of at least 1: {text!r}")
    return value


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
    if args.processes > 1:
        from streams.processes import run_processes

        return run_processes(settings, args.processes, args.loglevel)
    sys.argv = [sys.argv[0], "worker"]  # faust.Worker parses argv itself
    run_worker(settings, loglevel=args.loglevel)
    return 0


# The CLI's short names for two command types; every other name is the
# command type itself (streams.api.models.COMMAND_MODELS, one per domain type).
_SEND_ALIASES = {"open": "open_account", "close": "close_account"}
EXIT_APPLIED, EXIT_ERROR, EXIT_USAGE, EXIT_REJECTED = 0, 1, 2, 3
# The option that carries each field of a command's model (streams.api.models);
# account_id and from_account_id are the positional account, expected_version is
# --expected-version, which every type takes.
_SEND_OPTIONS = {"to_account_id": "--to", "amount": "--amount", "currency": "--currency",
                 "overdraft_limit": "--overdraft-limit", "hold_id": "--hold-id",
                 "expires_in_ms": "--expires-in-ms", "expires_at": "--expires-at",
                 "metadata": "--meta"}
_SEND_POSITIONAL = ("account_id", "from_account_id", "expected_version")


def _send_options(type_name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) options of a command type, read from its model: what
    it cannot do without (no silent defaults: a money command names its amount and
    currency) and what it may take (anything else is refused, not ignored)."""
    from streams.api.models import REQUIRED_FIELDS, TYPE_FIELDS

    fields = [f for f in TYPE_FIELDS[type_name] if f not in _SEND_POSITIONAL]
    required = tuple(_SEND_OPTIONS[f] for f in fields if f in REQUIRED_FIELDS[type_name])
    optional = tuple(_SEND_OPTIONS[f] for f in fields if f not in REQUIRED_FIELDS[type_name])
    return required, optional


def cmd_send(args) -> int:
    import uuid

    from ledger import domain
    from streams.api.requests import InvalidRequest, parse_instant
    from streams.client import LedgerClient, LedgerClientError

    type_name = _SEND_ALIASES.get(args.type, args.type)
    kind = domain.COMMAND_TYPES[type_name]
    given = {"--to": args.to, "--amount": args.amount, "--currency": args.currency,
             "--overdraft-limit": args.overdraft_limit, "--hold-id": args.hold_id,
             "--expires-in-ms": args.expires_in_ms, "--expires-at": args.expires_at,
             "--meta": args.meta or None}
    required, optional = _send_options(type_name)
    missing = [flag for flag in required if given[flag] is None]
    if missing:
        print(f"ledger send {args.type}: {', '.join(missing)} required", file=sys.stderr)
        return EXIT_USAGE
    allowed = set(required) | set(optional)
    foreign = [flag for flag, value in given.items() if value is not None and flag not in allowed]
    if foreign:
        print(f"ledger send {args.type}: {', '.join(foreign)} not allowed for {args.type}",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        metadata = tuple(sorted(_meta_pair(m) for m in args.meta or ()))
        expires_at = parse_instant("--expires-at", args.expires_at) if args.expires_at else 0
    except (ValueError, InvalidRequest) as exc:
        print(f"ledger send {args.type}: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return EXIT_USAGE
    values = {"command_id": args.command_id or str(uuid.uuid4()),
              "account_id": args.account_id, "from_account_id": args.account_id,
              "to_account_id": args.to or "", "amount_minor": args.amount or 0,
              "currency": args.currency, "overdraft_limit_minor": args.overdraft_limit or 0,
              "hold_id": args.hold_id, "expires_in_ms": args.expires_in_ms or 0,
              "expires_at_ms": expires_at, "metadata": metadata,
              "expected_version": domain.ANY_VERSION if args.expected_version is None
              else args.expected_version}
    command = kind(**{name: values[name] for name in kind.__dataclass_fields__})
    settings = _settings_with_local_broker(start=False)
    try:
        with LedgerClient(settings, watch_outcomes=args.wait) as client:
            if not args.wait:
                client.send(command)
                # "accepted" means the broker has it: not before delivery.
                client.flush(args.timeout)
                print(json.dumps({"command_id": command.command_id, "status": "accepted"}))
                return EXIT_APPLIED
            if isinstance(command, domain.Transfer):
                result = client.send_transfer(command, timeout_s=args.timeout)
                ok = result.status == "completed"
            else:
                result = client.send(command, wait=True, timeout_s=args.timeout)
                ok = result.status == "applied"
    except LedgerClientError as exc:
        print(f"ledger send: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(_outcome_json(result)))
    return EXIT_APPLIED if ok else EXIT_REJECTED


def _meta_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--meta {text!r} is not KEY=VALUE")
    return key, value


def _outcome_json(outcome) -> dict:
    first = ({"transfer_id": outcome.transfer_id} if hasattr(outcome, "transfer_id")
             else {"command_id": outcome.command_id})
    return {**first, "status": outcome.status, "reason": outcome.reason,
            "detail": getattr(outcome, "detail", ""), "duplicate": outcome.duplicate,
            "version": getattr(outcome, "version", None),
            "events": [{"type": e.type, **asdict(e)} for e in outcome.events]}


def cmd_events(args) -> int:
    settings = _settings_with_local_broker(start=False)
    for partition, offset, record in read_log(settings):
        if args.account and record.account_id != args.account:
            continue
        print(json.dumps({"partition": partition, "offset": offset, "type": record.type,
                          **asdict(record)}))
    return 0


EXIT_NOT_FINAL = 3  # ledger replay --as-of T: some partition is not final as of T yet


def cmd_replay(args) -> int:
    """Every account as of T, final: the same file whenever and wherever it
    is run (streams/replay.py, Final). Without --as-of, as of the end of the
    log, which says up to when it is complete."""
    from streams.api.requests import InvalidRequest, parse_instant
    from streams.eventlog import NotFinal
    from streams import replay
    from streams.shapes import rfc3339_ms

    settings = _settings_with_local_broker(start=False)
    try:
        as_of_ms = parse_instant("--as-of", args.as_of) if args.as_of else None
    except InvalidRequest as exc:
        print(f"ledger replay: {exc.message}", file=sys.stderr)
        return 2
    if args.timeout_ms < 0:
        print("ledger replay: --timeout-ms must not be negative", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        ledger = replay.rebuild(settings, as_of_ms, use_snapshots=not args.from_scratch,
                                final_wait_s=args.timeout_ms / 1000)
    except NotFinal as exc:
        parts = "; ".join(
            f"partition {p}: " + ("no record read" if w is None else
                                  f"recorded only up to {rfc3339_ms(w)}")
            for p, w in exc.watermarks.items())
        print(f"ledger replay: not final as of {rfc3339_ms(as_of_ms)} after waiting "
              f"{args.timeout_ms} ms: a record at or before it may still be committed on "
              f"partitions {', '.join(str(p) for p in exc.watermarks)} ({parts}). Nothing "
              f"written; run it again later (are the workers of those partitions "
              f"running?)", file=sys.stderr)
        return EXIT_NOT_FINAL
    count = replay.write_accounts(ledger, Path(args.out))
    if as_of_ms is not None:
        what = f"as of {rfc3339_ms(as_of_ms)} (final)"
    else:
        complete = ledger.complete_up_to(settings.partitions)
        what = "as of the end of the log" + (
            f" (every record up to {rfc3339_ms(complete)} is in; later ones may be too)"
            if complete is not None else "")
    print(f"wrote {count} accounts {what} to {args.out} "
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


STATEMENT_COLUMNS = ("date", "account_id", "currency", "opening_balance", "credited",
                     "debited", "transfer_in", "transfer_out", "refunds", "closing_balance",
                     "events", "first_sequence", "last_sequence")


def cmd_statement(args) -> int:
    """One month of an account's daily statements, from a worker's HTTP API
    (GET /v1/accounts/{id}/statements; any worker forwards to the owner)."""
    import calendar
    import csv
    import re
    import urllib.error
    from datetime import date
    from urllib.parse import quote, urlencode

    match = re.fullmatch(r"([0-9]{4})-([0-9]{2})", args.month)
    if match is None or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1:
        print("ledger statement: --month must be YYYY-MM", file=sys.stderr)
        return 2
    year, month = int(match.group(1)), int(match.group(2))
    first = date(year, month, 1)
    last = date(year, month, calendar.monthrange(year, month)[1])
    url = (f"{args.url.rstrip('/')}/v1/accounts/{quote(args.account_id, safe='')}/statements?"
           + urlencode({"from": first.isoformat(), "to": last.isoformat()}))
    token = args.token or Settings.from_env().api_token
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        print(f"ledger statement: {exc.code} {exc.read().decode(errors='replace')}",
              file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"ledger statement: cannot read {url}: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(body, indent=2))
    else:
        writer = csv.DictWriter(sys.stdout, fieldnames=STATEMENT_COLUMNS, extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(body["days"])
    return 0


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


def _demo_dir() -> Path:
    from streams import localkafka

    return localkafka.default_cache_dir() / "demo"


def _stop_demo_worker(demo_dir: Path) -> bool:
    """Stop the demo's worker by the pid it recorded (never by name)."""
    pid_file = demo_dir / "worker.pid"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        cmdline = b""
    stopped = False
    if b"streams.cli" in cmdline:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        stopped = True
    pid_file.unlink(missing_ok=True)
    return stopped


def cmd_demo(args) -> int:
    """Start broker (unless KAFKA_BOOTSTRAP_SERVERS), topics and a worker; run a
    story; leave the worker running for the README's by-hand steps."""
    import uuid

    from streams.client import LedgerClient
    from streams.topics import ensure_topics

    demo_dir = _demo_dir()
    if args.action == "stop":
        print("stopped the demo's worker" if _stop_demo_worker(demo_dir)
              else "no demo worker running")
        return 0
    _stop_demo_worker(demo_dir)  # the previous run's, which holds the port
    settings = _settings_with_local_broker(start=True)
    if not given("LEDGER_TOPIC_PREFIX"):
        # A fresh ledger per demo run, so its output is the same every time.
        settings = settings.with_(topic_prefix=f"demo-{uuid.uuid4().hex[:8]}")
    data_dir = demo_dir / settings.topic_prefix
    settings = settings.with_(data_dir=data_dir, worker_id="demo-1",
                              snapshot_root=demo_dir / "snapshots")
    print(f"kafka: {settings.bootstrap_servers}; topics: {settings.topic_prefix}.*")
    ensure_topics(settings)
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.to_env()}
    log_path = data_dir / "worker.log"
    with open(log_path, "w") as log_file:
        worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env,
                                  stdout=log_file, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # outlives this command
    (demo_dir / "worker.pid").write_text(f"{worker.pid}\n")
    # What the by-hand steps source to see this ledger (no secrets: paths only).
    (demo_dir / "env").write_text("".join(
        f"export {k}={v}\n" for k, v in settings.to_env().items()
        if not k.startswith("LEDGER_KAFKA_")))
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
            ("transfer alice -> bob 20.00",
             lambda c: c.transfer("alice", "bob", 20_00, "EUR", wait=True)),
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
    except BaseException:
        _stop_demo_worker(demo_dir)
        raise
    print(f"demo done. Its worker keeps serving http://{settings.web_host}:"
          f"{settings.web_port} (`. {demo_dir / 'env'}` points the ledger command at it);\n"
          "stop it with `ledger demo stop`, the broker with `ledger kafka stop`")
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
    p.add_argument("--processes", type=_positive_int, default=1, metavar="N",
                   help="run N worker processes that share the partitions, one per core "
                        "(ids <id>-1..N, ports <port>..<port>+N-1, data dirs "
                        "<data dir>/process-<i>; streams/processes.py)")
    p.set_defaults(func=cmd_worker)

    # The types `ledger send` offers and the options each needs: the API's models.
    from streams.api.models import COMMAND_MODELS

    p = sub.add_parser(
        "send", help="send one command",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Send one command to the ledger. With --wait, print its outcome as JSON "
                    "and exit by it; a retry (same --command-id and options) prints the "
                    "original outcome with \"duplicate\": true.",
        epilog="required options by type:\n"
               + "".join(f"  {t:<14}{' '.join(_send_options(t)[0]) or '(none)'}\n"
                         for t in COMMAND_MODELS)
               + "\nexit codes:\n"
               f"  {EXIT_APPLIED}  applied (a transfer: completed), or accepted without --wait\n"
               f"  {EXIT_REJECTED}  rejected (a transfer: failed); the reason is printed\n"
               f"  {EXIT_ERROR}  error, or no outcome within --timeout\n"
               f"  {EXIT_USAGE}  a required option is missing or one is not allowed\n\n"
               "examples:\n"
               "  ledger send open alice --currency EUR --overdraft-limit 5000\n"
               "  ledger send credit alice --amount 2500 --currency EUR --wait\n"
               "  ledger send transfer alice --to bob --amount 100 --currency EUR --wait\n"
               "  ledger send hold alice --amount 700 --currency EUR --to shop "
               "--expires-in-ms 600000 --command-id h-1 --wait\n"
               "  ledger send capture alice --hold-id h-1 --amount 500 --wait\n"
               "  ledger send release alice --hold-id h-1 --wait\n"
               "  ledger send debit alice --amount 100 --currency EUR --expected-version 7\n"
               "  ledger send close alice")
    p.add_argument("type", choices=sorted([*_SEND_ALIASES, *COMMAND_MODELS]))
    p.add_argument("account_id", help="the account (a transfer's source, a hold's account)")
    p.add_argument("--to", help="transfer: the destination; hold, capture: where a capture "
                                "moves the money (default: it leaves the ledger)")
    p.add_argument("--amount", type=int, help="minor units (cents), an integer; capture: "
                                              "default the whole hold")
    p.add_argument("--currency", help="ISO 4217 code, e.g. EUR")
    p.add_argument("--overdraft-limit", type=int, help="open only, minor units (default 0)")
    p.add_argument("--hold-id", help="capture, release: the hold (its hold command's id)")
    p.add_argument("--expires-in-ms", type=int, help="hold: expires this long after it is "
                                                     "placed (default 7 days, at most 30)")
    p.add_argument("--expires-at", help="hold: expiry instant, RFC 3339 or epoch ms")
    p.add_argument("--meta", action="append", metavar="KEY=VALUE",
                   help="transfer, hold: a metadata entry (repeatable)")
    p.add_argument("--expected-version", type=int,
                   help="apply only if the account is at this version, else rejected as "
                        "version_conflict")
    p.add_argument("--command-id", help="idempotency key (default: a new UUID); sent again "
                                        "to the same account, the command is applied once")
    p.add_argument("--wait", action="store_true", help="wait for and print the outcome")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("events", help="print the committed event log")
    p.add_argument("--account")
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("replay", help="rebuild every account as of a moment, as JSON lines")
    p.add_argument("--as-of", help="RFC 3339 or epoch ms (default: now)")
    p.add_argument("--out", required=True, help="output file (JSON lines, sorted by account)")
    p.add_argument("--from-scratch", action="store_true",
                   help="ignore ledger-wide snapshots; read the log from offset 0")
    p.add_argument("--timeout-ms", type=int, default=2000,
                   help="with --as-of: how long to wait for every partition to be final "
                        f"as of T (else exit {EXIT_NOT_FINAL}, naming them); default 2000")
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

    p = sub.add_parser("statement", help="an account's daily statements for one month "
                                         "(from a worker's HTTP API)")
    p.add_argument("account_id")
    p.add_argument("--month", required=True, help="YYYY-MM")
    p.add_argument("--format", choices=["csv", "json"], default="csv")
    p.add_argument("--url", default="http://127.0.0.1:6066", help="a worker's HTTP address")
    p.add_argument("--token", help="API bearer token (default: LEDGER_API_TOKEN)")
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(func=cmd_statement)

    p = sub.add_parser("demo", help="start everything locally and run a short story; "
                                    "`ledger demo stop` stops its worker")
    p.add_argument("action", nargs="?", choices=["run", "stop"], default="run")
    p.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
