"""Holds and expected_version through a real worker (issue 11): place,
capture (all, part, with and without a destination), release, expiry by
the worker within 5 s, and two concurrent writers of whom exactly one wins."""

from __future__ import annotations

import threading
import time

import pytest

from ledger import domain
from streams.client import LedgerClient
from streams.eventlog import read_log

pytestmark = pytest.mark.kafka

EXPIRY_BOUND_S = 5.0  # the issue: within 5 s of expires_at while a worker owns it


def account(worker, account_id: str) -> dict:
    status, body = worker.get(f"/v1/accounts/{account_id}")
    assert 200 == status, body
    return body


def wait_until(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s}s")
        time.sleep(0.05)


def test_hold_capture_release_and_expiry(settings, workers):
    worker = workers.start(settings)
    with LedgerClient(settings) as c:
        for a in ("buyer", "shop", "other"):
            assert "applied" == c.open_account(a, "EUR", command_id=f"open-{a}",
                                               wait=True).status
        c.credit("buyer", 1_000, "EUR", command_id="fund", wait=True)
        placed = c.hold("buyer", 600, "EUR", to_account_id="shop", hold_id="h-shop", wait=True)
        assert ("applied", "hold_placed") == (placed.status, placed.events[0].type)
        assert {"balance": 1_000, "held": 600, "available": 400} == {
            k: account(worker, "buyer")[k] for k in ("balance", "held", "available")}
        # Held money counts against the funds check.
        assert "insufficient_funds" == c.debit("buyer", 401, "EUR", wait=True).reason
        assert "insufficient_funds" == c.hold("buyer", 401, "EUR", wait=True).reason
        # Part of it to the hold's destination, through the transfer path.
        captured = c.capture("buyer", "h-shop", 250, command_id="cap-1", wait=True)
        assert ["hold_captured", "transfer_debited"] == [e.type for e in captured.events]
        moved = c.wait_for_transfer("buyer", "h-shop", 30)
        assert "completed" == moved.status
        assert "hold_captured" == c.capture("buyer", "h-shop", wait=True).reason
        assert "hold_captured" == c.release("buyer", "h-shop", wait=True).reason
        # No destination: it leaves the ledger like a debit.
        c.hold("buyer", 100, "EUR", hold_id="h-out", wait=True)
        assert "capture_exceeds_hold" == c.capture("buyer", "h-out", 101, wait=True).reason
        assert "applied" == c.capture("buyer", "h-out", wait=True).status
        c.hold("buyer", 50, "EUR", hold_id="h-rel", wait=True)
        assert "applied" == c.release("buyer", "h-rel", wait=True).status
        assert "hold_released" == c.capture("buyer", "h-rel", wait=True).reason
        assert "unknown_hold" == c.release("buyer", "nope", wait=True).reason
        c.hold("buyer", 10, "EUR", to_account_id="shop", hold_id="h-mis", wait=True)
        assert "hold_destination_mismatch" == c.capture(
            "buyer", "h-mis", to_account_id="other", wait=True).reason
        assert "applied" == c.release("buyer", "h-mis", wait=True).status
        # Expiry by the worker, at its time.
        short = c.hold("buyer", 70, "EUR", hold_id="h-exp", expires_in_ms=1_000, wait=True)
        expires_at = short.events[0].expires_at_ms

        def expired():
            return next((r for _p, _o, r in read_log(settings)
                         if isinstance(r, domain.HoldExpired) and r.hold_id == "h-exp"), None)

        record = wait_until(expired, 30, "HoldExpired of h-exp")
        late_s = (record.recorded_at_ms - expires_at) / 1000
        print(f"h-exp expired {late_s * 1000:.0f} ms after its expires_at")
        assert 0 <= late_s <= EXPIRY_BOUND_S
        assert "hold_expired" == c.capture("buyer", "h-exp", wait=True).reason
    buyer = account(worker, "buyer")
    # 1000 - 250 (to shop) - 100 (out); nothing held any more.
    assert {"balance": 650, "held": 0, "available": 650, "pending_out": 0} == {
        k: buyer[k] for k in ("balance", "held", "available", "pending_out")}
    assert 250 == account(worker, "shop")["balance"]
    ends = [r.type for _p, _o, r in read_log(settings) if isinstance(r, domain.HoldEvent)
            and not isinstance(r, domain.HoldPlaced)]
    assert sorted(ends) == sorted(["hold_captured", "hold_captured", "hold_released",
                                   "hold_released", "hold_expired"])


def test_expected_version_accepted_rejected_and_one_of_two_writers_wins(settings, workers):
    workers.start(settings)
    with LedgerClient(settings) as c:
        c.open_account("acc", "EUR", command_id="open", wait=True)            # version 1
        ok = c.send(domain.Credit("c-1", "acc", 100, "EUR", expected_version=1), wait=True)
        assert ("applied", 2) == (ok.status, ok.version)
        stale = c.send(domain.Credit("c-2", "acc", 100, "EUR", expected_version=1), wait=True)
        assert ("rejected", "version_conflict", 2) == (stale.status, stale.reason,
                                                       stale.version)
        assert "current version 2" in stale.detail
        # Two writers read version 2 and both act on it: exactly one wins.
        results = {}
        barrier = threading.Barrier(2)

        def writer(name):
            with LedgerClient(settings) as mine:
                barrier.wait()
                results[name] = mine.send(domain.Debit(f"w-{name}", "acc", 60, "EUR",
                                                       expected_version=2), wait=True)

        threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(r.status for r in results.values()) == ["applied", "rejected"]
        loser = next(r for r in results.values() if r.status == "rejected")
        assert ("version_conflict", 3) == (loser.reason, loser.version)
        # The loser reads again and acts on what it read.
        again = c.send(domain.Debit("w-retry", "acc", 40, "EUR", expected_version=3), wait=True)
        assert "applied" == again.status
