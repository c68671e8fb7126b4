"""Holds in the pure domain (issue 11, proof 1): every path and rejection in
tables, expected_version, and a hypothesis property over random sequences of
holds, captures, releases, expiries, credits, debits and transfers."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from ledger import domain
from ledger.domain import (
    ANY_VERSION, HOLD_EXPIRY_DEFAULT_MS, HOLD_EXPIRY_MAX_MS, AccountState, AccountStatus,
    CaptureHold, Credit, Debit, Hold, HoldCaptured, HoldExpired, HoldPlaced, HoldReleased,
    HoldStatus, PlaceHold, Rejection, ReleaseHold, RejectionReason as R, Transfer,
    TransferDebited, decide, evolve, evolve_hold, expire_hold,
)

ACC = "acc-1"
NOW = 1_700_000_000_000
EARLIER = NOW - 10_000
IN_1H = NOW + 3_600_000


def account(balance=1_000, *, overdraft=0, held=0, version=3, status=AccountStatus.open,
            pending=0) -> AccountState:
    return AccountState(ACC, "EUR", balance, overdraft, version, status, EARLIER, EARLIER,
                        pending_out_minor=pending, held_minor=held)


def hold(amount=300, *, to="", expires_at=IN_1H, status=HoldStatus.active,
         hold_id="h-1") -> Hold:
    return Hold(hold_id, ACC, amount, "EUR", to, expires_at, status, 0, EARLIER)


def place(amount=300, *, to="", at=0, within=0, currency="EUR", cid="h-1", expected=-1):
    return PlaceHold(cid, ACC, amount, currency, to, at, within, (), expected)


def capture(amount=0, *, to="", hold_id="h-1", cid="cap-1", expected=-1):
    return CaptureHold(cid, ACC, hold_id, amount, to, expected)


def release(hold_id="h-1", cid="rel-1", expected=-1):
    return ReleaseHold(cid, ACC, hold_id, expected)


def common(seq=4, cid="h-1", amount=300, balance=1_000):
    return dict(account_id=ACC, sequence=seq, command_id=cid, currency="EUR",
                amount_minor=amount, balance_after_minor=balance, recorded_at_ms=NOW)


# --------------------------------------------------------------------------
# Every path that is accepted
# --------------------------------------------------------------------------

HOLD_HAPPY = [
    pytest.param(account(), None, place(), (HoldPlaced(
        **common(), hold_id="h-1", to_account_id="", expires_at_ms=NOW + HOLD_EXPIRY_DEFAULT_MS),),
        id="place-default-expiry"),
    pytest.param(account(), None, place(within=5_000, to="acc-2"), (HoldPlaced(
        **common(), hold_id="h-1", to_account_id="acc-2", expires_at_ms=NOW + 5_000),),
        id="place-expires-in-with-destination"),
    pytest.param(account(), None, place(at=NOW + HOLD_EXPIRY_MAX_MS), (HoldPlaced(
        **common(), hold_id="h-1", to_account_id="", expires_at_ms=NOW + HOLD_EXPIRY_MAX_MS),),
        id="place-expires-at-the-maximum"),
    pytest.param(account(100, overdraft=200), None, place(300), (HoldPlaced(
        **common(balance=100), hold_id="h-1", to_account_id="", expires_at_ms=NOW
        + HOLD_EXPIRY_DEFAULT_MS),), id="place-into-the-overdraft"),
    pytest.param(account(1_000, held=700), None, place(300), (HoldPlaced(
        **common(), hold_id="h-1", to_account_id="", expires_at_ms=NOW
        + HOLD_EXPIRY_DEFAULT_MS),), id="place-exactly-what-is-available"),
    pytest.param(account(held=300), hold(), capture(), (HoldCaptured(
        **common(cid="cap-1", balance=700), hold_id="h-1", released_minor=0,
        to_account_id=""),), id="capture-all-no-destination"),
    pytest.param(account(held=300), hold(), capture(120), (HoldCaptured(
        **common(cid="cap-1", amount=120, balance=880), hold_id="h-1", released_minor=180,
        to_account_id=""),), id="capture-part-no-destination"),
    pytest.param(account(held=300), hold(to="acc-2"), capture(100), (
        HoldCaptured(**common(cid="cap-1", amount=100), hold_id="h-1", released_minor=200,
                     to_account_id="acc-2"),
        TransferDebited(**{**common(seq=5, cid="cap-1", amount=100, balance=900)},
                        transfer_id="h-1", counterparty_account_id="acc-2")),
        id="capture-part-to-the-hold-destination"),
    pytest.param(account(held=300), hold(), capture(to="acc-3"), (
        HoldCaptured(**common(cid="cap-1"), hold_id="h-1", released_minor=0,
                     to_account_id="acc-3"),
        TransferDebited(**{**common(seq=5, cid="cap-1", balance=700)},
                        transfer_id="h-1", counterparty_account_id="acc-3")),
        id="capture-all-to-a-capture-destination"),
    pytest.param(account(held=300), hold(to="acc-2"), capture(to="acc-2"), (
        HoldCaptured(**common(cid="cap-1"), hold_id="h-1", released_minor=0,
                     to_account_id="acc-2"),
        TransferDebited(**{**common(seq=5, cid="cap-1", balance=700)},
                        transfer_id="h-1", counterparty_account_id="acc-2")),
        id="capture-destination-named-twice-the-same"),
    pytest.param(account(held=300), hold(), release(), (HoldReleased(
        **common(cid="rel-1"), hold_id="h-1"),), id="release"),
    pytest.param(account(held=300), hold(expires_at=NOW), expire_hold(ACC, "h-1"), (HoldExpired(
        **common(cid="h-1#expire"), hold_id="h-1", expires_at_ms=NOW),), id="expire-when-due"),
    pytest.param(account(held=300, version=3), hold(), capture(expected=3), (HoldCaptured(
        **common(cid="cap-1", balance=700), hold_id="h-1", released_minor=0,
        to_account_id=""),), id="capture-at-the-expected-version"),
]


@pytest.mark.parametrize("state, the_hold, command, expected", HOLD_HAPPY)
def test_hold_paths(state, the_hold, command, expected):
    assert expected == decide(state, command, NOW, the_hold)


@pytest.mark.parametrize("state, the_hold, command, events", HOLD_HAPPY)
def test_held_and_available_follow_the_events(state, the_hold, command, events):
    """held rises by a placed hold and falls by all of it at its end, whatever
    was captured; available = balance + overdraft - held."""
    after = state
    for event in events:
        after = evolve(after, event)
    if isinstance(events[0], HoldPlaced):
        assert after.held_minor == state.held_minor + events[0].amount_minor
    else:
        assert after.held_minor == state.held_minor - the_hold.amount_minor
    assert after.available_minor == (after.balance_minor + after.overdraft_limit_minor
                                     - after.held_minor)
    assert after.available_minor >= 0
    h = the_hold
    for event in events:
        if isinstance(event, domain.HoldEvent):
            h = evolve_hold(h, event)
    status = {HoldPlaced: HoldStatus.active, HoldCaptured: HoldStatus.captured,
              HoldReleased: HoldStatus.released, HoldExpired: HoldStatus.expired}
    assert status[type(events[0])] == h.status


# --------------------------------------------------------------------------
# Every rejection (in REJECTION_ORDER; tests/ledger/test_decide.py checks it)
# --------------------------------------------------------------------------

HOLD_REJECTIONS = [
    pytest.param(account(), None, replace(place(), account_id="a/b"), R.invalid_account_id,
                 id="place-bad-account"),
    pytest.param(account(), None, place(to="a b"), R.invalid_account_id,
                 id="place-bad-destination"),
    pytest.param(account(held=300), hold(), capture(to="a/b"), R.invalid_account_id,
                 id="capture-bad-destination"),
    pytest.param(account(version=3), None, place(expected=2), R.version_conflict,
                 id="place-expects-older-version"),
    pytest.param(account(held=300, version=3), hold(), capture(expected=4), R.version_conflict,
                 id="capture-expects-newer-version"),
    pytest.param(account(held=300, version=3), hold(), release(expected=0), R.version_conflict,
                 id="release-expects-no-account"),
    pytest.param(account(), None, place(currency="eur"), R.invalid_currency,
                 id="place-bad-currency"),
    pytest.param(account(), None, place(0), R.amount_must_be_positive, id="place-zero"),
    pytest.param(account(held=300), hold(), capture(-5), R.amount_must_be_positive,
                 id="capture-negative"),
    pytest.param(account(), None, place(2**63), R.amount_too_large, id="place-2**63"),
    pytest.param(account(), None, place(to=ACC), R.same_account, id="place-to-itself"),
    pytest.param(account(held=300), hold(), capture(to=ACC), R.same_account,
                 id="capture-to-itself"),
    pytest.param(account(), None, place(at=NOW), R.expiry_out_of_range, id="expires-now"),
    pytest.param(account(), None, place(at=NOW + HOLD_EXPIRY_MAX_MS + 1),
                 R.expiry_out_of_range, id="expires-past-30-days"),
    pytest.param(account(), None, place(within=HOLD_EXPIRY_MAX_MS + 1), R.expiry_out_of_range,
                 id="expires-in-past-30-days"),
    pytest.param(account(), None, place(at=IN_1H, within=5), R.expiry_out_of_range,
                 id="expires-at-and-in"),
    pytest.param(account(), None, place(within=-1), R.expiry_out_of_range,
                 id="expires-in-negative"),
    pytest.param(None, None, place(), R.unknown_account, id="place-unknown-account"),
    pytest.param(None, None, capture(), R.unknown_account, id="capture-unknown-account"),
    pytest.param(account(status=AccountStatus.closed), None, place(), R.account_closed,
                 id="place-closed"),
    pytest.param(account(), None, place(currency="USD"), R.currency_mismatch,
                 id="place-other-currency"),
    pytest.param(account(), None, capture(), R.unknown_hold, id="capture-unknown-hold"),
    pytest.param(account(), None, release(), R.unknown_hold, id="release-unknown-hold"),
    pytest.param(account(), hold(status=HoldStatus.captured), capture(), R.hold_captured,
                 id="capture-twice"),
    pytest.param(account(), hold(status=HoldStatus.captured), release(), R.hold_captured,
                 id="release-captured"),
    pytest.param(account(), hold(status=HoldStatus.released), capture(), R.hold_released,
                 id="capture-released"),
    pytest.param(account(), hold(status=HoldStatus.expired), capture(), R.hold_expired,
                 id="capture-expired"),
    pytest.param(account(held=300), hold(expires_at=NOW), capture(), R.hold_expired,
                 id="capture-due-not-yet-expired"),
    pytest.param(account(held=300), hold(expires_at=NOW - 1), release(), R.hold_expired,
                 id="release-due-not-yet-expired"),
    pytest.param(account(held=300), hold(), capture(301), R.capture_exceeds_hold,
                 id="capture-one-past-the-hold"),
    pytest.param(account(held=300), hold(to="acc-2"), capture(to="acc-3"),
                 R.hold_destination_mismatch, id="capture-elsewhere-than-the-hold-says"),
    pytest.param(account(300), None, place(301), R.insufficient_funds,
                 id="place-past-balance"),
    pytest.param(account(1_000, held=800), None, place(201), R.insufficient_funds,
                 id="place-past-what-holds-leave"),
    pytest.param(account(100, overdraft=50, held=100), None, place(51), R.insufficient_funds,
                 id="place-past-overdraft-and-holds"),
]


@pytest.mark.parametrize("state, the_hold, command, expected", HOLD_REJECTIONS)
def test_hold_rejections(state, the_hold, command, expected):
    result = decide(state, command, NOW, the_hold)
    assert isinstance(result, Rejection), result
    assert expected == result.reason


def test_holds_count_against_debits_and_transfers():
    held = account(1_000, held=900)
    assert R.insufficient_funds == decide(held, Debit("d", ACC, 101, "EUR"), NOW).reason
    assert R.insufficient_funds == decide(
        held, Transfer("t", ACC, "acc-2", 101, "EUR"), NOW).reason
    assert isinstance(decide(held, Debit("d", ACC, 100, "EUR"), NOW), tuple)


def test_version_conflict_names_the_current_version():
    result = decide(account(version=7), Credit("c", ACC, 1, "EUR", expected_version=6), NOW)
    assert (R.version_conflict, "current version 7, expected 6") == (result.reason,
                                                                     result.detail)
    assert isinstance(decide(account(version=7), Credit("c", ACC, 1, "EUR", 7), NOW), tuple)
    assert isinstance(decide(None, domain.OpenAccount("o", ACC, "EUR", 0, 0), NOW), tuple)


def test_expected_version_left_out_keeps_the_old_hash():
    """Commands sent before expected_version existed hash as they did."""
    assert domain.command_hash(Credit("c", ACC, 1, "EUR")) == \
        domain.command_hash(Credit("c", ACC, 1, "EUR", ANY_VERSION))
    assert domain.command_hash(Credit("c", ACC, 1, "EUR")) != \
        domain.command_hash(Credit("c", ACC, 1, "EUR", 3))


def test_expiry_of_a_hold_not_due_is_a_bug():
    with pytest.raises(ValueError):
        decide(account(held=300), expire_hold(ACC, "h-1"), NOW, hold(expires_at=NOW + 1))


# --------------------------------------------------------------------------
# Property: random histories keep the money right
# --------------------------------------------------------------------------

ACCOUNTS = ("a", "b", "c")

ops = st.one_of(
    st.tuples(st.just("credit"), st.sampled_from(ACCOUNTS), st.integers(1, 500)),
    st.tuples(st.just("debit"), st.sampled_from(ACCOUNTS), st.integers(1, 500)),
    st.tuples(st.just("transfer"), st.sampled_from(ACCOUNTS), st.sampled_from(ACCOUNTS),
              st.integers(1, 500)),
    st.tuples(st.just("hold"), st.sampled_from(ACCOUNTS), st.integers(1, 500),
              st.sampled_from(("",) + ACCOUNTS), st.integers(1, 20_000)),
    st.tuples(st.just("capture"), st.integers(0, 40), st.integers(0, 600),
              st.sampled_from(("",) + ACCOUNTS)),
    st.tuples(st.just("release"), st.integers(0, 40)),
    st.tuples(st.just("tick"), st.integers(1, 10_000)),
    st.tuples(st.just("deliver"), st.integers(0, 10)),
)


class Model:
    """A ledger of three accounts run on the pure domain alone: legs queued
    and delivered later, expiries at each tick."""

    def __init__(self, overdrafts):
        self.now = NOW
        self.states = {}
        self.holds: dict[tuple[str, str], Hold] = {}
        self.ends: dict[tuple[str, str], list] = {}
        self.queue: list = []  # legs in flight
        self.external = 0  # credits - debits - captures without destination
        self.n = 0
        for a, overdraft in zip(ACCOUNTS, overdrafts):
            self.apply(a, domain.OpenAccount(f"open-{a}", a, "EUR", overdraft))

    def cid(self) -> str:
        self.n += 1
        return f"c{self.n}"

    def apply(self, account_id, command, the_hold=None):
        result = decide(self.states.get(account_id), command, self.now, the_hold)
        if isinstance(result, Rejection):
            return result
        for event in result:
            self.states[account_id] = evolve(self.states.get(account_id), event)
            self.check(account_id)
            if isinstance(event, domain.HoldEvent):
                key = (account_id, event.hold_id)
                self.holds[key] = evolve_hold(self.holds.get(key), event)
                if not isinstance(event, HoldPlaced):
                    self.ends.setdefault(key, []).append(event.type)
            if isinstance(event, domain.Credited):
                self.external += event.amount_minor
            elif isinstance(event, domain.Debited):
                self.external -= event.amount_minor
            elif isinstance(event, HoldCaptured) and not event.to_account_id:
                self.external -= event.amount_minor
            elif isinstance(event, TransferDebited):
                self.queue.append(domain.credit_leg(Transfer(
                    event.transfer_id, account_id, event.counterparty_account_id,
                    event.amount_minor, "EUR")))
        return result

    def check(self, account_id):
        state = self.states[account_id]
        assert state.available_minor >= 0  # balance - held >= -overdraft, at every event
        assert state.held_minor >= 0

    def deliver(self, i):
        if not self.queue:
            return
        leg = self.queue.pop(i % len(self.queue))
        if isinstance(leg, domain.TransferCreditLeg):
            result = self.apply(leg.account_id, leg)
            ok = not isinstance(result, Rejection)
            self.queue.append(domain.settle_leg(leg, ok, "" if ok else result.reason.value))
        else:
            self.apply(leg.account_id, leg)

    def expire_due(self):
        for (a, hold_id), h in sorted(self.holds.items()):
            if h.status is HoldStatus.active and h.expires_at_ms <= self.now:
                self.apply(a, expire_hold(a, hold_id), h)

    def money(self) -> int:
        in_flight = sum(leg.amount_minor for leg in self.queue
                        if isinstance(leg, domain.TransferCreditLeg))
        refunds_owed = sum(leg.amount_minor for leg in self.queue
                           if isinstance(leg, domain.TransferSettleLeg) and not leg.completed)
        return sum(s.balance_minor for s in self.states.values()) + in_flight + refunds_owed


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=3, max_size=3), st.lists(ops, max_size=60))
def test_random_histories_keep_holds_and_money_right(overdrafts, history):
    m = Model(overdrafts)
    placed: list[tuple[str, str]] = []
    for op in history:
        kind = op[0]
        if kind == "credit":
            m.apply(op[1], Credit(m.cid(), op[1], op[2], "EUR"))
        elif kind == "debit":
            m.apply(op[1], Debit(m.cid(), op[1], op[2], "EUR"))
        elif kind == "transfer":
            m.apply(op[1], Transfer(m.cid(), op[1], op[2], op[3], "EUR"))
        elif kind == "hold":
            cid = m.cid()
            result = m.apply(op[1], PlaceHold(cid, op[1], op[2], "EUR", op[3], 0, op[4]))
            if not isinstance(result, Rejection):
                placed.append((op[1], cid))
        elif kind in ("capture", "release") and placed:
            a, hold_id = placed[op[1] % len(placed)]
            command = CaptureHold(m.cid(), a, hold_id, op[2], op[3]) if kind == "capture" \
                else ReleaseHold(m.cid(), a, hold_id)
            m.apply(a, command, m.holds[(a, hold_id)])
        elif kind == "tick":
            m.now += op[1]
            m.expire_due()
        elif kind == "deliver":
            m.deliver(op[1])
        for a, state in m.states.items():
            assert state.held_minor == sum(
                h.amount_minor for (acc, _), h in m.holds.items()
                if acc == a and h.status is HoldStatus.active)
        assert m.money() == m.external
    # The end: every leg delivered, every hold's time passed.
    while m.queue:
        m.deliver(0)
    m.now += HOLD_EXPIRY_MAX_MS
    m.expire_due()
    for key, h in m.holds.items():
        assert h.status is not HoldStatus.active
        assert 1 == len(m.ends[key]), (key, m.ends[key])  # one terminal event, ever
    assert all(s.held_minor == 0 and s.pending_out_minor == 0 for s in m.states.values())
    assert m.money() == m.external
