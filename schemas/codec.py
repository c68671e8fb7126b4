"""Avro encoding of commands and log records, with a schema fingerprint in front.

Framing: Avro *single-object encoding* (Avro spec, "Single object encoding"):

    byte 0..1   0xC3 0x01                      marker and format version
    byte 2..9   CRC-64-AVRO fingerprint of the writer schema's parsing
                canonical form, little-endian (fastavro ``fingerprint``)
    byte 10..   the Avro binary body (what fastavro's schemaless writer
                writes; encoded and decoded here by a plan compiled from
                the schema, see below)

The fingerprint names the exact writer schema; there is no registry to run.
The ``.avsc`` files in this folder and in ``events/`` are the current
schemas: the codec writes only those, and reads them with their own plan.
``history/`` holds a frozen copy of every writer schema ever released
(``<full name>.v<N>.avsc``, never deleted): a record whose header is one of
those is decoded with the writer's schema and resolved into the current
schema of the same full name (or alias) by the Avro spec's resolution rules:
a field the reader added takes its default, a field the reader dropped is
skipped, fields and records match by name or alias, union branches by full
name (not position), an int is promoted to a long. The plan for each (writer,
reader) pair is compiled at import, and a pair that does not resolve (a new
field without a default, a changed type, a union branch the reader dropped)
raises :class:`SchemaResolutionError` then: an old record is never misread.
README.md "Schema evolution" says how a new version is rolled out.

A record whose marker or fingerprint is unknown, or whose body does not
decode, raises :class:`CodecError` (the worker parks it on the dead-letter
topic).

Domain objects are translated here and only here: the ``ledger`` package
knows nothing of Avro.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
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


@dataclass(frozen=True, eq=False)  # one object per loaded file: hashed by identity
class _Schema:
    name: str  # full name, e.g. ledger.v1.Credited
    parsed: dict
    header: bytes  # MAGIC + fingerprint
    write: object  # (bytearray, value) -> None
    read: object  # (bytes, pos) -> (value, pos)


def _header(raw: dict) -> bytes:
    canonical = to_parsing_canonical_form(raw)
    return MAGIC + bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def _load(path: Path) -> _Schema:
    raw = json.loads(path.read_text())
    parsed = parse_schema(raw, _write_hint=False)
    write, read = _compile(parsed)
    return _Schema(name=f"{raw['namespace']}.{raw['name']}", parsed=parsed,
                   header=_header(raw), write=write, read=read)


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


_NON_CANONICAL = "non-canonical Avro encoding (a long outside 64 bits)"

# schemas/_avro.c, built by `pip install` where a C compiler is (setup.py):
# the generated readers and writers below read and write their longs and
# strings with it. Without it they do that in Python: the same values, the
# same bytes and the same errors.
try:
    from schemas import _avro
except ImportError:
    _avro = None
    _READ_RUN = None
else:
    _avro.init(CodecError, _NON_CANONICAL)
    _READ_RUN = _avro.read_run
ACCELERATED = _READ_RUN is not None
_WRITE_RUN = _avro.write_run if ACCELERATED else None


_RUN_LETTERS = {"long": "l", "string": "s"}  # the Avro types read_run and write_run take
_RUN_TYPES = tuple(_RUN_LETTERS)  # compared by ==: a field's type may be a dict (a map)


def _run_kinds(kinds) -> bytes:
    """The ``kinds`` argument of read_run and write_run: a letter per type."""
    return "".join(_RUN_LETTERS[kind] for kind in kinds).encode()


_ENVELOPE_HEAD = _run_kinds(("string", "long", "long"))  # command_id, issued_at_ms, branch


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
            raise CodecError(_NON_CANONICAL)
    if z >> 64:
        raise CodecError(_NON_CANONICAL)
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


_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


def _write_int(out: bytearray, n) -> None:
    if type(n) is int and not _INT_MIN <= n <= _INT_MAX:  # noqa: E721
        raise OverflowError(f"{n} does not fit an Avro int")
    _write_long(out, n)


def _read_int(buf: bytes, pos: int) -> tuple[int, int]:
    n, pos = _read_long(buf, pos)
    if not _INT_MIN <= n <= _INT_MAX:
        raise CodecError(f"{n} does not fit an Avro int")
    return n, pos


_PRIMITIVES = {
    "int": (_write_int, _read_int),  # no current schema has one; an old one may
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
        return _record_writer(
            [(f["name"], f["type"], write) for f, (_n, write, _r) in zip(schema["fields"], fields)]
        ), _record_reader(
            [(f["name"], f["type"], read) for f, (_n, _w, read) in zip(schema["fields"], fields)])
    if kind == "map":
        write_value, read_value = _compile(schema["values"])

        def write_map(out: bytearray, mapping: dict) -> None:
            if mapping:
                _write_long(out, len(mapping))
                for key, value in mapping.items():
                    _write_string(out, key)
                    write_value(out, value)
            out.append(0)

        return write_map, _map_reader(read_value)
    raise NotImplementedError(f"Avro type {kind!r} is not used by the ledger")


def _record_writer(fields, source=None, run=_WRITE_RUN):
    """A writer of one record's fields, generated as straight-line code like
    _record_reader: a long or a string that is what its type says is written
    inline, without a call; anything else goes to the compiled writer, which
    writes it or raises the same error as always (ValueError, OverflowError,
    KeyError for a missing field). The worker encodes every event it appends
    with this (issue 10). ``source(name, kind)``: the expression a field is
    read with, in a writer ``(out, record, extra)`` (_outcome_writer); by
    default ``record[name]``, in a writer ``(out, record)``.

    With ``run`` (schemas/_avro.c's write_run, when it is built) and a
    ``source`` (a writer of domain objects), each run of consecutive long and
    string fields is one call of it; only if it declines (a value not
    exactly of its kind) does the inline code write that run, or raise. A
    dict's run is written inline: a missing key there must not be found
    before a wrong value earlier in the run, as the tuple of the run would."""
    if source is None:
        run = None
    lines = [f"def write_record(out, record{', extra' if source else ''}):"]
    env = {"LONG_MIN": _LONG_MIN, "LONG_MAX": _LONG_MAX, "run": run}
    pending: list[tuple[str, str, list[str]]] = []  # (expression, kind, inline code)

    def flush() -> None:
        if pending:
            kinds = _run_kinds(kind for _e, kind, _c in pending)
            values = "".join(f"{expression}, " for expression, _k, _c in pending)
            lines.append(f"    if not run(out, {kinds!r}, ({values})):")
            lines.extend("    " + line for _e, _k, code in pending for line in code)
            pending.clear()

    for i, (name, kind, write) in enumerate(fields):
        env[f"w{i}"] = write
        expression = source(name, kind) if source else f"record[{name!r}]"
        code = [f"    v = {expression}"]
        if kind == "long":
            code += ["    if type(v) is int and LONG_MIN <= v <= LONG_MAX:",
                     "        z = (v << 1) if v >= 0 else ((-v) << 1) - 1",
                     "        while z >= 0x80:",
                     "            out.append((z & 0x7F) | 0x80)",
                     "            z >>= 7",
                     "        out.append(z)",
                     "    else:",
                     f"        w{i}(out, v)"]
        elif kind == "string":
            code += ["    if type(v) is str:",
                     "        d = v.encode('utf-8')",
                     "        z = len(d) << 1",
                     "        while z >= 0x80:",
                     "            out.append((z & 0x7F) | 0x80)",
                     "            z >>= 7",
                     "        out.append(z)",
                     "        out += d",
                     "    else:",
                     f"        w{i}(out, v)"]
        else:
            code.append(f"    w{i}(out, v)")
        if run is not None and kind in _RUN_TYPES:
            pending.append((expression, kind, code))
        else:
            flush()
            lines += code
    flush()
    if not fields:
        lines.append("    pass")
    exec("\n".join(lines), env)  # noqa: S102 - code built above from the schema's field list
    return env["write_record"]


def _record_reader(fields, result=None, run=_READ_RUN, **names):
    """A reader of one record's fields, generated as straight-line code: the
    longs and strings of the fields are read inline (a one-byte long, the
    common case, without a call), other types by their compiled reader. The
    same checks as _read_long and _read_string: a record decodes to the same
    value or raises the same CodecError. This is most of the cost of reading
    the log back (catch-up, replay: issue 10). It returns a dict of the
    fields, or ``result({field name: variable})``, an expression over them
    and ``names`` (_outcome_reader).

    With ``run`` (schemas/_avro.c's read_run, when it is built), each run of
    consecutive long and string fields is one call of it instead."""
    lines = ["def read_record(buf, pos):", "    try:"]
    env = {"CodecError": CodecError, "_NON_CANONICAL": _NON_CANONICAL, "run": run, **names}
    pending: list[tuple[int, str]] = []  # a run of long and string fields for ``run``

    def flush() -> None:
        if pending:
            targets = "".join(f"v{i}, " for i, _kind in pending)
            kinds = _run_kinds(kind for _i, kind in pending)
            lines.append(f"        {targets}pos = run(buf, pos, {kinds!r})")
            pending.clear()

    for i, (_name, kind, read) in enumerate(fields):
        if run is not None and kind in _RUN_TYPES:
            pending.append((i, kind))
            continue
        flush()
        if kind in ("long", "string"):
            target = f"v{i}" if kind == "long" else "n"
            lines += ["        b = buf[pos]",
                      "        pos += 1",
                      "        if b < 0x80:",
                      f"            {target} = (b >> 1) ^ -(b & 1)",
                      "        else:",
                      "            z, shift = b & 0x7F, 7",
                      "            while True:",
                      "                b = buf[pos]",
                      "                pos += 1",
                      "                z |= (b & 0x7F) << shift",
                      "                if b < 0x80:",
                      "                    break",
                      "                shift += 7",
                      "                if shift > 63:",
                      "                    raise CodecError(_NON_CANONICAL)",
                      "            if z >> 64:",
                      "                raise CodecError(_NON_CANONICAL)",
                      f"            {target} = (z >> 1) ^ -(z & 1)"]
            if kind == "string":
                lines += ["        end = pos + n",
                          "        if n < 0 or end > len(buf):",
                          "            raise CodecError(f'string of {n} bytes does not fit the record')",
                          f"        v{i} = buf[pos:end].decode('utf-8')",
                          "        pos = end"]
        else:
            env[f"r{i}"] = read
            lines.append(f"        v{i}, pos = r{i}(buf, pos)")
    flush()
    variables = {name: f"v{i}" for i, (name, _k, _r) in enumerate(fields)}
    value = result(variables) if result else \
        "{" + ", ".join(f"{name!r}: {v}" for name, v in variables.items()) + "}"
    lines += ["    except UnicodeDecodeError:",
              "        raise CodecError('string is not UTF-8') from None",
              f"    return {value}, pos"]
    exec("\n".join(lines), env)  # noqa: S102 - code built above from the schema's field list
    return env["read_record"]


def _map_reader(read_value):
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

    return read_map


# --------------------------------------------------------------------------
# Schema resolution: reading data written with an older schema
# --------------------------------------------------------------------------
#
# Avro spec, "Schema Resolution", for the cases the ledger supports. A plan
# is compiled once per (writer, reader) pair, at import; a pair the rules do
# not resolve raises SchemaResolutionError then, so an old record is never
# misread at run time.


class SchemaResolutionError(ValueError):
    """A writer schema whose data cannot be read as its reader schema."""


_PROMOTIONS = {("int", "long"): "int"}  # (writer, reader) -> how to read


def _kind(schema) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, str):
        return schema
    return schema["type"]


def _names(schema) -> set[str]:
    """A named type's full name and its aliases (qualified by its namespace)."""
    name = schema["name"]
    namespace = name.rpartition(".")[0]
    aliases = {a if "." in a or not namespace else f"{namespace}.{a}"
               for a in schema.get("aliases", ())}
    return {name, *aliases}


def _matches(writer, reader) -> bool:
    """Whether a writer branch selects this reader branch of a union."""
    w, r = _kind(writer), _kind(reader)
    if w == r == "record":
        return writer["name"] in _names(reader)
    if w == r == "map":
        return True
    return w == r and w in _PRIMITIVES or (w, r) in _PROMOTIONS


def _default(schema, value, where: str):
    """The codec's value for a JSON default of a reader field (Avro spec:
    a union's default is of its first branch)."""
    kind = _kind(schema)
    if kind in ("long", "int") and type(value) is int:  # noqa: E721
        return value
    if kind == "string" and type(value) is str:  # noqa: E721
        return value
    if kind == "boolean" and type(value) is bool:  # noqa: E721
        return value
    if kind == "map" and isinstance(value, dict):
        return {k: _default(schema["values"], v, f"{where}[{k!r}]") for k, v in value.items()}
    if kind == "record" and isinstance(value, dict):
        record = {}
        for field in schema["fields"]:
            name = field["name"]
            if name in value:
                record[name] = _default(field["type"], value[name], f"{where}.{name}")
            elif "default" in field:
                record[name] = _default(field["type"], field["default"], f"{where}.{name}")
            else:
                raise SchemaResolutionError(f"{where}: default has no {name!r}")
        return record
    if kind == "union" and schema:
        first = schema[0]
        return (first["name"], _default(first, value, where))
    raise SchemaResolutionError(f"{where}: default {value!r} is not a {kind}")


def _constant(value):
    if isinstance(value, (dict, tuple)):
        return lambda: copy.deepcopy(value)  # each record gets its own
    return lambda: value


def _resolve(writer, reader, where: str):
    """A read function, (bytes, pos) -> (value, pos), that decodes data
    written with ``writer`` into the shape of ``reader``."""
    w, r = _kind(writer), _kind(reader)
    if w == "union" or r == "union":
        return _resolve_union(writer, reader, where)
    if w == r == "record":
        return _resolve_record(writer, reader, where)
    if w == r == "map":
        read_value = _resolve(writer["values"], reader["values"], f"{where}{{}}")
        return _map_reader(read_value)
    if w == r and w in _PRIMITIVES:
        return _PRIMITIVES[w][1]
    if (w, r) in _PROMOTIONS:
        return _PRIMITIVES[_PROMOTIONS[w, r]][1]
    raise SchemaResolutionError(f"{where}: writer type {w} does not resolve to {r}")


def _resolve_record(writer, reader, where: str):
    if writer["name"] not in _names(reader):
        raise SchemaResolutionError(f"{where}: {writer['name']} is not a {reader['name']}")
    where = reader["name"]
    by_name = {}
    for field in reader["fields"]:
        by_name.setdefault(field["name"], field)
    by_alias = {a: field for field in reader["fields"] for a in field.get("aliases", ())}
    steps = []  # (reader field name, or None to drop the writer's field; read)
    for wfield in writer["fields"]:
        rfield = by_name.get(wfield["name"]) or by_alias.get(wfield["name"])
        if rfield is None:  # removed from the reader: read past it
            steps.append((None, _compile(wfield["type"])[1]))
            continue
        name = rfield["name"]
        if any(step_name == name for step_name, _read in steps):
            raise SchemaResolutionError(f"{where}.{name}: two writer fields read into it")
        steps.append((name, _resolve(wfield["type"], rfield["type"], f"{where}.{name}")))
    written = {name for name, _read in steps}
    defaults = []
    for rfield in reader["fields"]:
        name = rfield["name"]
        if name in written:
            continue
        if "default" not in rfield:
            raise SchemaResolutionError(
                f"{where}.{name}: not in the writer schema and has no default")
        defaults.append((name, _constant(_default(rfield["type"], rfield["default"],
                                                  f"{where}.{name}"))))

    def read_record(buf: bytes, pos: int):
        record = {}
        for name, read in steps:
            value, pos = read(buf, pos)
            if name is not None:
                record[name] = value
        for name, make in defaults:
            record[name] = make()
        return record, pos

    return read_record


def _resolve_union(writer, reader, where: str):
    """Union branches are matched by full name (or reader alias), never by
    position: a newer union may hold more branches, in another order."""
    readers = reader if isinstance(reader, list) else [reader]

    def label(schema) -> str:  # how the codec tags a union value: the record's name
        return schema["name"] if _kind(schema) == "record" else _kind(schema)

    def branch(wbranch):
        for rbranch in readers:
            if _matches(wbranch, rbranch):
                return label(rbranch), _resolve(wbranch, rbranch, f"{where}|{label(rbranch)}")
        raise SchemaResolutionError(
            f"{where}: writer branch {label(wbranch)} has no reader branch")

    if not isinstance(writer, list):  # a plain writer value into a reader union
        tag, read = branch(writer)

        def read_into_union(buf: bytes, pos: int):
            value, pos = read(buf, pos)
            return (tag, value), pos

        return read_into_union
    branches = [branch(wbranch) for wbranch in writer]
    tagged = isinstance(reader, list)

    def read_union(buf: bytes, pos: int):
        index, pos = _read_long(buf, pos)
        if not 0 <= index < len(branches):
            raise CodecError(f"union branch {index} does not exist")
        tag, read = branches[index]
        value, pos = read(buf, pos)
        return ((tag, value) if tagged else value), pos

    return read_union


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
        domain.HoldPlaced,
        domain.HoldCaptured,
        domain.HoldReleased,
        domain.HoldExpired,
        domain.CommandRejected,
    )
}
_LEG = _load(SCHEMA_DIR / "leg.avsc")
# Not an account record: a mark that time has passed on one event-log
# partition (domain.PartitionTick). decode_outcome refuses it; readers of the
# event log test is_tick() first (streams.eventlog.read_log does).
_TICK = _load(SCHEMA_DIR / "tick.avsc")
HISTORY_DIR = SCHEMA_DIR / "history"


