"""Issue 15: time travel that never changes its mind.

"What was this account as of T?" has one answer, forever, also for a T a
moment ago: asked again later, through any worker, after a crash, a
takeover, a restart or a rebuild, it is the same bytes (and the fold of the
final log). The proofs, against a real broker:

1. Hundreds of as-of reads (accounts and event pages) at instants close to
   now, through two workers, while commands flow, a worker is SIGKILLed and
   the other takes its partitions over; afterwards every one is asked again
   through both workers (and again after a restart with a wiped store):
   zero differences, each equal to a fold of the log.
2. A takeover by a worker whose clock is 5 s behind: nothing it records on
   a partition is stamped at or below the watermark already published
   there; every earlier answer holds.
3. ``ledger replay --as-of T`` for T a moment ago, run while commands flow,
   equals the same replay after the load stopped; a T not final exits 3
   naming the partitions.
4. The wait path and 503 as_of_not_final (complete_up_to, Retry-After),
   on the owner and through the other worker.

Waits are for conditions, never fixed sleeps (a sleep only paces load).
"""

from __future__ import annotations

import http.client
import json
import random
import shutil
import statistics
import threading
import time
from collections import defaultdict
from urllib.parse import quote

import pytest

from ledger import domain
from streams.client import LedgerClient
from streams.eventlog import read_log
from streams.partitioner import partition_for
from streams.shapes import account_json, event_json, rfc3339_ms
from tests.conftest import free_port
from tests.streams.httpkit import start_pair, validate, wait_split

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ACCOUNTS = [f"fin-{i}" for i in range(8)]
FUNDING = 10_000_000


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def get(worker, path: str, timeout_s: float = 20):
    """(status, body bytes, headers) of a GET; (None, b"", {}) if unreachable."""
    conn = http.client.HTTPConnection(worker.settings.web_host, worker.settings.web_port,
                                      timeout=timeout_s)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read(), dict(response.headers)
    except OSError:
        return None, b"", {}
    finally:
        conn.close()


def now_ms() -> int:
    return int(time.time() * 1000)


def health(worker) -> dict | None:
    status, body, _ = get(worker, "/v1/health", 5)
    return json.loads(body) if status in (200, 503) else None


