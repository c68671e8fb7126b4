"""The one fold of a transfer's status at its source (domain.transfer_status),
used by the worker's transfer index (streams/processor.py fold_record)."""

from __future__ import annotations

from ledger import domain as d

NOW = 1_700_000_000_000


def source(balance: int = 1_000):
    state = None
    for command in (d.OpenAccount("o", "src", "EUR", 0), d.Credit("c", "src", balance, "EUR")):
        for event in d.decide(state, command, NOW):
            state = d.evolve(state, event)
    return state


def test_debited_is_pending_then_completed_or_failed_with_the_reason():
    state = source()
    transfer = d.Transfer("t1", "src", "dst", 300, "EUR")
    (debited,) = d.decide(state, transfer, NOW + 1)
    assert (d.TRANSFER_PENDING, None) == d.transfer_status(debited)
    state = d.evolve(state, debited)
    leg = d.credit_leg(transfer)
    (completed,) = d.decide(state, d.settle_leg(leg, completed=True), NOW + 2)
    assert (d.TRANSFER_COMPLETED, None) == d.transfer_status(completed)
    (refunded,) = d.decide(state, d.settle_leg(leg, completed=False,
                                               reason="account_closed"), NOW + 2)
    assert (d.TRANSFER_FAILED, "account_closed") == d.transfer_status(refunded)


def test_a_refused_transfer_is_failed_and_other_records_are_no_transfer_status():
    state = source(balance=10)
    transfer = d.Transfer("t2", "src", "dst", 300, "EUR")
    rejection = d.decide(state, transfer, NOW + 1)
    assert isinstance(rejection, d.Rejection)
    record = d.rejected(transfer, rejection, NOW + 1)
    assert (d.TRANSFER_FAILED, rejection.reason.value) == d.transfer_status(record)
    reused = d.rejected(transfer, d.Rejection(d.RejectionReason.command_id_reused, ""), NOW)
    assert d.transfer_status(reused) is None  # the original outcome stands
    credit = d.Credit("c2", "src", 5, "EUR")
    assert d.transfer_status(d.decide(state, credit, NOW)[0]) is None
    assert d.transfer_status(d.rejected(credit, rejection, NOW)) is None
    destination = d.evolve(None, d.decide(None, d.OpenAccount("o2", "dst", "EUR", 0), NOW)[0])
    (credited,) = d.decide(destination, d.credit_leg(transfer), NOW)
    assert d.transfer_status(credited) is None  # the destination's, not the source's