def schema_files() -> list[Path]:
    """The current schemas: the ones the codec writes."""
    return sorted(p for p in SCHEMA_DIR.rglob("*.avsc") if HISTORY_DIR not in p.parents)


def history_files() -> list[Path]:
    """Frozen copies of every writer schema ever released (never deleted)."""
    return sorted(HISTORY_DIR.glob("*.avsc"))


def _history(readers, paths) -> dict[bytes, tuple[_Schema, object]]:
    """Header of each historical writer schema -> (the current reader schema
    of the same full name or alias, a read function resolving the old body
    into it). A frozen copy identical to a current schema is that schema."""
    current = {schema.header for schema in readers}
    by_name: dict[str, _Schema] = {}
    for schema in readers:
        for name in _names(schema.parsed):
            if by_name.setdefault(name, schema) is not schema:
                raise SchemaResolutionError(f"two current schemas are called {name}")
    table: dict[bytes, tuple[_Schema, object]] = {}
    for path in paths:
        raw = json.loads(path.read_text())
        header = _header(raw)
        if header in current:
            continue
        if header in table:
            raise SchemaResolutionError(f"{path.name}: a second copy of {table[header][0].name}")
        writer = parse_schema(raw, _write_hint=False)
        reader = by_name.get(writer["name"])
        if reader is None:
            raise SchemaResolutionError(f"{path.name}: no current schema {writer['name']}")
        try:
            table[header] = (reader, _resolve(writer, reader.parsed, reader.name))
        except SchemaResolutionError as exc:
            raise SchemaResolutionError(f"{path.name} into {reader.name}: {exc}") from None
    return table


