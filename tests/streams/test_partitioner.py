"""streams/partitioner.py is Kafka's murmur2 key partitioner.

Unit tests check the hash against the vectors of Kafka's Java UtilsTest and
against aiokafka's implementation; the broker tests check that librdkafka's
``murmur2_random`` producer puts every key on ``partition_for(key)``, and that
its default (``consistent_random``, CRC32) does not, which is why every
ledger producer pins murmur2.
"""

from __future__ import annotations

import random
import string
import zlib

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from streams.partitioner import murmur2, partition_for

# org.apache.kafka.common.utils.UtilsTest#testMurmur2 (signed 32-bit ints).
# All six also checked against aiokafka.partitioner.murmur2 below.
JAVA_VECTORS = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}


def signed32(value: int) -> int:
    assert 0 <= value < 2**32
    return value - 2**32 if value >= 2**31 else value


@pytest.mark.parametrize("text,expected", JAVA_VECTORS.items(), ids=list(JAVA_VECTORS))
def test_murmur2_matches_kafka_java_vectors(text, expected):
    assert signed32(aiokafka_murmur2(text.encode())) == expected  # the vector itself is right
    assert signed32(murmur2(text.encode())) == expected


@hypothesis_settings(max_examples=500, deadline=None)
@given(key=st.binary(max_size=64), partitions=st.integers(1, 1000))
def test_murmur2_and_partition_match_aiokafka(key, partitions):
    assert murmur2(key) == aiokafka_murmur2(key)
    assert 0 <= murmur2(key) < 2**32
    every = list(range(partitions))
    assert partition_for(key, partitions) == DefaultPartitioner()(key, every, every)
    assert 0 <= partition_for(key, partitions) < partitions


def test_every_tail_length_is_hashed():
    """Keys of length 0..8 walk every branch of the 1/2/3-byte tail."""
    key = bytes(range(200, 209))
    for n in range(len(key) + 1):
        assert murmur2(key[:n]) == aiokafka_murmur2(key[:n])
        assert murmur2(bytearray(key[:n])) == murmur2(key[:n])


def test_partition_for_clears_the_sign_bit_instead_of_abs():
    """Kafka's toPositive is ``h & 0x7fffffff``, not ``abs(h)``: they differ
    for every negative hash, e.g. "21" (-973932308)."""
    key = b"21"
    assert signed32(murmur2(key)) < 0
    assert partition_for(key, 1_000_003) == (murmur2(key) & 0x7FFFFFFF) % 1_000_003
    assert partition_for(key, 1_000_003) != abs(signed32(murmur2(key))) % 1_000_003


# --------------------------------------------------------------------------
# Against a real broker and librdkafka's partitioners
# --------------------------------------------------------------------------


def _random_keys(count: int, seed: int) -> list[bytes]:
    """Half account-id-like text, half arbitrary non-empty bytes, all distinct.

    (Non-empty: librdkafka hashes an empty key differently from Java.)
    """
    rng = random.Random(seed)
    keys: set[bytes] = set()
    alphabet = string.ascii_letters + string.digits + "._:@-"
    while len(keys) < count:
        length = rng.randint(1, 64)
        if len(keys) % 2:
            keys.add("".join(rng.choice(alphabet) for _ in range(length)).encode())
        else:
            keys.add(rng.randbytes(length))
    return sorted(keys)


def _delivered_partitions(settings, keys: list[bytes], partitioner: str | None) -> dict[bytes, int]:
    """Produce one record per key without a partition; the partition each landed on."""
    from confluent_kafka import Producer

    config = {"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 5}
    if partitioner is not None:
        config["partitioner"] = partitioner
    producer = Producer(config)
    delivered: dict[bytes, int] = {}
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered[msg.key()] = msg.partition()

    for key in keys:
        producer.produce(settings.commands_topic, b"partitioner-test", key, on_delivery=on_delivery)
        producer.poll(0)
    remaining = producer.flush(30)
    assert remaining == 0, f"{remaining} records not delivered in 30 s"
    assert errors == []
    assert sorted(delivered) == sorted(keys)
    return delivered


@pytest.mark.kafka
def test_librdkafka_murmur2_random_puts_every_key_on_partition_for(settings):
    assert settings.partitions > 1
    keys = _random_keys(300, seed=20240521)
    delivered = _delivered_partitions(settings, keys, "murmur2_random")
    wrong = {key: (p, partition_for(key, settings.partitions))
             for key, p in delivered.items() if p != partition_for(key, settings.partitions)}
    assert wrong == {}, f"delivered vs partition_for: {wrong}"
    # 300 keys over 6 partitions: every partition was used (a hash, not a constant)
    assert set(delivered.values()) == set(range(settings.partitions))


@pytest.mark.kafka
def test_librdkafka_default_partitioner_is_crc32_and_disagrees(settings):
    """Without ``partitioner`` librdkafka uses consistent_random: CRC32 of the
    key. It puts keys elsewhere than murmur2 (Java, aiokafka, this ledger)."""
    keys = _random_keys(300, seed=7)
    delivered = _delivered_partitions(settings, keys, None)
    assert all(p == zlib.crc32(key) % settings.partitions for key, p in delivered.items())
    disagree = [key for key, p in delivered.items() if p != partition_for(key, settings.partitions)]
    assert disagree, "CRC32 and murmur2 agreed on all 300 keys"
    # about 5/6 of them with 6 partitions
    assert len(disagree) > len(keys) // 2
