"""Transfer legs: only a worker's leg moves money, and no transfer is stranded.

Issue 8: a hand-made credit leg produced to ``<prefix>.legs`` used to mint
money, and the same transfer id used from two sources could strand a
transfer forever. Here forged, unsigned and tampered legs are parked on the
dead-letter topic with their reason and change nothing; with leg
authentication turned off (a throwaway ledger) ``ledger verify`` names the
forged credit. Transfer ids (and command ids) are scoped per account: the
same id from two sources, to one destination or to two on a shared
partition, gives two transfers that both complete.
"""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from ledger import domain
from schemas import codec
from streams import legauth
from streams.client import LedgerClient
from streams.eventlog import read_log
from streams.partitioner import partition_for
from tests.conftest import read_topic

pytestmark = pytest.mark.kafka


def balances(settings) -> dict[str, int]:
    out = {}
    for _p, _o, record in read_log(settings):
        if not isinstance(record, domain.CommandRejected):
            out[record.account_id] = record.balance_after_minor
    return out


def forged_credit(dest: str, amount: int, source: str = "alice") -> tuple[bytes, bytes]:
    leg = domain.TransferCreditLeg(f"forged-{amount}#credit:{source}", dest,
                                   f"forged-{amount}", source, amount, "EUR")
    return dest.encode(), codec.encode_leg(leg, 0)


def test_forged_and_tampered_legs_are_parked_and_move_no_money(settings, workers, ledger_cli):
    workers.start(settings)
    with LedgerClient(settings) as client:
        client.open_account("alice", "EUR", command_id="open-alice", wait=True)
        client.open_account("bob", "EUR", command_id="open-bob", wait=True)
        client.credit("alice", 1_000, "EUR", command_id="fund", wait=True)
        done = client.transfer("alice", "bob", 300, "EUR", transfer_id="t-1", wait=True)
    assert "completed" == done.status
    before = balances(settings)
    assert {"alice": 700, "bob": 300} == before

    # The genuine credit leg, as a worker wrote it (with its MAC).
    (genuine,) = [m for m in read_topic(settings, settings.legs_topic, 2)
                  if m.key() == b"bob"]
    real_leg, issued = codec.decode_leg(genuine.value())
    tampered_value = codec.encode_leg(
        domain.TransferCreditLeg(real_leg.command_id, real_leg.account_id, real_leg.transfer_id,
                                 real_leg.from_account_id, 3_000_000, "EUR"), issued)
    other_key = legauth.LegAuth([legauth.new_key().encode()])
    key1, unsigned = forged_credit("bob", 1_000_000)
    key2, wrong_mac = forged_credit("bob", 2_000_000)
    attacks = [
        ("has 0 ledger.mac headers", key1, unsigned, None),
        ("does not match", key2, wrong_mac, other_key.headers(key2, wrong_mac)),
        ("does not match", b"bob", tampered_value, genuine.headers()),
    ]
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    p_bob = partition_for(b"bob", settings.partitions)
    for _reason, key, value, headers in attacks:
        producer.produce(settings.legs_topic, value, key, partition=p_bob, headers=headers)
    # An exact replay of the genuine leg is authentic but already applied: a no-op.
    producer.produce(settings.legs_topic, genuine.value(), genuine.key(), partition=p_bob,
                     headers=genuine.headers())
    producer.flush(10)

    parked = read_topic(settings, settings.dead_letter_topic, len(attacks))
    assert len(attacks) == len(parked)
    by_value = {m.value(): dict(m.headers())["ledger.error"].decode() for m in parked}
    for reason, _key, value, _headers in attacks:
        assert reason in by_value[value]
    # Everything on bob's partition before a fresh command has been handled
    # once that command's outcome exists (legs and commands share the store).
    with LedgerClient(settings) as client:
        assert "applied" == client.credit("bob", 1, "EUR", command_id="probe", wait=True).status
    assert {"alice": 700, "bob": 301} == balances(settings)
    result = ledger_cli(settings, "verify", "--no-store")
    assert 0 == result.returncode, result.stdout + result.stderr


