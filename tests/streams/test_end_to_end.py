"""Commands sent through the client come out of a real worker as the right events."""

from __future__ import annotations

from collections import defaultdict

import pytest

from ledger import domain
from streams.client import LedgerClient
from streams.eventlog import read_log

pytestmark = pytest.mark.kafka


def test_commands_become_events_in_sequence_order(settings, workers):
    """A short story: open, credit, debit, refused overdraft, retries, close."""
    worker = workers.start(settings)
    with LedgerClient(settings) as client:
        assert client.open_account("alice", "EUR", wait=True).status == "applied"
        assert client.open_account("bob", "EUR", 50_00, wait=True).status == "applied"
        assert client.credit("alice", 100_00, "EUR", wait=True).status == "applied"
        debit = client.debit("alice", 30_00, "EUR", command_id="d-1", wait=True)
        assert (debit.status, debit.events[0].balance_after_minor) == ("applied", 70_00)
        overdraft = client.debit("bob", 80_00, "EUR", wait=True)
        assert ("rejected", "insufficient_funds") == (overdraft.status, overdraft.reason)
        wrong_currency = client.credit("alice", 5, "USD", wait=True)
        assert ("rejected", "currency_mismatch") == (wrong_currency.status, wrong_currency.reason)
        # A retry of d-1 is not applied again; the same id with another body is refused.
        client.debit("alice", 30_00, "EUR", command_id="d-1")
        reused = client.debit("alice", 1, "EUR", command_id="d-1")
        client.flush()
        client.debit("alice", 70_00, "EUR", command_id="d-2", wait=True)
        close = client.close_account("alice", wait=True)
        assert ("applied", "account_closed") == (close.status, close.events[0].type)

    records = [record for _p, _o, record in read_log(settings)]
    by_account = defaultdict(list)
    for record in records:
        by_account[record.account_id].append(record)
    alice = [r for r in by_account["alice"] if not isinstance(r, domain.CommandRejected)]
    assert [1, 2, 3, 4, 5] == [e.sequence for e in alice]
    assert ["account_opened", "credited", "debited", "debited", "account_closed"] == [
        e.type for e in alice]
    assert [0, 100_00, 70_00, 0, 0] == [e.balance_after_minor for e in alice]
    rejections = [(r.command_id == reused, r.reason) for r in records
                  if isinstance(r, domain.CommandRejected)]
    assert sorted([(False, "insufficient_funds"), (False, "currency_mismatch"),
                   (True, "command_id_reused")]) == sorted(rejections)
    # d-1 has exactly one outcome in the log, despite being sent twice (the
    # command_id_reused record is the outcome of the third, different, send).
    assert 1 == sum(1 for r in records if r.command_id == "d-1"
                    and getattr(r, "reason", None) != "command_id_reused")

    status, body = worker.get("/v1/accounts/alice")
    assert (200, "closed", 0, 5) == (status, body["status"], body["balance"], body["version"])
    status, body = worker.get("/v1/accounts/bob")
    assert (200, 0, 50_00, "EUR") == (status, body["balance"], body["overdraft_limit"],
                                      body["currency"])
    assert 404 == worker.get("/v1/accounts/nobody")[0]
