"""Avro encoding of commands and log records, with a schema fingerprint in front.

Framing: Avro *single-object encoding* (Avro spec, "Single object encoding"):

    byte 0..1   0xC3 0x01                      marker and format version
    byte 2..9   CRC-64-AVRO fingerprint of the writer schema's parsing
                canonical form, little-endian (fastavro ``fingerprint``)
    byte 10..   fastavro schemaless binary body

The fingerprint names the exact writer schema, so a reader can hold several
versions of a schema side by side and resolve old data to the new one; there
is no registry to run. Every ``.avsc`` file under this folder is a known
writer schema. A record whose marker or fingerprint is unknown, or whose body
does not decode, raises :class:`CodecError` (the worker parks it on the
dead-letter topic).

Domain objects are translated here and only here: the ``ledger`` package
knows nothing of Avro.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from ledger import domain

SCHEMA_DIR = Path(__file__).resolve().parent
MAGIC = b"\xc3\x01"
HEADER_LENGTH = len(MAGIC) + 8
RECORD_BYTES_MAX = 64 * 1024  # no command or event is anywhere near this
_LONG_RUN = re.compile(rb"[\x80-\xff]{9}")


class CodecError(ValueError):
    """Bytes that are not a record this ledger knows how to read."""


@dataclass(frozen=True)
class _Schema:
    name: str  # full name, e.g. ledger.v1.Credited
    parsed: dict
    header: bytes  # MAGIC + fingerprint


def _load(path: Path) -> _Schema:
    raw = json.loads(path.read_text())
    parsed = parse_schema(raw, _write_hint=False)
    canonical = to_parsing_canonical_form(raw)
    fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    return _Schema(name=f"{raw['namespace']}.{raw['name']}", parsed=parsed, header=MAGIC + fp)


_COMMAND = _load(SCHEMA_DIR / "command.avsc")
_OUTCOMES = {
    cls: _load(SCHEMA_DIR / "events" / f"{cls.type}.avsc")
    for cls in (
        domain.AccountOpened,
        domain.Credited,
        domain.Debited,
        domain.AccountClosed,
        domain.TransferDebited,
        domain.TransferCredited,
        domain.TransferCompleted,
        domain.TransferRefunded,
        domain.CommandRejected,
    )
}
_LEG = _load(SCHEMA_DIR / "leg.avsc")
# Every writer schema this reader accepts, by header. An evolved schema adds
# its file and an entry here, mapped to the same domain class.
_BY_HEADER: dict[bytes, tuple[_Schema, type | None]] = {
    _COMMAND.header: (_COMMAND, None),
    _LEG.header: (_LEG, None),
    **{schema.header: (schema, cls) for cls, schema in _OUTCOMES.items()},
}
_PAYLOAD_NAMES = {
    "ledger.v1.OpenAccount": domain.OpenAccount,
    "ledger.v1.Credit": domain.Credit,
    "ledger.v1.Debit": domain.Debit,
    "ledger.v1.CloseAccount": domain.CloseAccount,
    "ledger.v1.Transfer": domain.Transfer,
    "ledger.v1.TransferCreditLeg": domain.TransferCreditLeg,
    "ledger.v1.TransferSettleLeg": domain.TransferSettleLeg,
}
_PAYLOAD_BY_TYPE = {cls: name for name, cls in _PAYLOAD_NAMES.items()}


def schema_files() -> list[Path]:
    return sorted(SCHEMA_DIR.rglob("*.avsc"))


def _write(schema: _Schema, record: dict) -> bytes:
    out = io.BytesIO()
    out.write(schema.header)
    schemaless_writer(out, schema.parsed, record)
    data = out.getvalue()
    if len(data) > RECORD_BYTES_MAX:
        # Never write what no reader will accept.
        raise CodecError(f"{schema.name}: {len(data)} bytes exceeds {RECORD_BYTES_MAX}")
    return data


def _read(data: bytes) -> tuple[_Schema, type | None, object]:
    if not isinstance(data, (bytes, bytearray)):
        raise CodecError(f"record value is {type(data).__name__}, not bytes")
    if len(data) > RECORD_BYTES_MAX:
        raise CodecError(f"record of {len(data)} bytes exceeds {RECORD_BYTES_MAX}")
    if len(data) < HEADER_LENGTH or data[:2] != MAGIC:
        raise CodecError("not Avro single-object encoding (missing C3 01 marker)")
    header = bytes(data[:HEADER_LENGTH])
    try:
        schema, cls = _BY_HEADER[header]
    except KeyError:
        raise CodecError(f"unknown schema fingerprint {header[2:].hex()}") from None
    body = io.BytesIO(data)
    body.seek(HEADER_LENGTH)
    try:
        value = schemaless_reader(body, schema.parsed, None, return_record_name=True)
    except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError...
        raise CodecError(f"{schema.name}: body does not decode: {exc!r}") from None
    if body.tell() != len(data):
        raise CodecError(f"{schema.name}: {len(data) - body.tell()} trailing bytes")
    return schema, cls, value


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------


def _fields(obj) -> dict:
    """A dataclass's fields as a new dict: shallow, unlike dataclasses.asdict
    (whose deep copy cost more than the Avro encoding itself)."""
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


def _to_avro(fields: dict) -> dict:
    # Domain metadata is a sorted tuple of pairs (hashable, canonical); Avro's is a map.
    if "metadata" in fields:
        fields["metadata"] = dict(fields["metadata"])
    return fields


def _from_avro(fields: dict) -> dict:
    if "metadata" in fields:
        fields["metadata"] = tuple(sorted(fields["metadata"].items()))
    return fields


def _encode_envelope(schema: _Schema, command, issued_at_ms: int) -> bytes:
    payload = _to_avro(_fields(command))
    command_id = payload.pop("command_id")
    return _write(
        schema,
        {
            "command_id": command_id,
            "issued_at_ms": issued_at_ms,
            "payload": (_PAYLOAD_BY_TYPE[type(command)], payload),
        },
    )


def _decode_envelope(schema: _Schema, data: bytes):
    found, _cls, value = _read(data)
    if found is not schema:
        raise CodecError(f"{found.name} is not a {schema.name}")
    name, payload = value["payload"]
    return (
        _PAYLOAD_NAMES[name](command_id=value["command_id"], **_from_avro(payload)),
        value["issued_at_ms"],
    )


def encode_command(command: domain.Command, issued_at_ms: int) -> bytes:
    return _encode_envelope(_COMMAND, command, issued_at_ms)


def decode_command(data: bytes) -> tuple[domain.Command, int]:
    """Return ``(command, issued_at_ms)`` or raise :class:`CodecError`.

    Commands come from outside, so the bytes must be the canonical encoding
    of what they decode to (minimal varints, single-block maps; map keys in
    any order): fastavro's reader silently wraps a varint outside the long
    range (2**64 + 10 reads as 10), and a ledger must refuse such an amount,
    not apply a different one.
    """
    found, _cls, value = _read(data)
    if found is not _COMMAND:
        raise CodecError(f"{found.name} is not a {_COMMAND.name}")
    # A long outside 64 bits needs a varint with at least 9 continuation
    # bytes in a row. Bodies without such a run (nearly all: ids are ASCII)
    # skip the re-encoding, which cost a fifth of the worker's time; except
    # transfers, whose metadata map could repeat a key (fastavro keeps the last).
    name, payload = value["payload"]
    if name == "ledger.v1.Transfer" or _LONG_RUN.search(data, HEADER_LENGTH) is not None:
        try:
            # Re-encode what was read, as read (map order kept), and compare.
            canonical = _write(_COMMAND, value)
        except (CodecError, OverflowError, ValueError) as exc:
            raise CodecError(f"command does not re-encode: {exc!r}") from None
        if canonical != bytes(data):
            raise CodecError("non-canonical Avro encoding (a long outside 64 bits?)")
    return (
        _PAYLOAD_NAMES[name](command_id=value["command_id"], **_from_avro(dict(payload))),
        value["issued_at_ms"],
    )


def encode_leg(leg: domain.Leg, issued_at_ms: int) -> bytes:
    return _encode_envelope(_LEG, leg, issued_at_ms)


def decode_leg(data: bytes) -> tuple[domain.Leg, int]:
    """Return ``(leg, issued_at_ms)`` or raise :class:`CodecError`."""
    return _decode_envelope(_LEG, data)


# --------------------------------------------------------------------------
# Log records: events and rejections
# --------------------------------------------------------------------------


def encode_outcome(record, command_hash: str) -> bytes:
    """Encode an event or a CommandRejected, with the hash of its command."""
    fields = _to_avro(_fields(record))
    fields["command_hash"] = command_hash
    return _write(_OUTCOMES[type(record)], fields)


def decode_outcome(data: bytes):
    """Return ``(event_or_rejection, command_hash)`` or raise :class:`CodecError`."""
    schema, cls, value = _read(data)
    if cls is None:
        raise CodecError(f"{schema.name} is not a log record")
    command_hash = value.pop("command_hash")
    return cls(**_from_avro(value)), command_hash
