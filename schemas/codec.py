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

import json
from dataclasses import dataclass
from pathlib import Path

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

from ledger import domain

SCHEMA_DIR = Path(__file__).resolve().parent
MAGIC = b"\xc3\x01"
HEADER_LENGTH = len(MAGIC) + 8
RECORD_BYTES_MAX = 64 * 1024  # no command or event is anywhere near this


class CodecError(ValueError):
    """Bytes that are not a record this ledger knows how to read."""


@dataclass(frozen=True)
class _Schema:
    name: str  # full name, e.g. ledger.v1.Credited
    parsed: dict
    header: bytes  # MAGIC + fingerprint
    write: object  # (bytearray, value) -> None
    read: object  # (bytes, pos) -> (value, pos)


def _load(path: Path) -> _Schema:
    raw = json.loads(path.read_text())
    parsed = parse_schema(raw, _write_hint=False)
    canonical = to_parsing_canonical_form(raw)
    fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    write, read = _compile(parsed)
    return _Schema(name=f"{raw['namespace']}.{raw['name']}", parsed=parsed,
                   header=MAGIC + fp, write=write, read=read)


# --------------------------------------------------------------------------
# Avro binary encoding for the types our schemas use
# --------------------------------------------------------------------------
#
# fastavro parses the schemas and computes fingerprints, but encoding and
# decoding go through the small plan compiled here from the parsed schema:
# fastavro's schemaless reader and writer were a third of the worker's
# per-command CPU, and its reader silently wraps a varint outside 64 bits
# (2**64 + 10 reads as 10). This reader refuses that, duplicate map keys,
# booleans other than 0/1, invalid UTF-8 and truncated data. The tests hold
# it to fastavro's byte-for-byte output and reading (tests/schemas).

_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


def _write_long(out: bytearray, n) -> None:
    if type(n) is not int:  # noqa: E721 - bool is not a long here
        raise ValueError(f"{n!r} is not an int")
    if not _LONG_MIN <= n <= _LONG_MAX:
        raise OverflowError(f"{n} does not fit an Avro long")
    z = (n << 1) if n >= 0 else ((-n) << 1) - 1
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)


