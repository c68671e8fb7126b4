"""Schema evolution: records written with an older schema stay readable.

No broker needed. What is checked:

- every frozen writer schema in schemas/history/ (named <full name>.v<N>.avsc)
  resolves into the current schema of the same full name, and no version of a
  schema file committed since the freeze is missing from history;
- bytes written with any historical schema decode through the codec's public
  decoders into the current domain model, to the same value as fastavro's
  ``schemaless_reader(body, writer_schema, reader_schema)`` (hypothesis, values
  drawn from the writer schema itself);
- the v1 command envelope and a v1 event (as frozen from git) read into a v2
  that adds fields with defaults, adds union branches in front of the old ones
  (the branch index changes, the name does not), drops a field, renames by
  alias and promotes int to long, in the codec and in fastavro alike;
- an old record lacking a field the current model has with a default decodes
  into the current domain object with that default;
- a pair the rules do not resolve is refused when the codec is imported (a
  subprocess imports a copy of the package with such a history file), never
  misread at run time.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import asdict
from pathlib import Path

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import SchemaParseException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schemas
from ledger import domain
from schemas import codec
from schemas.codec import SchemaResolutionError

SCHEMA_ROOT = Path(schemas.__file__).resolve().parent
HISTORY_ROOT = SCHEMA_ROOT / "history"
REPO = SCHEMA_ROOT.parent
HISTORY_FILES = codec.history_files()
# The commit that froze schemas/history/*.v1.avsc: every version of a schema
# file on main from then on must be readable.
FREEZE_COMMIT = "a6154f964d0c3502a25bba8152fdc86f39248197"
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
ISSUED = 1_700_000_000_000


def _raw(path: Path) -> dict:
    return json.loads(path.read_text())


def _full_name(raw: dict) -> str:
    return f"{raw['namespace']}.{raw['name']}"


def _history(full_name: str, version: int = 1) -> Path:
    return HISTORY_ROOT / f"{full_name}.v{version}.avsc"


def _current_by_name() -> dict[str, Path]:
    return {_full_name(_raw(p)): p for p in codec.schema_files()}


def _write(raw_schema: dict, value) -> bytes:
    """Single-object encoding written by fastavro alone, with the header the
    codec computes for that writer schema."""
    out = io.BytesIO()
    out.write(codec._header(raw_schema))
    schemaless_writer(out, parse_schema(copy.deepcopy(raw_schema)), value)
    return out.getvalue()


def _fastavro_read(data: bytes, writer: dict, reader: dict):
    body = io.BytesIO(data[codec.HEADER_LENGTH:])
    value = schemaless_reader(body, parse_schema(copy.deepcopy(writer)),
                              parse_schema(copy.deepcopy(reader)), return_record_name=True)
    assert body.read() == b""
    return value


# --------------------------------------------------------------------------
# The history folder
# --------------------------------------------------------------------------


def test_history_holds_a_frozen_v1_of_every_schema():
    """Every schema in the tree at the freeze has its v1, the command envelope
    and the events included; files are named after the schema they hold."""
    assert HISTORY_FILES
    versions: dict[str, set[int]] = {}
    for path in HISTORY_FILES:
        match = re.fullmatch(r"(.+)\.v(\d+)\.avsc", path.name)
        assert match, f"{path.name}: not <full name>.v<N>.avsc"
        assert match[1] == _full_name(_raw(path)), path.name
        versions.setdefault(match[1], set()).add(int(match[2]))
    for name, found in versions.items():
        assert found == set(range(1, max(found) + 1)), f"{name}: versions {sorted(found)}"
    assert {"ledger.v1.LedgerCommand", "ledger.v1.LedgerLeg", "ledger.v1.PartitionTick",
            "ledger.v1.Credited", "ledger.v1.CommandRejected"} <= set(versions)
    assert set(versions) <= set(_current_by_name()), "a history file without a current reader"


def test_every_history_file_resolves_into_its_current_reader():
    """Each frozen writer header is known to the codec, mapped to the current
    schema of the same full name: either it is that schema, or it is read
    through a resolution plan compiled at import."""
    current = _current_by_name()
    for path in HISTORY_FILES:
        header = codec._header(_raw(path))
        reader, _cls, read = codec._BY_HEADER[header]
        assert reader.name == _full_name(_raw(path))
        assert reader.header == codec._header(_raw(current[reader.name]))
        assert (read is reader.read) == (header == reader.header)
    # and the public resolver agrees on the ones that differ from today's
    table = codec.resolve_history(codec.schema_files(), HISTORY_FILES)
    assert set(table) == {h for h, (s, _c, _r) in codec._BY_HEADER.items() if h != s.header}


def test_every_schema_folder_ships_in_the_wheel():
    """pyproject.toml lists each folder holding .avsc files (history included)
    as a package with its .avsc files as package data: an installed worker
    reads old records too."""
    pyproject = REPO / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("no pyproject.toml here (an installed package)")
    config = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]
    folders = {p.parent.relative_to(REPO).as_posix().replace("/", ".")
               for p in SCHEMA_ROOT.rglob("*.avsc")}
    assert "schemas.history" in folders
    for package in folders:
        assert package in config["packages"], package
        assert "*.avsc" in config["package-data"][package], package


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True,
                          capture_output=True, text=True).stdout


def test_no_committed_version_of_a_schema_is_missing_from_history():
    """A schema file changed on main keeps every earlier version readable:
    each version of each current schema file committed since the freeze is
    today's file or is in schemas/history/ (copy the old file there as the
    next version in the commit that changes it)."""
    try:
        _git("cat-file", "-e", f"{FREEZE_COMMIT}^{{commit}}")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no git history here (an installed package or a shallow clone)")
    known = {codec._header(_raw(p)) for p in codec.schema_files() + HISTORY_FILES}
    missing = []
    for path in codec.schema_files():
        rel = path.relative_to(REPO).as_posix()
        for commit in _git("log", "--format=%H", f"{FREEZE_COMMIT}^..HEAD", "--", rel).split():
            try:
                raw = json.loads(_git("show", f"{commit}:{rel}"))
            except subprocess.CalledProcessError:
                continue  # the file was deleted or did not exist yet in that commit
            if codec._header(raw) not in known:
                missing.append(f"{rel}@{commit[:8]}")
    assert not missing, f"committed schema versions with no frozen copy in history: {missing}"


# --------------------------------------------------------------------------
# Every historical writer decodes into the current model, like fastavro
# --------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


def _values(schema):
    """Values a writer schema can hold (parsed by fastavro), as fastavro
    writes them: unions of records as (full name, record)."""
    if isinstance(schema, list):
        return st.one_of(*[_values(branch).map(lambda v, n=branch["name"]: (n, v))
                           for branch in schema])
    kind = schema if isinstance(schema, str) else schema["type"]
    if kind == "long":
        return st.integers(LONG_MIN, LONG_MAX)
    if kind == "int":
        return st.integers(-(2**31), 2**31 - 1)
    if kind == "string":
        return _text
    if kind == "boolean":
        return st.booleans()
    if kind == "map":
        return st.dictionaries(_text, _values(schema["values"]), max_size=3)
    assert kind == "record", kind
    return st.fixed_dictionaries({f["name"]: _values(f["type"]) for f in schema["fields"]})


def _avro_fields(obj) -> dict:
    fields = asdict(obj)
    if "metadata" in fields:
        fields["metadata"] = dict(fields["metadata"])
    return fields


def _model_value(name: str, data: bytes):
    """Decode through the codec's public decoder for that schema, and return
    the domain object back in Avro shape (to compare with fastavro's)."""
    if name in ("ledger.v1.LedgerCommand", "ledger.v1.LedgerLeg"):
        decode = codec.decode_command if name == "ledger.v1.LedgerCommand" else codec.decode_leg
        obj, issued = decode(data)
        payload = _avro_fields(obj)
        return {"command_id": payload.pop("command_id"), "issued_at_ms": issued,
                "payload": (f"ledger.v1.{type(obj).__name__}", payload)}
    if name == "ledger.v1.PartitionTick":
        return asdict(codec.decode_tick(data))
    obj, command_hash = codec.decode_outcome(data)
    assert f"ledger.v1.{type(obj).__name__}" == name
    return {**_avro_fields(obj), "command_hash": command_hash}


@pytest.mark.parametrize("path", HISTORY_FILES, ids=lambda p: p.name)
@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_record_of_any_historical_schema_decodes_into_the_current_model(path, data):
    writer = _raw(path)
    name = _full_name(writer)
    reader = _raw(_current_by_name()[name])
    value = data.draw(_values(parse_schema(copy.deepcopy(writer), _write_hint=False)))
    encoded = _write(writer, value)
    expected = _fastavro_read(encoded, writer, reader)
    assert codec._read(encoded)[2] == expected
    assert _model_value(name, encoded) == expected


# --------------------------------------------------------------------------
# v1 (frozen from git) read as a v2 that adds fields with defaults
# --------------------------------------------------------------------------


def _field(record: dict, name: str) -> dict:
    return next(f for f in record["fields"] if f["name"] == name)


def _branch(envelope: dict, name: str) -> dict:
    return next(b for b in _field(envelope, "payload")["type"] if b["name"] == name)


def _command_v2() -> dict:
    """The v1 envelope evolved: two new commands in front of the old ones,
    a field with a default added to Credit and to Transfer, Debit's
    ``amount_minor`` and the CloseAccount record renamed (the old names kept
    as aliases)."""
    v2 = _raw(_history("ledger.v1.LedgerCommand"))
    _field(v2, "payload")["type"][:0] = [
        {"type": "record", "name": "Hold", "fields": [{"name": "account_id", "type": "string"}]},
        {"type": "record", "name": "Release", "fields": [{"name": "hold_id", "type": "string"}]},
    ]
    _branch(v2, "Credit")["fields"].append(
        {"name": "channel", "type": "string", "default": "api"})
    _branch(v2, "Transfer")["fields"].append(
        {"name": "tags", "type": {"type": "map", "values": "long"}, "default": {"v": 1}})
    amount = _field(_branch(v2, "Debit"), "amount_minor")
    amount["name"], amount["aliases"] = "minor_units", ["amount_minor"]
    close = _branch(v2, "CloseAccount")
    close["name"], close["aliases"] = "Close", ["CloseAccount"]
    return v2


def _credited_v2() -> dict:
    """The v1 Credited event evolved: a field with a default added, one
    removed (balance_after_minor), one promoted from a v1 int (see below)."""
    v2 = _raw(_history("ledger.v1.Credited"))
    v2["fields"] = [f for f in v2["fields"] if f["name"] != "balance_after_minor"]
    v2["fields"].append({"name": "source", "type": "string", "default": "worker"})
    v2["fields"].append({"name": "flags", "type": {"type": "map", "values": "boolean"},
                         "default": {}})
    return v2


def _resolved(tmp_path: Path, writers: dict[str, dict], readers: dict[str, dict]):
    """codec.resolve_history over schema files written to tmp_path."""
    paths = {}
    for kind, group in (("writer", writers), ("reader", readers)):
        (tmp_path / kind).mkdir(exist_ok=True)
        paths[kind] = []
        for file_name, raw in group.items():
            path = tmp_path / kind / file_name
            path.write_text(json.dumps(raw))
            paths[kind].append(path)
    return codec.resolve_history(paths["reader"], paths["writer"])


# v1 payloads as plain Avro values (not domain objects: the domain moves on),
# and what the v2 reader makes of each.
V1_PAYLOADS = {
    "Credit": ({"account_id": "alice", "amount_minor": 100_00, "currency": "EUR"},
               {"channel": "api"}, {}),
    "Debit": ({"account_id": "alice", "amount_minor": -1, "currency": "EUR"},
              {"minor_units": -1}, {"amount_minor"}),
    "Transfer": ({"from_account_id": "alice", "to_account_id": "bob", "amount_minor": 25_00,
                  "currency": "EUR", "metadata": {"note": "rent \u20ac"}},
                 {"tags": {"v": 1}}, {}),
    "OpenAccount": ({"account_id": "alice", "currency": "EUR",
                     "overdraft_limit_minor": LONG_MAX}, {}, {}),
    "CloseAccount": ({"account_id": "alice"}, {}, {}),
}


@pytest.mark.parametrize("short", V1_PAYLOADS)
def test_a_v1_command_reads_as_v2_in_the_codec_and_in_fastavro(tmp_path, short):
    v1, v2 = _raw(_history("ledger.v1.LedgerCommand")), _command_v2()
    table = _resolved(tmp_path, {"command.v1.avsc": v1}, {"command.avsc": v2})
    payload, added, renamed_away = V1_PAYLOADS[short]
    value = {"command_id": "c-1", "issued_at_ms": ISSUED,
             "payload": (f"ledger.v1.{short}", payload)}
    encoded = _write(v1, value)
    reader_name, read = table[encoded[:codec.HEADER_LENGTH]]
    assert reader_name == "ledger.v1.LedgerCommand"
    decoded, end = read(encoded, codec.HEADER_LENGTH)
    assert end == len(encoded)
    assert decoded == _fastavro_read(encoded, v1, v2)
    branch, fields = decoded.pop("payload")
    assert decoded == {"command_id": "c-1", "issued_at_ms": ISSUED}
    # matched by name (or alias), though its index moved by 2
    assert branch == ("ledger.v1.Close" if short == "CloseAccount" else f"ledger.v1.{short}")
    assert fields == {**{k: v for k, v in payload.items() if k not in renamed_away}, **added}
    # the v1 branch index differs from the v2 one: a positional read would be wrong
    rewritten = _write(v2, {**decoded, "payload": (branch, fields)})
    assert _branch_index(rewritten) == _branch_index(encoded) + 2


def _branch_index(envelope: bytes) -> int:
    """The payload union's branch index in an encoded command envelope."""
    _command_id, pos = codec._read_string(envelope, codec.HEADER_LENGTH)
    _issued_at_ms, pos = codec._read_long(envelope, pos)
    return codec._read_long(envelope, pos)[0]


def test_a_v1_event_reads_as_v2_in_the_codec_and_in_fastavro(tmp_path):
    v1, v2 = _raw(_history("ledger.v1.Credited")), _credited_v2()
    # an older writer still: sequence was an int (promoted to long)
    v0 = copy.deepcopy(v1)
    _field(v0, "sequence")["type"] = "int"
    table = _resolved(tmp_path, {"credited.v0.avsc": v0, "credited.v1.avsc": v1},
                      {"credited.avsc": v2})
    event = domain.Credited("alice", 2, "c-credit", "EUR", 100_00, 100_00, 1_700_000_000_001)
    value = {**_avro_fields(event), "command_hash": "h" * 64}
    for writer in (v0, v1):
        encoded = _write(writer, value)
        reader_name, read = table[encoded[:codec.HEADER_LENGTH]]
        assert reader_name == "ledger.v1.Credited"
        decoded, end = read(encoded, codec.HEADER_LENGTH)
        assert end == len(encoded)
        assert decoded == _fastavro_read(encoded, writer, v2)
        expected = {k: v for k, v in value.items() if k != "balance_after_minor"}
        assert decoded == {**expected, "source": "worker", "flags": {}}
    # each record gets its own default map (not one shared, mutable object)
    first = table[codec._header(v1)][1](encoded, codec.HEADER_LENGTH)[0]
    first["flags"]["x"] = True
    assert table[codec._header(v1)][1](encoded, codec.HEADER_LENGTH)[0]["flags"] == {}


def _accept(monkeypatch, path) -> None:
    """Make the codec read records written with the schema file ``path`` (not
    a log record's), in both its tables, as if it were in schemas/history."""
    for header, (reader, read) in codec._history(list(codec._CURRENT), [path]).items():
        monkeypatch.setitem(codec._BY_HEADER, header, (reader, None, read))
        monkeypatch.setitem(codec._DOMAIN_BY_HEADER, header,
                            codec._domain_entry(header, reader, None, read))


def test_an_old_command_decodes_into_the_current_model_with_its_defaults(monkeypatch, tmp_path):
    """A v0 envelope from before OpenAccount had an overdraft limit and
    Transfer had metadata (both have a default today) goes through the
    codec's own decode_command into today's domain objects."""
    v0 = _raw(_history("ledger.v1.LedgerCommand"))
    _branch(v0, "OpenAccount")["fields"].pop()  # overdraft_limit_minor
    _branch(v0, "Transfer")["fields"].pop()  # metadata
    path = tmp_path / "ledger.v1.LedgerCommand.v0.avsc"
    path.write_text(json.dumps(v0))
    _accept(monkeypatch, path)
    opened = _write(v0, {"command_id": "c-1", "issued_at_ms": ISSUED, "payload": (
        "ledger.v1.OpenAccount", {"account_id": "alice", "currency": "EUR"})})
    assert codec.decode_command(opened) == (domain.OpenAccount("c-1", "alice", "EUR", 0), ISSUED)
    moved = _write(v0, {"command_id": "t-1", "issued_at_ms": ISSUED, "payload": (
        "ledger.v1.Transfer", {"from_account_id": "alice", "to_account_id": "bob",
                               "amount_minor": 5, "currency": "EUR"})})
    assert codec.decode_command(moved) == (domain.Transfer("t-1", "alice", "bob", 5, "EUR"),
                                           ISSUED)


def test_an_old_tick_is_still_a_tick(monkeypatch, tmp_path):
    """Readers of the event log skip ticks by codec.is_tick: a tick written
    with an older tick schema (here: partition an int) is skipped too, and
    decodes into today's PartitionTick."""
    v0 = _raw(_history("ledger.v1.PartitionTick"))
    _field(v0, "partition")["type"] = "int"
    path = tmp_path / "ledger.v1.PartitionTick.v0.avsc"
    path.write_text(json.dumps(v0))
    _accept(monkeypatch, path)
    old = _write(v0, {"partition": 3, "recorded_at_ms": ISSUED})
    assert old[:codec.HEADER_LENGTH] != codec.encode_tick(domain.PartitionTick(3, ISSUED))[
        :codec.HEADER_LENGTH]
    assert codec.is_tick(old) and codec.is_tick(bytearray(old))
    assert codec.decode_tick(old) == domain.PartitionTick(3, ISSUED)
    with pytest.raises(codec.CodecError, match="PartitionTick is not a log record"):
        codec.decode_outcome(old)


# --------------------------------------------------------------------------
# What does not resolve is refused when the schemas are loaded
# --------------------------------------------------------------------------


def _credited_v1() -> dict:
    return _raw(_history("ledger.v1.Credited"))


def _with(raw: dict, change) -> dict:
    raw = copy.deepcopy(raw)
    change(raw)
    return raw


def _add_field(field: dict):
    return lambda raw: raw["fields"].append(field)


def _retype(name: str, new_type):
    return lambda raw: _field(raw, name).update(type=new_type)


def _drop_branch(name: str):
    def change(raw):
        payload = _field(raw, "payload")
        payload["type"] = [b for b in payload["type"] if b["name"] != name]
    return change


INCOMPATIBLE = {
    "reader field without default, missing in writer": (
        "Credited", _add_field({"name": "source", "type": "string"}),
        "source: not in the writer schema and has no default"),
    "long read as string": (
        "Credited", _retype("amount_minor", "string"),
        "writer type long does not resolve to string"),
    "long narrowed to int": (
        "Credited", _retype("sequence", "int"), "writer type long does not resolve to int"),
    "default of the wrong type": (
        "Credited", _add_field({"name": "n", "type": "long", "default": "0"}),
        "must match schema type: long"),  # fastavro's parse refuses it already
    "record renamed without an alias": (
        "Credited", lambda raw: raw.update(name="Credited2"),
        "no current schema ledger.v1.Credited"),
    "union branch removed in the reader": (
        "LedgerCommand", _drop_branch("Debit"),
        "writer branch ledger.v1.Debit has no reader branch"),
}


@pytest.mark.parametrize("case", INCOMPATIBLE, ids=list(INCOMPATIBLE))
def test_a_pair_that_does_not_resolve_is_refused(tmp_path, case):
    short, change, message = INCOMPATIBLE[case]
    v1 = _raw(_history(f"ledger.v1.{short}"))
    with pytest.raises((SchemaResolutionError, SchemaParseException), match=re.escape(message)):
        _resolved(tmp_path, {"old.avsc": v1}, {"new.avsc": _with(v1, change)})


def test_a_history_file_that_does_not_resolve_stops_the_codec_import(tmp_path):
    """The refusal happens at import: a copy of the package whose Credited
    gained a field without a default cannot be imported at all."""
    package = tmp_path / "schemas"
    shutil.copytree(SCHEMA_ROOT, package, ignore=shutil.ignore_patterns("__pycache__"))
    current = package / "events" / "credited.avsc"
    current.write_text(json.dumps(_with(_raw(current), _add_field(
        {"name": "source", "type": "string"}))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    done = subprocess.run([sys.executable, "-c", "import schemas.codec"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode != 0
    assert "SchemaResolutionError" in done.stderr
    assert "ledger.v1.Credited.v1.avsc" in done.stderr and "source" in done.stderr