def resolve_history(reader_paths, history_paths) -> dict[bytes, tuple[str, object]]:
    """Resolve each writer schema in ``history_paths`` into the reader schema
    (among ``reader_paths``) of the same full name: header -> (reader full
    name, read function ``(bytes, HEADER_LENGTH) -> (value, end)``). Raises
    SchemaResolutionError for a pair that does not resolve. The codec loads
    its own schemas through the same code at import."""
    readers = [_load(Path(p)) for p in reader_paths]
    table = _history(readers, [Path(p) for p in history_paths])
    return {header: (reader.name, read) for header, (reader, read) in table.items()}


_PAYLOAD_NAMES = {
    "ledger.v1.OpenAccount": domain.OpenAccount,
    "ledger.v1.Credit": domain.Credit,
    "ledger.v1.Debit": domain.Debit,
    "ledger.v1.CloseAccount": domain.CloseAccount,
    "ledger.v1.Transfer": domain.Transfer,
    "ledger.v1.PlaceHold": domain.PlaceHold,
    "ledger.v1.CaptureHold": domain.CaptureHold,
    "ledger.v1.ReleaseHold": domain.ReleaseHold,
    "ledger.v1.TransferCreditLeg": domain.TransferCreditLeg,
    "ledger.v1.TransferSettleLeg": domain.TransferSettleLeg,
}
_PAYLOAD_BY_TYPE = {cls: name for name, cls in _PAYLOAD_NAMES.items()}


