"""What the read models (streams/readmodels.py) cost a worker, per command.

    .venv/bin/python scripts/bench_readmodels.py [--commands 30000] [--accounts 1000]
        [--repeat 3] [--profile DIR]

Starts a private Kafka broker in a temporary directory on free ports (unless
KAFKA_BOOTSTRAP_SERVERS is set) and stops it by pid at the end, as it does
every worker it starts, also on failure and Ctrl-C. Every run gets fresh
topics (its own topic prefix) and one worker (``python -m streams.cli
worker``, settings by Settings.to_env()).

Each round runs three scenarios, in alternating order from round to round
(the machine is shared: its load moves):

off    LEDGER_READ_MODELS=0. A backlog of OpenAccount + credit/debit commands
       over ``--accounts`` accounts, written in one transaction left open
       (invisible to read_committed readers), is committed once the worker is
       caught up and idle: CPU (utime + stime of the whole process, librdkafka
       threads included, from /proc/<pid>/stat) from the commit until every
       command is applied (``ledger_commands_total``).
on     the same with the read models on, until every command is applied AND
       folded: the totals hold as many records as commands were sent and
       both models report lag 0 on every partition.
fold   the read models alone (the core idle): the event-log records the ``off``
       run of the round wrote are copied, partition by partition, into a new
       ledger's event log in one transaction left open, committed once the
       worker is ready; CPU and time until both models have folded them all.
       Gives the fold's own CPU per event and its events/s.

Workers log at info, the default: at warning and above Faust's worker sets
the root logger to DEBUG for its terminal spinner, and every debug record of
aiokafka and Faust is then made (and dropped), a cost no deployment has.

Each scenario's idle CPU rate (worker ready, nothing to do, over 3 s before
the commit) is reported too. Prints one JSON document with every run and the
medians; ``uptime``'s load average is recorded before and after each run.

``--profile DIR`` adds one ``on`` run whose worker's Python threads are
sampled every 5 ms from the commit to the end (a thread reading their stacks);
the counts go to DIR/worker.prof (JSON) and the top functions are printed.
With BENCH_CPROFILE=1 the main thread runs under cProfile instead (switched
by SIGRTMIN; DIR/worker.prof.pstats). ``--profile-scenario fold`` profiles the
fold alone (after the rounds' off runs). Every run also reports CPU by thread
(Python's names in a profiled run, the kernel's otherwise: rdk:* for
librdkafka). BENCH_WAIT_S bounds each wait (default 600 s).

``--tree LABEL=DIR`` (repeatable) runs the workers from other copies of the
code (e.g. the previous version of streams/readmodels.py in a copy of the
tree), alternated within each scenario, for before/after comparisons.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ledger import domain  # noqa: E402
from schemas import codec  # noqa: E402
from streams.config import Settings  # noqa: E402
from streams.localkafka import free_port  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
IDLE_S = 3.0
SETTLE_S = 2.0
POLL_S = 0.25  # the worker answers every poll (metrics, totals): not too often
WAIT_S = float(os.environ.get("BENCH_WAIT_S", 600))

# The worker under a sampling profiler: a thread looks at every Python
# thread's stack (the event loop, Faust's consumer thread, the ledger core...)
# every 5 ms while the file <path>.on exists, and writes
# the counts as JSON when it is gone: by function, where the sample was (self)
# and anywhere on the stack (inclusive). Less in the way than cProfile's
# tracing; signals are Faust's (SIGUSR2 starts pdb).
PROFILED_WORKER = r"""
import collections, json, logging, os, runpy, sys, threading, time
path = sys.argv.pop(1)
IDLE = ("select", "poll", "wait", "sleep", "_worker", "consume", "flush", "epoll")
state = {"on": False, "samples": 0}
own, inclusive, threads = collections.Counter(), collections.Counter(), collections.Counter()
def sample():
    me = threading.get_ident()
    while True:
        time.sleep(0.005)
        if os.path.exists(path + ".on"):
            state["on"] = True
        elif state["on"]:
            write()
            return
        else:
            continue
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            if ident == me:
                continue
            thread = names.get(ident, "?")
            if frame.f_code.co_name in IDLE:
                threads[thread + " (idle)"] += 1
                continue
            threads[thread] += 1
            seen = set()
            leaf = True
            while frame is not None:
                code = frame.f_code
                name = f"{code.co_filename.rsplit('site-packages/', 1)[-1]}:{code.co_name}"
                if leaf:
                    own[thread[:12] + " " + name] += 1
                    leaf = False
                if name not in seen:
                    seen.add(name)
                    inclusive[thread[:12] + " " + name] += 1
                frame = frame.f_back
        state["samples"] += 1