def test_without_leg_authentication_verify_names_the_forged_credit(settings, workers,
                                                                    ledger_cli):
    """A throwaway ledger with leg authentication off: the forged credit is
    applied, and verify is what catches it."""
    insecure = settings.with_(leg_auth=False)
    workers.start(insecure)
    with LedgerClient(insecure) as client:
        client.open_account("bob", "EUR", command_id="open-bob", wait=True)
        key, value = forged_credit("bob", 1_000_000)
        producer = Producer({"bootstrap.servers": insecure.bootstrap_servers})
        producer.produce(insecure.legs_topic, value, key,
                         partition=partition_for(key, insecure.partitions))
        producer.flush(10)
        assert "applied" == client.credit("bob", 1, "EUR", command_id="probe", wait=True).status
    assert 1_000_001 == balances(insecure)["bob"]  # the money was minted
    result = ledger_cli(insecure, "verify", "--no-store")
    assert 1 == result.returncode, result.stdout + result.stderr
    assert "credit_without_debit" in result.stdout + result.stderr


def accounts_on(settings, partition: int, count: int, prefix: str) -> list[str]:
    found, n = [], 0
    while len(found) < count:
        name = f"{prefix}{n}"
        if partition_for(name.encode(), settings.partitions) == partition:
            found.append(name)
        n += 1
    return found


def test_the_same_ids_from_different_accounts_are_different_commands(settings, workers):
    """Issue 8's stranding scenario and its variants: every transfer completes,
    and one command id on two accounts is applied on both, on one partition
    or on two."""
    workers.start(settings)
    (s1,) = accounts_on(settings, 0, 1, "src-a-")
    (s2,) = accounts_on(settings, 1, 1, "src-b-")
    s3, = accounts_on(settings, 0, 2, "src-a-")[1:]          # shares s1's partition
    d1, d2 = accounts_on(settings, 2, 2, "dst-")            # two destinations, one partition
    sources = (s1, s2, s3)
    with LedgerClient(settings) as client:
        for a in (*sources, d1, d2):
            client.open_account(a, "EUR", command_id="open", wait=True)
        for a in sources:
            assert "applied" == client.credit(a, 1_000, "EUR", command_id="fund", wait=True).status
        # The same transfer id from three sources: to two destinations on one
        # partition, and twice to the same destination.
        sent = [(s1, d1, 100), (s2, d2, 200), (s3, d1, 400)]
        for source, dest, amount in sent:
            client.transfer(source, dest, amount, "EUR", transfer_id="dup")
        fates = [client.wait_for_transfer(source, "dup", 30) for source, _d, _a in sent]
        # The same id again from s1 with another body: refused, the original stands.
        client.transfer(s1, d2, 999, "EUR", transfer_id="dup")
        # One command id, two accounts on one partition and on two partitions.
        same = [client.debit(a, 10, "EUR", command_id="same-id", wait=True) for a in sources]
    assert ["completed"] * 3 == [f.status for f in fates]
    assert ["applied"] * 3 == [o.status for o in same]
    assert {s1: 890, s2: 790, s3: 590, d1: 500, d2: 200} == {
        a: b for a, b in balances(settings).items() if a in (*sources, d1, d2)}
    # Nothing is left pending anywhere; the reuse was logged as refused.
    pending, refused = {}, []
    for _p, _o, record in read_log(settings):
        if isinstance(record, domain.CommandRejected):
            refused.append((record.account_id, record.command_id, record.reason))
        if isinstance(record, domain.TransferDebited):
            pending[domain.transfer_of(record)] = record
        elif isinstance(record, (domain.TransferCompleted, domain.TransferRefunded)):
            pending.pop(domain.transfer_of(record))
    assert {} == pending
    assert [(s1, "dup", "command_id_reused")] == refused