def _is_map(kind) -> bool:
    return isinstance(kind, dict) and kind["type"] == "map"


def _class_arguments(fields: list, cls: type, skip: str) -> Callable[[dict], str]:
    """For a current schema's record read straight into ``cls``: a function
    of the readers' variables (field name -> variable) giving the class's
    arguments, positionally, in its order; an Avro map becomes the domain's
    sorted tuple of pairs (as _from_avro does). The record's fields must be
    the class's (less ``skip``, written beside them): anything else would be
    dropped by the writers (record.<field>), so it is refused at import."""
    names = [name for name in cls.__dataclass_fields__ if name != skip]
    if sorted(f["name"] for f in fields) != sorted(names):
        raise SchemaResolutionError(f"{cls.__name__}: its fields are not those of its schema")
    kinds = {f["name"]: f["type"] for f in fields}

    def arguments(variables: dict) -> str:
        args = []
        for name in names:
            v = variables[name]
            if _is_map(kinds[name]):
                v = f"tuple(sorted({v}.items()))"
            args.append(v + ", ")
        return "".join(args)

    return arguments


def _outcome_reader(schema: _Schema, cls: type):
    """A reader of a log record of the current schema straight into its
    domain object: ``((record, command_hash), pos)``, no dict of its fields
    on the way (catch-up and replay read every record of the log), called
    positionally (keywords cost half as much again as the constructor)."""
    fields = schema.parsed["fields"]
    arguments = _class_arguments([f for f in fields if f["name"] != "command_hash"], cls, "")
    return _record_reader(
        [(f["name"], f["type"], _compile(f["type"])[1]) for f in fields],
        lambda variables: f"(make({arguments(variables)}), {variables['command_hash']})",
        make=cls)


