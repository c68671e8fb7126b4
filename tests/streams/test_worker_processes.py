"""``ledger worker --processes 2`` (streams/processes.py): two worker
processes under one parent share the partitions; one killed with kill -9 in
the middle of a load is started again by the parent, and every command has
exactly one outcome, equal to an independent model's; SIGTERM to the parent
stops it and both workers."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from ledger import domain
from streams.client import LedgerClient
from streams.eventlog import read_log
from streams.localkafka import _alive as alive  # gone: no such pid, or a zombie
from streams.localkafka import free_port
from tests.conftest import REPO, wait_until, worker_env

pytestmark = pytest.mark.kafka


def children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def health(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())
    except OSError:
        return None


def two_free_ports() -> int:
    """A port p with p and p + 1 both free just now (the workers take
    <port> and <port>+1; a client's outgoing connection may hold any one)."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports")


def test_two_processes_share_partitions_survive_a_kill_and_stop_together(settings, tmp_path):
    port = two_free_ports()
    ports = (port, port + 1)
    base = settings.with_(worker_id="host", web_port=port, data_dir=tmp_path / "data")
    log = tmp_path / "parent.log"
    with open(log, "w") as out:
        parent = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--processes", "2"],
            env=worker_env(base), cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    seen_children: set[int] = set()
    try:
        def all_owned():
            views = [health(p) for p in ports]
            if not all(v and v["status"] == "ok" for v in views):
                return None
            owned = [sorted(v["partitions"]) for v in views]
            return owned if sorted(owned[0] + owned[1]) == list(range(settings.partitions)) \
                and owned[0] and owned[1] else None

        owned = wait_until(all_owned, 90, "both workers owning partitions", log)
        assert {"host-1", "host-2"} == {health(p)["worker_id"] for p in ports}, owned
        first = children_of(parent.pid)
        assert 2 == len(first)
        seen_children.update(first)

        rng = random.Random(5)
        accounts = [f"acct-{i}" for i in range(24)]
        balances = dict.fromkeys(accounts, 0)
        commands = [domain.OpenAccount(f"open-{a}", a, "EUR") for a in accounts]
        for n in range(1500):
            a = rng.choice(accounts)
            amount = rng.randrange(1, 1000)
            commands.append(domain.Credit(f"c{n}", a, amount, "EUR") if rng.random() < 0.6
                            else domain.Debit(f"d{n}", a, amount, "EUR"))
        expected = {}  # command id -> outcome, by an independent model
        for c in commands[len(accounts):]:
            if isinstance(c, domain.Credit):
                balances[c.account_id] += c.amount_minor
                expected[c.command_id] = "applied"
            elif balances[c.account_id] >= c.amount_minor:
                balances[c.account_id] -= c.amount_minor
                expected[c.command_id] = "applied"
            else:
                expected[c.command_id] = "rejected"

        victim = first[0]
        with LedgerClient(base) as client:
            for a in accounts:
                client.send_nowait(commands[accounts.index(a)])
            client.flush()
            for a in accounts:
                assert "applied" == client.wait_for(a, f"open-{a}", 60).status
            rest = commands[len(accounts):]
            for i, c in enumerate(rest):
                client.send_nowait(c)
                if i == len(rest) // 2:
                    client.flush()
                    os.kill(victim, signal.SIGKILL)  # kill -9 one worker mid-load
            client.flush()
            outcomes = {c.command_id: client.wait_for(c.account_id, c.command_id, 120).status
                        for c in rest}
        assert expected == outcomes

        # The parent started the killed worker again, and it owns partitions.
        def replaced():
            children = children_of(parent.pid)
            return children if len(children) == 2 and victim not in children else None

        now = wait_until(replaced, 60, "the killed worker started again", log)
        seen_children.update(now)
        assert not alive(victim)
        wait_until(all_owned, 120, "both workers owning partitions again", log)

        # Exactly one outcome per command in the log, and the model's balances.
        records = [r for _p, _o, r in read_log(base)]
        counts = Counter(r.command_id for r in records)
        assert {c.command_id: 1 for c in commands} == {c.command_id: counts[c.command_id]
                                                        for c in commands}
        final = {}
        for r in records:
            if not isinstance(r, domain.CommandRejected):
                final[r.account_id] = r.balance_after_minor
        assert balances == final

        parent.send_signal(signal.SIGTERM)
        assert 0 == parent.wait(60), log.read_text()[-3000:]
        assert [] == [pid for pid in seen_children if alive(pid)]
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        for pid in seen_children | set(children_of(parent.pid)):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