def write():
    with open(path + ".tmp", "w") as f:
        json.dump({"samples": state["samples"], "threads": threads.most_common(),
                   "native_ids": {t.native_id: t.name for t in threading.enumerate()},
                   "log_levels": {n: logging.getLogger(n).getEffectiveLevel() for n in
                                  ("", "aiokafka.producer.producer", "faust.topics")},
                   "self": own.most_common(60), "inclusive": inclusive.most_common(200)},
                  f, indent=0)
    os.rename(path + ".tmp", path)
if os.environ.get("BENCH_CPROFILE"):
    # Deterministic instead: cProfile on the main thread, switched on and
    # off by SIGRTMIN (a signal Faust leaves alone), stats to <path>.pstats.
    import cProfile, signal
    profile = cProfile.Profile()
    def toggle(*_):
        if not state["on"]:
            state["on"] = True
            profile.enable()
        else:
            profile.disable()
            profile.dump_stats(path + ".pstats")
            state["on"] = False
            write()
    signal.signal(signal.SIGRTMIN, toggle)
else:
    threading.Thread(target=sample, daemon=True).start()
sys.argv = ["streams.cli", "worker", "--loglevel", "info"]
runpy.run_module("streams.cli", run_name="__main__")
"""


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def threads_cpu_s(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (thread name as the kernel knows it, CPU s) of every thread."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm, rest = task.joinpath("stat").read_text().rsplit(")", 1)
            fields = rest.split()
        except OSError:
            continue  # ended meanwhile
        out[int(task.name)] = (comm.split("(", 1)[1],
                               (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def threads_delta(before: dict, after: dict, names: dict[int, str]) -> dict[str, float]:
    """CPU s spent between two threads_cpu_s() by thread name (Python's
    name where known: the profiled worker writes them; else the kernel's,
    e.g. rdk:broker1 for librdkafka's threads)."""
    spent: dict[str, float] = {}
    for tid, (comm, cpu) in after.items():
        name = names.get(tid) or comm
        spent[name] = spent.get(name, 0.0) + cpu - before.get(tid, (comm, 0.0))[1]
    return {k: round(v, 2) for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if v > 0}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def wait_for(condition, what: str, timeout_s: float = WAIT_S, every_s: float = 0.1,
             alive=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive is not None:
            alive()
        try:
            value = condition()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")


class Worker:
    def __init__(self, settings: Settings, log_path: Path, profile_to: Path | None = None,
                 tree: Path = REPO):
        self.settings = settings
        self.log_path = log_path
        env = {**os.environ, "PYTHONPATH": str(tree), **settings.to_env()}
        argv = ([sys.executable, "-c", PROFILED_WORKER, str(profile_to)] if profile_to
                else [sys.executable, "-m", "streams.cli", "worker", "--loglevel", "info"])
        with open(log_path, "w") as log_file:
            self.process = subprocess.Popen(argv, env=env, cwd=tree, stdout=log_file,
                                            stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> None:
        if self.process.poll() is not None:
            tail = "\n".join(self.log_path.read_text().splitlines()[-30:])
            raise RuntimeError(f"worker exited {self.process.returncode}:\n{tail}")

    def get(self, path: str):
        url = f"http://{self.settings.web_host}:{self.settings.web_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = response.read()
                return response.status, (json.loads(body) if path != "/metrics"
                                         else body.decode())
        except urllib.error.HTTPError as exc:
            return exc.code, None

    def metric_sum(self, prefix: str) -> float:
        status, text = self.get("/metrics")
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(prefix))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def backlog_commands(n: int, accounts: int, seed: int) -> list:
    rng = random.Random(seed)
    ids = [f"b{i:05d}" for i in range(accounts)]
    commands = [domain.OpenAccount(f"o-{a}", a, "EUR", 10_000) for a in ids]
    for i in range(n - len(commands)):
        a = rng.choice(ids)
        cls = domain.Credit if rng.random() < 0.6 else domain.Debit
        commands.append(cls(f"c{i}", a, rng.randrange(1, 10_000), "EUR"))
    return commands


def transactional_producer(settings: Settings, name: str):
    from confluent_kafka import Producer

    producer = Producer(settings.kafka(**{"transactional.id": f"{settings.topic_prefix}-{name}",
                                          "linger.ms": 5}))
    producer.init_transactions(30)
    return producer


def hold_commands(settings: Settings, commands: list):
    from streams.partitioner import partition_for

    producer = transactional_producer(settings, "bench")
    producer.begin_transaction()
    now = int(time.time() * 1000)
    for n, c in enumerate(commands):
        key = c.account_id.encode()
        producer.produce(settings.commands_topic, codec.encode_command(c, now), key,
                         partition=partition_for(key, settings.partitions))
        if n % 5000 == 0:
            producer.poll(0)
    producer.flush(60)
    return producer


def read_log(settings: Settings) -> dict[int, list[tuple[bytes | None, bytes]]]:
    """Every committed record of the event log, per partition (ticks too)."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer(settings.kafka(**{
        "group.id": f"bench-read-{uuid.uuid4()}", "enable.auto.commit": False,
        "isolation.level": "read_committed", "enable.partition.eof": True}))
    consumer.assign([TopicPartition(settings.events_topic, p, 0)
                     for p in range(settings.partitions)])
    out: dict[int, list] = {p: [] for p in range(settings.partitions)}
    todo = set(out)
    deadline = time.monotonic() + 120
    try:
        while todo and time.monotonic() < deadline:
            for msg in consumer.consume(5000, timeout=0.5):
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        todo.discard(msg.partition())
                    continue
                out[msg.partition()].append((msg.key(), msg.value()))
    finally:
        consumer.close()
    return out


def hold_events(settings: Settings, log: dict):
    producer = transactional_producer(settings, "copy")
    producer.begin_transaction()
    n = 0
    for p, records in log.items():
        for key, value in records:
            producer.produce(settings.events_topic, value, key, partition=p)
            n += 1
            if n % 5000 == 0:
                producer.poll(0)
    producer.flush(60)
    return producer


def folded(worker: Worker) -> int:
    status, body = worker.get("/v1/ledger/totals/local")
    if status != 200:
        return -1
    return sum(v["records"] for v in body["partitions"].values())


def read_models_done(worker: Worker, records: int) -> bool:
    """Every record folded by totals, and no lag left in either model."""
    status, body = worker.get("/v1/ledger/totals/local")
    if status != 200 or len(body["partitions"]) != worker.settings.partitions:
        return False
    if sum(v["records"] for v in body["partitions"].values()) < records:
        return False
    return worker.metric_sum("ledger_read_model_lag_events{") == 0


def ready(worker: Worker, read_models: bool) -> bool:
    status, body = worker.get("/v1/health")
    if status != 200 or not body.get("caught_up"):
        return False
    if read_models:
        status, body = worker.get("/v1/ledger/totals/local")
        return status == 200 and len(body["partitions"]) == worker.settings.partitions \
            and worker.metric_sum("ledger_read_model_lag_events{") == 0
    return True


class Bench:
    def __init__(self, args, bootstrap: str, tmp: Path):
        self.args = args
        self.bootstrap = bootstrap
        self.tmp = tmp
        self.leg_key = tmp / "leg.key"
        from streams import legauth

        self.leg_key.write_text(legauth.new_key() + "\n")
        self.commands = backlog_commands(args.commands, args.accounts, seed=5)
        self.last_log: dict | None = None
        self.workers: list[Worker] = []

    def settings(self, name: str, read_models: bool) -> Settings:
        prefix = f"rm{uuid.uuid4().hex[:8]}"
        return Settings(bootstrap_servers=self.bootstrap, topic_prefix=prefix,
                        partitions=self.args.partitions, worker_id=f"{name}-{prefix}",
                        data_dir=self.tmp / prefix, web_port=free_port(),
                        snapshot_root=self.tmp / "snapshots", leg_key_file=self.leg_key,
                        read_models=read_models)

    def start(self, settings: Settings, profile_to: Path | None = None,
              tree: Path = REPO) -> Worker:
        worker = Worker(settings, self.tmp / f"{settings.topic_prefix}.log", profile_to, tree)
        self.workers.append(worker)
        wait_for(lambda: ready(worker, settings.read_models), "worker ready", 120,
                 every_s=0.3, alive=worker.alive)
        return worker

    def drop(self, worker: Worker, settings: Settings) -> None:
        from confluent_kafka.admin import AdminClient

        worker.stop()
        admin = AdminClient(settings.kafka())
        names = [t for t in admin.list_topics(timeout=10).topics
                 if t.startswith((f"{settings.topic_prefix}.", f"{settings.topic_prefix}-"))]
        if names:
            for future in admin.delete_topics(names, operation_timeout=30).values():
                try:
                    future.result()
                except Exception:
                    pass
        shutil.rmtree(settings.data_dir, ignore_errors=True)

    def run(self, scenario: str, profile_dir: Path | None = None, tree: Path = REPO) -> dict:
        from streams.topics import ensure_topics

        s = self.settings(scenario, read_models=scenario != "off")
        ensure_topics(s)
        load0 = loadavg()
        if scenario == "fold":
            if self.last_log is None:
                raise RuntimeError("fold needs an off run first")
            worker = self.start(s, profile_dir / "worker.prof" if profile_dir else None, tree)
            producer = hold_events(s, self.last_log)
            records = sum(1 for rs in self.last_log.values() for _k, v in rs
                          if not codec.is_tick(v))
        else:
            producer = hold_commands(s, self.commands)
            profile_to = profile_dir / "worker.prof" if profile_dir else None
            worker = self.start(s, profile_to, tree)
            records = len(self.commands)
        try:
            time.sleep(SETTLE_S)
            idle0 = cpu_s(worker.pid)
            time.sleep(IDLE_S)
            idle_rate = (cpu_s(worker.pid) - idle0) / IDLE_S
            if profile_dir:
                (profile_dir / "worker.prof.on").touch()
                if os.environ.get("BENCH_CPROFILE"):
                    worker.process.send_signal(signal.SIGRTMIN)
            cpu0, t0, threads0 = cpu_s(worker.pid), time.monotonic(), threads_cpu_s(worker.pid)
            producer.commit_transaction(60)
            row = {"scenario": scenario, "records": records, "idle_cpu_per_s": round(idle_rate, 4)}
            if scenario != "fold":
                wait_for(lambda: worker.metric_sum("ledger_commands_total{") >= records,
                         "backlog applied", alive=worker.alive, every_s=POLL_S)
                row["core_s"] = round(time.monotonic() - t0, 2)
                row["core_cpu_s"] = round(cpu_s(worker.pid) - cpu0, 2)
            if scenario != "off":
                wait_for(lambda: read_models_done(worker, records), "read models done",
                         alive=worker.alive, every_s=POLL_S)
            elapsed, cpu = time.monotonic() - t0, cpu_s(worker.pid) - cpu0
            threads1, names = threads_cpu_s(worker.pid), {}
            if profile_dir:
                (profile_dir / "worker.prof.on").unlink()
                if os.environ.get("BENCH_CPROFILE"):
                    worker.process.send_signal(signal.SIGRTMIN)
                wait_for(lambda: (profile_dir / "worker.prof").exists(), "profile written", 30)
                names = {int(k): v for k, v in json.loads(
                    (profile_dir / "worker.prof").read_text())["native_ids"].items()}
            row["threads_cpu_s"] = threads_delta(threads0, threads1, names)
            row.update(s=round(elapsed, 2), cpu_s=round(cpu, 3),
                       cpu_us_per_record=round(cpu / records * 1e6, 1),
                       records_per_s=round(records / elapsed))
            if scenario != "off":
                row["recovered"] = worker.metric_sum("ledger_read_model_recovered_records_total{")
            if scenario == "off":
                self.last_log = read_log(s)
            row["load"] = [load0, loadavg()]
            return row
        except Exception:
            say("worker log tail:\n" + "\n".join(
                worker.log_path.read_text().splitlines()[-40:]))
            raise
        finally:
            self.drop(worker, s)


def summary(rows: list[dict]) -> dict:
    out = {}
    for tree in dict.fromkeys(r["tree"] for r in rows):
        mine = out[tree] = {}
        for scenario in ("off", "on", "fold"):
            these = [r for r in rows if r["scenario"] == scenario and r["tree"] == tree]
            if not these:
                continue
            mine[scenario] = {k: statistics.median(r[k] for r in these)
                              for k in ("cpu_us_per_record", "records_per_s", "s",
                                        "idle_cpu_per_s")}
            mine[scenario]["runs"] = len(these)
        if "on" in mine and "off" in mine:
            mine["read_models_extra_us_per_command"] = round(
                mine["on"]["cpu_us_per_record"] - mine["off"]["cpu_us_per_record"], 1)
    return out


def print_profile(path: Path, top: int = 40) -> None:
    pstats_path = path.with_name(path.name + ".pstats")
    if pstats_path.exists():
        import pstats

        stats = pstats.Stats(str(pstats_path))
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)
    profile = json.loads(path.read_text())
    total = max(1, profile["samples"])
    print(f"{profile['samples']} samples of 5 ms (wall time: a busy machine makes "
          f"threads wait)")
    for name, count in profile["threads"]:
        print(f"{100 * count / total:6.1f}%  thread {name}")
    for what in ("self", "inclusive"):
        print(f"--- by {what} samples")
        for name, count in profile[what][:top]:
            print(f"{100 * count / total:6.1f}%  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=30_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scenarios", default="off,on,fold")
    parser.add_argument("--profile", type=Path, default=None,
                        help="directory: one more 'on' run under cProfile (main thread)")
    parser.add_argument("--profile-scenario", default="on", choices=("on", "fold"),
                        help="the profiled run's scenario (fold: after the rounds' off runs)")
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=DIR",
                        help="run the workers from this copy of the code (repeat to "
                             "compare versions; alternated with the scenarios); "
                             "default: this checkout")
    args = parser.parse_args()
    # SIGTERM (timeout, a supervisor) ends the run through the finally below,
    # which stops the broker and workers it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    scenarios = args.scenarios.split(",")
    trees = [(label, Path(path).resolve()) for label, path in
             (t.split("=", 1) for t in args.tree)] or [("here", REPO)]
    tmp = Path(tempfile.mkdtemp(prefix="bench-readmodels-"))
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    bench = None
    try:
        if not bootstrap:
            from streams import localkafka

            localkafka.ensure_jars(progress=say)
            broker = localkafka.start_broker(tmp / "kafka")
            bootstrap = broker.bootstrap
        bench = Bench(args, bootstrap, tmp)
        rows, crashes = [], []
        for round_ in range(args.repeat):
            order = scenarios if round_ % 2 == 0 else list(reversed(scenarios))
            if "fold" in order and order.index("fold") < order.index("off"):
                order.remove("fold")
                order.append("fold")  # it copies the round's off log
            for n, scenario in enumerate(order):
                # Versions alternate inside each scenario, their order turning.
                for label, tree in (trees if (round_ + n) % 2 == 0 else trees[::-1]):
                    for attempt in range(1, 4):
                        try:
                            row = bench.run(scenario, tree=tree)
                            break
                        except RuntimeError as exc:  # the worker exited: counted, run again
                            crashes.append({"tree": label, "scenario": scenario,
                                            "error": str(exc).splitlines()[-1]})
                            say(f"{label} {scenario}: worker crashed (attempt {attempt}): "
                                f"{crashes[-1]['error']}")
                    else:
                        raise RuntimeError(f"{label} {scenario}: the worker crashed 3 times")
                    row["round"], row["tree"] = round_, label
                    rows.append(row)
                    say(json.dumps(row))
        result = {"commands": args.commands, "accounts": args.accounts,
                  "partitions": args.partitions, "runs": rows, "crashes": crashes,
                  "median": summary(rows)}
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            row = bench.run(args.profile_scenario, profile_dir=args.profile,
                            tree=trees[-1][1])
            say("profiled run (not comparable): " + json.dumps(row))
            print_profile(args.profile / "worker.prof")
        print(json.dumps(result, indent=2))
        return 0
    finally:
        if bench is not None:
            for worker in bench.workers:
                if worker.process.poll() is None:
                    worker.process.kill()
                    worker.process.wait(10)
        if broker is not None:
            from streams import localkafka

            localkafka.stop_broker(broker)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
