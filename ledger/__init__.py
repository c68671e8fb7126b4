"""Event-sourced account ledger: the pure domain.

This package never imports faust, confluent_kafka, rocksdict or fastavro;
``tests/ledger/test_purity.py`` checks that. See :mod:`ledger.domain`.
"""

from ledger.domain import (  # noqa: F401
    AccountClosed,
    AccountOpened,
    AccountState,
    AccountStatus,
    CloseAccount,
    Command,
    CommandRejected,
    Credit,
    Credited,
    Debit,
    Debited,
    Event,
    OpenAccount,
    Rejection,
    RejectionReason,
    command_hash,
    decide,
    evolve,
    fold,
    rejected,
)
