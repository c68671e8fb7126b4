"""A poison record is parked with its error; the partition keeps moving."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from ledger import domain
from schemas import codec
from streams.client import LedgerClient
from streams.partitioner import partition_for
from tests.conftest import read_topic

pytestmark = pytest.mark.kafka


def read_dead_letters(settings, count: int, timeout_s: float = 30):
    return read_topic(settings, settings.dead_letter_topic, count, timeout_s)


def test_malformed_records_are_dead_lettered_and_the_partition_goes_on(settings, workers):
    """Garbage, unknown schemas, truncated bodies, wrong keys: parked, then alice is served."""
    workers.start(settings)
    partition = partition_for(b"alice", settings.partitions)
    other = (partition + 1) % settings.partitions
    valid = codec.encode_command(domain.Credit("c-1", "alice", 5, "EUR"), 0)
    unknown_fingerprint = b"\xc3\x01" + b"\x00" * 8 + valid[10:]
    poison = [
        ("not Avro single-object encoding", b"alice", b"{\"json\": true}", partition),
        ("unknown schema fingerprint", b"alice", unknown_fingerprint, partition),
        ("does not decode", b"alice", valid[:-3], partition),
        ("is not the command's account_id", b"bob", valid, partition),
        ("key hashes to partition", b"alice", valid, other),
    ]
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    with LedgerClient(settings) as client:
        client.open_account("alice", "EUR", command_id="open-alice", wait=True)
        for _error, key, value, p in poison:
            producer.produce(settings.commands_topic, value, key, partition=p)
        producer.flush(10)
        # Commands behind the poison, on the same partition, are applied.
        outcome = client.credit("alice", 7, "EUR", command_id="after-poison", wait=True)
    assert ("applied", 7) == (outcome.status, outcome.events[0].balance_after_minor)

    parked = read_dead_letters(settings, len(poison))
    assert len(poison) == len(parked)
    by_value_key = {(m.value(), m.key(), int(dict(m.headers())["ledger.source.partition"])): m
                    for m in parked}
    for expected_error, key, value, p in poison:
        headers = dict(by_value_key[(value, key, p)].headers())
        assert expected_error in headers["ledger.error"].decode()
        assert settings.commands_topic == headers["ledger.source.topic"].decode()
        assert headers["ledger.source.offset"].decode().isdigit()
