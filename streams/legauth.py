"""Authentication of transfer legs: only a worker can move money between accounts.

A transfer's credit leg (and its settle leg) travel on ``<prefix>.legs``, a
topic any client with produce rights could write to. Kafka ACLs are the first
wall; this is the second, and it holds on an open broker too: every leg a
worker produces carries, in the record header ``ledger.mac``, an HMAC-SHA256
of its key and value under a secret only workers hold. A leg without a valid
MAC is dead-lettered with the reason and changes nothing.

The secret lives in a file (``LEDGER_LEG_KEY_FILE``), one key per line, at
least 32 characters each (``ledger keygen`` prints a fresh one). The first
line signs; every line verifies, so a key is rotated by adding the new one as
a second line on every worker, then moving it first, then dropping the old
one. A replayed copy of a genuine leg is harmless: legs are deduplicated by
their id, which names the transfer and its source.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from pathlib import Path

HEADER = "ledger.mac"
KEY_LENGTH_MIN = 32
log = logging.getLogger("ledger.legauth")


class LegKeyError(RuntimeError):
    """The leg key is missing or unusable; the worker must not start."""


def new_key() -> str:
    return secrets.token_hex(32)


def load_keys(path: Path) -> list[bytes]:
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines()]
    except OSError as exc:
        raise LegKeyError(f"cannot read the leg key file {path}: {exc.strerror}") from None
    keys = [line.encode() for line in lines if line and not line.startswith("#")]
    if not keys:
        raise LegKeyError(f"the leg key file {path} holds no key")
    if any(len(k) < KEY_LENGTH_MIN for k in keys):
        raise LegKeyError(f"every key in {path} must be at least {KEY_LENGTH_MIN} characters")
    return keys


class LegAuth:
    """Signs legs with the first key and accepts a MAC made with any key."""

    def __init__(self, keys: list[bytes] | None):
        # None: authentication off (tests of what verify catches without it).
        # One HMAC per key with the key already absorbed: copying it costs
        # less than keying a new one for every leg (3.1 -> 2.2 us a MAC).
        self._keyed = None if keys is None else [hmac.new(k, digestmod=hashlib.sha256)
                                                 for k in keys]

    @property
    def enabled(self) -> bool:
        return self._keyed is not None

    @staticmethod
    def _mac(keyed, record_key: bytes, value: bytes) -> bytes:
        # The key's length first, so (key, value) pairs cannot be re-split.
        mac = keyed.copy()
        mac.update(len(record_key).to_bytes(4, "big") + record_key + value)
        return mac.digest()

    def headers(self, record_key: bytes, value: bytes) -> list[tuple[str, bytes]] | None:
        if self._keyed is None:
            return None
        return [(HEADER, self._mac(self._keyed[0], record_key, value))]

    def problem(self, record_key: bytes | None, value: bytes, headers) -> str | None:
        """Why this leg is not authentic, or None if it is."""
        if self._keyed is None:
            return None
        macs = [v for k, v in (headers or ()) if k == HEADER]
        if len(macs) != 1:
            return f"leg has {len(macs)} {HEADER} headers, not 1: not made by a worker"
        mac = macs[0] or b""
        for keyed in self._keyed:
            if hmac.compare_digest(mac, self._mac(keyed, record_key or b"", value)):
                return None
        return "leg MAC does not match: forged or tampered leg"