def _as_outcome(cls: type, read):
    """A historical log record's reader (a dict of the current schema's
    fields) made to return what _outcome_reader's do."""
    def read_outcome(buf: bytes, pos: int):
        value, pos = read(buf, pos)
        command_hash = value.pop("command_hash")
        return (cls(**_from_avro(value)), command_hash), pos

    return read_outcome


# Every writer schema this reader accepts, by header -> (reader schema, its
# log-record class or None, read function). A current schema is read with its
# own plan, as fast as ever; a historical one (schemas/history/) through the
# plan resolving it into the current schema of the same name. Resolving fails
# at import, not on some old record at run time.
_CURRENT = {_COMMAND: None, _LEG: None, _TICK: None,
            **{schema: cls for cls, schema in _OUTCOMES.items()}}
_BY_HEADER: dict[bytes, tuple[_Schema, type | None, object]] = {
    **{schema.header: (schema, cls, schema.read) for schema, cls in _CURRENT.items()},
    **{header: (reader, _CURRENT[reader], read)
       for header, (reader, read) in _history(_CURRENT, history_files()).items()},
}


def _payload_reader(branch: dict, cls: type):
    """A reader of one command or leg payload: the tuple of the class's
    arguments after command_id (which the envelope carries)."""
    fields = branch["fields"]
    if next(iter(cls.__dataclass_fields__)) != "command_id":
        raise SchemaResolutionError(f"{cls.__name__}: command_id is not its first field")
    arguments = _class_arguments(fields, cls, "command_id")
    return _record_reader([(f["name"], f["type"], _compile(f["type"])[1]) for f in fields],
                          lambda variables: f"({arguments(variables)})")


