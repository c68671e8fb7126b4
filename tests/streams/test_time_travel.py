"""Time travel: as-of answers equal a reference fold, on every restart; replay and verify.

A seeded random history (credits, debits, transfers among 8 accounts, sent in
bursts so that event times spread out) goes through a real worker. For many
instants T, ``GET /v1/accounts/{id}?as_of=T`` must equal a fold, written
here, of the account's logged events with recorded_at <= T; and the same
bytes after a restart and after wiping the data dir. ``ledger replay`` with
and without snapshots (one of them corrupted on purpose) must agree with each
other and with the fold; ``ledger verify`` must pass, then fail once the live
RocksDB state is tampered with.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import replace

import pytest

from ledger import domain
from streams.client import LedgerClient
from streams.eventlog import read_log
from streams.shapes import account_json
from streams.partitioner import partition_for
from streams.store import PartitionStore, account_key, encode_state

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ACCOUNTS = [f"tt-{i}" for i in range(8)]


def raw_get(worker, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(worker.url + path, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def reference(events_by_account, t_ms: int) -> dict:
    """account -> expected JSON of its state as of t_ms (None: did not exist yet)."""
    out = {}
    for account_id in ACCOUNTS:
        state = None
        for event in events_by_account[account_id]:
            if event.recorded_at_ms <= t_ms:
                state = domain.evolve(state, event)
        out[account_id] = None if state is None else account_json(state)
    return out


def make_history(settings, rng, bursts: int, first: int):
    """Send bursts of commands; return the transfer ids (to wait for)."""
    transfers = []
    with LedgerClient(settings) as client:
        if first == 0:
            for a in ACCOUNTS:
                client.open_account(a, "EUR", rng.choice([0, 500]), command_id=f"open-{a}")
            client.credit(ACCOUNTS[0], 1, "EUR", command_id="warm-up", wait=True)
        last = None
        for burst in range(first, first + bursts):
            for n in range(rng.randrange(5, 30)):
                roll, a = rng.random(), rng.choice(ACCOUNTS)
                cid = f"b{burst}-{n}"
                if roll < 0.45:
                    client.credit(a, rng.randrange(1, 1000), "EUR", command_id=cid)
                elif roll < 0.8:
                    client.debit(a, rng.randrange(1, 1000), "EUR", command_id=cid)
                else:
                    client.transfer(a, rng.choice(ACCOUNTS), rng.randrange(1, 500),
                                    "EUR", transfer_id=cid)
                    transfers.append((a, cid))
                last = (a, cid)
            client.flush()
            time.sleep(rng.uniform(0.01, 0.15))
        client.wait_for(*last, 60)
        for source, tid in transfers:
            try:
                client.wait_for_transfer(source, tid, 60)
            except Exception:  # rejected at the source: settled as failed already
                pass
    return transfers


def test_time_travel_restart_wipe_replay_verify(settings, workers, tmp_path, ledger_cli):
    seed = int(os.environ.get("LEDGER_TIME_SEED", random.randrange(2**32)))
    print(f"time travel seed: {seed} (LEDGER_TIME_SEED={seed} to replay)")
    rng = random.Random(seed)
    worker = workers.start(settings)
    make_history(settings, rng, bursts=20, first=0)
    snap = ledger_cli(settings, "snapshot")
    assert 0 == snap.returncode, snap.stderr
    make_history(settings, rng, bursts=20, first=20)

    events = defaultdict(list)
    for _p, _o, record in read_log(settings):
        if not isinstance(record, domain.CommandRejected):
            events[record.account_id].append(record)
    times = sorted({e.recorded_at_ms for evs in events.values() for e in evs})
    instants = sorted(set(rng.sample(times, 25) + [t - 1 for t in rng.sample(times, 10)]
                          + [times[0] - 1000, times[-1] + 1000]
                          + [rng.randrange(times[0], times[-1]) for _ in range(10)]))

    def answers(w) -> dict:
        return {(a, t): raw_get(w, f"/v1/accounts/{a}?as_of={t}")
                for a in ACCOUNTS for t in instants}

    before = answers(worker)
    for t in instants:
        expected = reference(events, t)
        for a in ACCOUNTS:
            status, body = before[(a, t)]
            if expected[a] is None:
                assert 404 == status, (a, t, body)
            else:
                # An answer about an instant names it (issue 15): as_of and
                # complete_up_to are T, whichever worker answers, whenever.
                at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t // 1000)) + \
                    f".{t % 1000:03d}Z"
                assert (200, {**expected[a], "as_of": at, "complete_up_to": at}) == (
                    status, json.loads(body)), (a, t)
    # The RFC 3339 form of T gives the same answer as epoch ms.
    rfc = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(instants[-2] // 1000)) + \
        f".{instants[-2] % 1000:03d}Z"
    assert before[(ACCOUNTS[0], instants[-2])] == raw_get(
        worker, f"/v1/accounts/{ACCOUNTS[0]}?as_of={rfc}")

    workers.stop(worker)
    worker = workers.start(settings)
    assert before == answers(worker), "as-of answers changed after a restart"
    workers.stop(worker)
    shutil.rmtree(settings.data_dir)
    worker = workers.start(settings)
    assert before == answers(worker), "as-of answers changed after wiping the data dir"

    # Replay: from the snapshot and from scratch, equal to each other and to the fold.
    snapshot_files = list((settings.data_dir.parent / "snapshots").rglob("*.json.gz"))
    assert 1 == len(snapshot_files)
    for t in (times[len(times) // 4], times[-1], instants[-1]):
        outputs = []
        for flag in ([], ["--from-scratch"]):
            out = tmp_path / f"replay-{t}-{len(flag)}.jsonl"
            done = ledger_cli(settings, "replay", "--as-of", str(t), "--out", str(out), *flag)
            assert 0 == done.returncode, done.stderr
            outputs.append(out.read_bytes())
        assert outputs[0] == outputs[1]
        expected = [v for _a, v in sorted(reference(events, t).items()) if v is not None]
        assert expected == [json.loads(line) for line in outputs[0].splitlines()]
    # A corrupted snapshot is skipped with a warning, never a wrong answer.
    damaged = bytearray(snapshot_files[0].read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    snapshot_files[0].write_bytes(bytes(damaged))
    out = tmp_path / "after-corruption.jsonl"
    done = ledger_cli(settings, "replay", "--as-of", str(times[-1]), "--out", str(out))
    assert 0 == done.returncode, done.stderr
    assert "skipping snapshot" in done.stderr
    assert outputs[0] == out.read_bytes()

    # Verify passes on the live store, then fails once RocksDB is tampered with.
    ok = ledger_cli(settings, "verify")
    assert (0, "verify: OK") == (ok.returncode, ok.stdout[:10]), ok.stdout + ok.stderr
    workers.stop(worker)
    victim = ACCOUNTS[3]
    path = settings.data_dir / settings.events_topic / \
        f"p{partition_for(victim.encode(), settings.partitions)}"
    store = PartitionStore(path)
    state = store.account(victim)
    store._db[account_key(victim)] = encode_state(
        replace(state, balance_minor=state.balance_minor + 1))
    store.close()
    bad = ledger_cli(settings, "verify")
    assert 1 == bad.returncode, bad.stdout
    assert "FAILED" in bad.stdout and victim in bad.stdout