def wait_for(condition, what: str, timeout_s: float = 90, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        time.sleep(every_s)


def open_and_fund(settings) -> None:
    with LedgerClient(settings) as client:
        for a in ACCOUNTS:
            client.open_account(a, "EUR", 1000, command_id=f"open-{a}")
            client.credit(a, FUNDING, "EUR", command_id=f"fund-{a}")
        client.flush()
        for a in ACCOUNTS:
            client.wait_for(a, f"fund-{a}", 60)


class Load(threading.Thread):
    """Credits, debits and transfers among ACCOUNTS at about ``rate`` a second
    until stopped; then waits until the last one sent has its outcome."""

    def __init__(self, settings, rate: int, seed: int, tag: str):
        super().__init__(name=f"load-{tag}", daemon=True)
        self.settings, self.rate, self.rng, self.tag = settings, rate, random.Random(seed), tag
        self.halt = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self):
        try:
            with LedgerClient(self.settings) as client:
                last = None
                while not self.halt.is_set():
                    tick = time.monotonic()
                    for _ in range(max(1, self.rate // 20)):
                        a, roll = self.rng.choice(ACCOUNTS), self.rng.random()
                        cid = f"{self.tag}-{self.sent}"
                        if roll < 0.4:
                            client.send_nowait(domain.Credit(cid, a, self.rng.randrange(1, 999),
                                                             "EUR"))
                        elif roll < 0.8:
                            client.send_nowait(domain.Debit(cid, a, self.rng.randrange(1, 999),
                                                            "EUR"))
                        else:
                            b = self.rng.choice([x for x in ACCOUNTS if x != a])
                            client.send_nowait(domain.Transfer(cid, a, b,
                                                               self.rng.randrange(1, 99), "EUR"))
                        last = (a, cid)
                        self.sent += 1
                    client.flush()
                    time.sleep(max(0.0, 0.05 - (time.monotonic() - tick)))
                if last is not None:
                    client.wait_for(*last, 120)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self):
        self.halt.set()
        self.join(180)
        assert not self.is_alive(), "load did not finish"
        assert self.error is None, repr(self.error)


class Prober(threading.Thread):
    """As-of reads at instants close to now, through the given workers in
    turn; keeps every final answer (200 or 404) by question."""

    def __init__(self, workers_, seed: int, spread_ms=(-600, 150), timeout_ms: int = 4000):
        super().__init__(name="prober", daemon=True)
        self.workers = list(workers_)
        self.rng = random.Random(seed)
        self.spread_ms, self.timeout_ms = spread_ms, timeout_ms
        self.halt = threading.Event()
        self.answers: dict[str, tuple[int, bytes]] = {}
        self.not_final = self.unavailable = 0
        self.latency_now_ms: list[float] = []  # reads of T = about now (>= now - 50 ms)

    def run(self):
        i = 0
        while not self.halt.is_set():
            worker = self.workers[i % len(self.workers)]
            i += 1
            a = self.rng.choice(ACCOUNTS)
            t = now_ms() + self.rng.randrange(*self.spread_ms)
            if self.rng.random() < 0.75:
                path = f"/v1/accounts/{a}?as_of={t}&timeout_ms={self.timeout_ms}"
            else:
                path = (f"/v1/accounts/{a}/events?from={t - 800}&to={t}&limit=1000"
                        f"&timeout_ms={self.timeout_ms}")
            question = path.split("&timeout_ms=")[0]
            if question in self.answers:
                continue
            started = time.monotonic()
            asked_at = now_ms()
            status, body, _ = get(worker, path)
            if status in (200, 404):
                self.answers[question] = (status, body)
                if t >= asked_at - 50:
                    self.latency_now_ms.append((time.monotonic() - started) * 1000)
            elif status == 503 and b"as_of_not_final" in body:
                self.not_final += 1
            else:
                self.unavailable += 1  # a worker down or its partitions moving
                self.halt.wait(0.05)

    def stop(self):
        self.halt.set()
        self.join(60)


class LagSampler(threading.Thread):
    """Samples ledger_watermark_lag_seconds of the given workers' partitions."""

    def __init__(self, workers_):
        super().__init__(name="lag-sampler", daemon=True)
        self.workers = list(workers_)
        self.halt = threading.Event()
        self.samples: list[float] = []

    def run(self):
        while not self.halt.is_set():
            for w in self.workers:
                status, body, _ = get(w, "/metrics", 5)
                if status != 200:
                    continue
                for line in body.decode().splitlines():
                    if line.startswith("ledger_watermark_lag_seconds{"):
                        value = float(line.rsplit(" ", 1)[1])
                        if value == value:  # not NaN: a partition this worker serves
                            self.samples.append(value)
            self.halt.wait(0.1)

    def stop(self) -> list[float]:
        self.halt.set()
        self.join(30)
        return self.samples


def quantiles(values) -> str:
    if len(values) < 2:
        return f"{len(values)} samples"
    q = statistics.quantiles(values, n=100)
    return f"p50 {q[49]:.3f} p99 {q[98]:.3f} max {max(values):.3f} ({len(values)} samples)"


def log_events(settings) -> dict[str, list]:
    events = defaultdict(list)
    for _p, _o, record in read_log(settings, timeout_s=60):
        if not isinstance(record, domain.CommandRejected):
            events[record.account_id].append(record)
    return events


def expected_answer(events: dict, question: str):
    """(status, body) the final log says a probe's question has."""
    path, _, query = question.partition("?")
    params = dict(part.split("=", 1) for part in query.split("&"))
    account = path.split("/")[3]
    to = int(params.get("to", params.get("as_of")))
    mine = [e for e in events[account] if e.recorded_at_ms <= to]
    if not mine:
        return 404, None
    if "as_of" in params:
        return 200, {**account_json(domain.fold(mine)), "as_of": rfc3339_ms(to),
                     "complete_up_to": rfc3339_ms(to)}
    since = int(params["from"])
    return 200, {"account_id": account,
                 "events": [event_json(e) for e in mine if e.recorded_at_ms >= since],
                 "next_cursor": None, "complete_up_to": rfc3339_ms(to)}


def check_answers(answers: dict, events: dict) -> None:
    wrong = []
    for question, (status, body) in answers.items():
        want_status, want_body = expected_answer(events, question)
        got = json.loads(body) if status == 200 else None
        if (status, got) != (want_status, want_body):
            wrong.append((question, status, got, want_status, want_body))
    assert not wrong, f"{len(wrong)} answers differ from the final log, e.g. {wrong[:2]}"


def ask_again(answers: dict, workers_) -> list:
    """Every question again through every worker: the differences."""
    differences = []
    for question, answer in answers.items():
        for w in workers_:
            status, body, _ = get(w, question + "&timeout_ms=10000")
            if (status, body) != answer:
                differences.append((question, w.settings.worker_id, answer, (status, body)))
    return differences


def check_time_never_goes_backwards(settings) -> dict[int, int]:
    """Per partition, in log order: recorded_at never decreases, and strictly
    increases from one transaction to the next (consecutive offsets are one
    transaction; a gap is a commit marker or an aborted transaction).
    Returns how many records each partition holds."""
    last: dict[int, tuple[int, int]] = {}
    count: dict[int, int] = defaultdict(int)
    problems = []
    for p, offset, record in read_log(settings, timeout_s=60, ticks=True):
        count[p] += 1
        if p in last:
            o1, r1 = last[p]
            same_transaction = offset == o1 + 1
            if record.recorded_at_ms < r1 or (not same_transaction
                                              and record.recorded_at_ms <= r1):
                problems.append((p, o1, r1, offset, record.recorded_at_ms))
        last[p] = (offset, record.recorded_at_ms)
    assert not problems, (f"{len(problems)} records stamped at or below the partition's "
                          f"watermark, e.g. (partition, offset, at, offset, at) {problems[:5]}")
    return dict(count)


# --------------------------------------------------------------------------
# 1. The probe: crash, takeover, restart, rebuild
# --------------------------------------------------------------------------


def test_as_of_answers_never_change(settings, workers):
    w1, w2 = start_pair(workers, settings)
    w1.wait_ready()
    w2.wait_ready()
    wait_split(w1, w2)
    open_and_fund(settings)
    sampler = LagSampler([w1, w2])
    sampler.start()
    time.sleep(2)  # idle: ticks only
    idle_lag = list(sampler.samples)
    load = Load(settings, rate=150, seed=1, tag="p")
    prober = Prober([w1, w2], seed=2)
    load.start()
    prober.start()
    busy_lag_from = len(sampler.samples)
    try:
        wait_for(lambda: len(prober.answers) >= 150, "150 answers under load", 60)
        busy_lag_to = len(sampler.samples)
        workers.kill(w1)  # kill -9 under load
        wait_split(w2, timeout_s=120)
        n = len(prober.answers)
        wait_for(lambda: len(prober.answers) >= n + 100, "100 answers after the takeover", 60)
        w1 = workers.start(w1.settings, wait=False)  # restarted under its id: takes back
        w1.wait_ready(120)
        wait_split(w1, w2, timeout_s=120)
        n = len(prober.answers)
        wait_for(lambda: len(prober.answers) >= n + 100, "100 answers after the restart", 60)
        prober.workers = [w1, w2]
    finally:
        prober.stop()
        load.stop()
    lags = sampler.stop()
    busy_lag, takeover_lag = lags[busy_lag_from:busy_lag_to], lags[busy_lag_to:]
    answers = prober.answers
    print(f"{len(answers)} final answers during the load ({prober.not_final} not final yet, "
          f"{prober.unavailable} unavailable); as-of T=now read latency ms: "
          f"{quantiles(prober.latency_now_ms)}")
    print(f"watermark lag s, idle: {quantiles(idle_lag)}; under load: {quantiles(busy_lag)}; "
          f"from the kill on (takeover, restart): {quantiles(takeover_lag)}")
    assert len(answers) >= 350
    assert sum(1 for s, _b in answers.values() if s == 200) >= 300

    # Every answer is the final log's, and the same through both workers now.
    events = log_events(settings)
    check_answers(answers, events)
    assert [] == ask_again(answers, [w1, w2])
    # ... and after w2 is killed and rebuilt from the log with an empty store.
    workers.kill(w2)
    shutil.rmtree(w2.settings.data_dir)
    w2 = workers.start(w2.settings, wait=False)
    w2.wait_ready(120)
    wait_split(w1, w2)
    assert [] == ask_again(answers, [w2, w1])
    check_time_never_goes_backwards(settings)


# --------------------------------------------------------------------------
# 2. A takeover by a worker whose clock is behind
# --------------------------------------------------------------------------


def test_takeover_by_a_slow_clock_never_records_before_the_watermark(settings, workers):
    w1 = workers.start(settings.with_(worker_id="w1"))
    open_and_fund(settings)
    load = Load(settings, rate=100, seed=3, tag="s")
    prober = Prober([w1], seed=4)
    load.start()
    prober.start()
    try:
        wait_for(lambda: len(prober.answers) >= 100, "100 answers from w1", 60)
        # w2's clock is 5 s behind: it takes half the partitions from w1,
        # whose watermarks are ~5 s ahead of w2's clock.
        slow = settings.with_(worker_id="w2", data_dir=settings.data_dir.parent / "w2",
                              web_port=free_port(), clock_offset_ms=-5_000)
        w2 = workers.start(slow, wait=False)
        w2.wait_ready(120)
        owners = wait_split(w1, w2, timeout_s=120)
        taken_at, before = now_ms(), len(prober.answers)
        # Until w2's clock passes the watermarks it took over (5 s), its
        # partitions advance 1 ms a batch; then with its clock, 5 s behind
        # the real one: ask about instants it can answer without a long wait.
        prober.workers, prober.spread_ms, prober.timeout_ms = [w1, w2], (-8000, -4500), 10_000
        wait_for(lambda: now_ms() > taken_at + 6_500 and len(prober.answers) >= before + 60,
                 "answers after w2's clock passed the watermarks", 120)
    finally:
        prober.stop()
        load.stop()
    answers = prober.answers
    print(f"{len(answers)} final answers ({prober.not_final} not final yet)")
    assert "behind the watermark of event-log partition" in w2.log_path.read_text()
    slow_partitions = sorted(p for p, w in owners.items() if w is w2)
    assert slow_partitions
    # Nothing recorded at or below a published watermark, on any partition.
    counts = check_time_never_goes_backwards(settings)
    assert all(counts.get(p, 0) > 10 for p in slow_partitions), counts
    status, body, _ = get(w2, "/metrics")
    stamped = [line for line in body.decode().splitlines()
               if line.startswith("ledger_stamped_after_watermark_total ")]
    assert stamped and float(stamped[0].split()[1]) > 0, stamped
    # Every earlier answer still holds, through both workers, and is the log's.
    check_answers(answers, log_events(settings))
    assert [] == ask_again(answers, [w1, w2])


# --------------------------------------------------------------------------
# 3. ledger replay --as-of T
# --------------------------------------------------------------------------


def test_replay_as_of_a_moment_ago_is_final(settings, workers, ledger_cli, tmp_path):
    workers.start(settings)
    open_and_fund(settings)
    load = Load(settings, rate=150, seed=5, tag="r")
    load.start()
    try:
        wait_for(lambda: load.sent >= 300, "load flowing", 30, 0.05)
        t = now_ms() - 300
        during = ledger_cli(settings, "replay", "--as-of", str(t), "--out",
                            str(tmp_path / "during.jsonl"), "--timeout-ms", "10000")
        assert 0 == during.returncode, during.stderr
        assert "(final)" in during.stderr, during.stderr
        sent_then = load.sent
        wait_for(lambda: load.sent >= sent_then + 300, "more load after the replay", 30, 0.05)
        # T a little ahead: replay waits until every partition is final as of it.
        ahead = now_ms() + 700
        waited = ledger_cli(settings, "replay", "--as-of", str(ahead), "--out",
                            str(tmp_path / "ahead.jsonl"), "--timeout-ms", "10000")
        assert 0 == waited.returncode, waited.stderr
    finally:
        load.stop()
    after = ledger_cli(settings, "replay", "--as-of", str(t), "--out",
                       str(tmp_path / "after.jsonl"), "--from-scratch")
    assert 0 == after.returncode, after.stderr
    assert (tmp_path / "during.jsonl").read_bytes() == (tmp_path / "after.jsonl").read_bytes()
    again = ledger_cli(settings, "replay", "--as-of", str(ahead), "--out",
                       str(tmp_path / "ahead-after.jsonl"))
    assert 0 == again.returncode, again.stderr
    assert (tmp_path / "ahead.jsonl").read_bytes() == (tmp_path / "ahead-after.jsonl").read_bytes()
    # And both are the fold of the final log.
    events = log_events(settings)
    for at, name in ((t, "during"), (ahead, "ahead")):
        expected = [account_json(domain.fold([e for e in events[a] if e.recorded_at_ms <= at]))
                    for a in sorted(events)
                    if any(e.recorded_at_ms <= at for e in events[a])]
        lines = (tmp_path / f"{name}.jsonl").read_text().splitlines()
        assert expected == [json.loads(line) for line in lines]
    # A T no partition has reached: exit 3, naming every partition, no file.
    future = now_ms() + 60_000
    out = tmp_path / "future.jsonl"
    refused = ledger_cli(settings, "replay", "--as-of", str(future), "--out", str(out),
                         "--timeout-ms", "300")
    assert 3 == refused.returncode, refused.stderr
    assert "not final as of" in refused.stderr
    assert "partitions 0, 1, 2, 3, 4, 5" in refused.stderr, refused.stderr
    assert not out.exists()


# --------------------------------------------------------------------------
# 4. The wait path and 503 as_of_not_final
# --------------------------------------------------------------------------


def test_wait_then_answer_or_503_as_of_not_final(settings, workers):
    # Ticks off (one an hour): a partition's watermark moves only when
    # something is recorded there, so "not final yet" can be held on purpose.
    quiet = settings.with_(tick_ms=3_600_000)
    w1, w2 = start_pair(workers, quiet)
    w1.wait_ready()
    w2.wait_ready()
    owners = wait_split(w1, w2)
    account = ACCOUNTS[0]
    owner = owners[partition_for(account.encode(), 6)]
    other = w2 if owner is w1 else w1
    with LedgerClient(settings) as client:
        opened = client.open_account(account, "EUR", command_id="open", wait=True)
    opened_at = opened.events[0].recorded_at_ms
    base = f"/v1/accounts/{quote(account)}"

    # A read without as_of: the state as of the account's last event, and
    # says so; ?as_of= that instant is the same bytes, through either worker.
    status, current, _ = get(owner, base)
    body = json.loads(current)
    assert (200, rfc3339_ms(opened_at), rfc3339_ms(opened_at)) == (
        status, body["as_of"], body["complete_up_to"])
    validate("/v1/accounts/{account_id}", "get", 200, body, {})
    for w in (owner, other):
        assert (200, current) == get(w, base)[:2]
        assert (200, current) == get(w, f"{base}?as_of={body['as_of']}")[:2]

    # Not final yet: nothing was recorded on the partition since the open.
    wait_for(lambda: now_ms() > opened_at + 200, "the clock past the open", 5, 0.01)
    t = now_ms() - 50
    for w in (owner, other):
        started = time.monotonic()
        status, raw, headers = get(w, f"{base}?as_of={t}&timeout_ms=400")
        elapsed = time.monotonic() - started
        answer = json.loads(raw)
        assert (503, "as_of_not_final") == (status, answer["error"]), answer
        assert answer["complete_up_to"] == rfc3339_ms(opened_at)
        assert answer["as_of"] == rfc3339_ms(t)
        assert int(headers["Retry-After"]) >= 1
        assert 0.4 <= elapsed < 3, elapsed  # waited its timeout, then said so
        validate("/v1/accounts/{account_id}", "get", 503, answer, headers)
    status, raw, headers = get(owner, f"{base}?as_of={t}&timeout_ms=0")
    assert 503 == status and b"as_of_not_final" in raw
    # An instant the clock cannot reach within the timeout: at once.
    far = now_ms() + 60_000
    for w in (owner, other):
        started = time.monotonic()
        status, raw, headers = get(w, f"{base}?as_of={far}")
        assert (503, "as_of_not_final") == (status, json.loads(raw)["error"])
        assert time.monotonic() - started < 1.5
        assert int(headers["Retry-After"]) >= 55
    status, raw, headers = get(other, f"{base}/events?to={far}")
    assert (503, "as_of_not_final") == (status, json.loads(raw)["error"])
    validate("/v1/accounts/{account_id}/events", "get", 503, json.loads(raw), headers)

    # The wait path: a read of T waits until something recorded after T
    # makes T final, then answers (the state as of T: without that credit).
    results = {}

    def ask(w):
        started = time.monotonic()
        results[w.settings.worker_id] = (*get(w, f"{base}?as_of={t}&timeout_ms=8000")[:2],
                                         time.monotonic() - started)

    askers = [threading.Thread(target=ask, args=(w,)) for w in (owner, other)]
    for thread in askers:
        thread.start()
    time.sleep(0.3)  # paces the test: the reads are waiting
    with LedgerClient(settings) as client:
        client.credit(account, 500, "EUR", command_id="after-t", wait=True)
    for thread in askers:
        thread.join(15)
    expected = json.dumps({**body, "as_of": rfc3339_ms(t), "complete_up_to": rfc3339_ms(t)},
                          separators=(",", ":")).encode()
    for worker_id, (status, raw, elapsed) in results.items():
        assert (200, json.loads(expected)) == (status, json.loads(raw)), worker_id
        assert elapsed >= 0.3, (worker_id, elapsed)
    assert results[owner.settings.worker_id][1] == results[other.settings.worker_id][1]

    # Event pages bounded by time: final, and say up to when.
    status, raw, _ = get(other, f"{base}/events?to={t}")
    page = json.loads(raw)
    assert (200, rfc3339_ms(t), ["account_opened"]) == (
        status, page["complete_up_to"], [e["type"] for e in page["events"]])
    validate("/v1/accounts/{account_id}/events", "get", 200, page, {})
    status, raw, _ = get(owner, f"{base}/events")
    page = json.loads(raw)
    assert ["account_opened", "credited"] == [e["type"] for e in page["events"]]
    assert page["complete_up_to"] == page["events"][-1]["recorded_at"]
    status, raw, _ = get(owner, f"{base}/events?to={opened_at - 1}")
    assert (404, "unknown_account") == (status, json.loads(raw)["error"])

    # timeout_ms is bounded.
    for bad, reason in (("10001", "too_large"), ("-1", "not_an_integer"),
                        ("x", "not_an_integer")):
        status, raw, _ = get(other, f"{base}?as_of={t}&timeout_ms={bad}")
        answer = json.loads(raw)
        assert (400, "timeout_ms", reason) == (status, answer["field"], answer["reason"])


def test_a_read_as_of_now_asks_for_a_tick_instead_of_waiting_for_the_next(settings, workers):
    """Background ticks every 10 s here; a read of T = now on an idle
    partition still answers at once: the view asks the core for a tick (after
    tick_ms / 5 = 2 s without a record on the partition, not 10 s)."""
    worker = workers.start(settings.with_(tick_ms=10_000))
    with LedgerClient(settings) as client:
        opened = client.open_account(ACCOUNTS[1], "EUR", command_id="open", wait=True)
    opened_at = opened.events[0].recorded_at_ms
    wait_for(lambda: now_ms() > opened_at + 2_100, "the partition idle for tick_ms / 5", 10,
             0.01)
    t = now_ms()
    started = time.monotonic()
    status, raw, _ = get(worker, f"/v1/accounts/{ACCOUNTS[1]}?as_of={t}")
    elapsed = time.monotonic() - started
    body = json.loads(raw)
    assert (200, rfc3339_ms(t), 1) == (status, body["as_of"], body["version"])
    assert elapsed < 1.5, elapsed  # not the ~8 s to the next background tick
    print(f"as-of T=now on an idle partition answered in {elapsed * 1000:.0f} ms")
