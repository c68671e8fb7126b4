"""Issue 11, proof 3: a retry (same command_id, same body) returns its
original outcome, through the CLI, the Python client and HTTP ?wait=1,
within 1 s, because every command, retries included, gets a reply on
<prefix>.replies in the transaction of its outcome."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from streams.client import LedgerClient
from streams.replies import decode_reply
from tests.conftest import read_topic

pytestmark = pytest.mark.kafka

RETRY_S = 1.0  # the bound for a retry's answer (a generous deadline)


def post(worker, body: dict, timeout_ms: int = 10_000):
    request = urllib.request.Request(
        worker.url + f"/v1/commands?wait=1&timeout_ms={timeout_ms}",
        data=json.dumps(body).encode(), headers={"Content-Type": "application/json"},
        method="POST")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def test_client_retries_get_the_original_outcome(settings, workers):
    workers.start(settings)
    with LedgerClient(settings) as client:
        client.open_account("alice", "EUR", command_id="open-a", wait=True)
        client.open_account("bob", "EUR", command_id="open-b", wait=True)
        first = client.credit("alice", 500, "EUR", command_id="c-1", wait=True)
        refused = client.debit("alice", 10_000, "EUR", command_id="d-big", wait=True)
        moved = client.transfer("alice", "bob", 200, "EUR", transfer_id="t-1", wait=True)
        assert ("applied", False) == (first.status, first.duplicate)
        assert ("rejected", "insufficient_funds") == (refused.status, refused.reason)
        assert "completed" == moved.status

    # A new client, as after a restart of the app: it has seen nothing before.
    with LedgerClient(settings) as client:
        again, took_applied = timed(
            lambda: client.credit("alice", 500, "EUR", command_id="c-1", wait=True,
                                  timeout_s=RETRY_S))
        refused_again, took_rejected = timed(
            lambda: client.debit("alice", 10_000, "EUR", command_id="d-big", wait=True,
                                 timeout_s=RETRY_S))
        moved_again, took_transfer = timed(
            lambda: client.transfer("alice", "bob", 200, "EUR", transfer_id="t-1", wait=True,
                                    timeout_s=RETRY_S))
        # Another body under a used id is not a retry: refused, the original stands.
        reused = client.credit("alice", 1, "EUR", command_id="c-1", wait=True)
    print(f"client retry -> reply: applied {took_applied * 1000:.0f} ms, rejected "
          f"{took_rejected * 1000:.0f} ms, transfer {took_transfer * 1000:.0f} ms")
    assert ("applied", True) == (again.status, again.duplicate)
    assert [(e.type, e.sequence, e.balance_after_minor) for e in first.events] == \
        [(e.type, e.sequence, e.balance_after_minor) for e in again.events]
    assert ("rejected", "insufficient_funds", True) == (
        refused_again.status, refused_again.reason, refused_again.duplicate)
    assert ("completed", None) == (moved_again.status, moved_again.reason)
    assert ("rejected", "command_id_reused", False) == (
        reused.status, reused.reason, reused.duplicate)

    # One reply per send: 2 opens, 3 firsts (+ the transfer's settle), 3 retries, 1 reuse.
    replies = [decode_reply(m.value()) for m in read_topic(settings, settings.replies_topic, 10)]
    assert 10 == len(replies)
    assert 3 == sum(1 for r in replies if r["duplicate"])
    assert 1 == sum(1 for r in replies if r["command_type"] == "transfer_settle")


def test_cli_retries_exit_with_the_original_outcome(settings, workers, ledger_cli):
    workers.start(settings)
    for account in ("alice", "bob"):
        assert 0 == ledger_cli(settings, "send", "open", account, "--currency", "EUR",
                               "--command-id", f"open-{account}", "--wait").returncode
    sends = {
        "applied": ("send", "credit", "alice", "--amount", "300", "--currency", "EUR",
                    "--command-id", "my-key-1", "--wait"),
        "rejected": ("send", "debit", "alice", "--amount", "9999", "--currency", "EUR",
                     "--command-id", "my-key-2", "--wait"),
        "transfer": ("send", "transfer", "alice", "--to", "bob", "--amount", "100",
                     "--currency", "EUR", "--command-id", "my-t-1", "--wait"),
    }
    expected_exit = {"applied": 0, "rejected": 3, "transfer": 0}
    for name, args in sends.items():
        first = ledger_cli(settings, *args)
        # The reply within the 1 s of sending, or exit 1.
        retry = ledger_cli(settings, *args, "--timeout", str(RETRY_S))
        assert expected_exit[name] == first.returncode, first.stderr
        assert expected_exit[name] == retry.returncode, retry.stderr
        original, again = json.loads(first.stdout), json.loads(retry.stdout)
        assert (original["status"], original["reason"], False) == (
            again["status"], again["reason"], original["duplicate"])
        assert again["duplicate"] is True
        assert original["events"] == again["events"] or name == "transfer"


def test_cli_says_accepted_only_once_the_broker_has_the_command(settings, workers,
                                                                   ledger_cli):
    from streams.localkafka import free_port

    nobody = settings.with_(bootstrap_servers=f"127.0.0.1:{free_port()}")
    lost = ledger_cli(nobody, "send", "open", "carol", "--currency", "EUR",
                      "--timeout", "2")
    assert lost.returncode == 1, (lost.stdout, lost.stderr)
    assert "accepted" not in lost.stdout and "not delivered" in lost.stderr
    workers.start(settings)
    sent = ledger_cli(settings, "send", "open", "carol", "--currency", "EUR",
                      "--command-id", "open-carol")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout) == {"command_id": "open-carol", "status": "accepted"}
    again = ledger_cli(settings, "send", "open", "carol", "--currency", "EUR",
                       "--command-id", "open-carol", "--wait", "--timeout", "30")
    assert again.returncode == 0, again.stderr  # the first send was applied
    assert json.loads(again.stdout)["duplicate"] is True


def test_http_retries_answer_the_original_outcome(settings, workers):
    worker = workers.start(settings)
    for account in ("alice", "bob"):
        assert 200 == post(worker, {"type": "open_account", "command_id": f"open-{account}",
                                    "account_id": account, "currency": "EUR"})[0]
    commands = {
        "applied": {"type": "credit", "command_id": "h-1", "account_id": "alice",
                    "amount": 300, "currency": "EUR"},
        "rejected": {"type": "debit", "command_id": "h-2", "account_id": "alice",
                     "amount": 9999, "currency": "EUR"},
        "transfer": {"type": "transfer", "command_id": "h-t", "from_account_id": "alice",
                     "to_account_id": "bob", "amount": 100, "currency": "EUR"},
    }
    took = {}
    for name, body in commands.items():
        status, original = post(worker, body)
        assert 200 == status, original
        # Within the 1 s, or a 504 outcome_timeout.
        (status, again), took[name] = timed(
            lambda: post(worker, body, timeout_ms=int(RETRY_S * 1000)))
        assert 200 == status, again
        assert again.pop("duplicate") is True and original.pop("duplicate") is False
        # The account's version is the one when the reply was made (a
        # transfer's settle came after its first reply).
        original.pop("version"), again.pop("version")
        assert original == again
    print("http retry -> reply:", {k: f"{v * 1000:.0f} ms" for k, v in took.items()})
    assert "rejected" == post(worker, commands["rejected"])[1]["status"]
    status, reused = post(worker, {**commands["applied"], "amount": 1})
    assert (200, "rejected", "command_id_reused") == (status, reused["status"],
                                                      reused["reason"])