def _read_long(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    pos += 1
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos
    z, shift = b & 0x7F, 7
    while True:
        b = buf[pos]
        pos += 1
        z |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift > 63:
            raise CodecError("non-canonical Avro encoding (a long outside 64 bits)")
    if z >> 64:
        raise CodecError("non-canonical Avro encoding (a long outside 64 bits)")
    return (z >> 1) ^ -(z & 1), pos


def _write_string(out: bytearray, text) -> None:
    if type(text) is not str:  # noqa: E721
        raise ValueError(f"{text!r} is not a str")
    data = text.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError
    _write_long(out, len(data))
    out += data


def _read_string(buf: bytes, pos: int) -> tuple[str, int]:
    n, pos = _read_long(buf, pos)
    end = pos + n
    if n < 0 or end > len(buf):
        raise CodecError(f"string of {n} bytes does not fit the record")
    try:
        return buf[pos:end].decode("utf-8"), end
    except UnicodeDecodeError:
        raise CodecError("string is not UTF-8") from None


def _write_boolean(out: bytearray, value) -> None:
    if type(value) is not bool:  # noqa: E721
        raise ValueError(f"{value!r} is not a bool")
    out.append(1 if value else 0)


def _read_boolean(buf: bytes, pos: int) -> tuple[bool, int]:
    b = buf[pos]
    if b > 1:
        raise CodecError(f"boolean byte {b}")
    return b == 1, pos + 1


_PRIMITIVES = {
    "long": (_write_long, _read_long),
    "string": (_write_string, _read_string),
    "boolean": (_write_boolean, _read_boolean),
}


def _compile(schema):
    """(write, read) functions for a parsed schema of the kinds the ledger uses."""
    if isinstance(schema, str):
        return _PRIMITIVES[schema]
    if isinstance(schema, list):  # a union of records, as fastavro's (name, record)
        branches = [(branch["name"], *_compile(branch)) for branch in schema]
        index_of = {name: i for i, (name, _w, _r) in enumerate(branches)}

        def write_union(out: bytearray, value) -> None:
            name, record = value
            if name not in index_of:
                raise ValueError(f"{name} is not a branch of this union")
            index = index_of[name]
            _write_long(out, index)
            branches[index][1](out, record)

        def read_union(buf: bytes, pos: int):
            index, pos = _read_long(buf, pos)
            if not 0 <= index < len(branches):
                raise CodecError(f"union branch {index} does not exist")
            name, _write, read = branches[index]
            record, pos = read(buf, pos)
            return (name, record), pos

        return write_union, read_union
    kind = schema["type"]
    if kind == "record":
        fields = [(f["name"], *_compile(f["type"])) for f in schema["fields"]]

        def write_record(out: bytearray, record: dict) -> None:
            for name, write, _read in fields:
                write(out, record[name])

        def read_record(buf: bytes, pos: int):
            record = {}
            for name, _write, read in fields:
                record[name], pos = read(buf, pos)
            return record, pos

        return write_record, read_record
    if kind == "map":
        write_value, read_value = _compile(schema["values"])

        def write_map(out: bytearray, mapping: dict) -> None:
            if mapping:
                _write_long(out, len(mapping))
                for key, value in mapping.items():
                    _write_string(out, key)
                    write_value(out, value)
            out.append(0)

        def read_map(buf: bytes, pos: int):
            mapping = {}
            while True:
                count, pos = _read_long(buf, pos)
                if count == 0:
                    return mapping, pos
                if count < 0:  # a block with its size in bytes after the count
                    count = -count
                    _size, pos = _read_long(buf, pos)
                for _ in range(count):
                    key, pos = _read_string(buf, pos)
                    if key in mapping:
                        raise CodecError(f"map key {key!r} appears twice")
                    mapping[key], pos = read_value(buf, pos)

        return write_map, read_map
    raise NotImplementedError(f"Avro type {kind!r} is not used by the ledger")


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
# Not an account record: a mark that time has passed on one event-log
# partition (domain.PartitionTick). decode_outcome refuses it; readers of the
# event log test is_tick() first (streams.eventlog.read_log does).
_TICK = _load(SCHEMA_DIR / "tick.avsc")
# Every writer schema this reader accepts, by header. An evolved schema adds
# its file and an entry here, mapped to the same domain class.
_BY_HEADER: dict[bytes, tuple[_Schema, type | None]] = {
    _COMMAND.header: (_COMMAND, None),
    _LEG.header: (_LEG, None),
    _TICK.header: (_TICK, None),
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


HISTORY_DIR = SCHEMA_DIR / "history"


def schema_files() -> list[Path]:
    """The current schemas: the ones the codec writes."""
    return sorted(p for p in SCHEMA_DIR.rglob("*.avsc") if HISTORY_DIR not in p.parents)


def history_files() -> list[Path]:
    """Frozen copies of every writer schema ever released (never deleted)."""
    return sorted(HISTORY_DIR.glob("*.avsc"))


def _write(schema: _Schema, record: dict) -> bytes:
    out = bytearray(schema.header)
    schema.write(out, record)
    data = bytes(out)
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
    try:
        value, end = schema.read(data, HEADER_LENGTH)
    except IndexError:
        raise CodecError(f"{schema.name}: body is truncated") from None
    except CodecError as exc:
        raise CodecError(f"{schema.name}: body does not decode: {exc}") from None
    if end != len(data):
        raise CodecError(f"{schema.name}: {len(data) - end} trailing bytes")
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

    Commands come from outside; the reader refuses a long outside 64 bits
    and a repeated map key rather than apply a different value than was sent.
    """
    return _decode_envelope(_COMMAND, data)


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


# --------------------------------------------------------------------------
# Partition ticks: time passing on an event-log partition
# --------------------------------------------------------------------------


def encode_tick(tick: domain.PartitionTick) -> bytes:
    return _write(_TICK, {"partition": tick.partition, "recorded_at_ms": tick.recorded_at_ms})


def is_tick(data) -> bool:
    """Whether an event-log record is a PartitionTick (by its header alone: no
    decoding). Every reader of the event log that wants account records
    skips these."""
    return isinstance(data, (bytes, bytearray)) and data[:HEADER_LENGTH] == _TICK.header


def decode_tick(data: bytes) -> domain.PartitionTick:
    """Return the PartitionTick or raise :class:`CodecError`."""
    schema, _cls, value = _read(data)
    if schema is not _TICK:
        raise CodecError(f"{schema.name} is not a ledger.v1.PartitionTick")
    return domain.PartitionTick(value["partition"], value["recorded_at_ms"])
