"""Kafka's default key partitioner (murmur2), the same as the Java client,
aiokafka and librdkafka's ``murmur2_random`` for non-empty keys.

The worker uses it to check that a command arrived on the partition its key
belongs to, and the web server to find the partition of an account.
"""

from __future__ import annotations

import functools

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka ``Utils.murmur2``: a signed 32-bit hash as an unsigned int."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    tail = length & ~3
    for i in range(0, tail, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    rest = length & 3
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


@functools.lru_cache(maxsize=65_536)  # account keys repeat; the hash is pure Python
def partition_for(key: bytes, partitions: int) -> int:
    # Kafka's toPositive(): clear the sign bit, then modulo.
    return (murmur2(key) & 0x7FFFFFFF) % partitions