def _envelope_reader(schema: _Schema):
    """A reader of a command or leg envelope of the current schema straight
    into its domain object: ``((command, issued_at_ms), pos)``, no dicts on
    the way (the worker decodes every command it applies)."""
    if [f["name"] for f in schema.parsed["fields"]] != ["command_id", "issued_at_ms", "payload"]:
        raise SchemaResolutionError(f"{schema.name}: not an envelope this reader knows")
    branches = [(_PAYLOAD_NAMES[b["name"]], _payload_reader(b, _PAYLOAD_NAMES[b["name"]]))
                for b in schema.parsed["fields"][2]["type"]]
    count = len(branches)

    def read_envelope(buf: bytes, pos: int):
        if _READ_RUN is None:
            command_id, pos = _read_string(buf, pos)
            issued_at_ms, pos = _read_long(buf, pos)
            index, pos = _read_long(buf, pos)
        else:
            command_id, issued_at_ms, index, pos = _READ_RUN(buf, pos, _ENVELOPE_HEAD)
        if not 0 <= index < count:
            raise CodecError(f"union branch {index} does not exist")
        cls, read = branches[index]
        values, pos = read(buf, pos)
        return (cls(command_id, *values), issued_at_ms), pos

    return read_envelope


def _as_envelope(read):
    """A historical envelope's reader (a dict of the current schema's
    fields) made to return what _envelope_reader's do."""
    def read_envelope(buf: bytes, pos: int):
        value, pos = read(buf, pos)
        name, payload = value["payload"]
        command = _PAYLOAD_NAMES[name](command_id=value["command_id"], **_from_avro(payload))
        return (command, value["issued_at_ms"]), pos

    return read_envelope


