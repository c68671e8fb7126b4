"""Property tests: random command sequences over a few accounts.

Each generated run sends commands for a small set of account ids through
``decide``/``evolve`` the way the stream worker does (decide on the current
state, fold accepted events, drop rejections) and checks, after every step:

(a) folding all accepted events of an account gives the running state;
(b) balance == credits applied - debits applied, computed here from the
    accepted *commands* (not from the events);
(c) balance >= -overdraft_limit;
(d) sequences are 1..n without gaps;
(e) a rejected command changes nothing (and leaving it out of the run changes
    no event);
(f) decide is deterministic.

Transfers are left out here; their property test, with legs delivered out of
order, is in ``test_transfers.py``.

An independent oracle (:func:`expected_reason`) also predicts which commands
must be refused and why.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.domain import (
    AMOUNT_MAX_MINOR,
    BALANCE_MAX_MINOR,
    BALANCE_MIN_MINOR,
    AccountClosed,
    AccountOpened,
    AccountStatus,
    CloseAccount,
    Credit,
    Credited,
    Debit,
    Debited,
    OpenAccount,
    Rejection,
    RejectionReason as R,
    decide,
    evolve,
    fold,
)

ACCOUNTS = ("acc-a", "acc-b", "acc-c")
EDGE_AMOUNTS = (0, -1, 1, 2, 2**31, 2**62, AMOUNT_MAX_MINOR - 1, AMOUNT_MAX_MINOR, 2**63)
EDGE_LIMITS = (0, -1, 1, 2**62, AMOUNT_MAX_MINOR, 2**63)

account_ids = st.sampled_from(ACCOUNTS)
# EUR-heavy, so that most credits and debits meet an account in their currency.
currencies = st.sampled_from(("EUR", "EUR", "EUR", "USD"))
amounts = st.one_of(st.integers(1, 1_000), st.sampled_from(EDGE_AMOUNTS))
limits = st.one_of(st.integers(0, 1_000), st.sampled_from(EDGE_LIMITS))

# Commands without their command_id; the id is stamped by position in the run.
open_shapes = st.tuples(st.just(OpenAccount), account_ids, currencies, limits)
command_shapes = st.one_of(
    open_shapes,
    st.tuples(st.just(Credit), account_ids, amounts, currencies),
    st.tuples(st.just(Credit), account_ids, amounts, currencies),
    st.tuples(st.just(Debit), account_ids, amounts, currencies),
    st.tuples(st.just(Debit), account_ids, amounts, currencies),
    st.tuples(st.just(Credit), account_ids, st.integers(1, 1_000), st.just("EUR")),
    st.tuples(st.just(Debit), account_ids, st.integers(1, 1_000), st.just("EUR")),
    st.tuples(st.just(Credit), account_ids, st.sampled_from((2**62, AMOUNT_MAX_MINOR)), st.just("EUR")),
    st.tuples(st.just(CloseAccount), account_ids),
)


def runs_with_steps(steps):
    """Opens first (so later commands meet live accounts), then any commands.

    The body is a list of short lists, flattened: that makes runs of a few
    dozen commands common without a min_size, which would stop Hypothesis
    from shrinking a failure down to the few commands that matter.
    """
    return st.builds(
        lambda head, chunks: head + [item for chunk in chunks for item in chunk],
        st.lists(st.tuples(open_shapes, steps), max_size=4),
        st.lists(st.lists(st.tuples(command_shapes, steps), max_size=12), max_size=8),
    )


runs = runs_with_steps(st.integers(1, 10_000))
start_times = st.integers(0, 2**41)


def build(shape, index):
    cls, *fields = shape
    return cls(f"cmd-{index}", *fields)


@dataclass
class Book:
    """What the test itself knows about an account, from accepted commands only."""

    opened: bool = False
    closed: bool = False
    currency: str | None = None
    limit: int = 0
    credits: int = 0
    debits: int = 0
    accepted: int = 0

    @property
    def balance(self) -> int:
        return self.credits - self.debits


def expected_reason(book: Book, command) -> R | None:
    """An independent statement of the rules for well-formed ids and currencies."""
    if isinstance(command, OpenAccount):
        limit = command.overdraft_limit_minor
        if limit < 0:
            return R.overdraft_limit_must_not_be_negative
        if limit > AMOUNT_MAX_MINOR:
            return R.amount_too_large
        return R.account_exists if book.opened else None
    if isinstance(command, (Credit, Debit)):
        if command.amount_minor <= 0:
            return R.amount_must_be_positive
        if command.amount_minor > AMOUNT_MAX_MINOR:
            return R.amount_too_large
    if not book.opened:
        return R.unknown_account
    if book.closed:
        return R.account_closed
    if isinstance(command, CloseAccount):
        return R.balance_not_zero if book.balance != 0 else None
    if command.currency != book.currency:
        return R.currency_mismatch
    if isinstance(command, Debit):
        if book.balance - command.amount_minor < -book.limit:
            return R.insufficient_funds
        return None
    if book.balance + command.amount_minor > BALANCE_MAX_MINOR:
        return R.balance_overflow
    return None


def book_after(book: Book, command) -> Book:
    """The test's own bookkeeping once ``command`` has been accepted."""
    if isinstance(command, OpenAccount):
        return replace(
            book, opened=True, currency=command.currency,
            limit=command.overdraft_limit_minor, accepted=book.accepted + 1,
        )
    if isinstance(command, Credit):
        return replace(book, credits=book.credits + command.amount_minor, accepted=book.accepted + 1)
    if isinstance(command, Debit):
        return replace(book, debits=book.debits + command.amount_minor, accepted=book.accepted + 1)
    return replace(book, closed=True, accepted=book.accepted + 1)


EVENT_FOR = {OpenAccount: AccountOpened, Credit: Credited, Debit: Debited, CloseAccount: AccountClosed}


def run(commands_at):
    """Send (command, now_ms) pairs; check every invariant after every step."""
    states = {a: None for a in ACCOUNTS}
    events = {a: [] for a in ACCOUNTS}
    books = {a: Book() for a in ACCOUNTS}
    accepted = []

    for command, now_ms in commands_at:
        a = command.account_id
        before = states[a]
        result = decide(before, command, now_ms)

        # (f) deterministic: same inputs, and an equal copy of the state, same output.
        assert result == decide(before, command, now_ms)
        copy = None if before is None else replace(before)
        assert result == decide(copy, command, now_ms)
        assert states[a] is before  # decide never rebinds or mutates the state

        reason = expected_reason(books[a], command)
        if isinstance(result, Rejection):
            assert reason == result.reason, (command, books[a])
            # (e) nothing changed
            assert states[a] is before
            assert before == (None if copy is None else copy)
        else:
            assert reason is None, (command, books[a], result)
            (event,) = result
            assert type(event) is EVENT_FOR[type(command)]
            assert (event.account_id, event.command_id) == (a, command.command_id)
            expected_time = now_ms if before is None else max(now_ms, before.updated_at_ms)
            assert expected_time == event.recorded_at_ms
            states[a] = evolve(before, event)
            events[a].append(event)
            books[a] = book_after(books[a], command)
            accepted.append((command, now_ms))
            assert event.balance_after_minor == states[a].balance_minor

        # Other accounts' states are untouched by this step; check the one that moved.
        check_invariants(states[a], events[a], books[a])

    for acc in ACCOUNTS:
        check_invariants(states[acc], events[acc], books[acc])
    return events, accepted


def check_invariants(state, events, book: Book) -> None:
    # (a) the running state is the fold of the accepted events
    assert fold(events) == state
    # (d) sequences 1..n, no gaps, and version == n
    assert list(range(1, len(events) + 1)) == [e.sequence for e in events]
    assert book.accepted == len(events)
    if state is None:
        assert not book.opened
        return
    assert state.version == len(events)
    # (b) balance from the accepted commands, not from the events
    assert book.balance == state.balance_minor
    assert (book.credits, book.debits) == (state.credits_minor, state.debits_minor)
    # no transfers in these runs (tests/ledger/test_transfers.py has those):
    # nothing is ever pending out
    assert state.pending_out_minor == 0
    # (c) never below the overdraft limit, never outside int64
    assert state.balance_minor >= -state.overdraft_limit_minor
    assert BALANCE_MIN_MINOR <= state.balance_minor <= BALANCE_MAX_MINOR
    assert (book.currency, book.limit) == (state.currency, state.overdraft_limit_minor)
    expected_status = AccountStatus.closed if book.closed else AccountStatus.open
    assert expected_status == state.status
    if book.closed:
        assert state.balance_minor == 0
    # recorded times never run backwards inside an account
    times = [e.recorded_at_ms for e in events]
    assert times == sorted(times)


def timed(shapes_and_steps, start):
    now = start
    out = []
    for index, (shape, step) in enumerate(shapes_and_steps):
        now += step
        out.append((build(shape, index), now))
    return out


@settings(max_examples=300, deadline=None)
@given(runs, start_times)
def test_random_runs_keep_every_invariant(shapes_and_steps, start):
    """Any command sequence at increasing times keeps (a)-(f) after every step."""
    commands_at = timed(shapes_and_steps, start)
    events, accepted = run(commands_at)

    # (e) a rejected command leaves no trace: replaying only the accepted
    # commands, at the same times, gives the same events and rejects none.
    replayed, reaccepted = run(accepted)
    assert events == replayed
    assert accepted == reaccepted

    # (f) the whole run is deterministic.
    assert (events, accepted) == run(commands_at)


@settings(max_examples=300, deadline=None)
@given(runs_with_steps(st.integers(-5_000, 5_000)), start_times)
def test_clock_going_backwards_never_moves_account_time_back(shapes_and_steps, start):
    """With a caller clock that jumps back and forth, every invariant still holds."""
    run(timed(shapes_and_steps, start))