def _as_tick(read):
    def read_tick(buf: bytes, pos: int):
        value, pos = read(buf, pos)
        return domain.PartitionTick(value["partition"], value["recorded_at_ms"]), pos

    return read_tick


def _domain_entry(header: bytes, schema: _Schema, cls: type | None, read):
    """An entry of _BY_HEADER made into one of _DOMAIN_BY_HEADER."""
    current = header == schema.header
    if cls is not None:
        return schema, cls, _outcome_reader(schema, cls) if current else _as_outcome(cls, read)
    if schema is _TICK:
        return schema, cls, _as_tick(read)
    return schema, cls, _envelope_reader(schema) if current else _as_envelope(read)


# The same, read into the domain's objects (every decode_* function): a log
# record's read function gives ``(record, command_hash)``, an envelope's
# ``(command, issued_at_ms)``, a tick's the PartitionTick.
_DOMAIN_BY_HEADER: dict[bytes, tuple[_Schema, type | None, object]] = {
    header: _domain_entry(header, *entry) for header, entry in _BY_HEADER.items()
}


def _write(schema: _Schema, record: dict) -> bytes:
    out = bytearray(schema.header)
    schema.write(out, record)
    return _checked_size(schema, out)


def _checked_size(schema: _Schema, out: bytearray) -> bytes:
    data = bytes(out)
    if len(data) > RECORD_BYTES_MAX:
        # Never write what no reader will accept.
        raise CodecError(f"{schema.name}: {len(data)} bytes exceeds {RECORD_BYTES_MAX}")
    return data


def _read(data: bytes, table: dict = _BY_HEADER) -> tuple[_Schema, type | None, object]:
    # Once per record of every catch-up and replay: the common case (bytes
    # with a known header) takes one type test, one length and one lookup;
    # what is wrong is told apart only on the way out.
    if type(data) is not bytes:  # noqa: E721
        if not isinstance(data, (bytes, bytearray)):
            raise CodecError(f"record value is {type(data).__name__}, not bytes")
        data = bytes(data)
    size = len(data)
    if size > RECORD_BYTES_MAX:
        raise CodecError(f"record of {size} bytes exceeds {RECORD_BYTES_MAX}")
    found = table.get(data[:HEADER_LENGTH])  # every header is MAGIC + a fingerprint
    if found is None:
        if size < HEADER_LENGTH or data[:2] != MAGIC:
            raise CodecError("not Avro single-object encoding (missing C3 01 marker)")
        raise CodecError(f"unknown schema fingerprint {data[2:HEADER_LENGTH].hex()}")
    schema, cls, read = found
    try:
        value, end = read(data, HEADER_LENGTH)
    except IndexError:
        raise CodecError(f"{schema.name}: body is truncated") from None
    except CodecError as exc:
        raise CodecError(f"{schema.name}: body does not decode: {exc}") from None
    if end != size:
        raise CodecError(f"{schema.name}: {size - end} trailing bytes")
    return schema, cls, value


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------


def _from_avro(fields: dict) -> dict:
    """A dict of fields read with an older schema (or a payload read as a
    dict) made into the domain's arguments. Domain metadata is a sorted
    tuple of pairs (hashable, canonical); Avro's is a map. The writers and
    the generated readers make the same conversion for every map field."""
    if "metadata" in fields:
        fields["metadata"] = tuple(sorted(fields["metadata"].items()))
    return fields


def _object_source(name: str, kind) -> str:
    """How the writers read a field straight off the domain object: a log
    record's command_hash is the writer's argument, an Avro map is the
    domain's sorted tuple of pairs (see _from_avro)."""
    if name == "command_hash":
        return "extra"
    return f"dict(record.{name})" if _is_map(kind) else f"record.{name}"


def _envelope_writer(schema: _Schema) -> dict:
    """Class -> (union index, a writer of its payload straight from the
    object) for one envelope schema (as _outcome_writer writes log records)."""
    writers = {}
    for index, branch in enumerate(schema.parsed["fields"][2]["type"]):
        fields = [(f["name"], f["type"], _compile(f["type"])[0]) for f in branch["fields"]]
        writers[_PAYLOAD_NAMES[branch["name"]]] = (index, _record_writer(fields, _object_source))
    return writers


_ENVELOPE_WRITERS = {schema: _envelope_writer(schema) for schema in (_COMMAND, _LEG)}


def _encode_envelope(schema: _Schema, command, issued_at_ms: int) -> bytes:
    try:
        index, write_payload = _ENVELOPE_WRITERS[schema][type(command)]
    except KeyError:
        raise ValueError(f"{_PAYLOAD_BY_TYPE.get(type(command), type(command).__name__)} "
                         f"is not a branch of this union") from None
    out = bytearray(schema.header)
    if _WRITE_RUN is None or not _WRITE_RUN(out, _ENVELOPE_HEAD, (command.command_id,
                                                                  issued_at_ms, index)):
        _write_string(out, command.command_id)
        _write_long(out, issued_at_ms)
        _write_long(out, index)
    write_payload(out, command, None)
    return _checked_size(schema, out)


def _decode_envelope(schema: _Schema, data: bytes):
    found, _cls, value = _read(data, _DOMAIN_BY_HEADER)
    if found is not schema:
        raise CodecError(f"{found.name} is not a {schema.name}")
    return value


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


def _outcome_writer(schema: _Schema):
    """A writer of a log record straight from its domain object, ``(out,
    record, command_hash)``: no dict of its fields on the way (encode_outcome
    runs once per event the worker appends)."""
    fields = schema.parsed["fields"]
    return _record_writer([(f["name"], f["type"], _compile(f["type"])[0]) for f in fields],
                          _object_source)


_OUTCOME_WRITERS = {cls: (schema, _outcome_writer(schema)) for cls, schema in _OUTCOMES.items()}


def encode_outcome(record, command_hash: str) -> bytes:
    """Encode an event or a CommandRejected, with the hash of its command."""
    schema, write = _OUTCOME_WRITERS[type(record)]
    out = bytearray(schema.header)
    write(out, record, command_hash)
    return _checked_size(schema, out)


def decode_outcome(data: bytes):
    """Return ``(event_or_rejection, command_hash)`` or raise :class:`CodecError`."""
    schema, cls, value = _read(data, _DOMAIN_BY_HEADER)
    if cls is None:
        raise CodecError(f"{schema.name} is not a log record")
    return value


# --------------------------------------------------------------------------
# Partition ticks: time passing on an event-log partition
# --------------------------------------------------------------------------


def encode_tick(tick: domain.PartitionTick) -> bytes:
    return _write(_TICK, {"partition": tick.partition, "recorded_at_ms": tick.recorded_at_ms})


def is_tick(data) -> bool:
    """Whether an event-log record is a PartitionTick (by its header alone: no
    decoding). Every reader of the event log that wants account records
    skips these. A tick written with an older tick schema is one too."""
    if not isinstance(data, (bytes, bytearray)):
        return False
    found = _BY_HEADER.get(bytes(data[:HEADER_LENGTH]))
    return found is not None and found[0] is _TICK


def decode_record(data: bytes):
    """Return ``(record, command_hash)`` of any event-log record: an event or
    a rejection with the hash of its command, or a PartitionTick with None
    (one header lookup, for the readers of the whole log). Raises
    :class:`CodecError`."""
    schema, cls, value = _read(data, _DOMAIN_BY_HEADER)
    if schema is _TICK:
        return value, None
    if cls is None:
        raise CodecError(f"{schema.name} is not a log record")
    return value


def decode_tick(data: bytes) -> domain.PartitionTick:
    """Return the PartitionTick or raise :class:`CodecError`."""
    schema, _cls, value = _read(data, _DOMAIN_BY_HEADER)
    if schema is not _TICK:
        raise CodecError(f"{schema.name} is not a ledger.v1.PartitionTick")
    return value
