"""schemas/_avro.c against the Python reader and writer it stands in for.

The codec's generated readers and writers read and write each run of long
and string fields with the C module when it is built (setup.py). The C code
must read exactly what the Python code reads and fail where it fails, with
the same exception and message: the bytes come from outside (Kafka, HTTP).
It must write the same bytes, or decline and let the Python code write or
raise. No broker needed.

A second copy of schemas/codec.py is loaded here with the C module hidden
(``PURE``), so both readers of every schema, current and historical, are
held to each other on every decoder:

- hand-built varints and strings at every edge (10-byte longs, a tenth byte
  of 0, 1, 2 or with its continuation bit, truncation at every byte,
  negative and oversized string lengths, bad UTF-8, surrogates);
- random bytes behind every known header, every valid record with one byte
  corrupted, every truncation of a valid record.

The writers likewise: every command, leg and log record (hypothesis) is
written to the same bytes by both, and a field set to a value the C writer
must decline (a bool, a float, an int subclass or outside 64 bits, a lone
surrogate, a str subclass, bytes, None) gives the same bytes or the same
error; write_run leaves its output as it was when it declines.

Values are compared by equality, errors by class name and message (the two
modules' CodecError are different classes).
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import sys
import tracemalloc

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import schemas
from schemas import codec
from tests.schemas.test_codec import (ENCODED_ALL, SAMPLE_COMMANDS, SAMPLE_LEGS, SAMPLE_OUTCOMES,
                                     commands, legs, outcomes)

pytestmark = pytest.mark.skipif(not codec.ACCELERATED, reason="schemas/_avro.c is not built")


def _codec_without_c():
    """schemas/codec.py loaded again with schemas._avro hidden: its readers
    read in Python."""
    spec = importlib.util.spec_from_file_location("schemas._codec_in_python", codec.__file__)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    built = sys.modules["schemas._avro"]
    del schemas._avro  # `from schemas import _avro` looks at the package first
    sys.modules["schemas._avro"] = None  # ... then here: None is an ImportError
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules["schemas._avro"] = built
        schemas._avro = built
    return module


# Without the C module this file is skipped (test_codec.py checks it is
# built wherever a compiler is), and there is nothing to hide.
PURE = _codec_without_c() if codec.ACCELERATED else None
HEADERS = sorted(codec._BY_HEADER)  # every writer schema, historical ones too
DECODERS = ["decode_record", "decode_command", "decode_leg", "decode_outcome", "decode_tick"]
FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _outcome(call):
    try:
        return "value", call()
    except Exception as exc:  # noqa: BLE001 - the exception is what is compared
        return "error", type(exc).__name__, str(exc)


def _same_everywhere(data: bytes) -> None:
    for name in DECODERS:
        with_c = _outcome(lambda: getattr(codec, name)(data))
        in_python = _outcome(lambda: getattr(PURE, name)(data))
        assert with_c == in_python, (name, data)
    # And the dict readers the historical plans are built from.
    found = codec._BY_HEADER.get(data[:codec.HEADER_LENGTH])
    if found is not None:
        with_c = _outcome(lambda: found[0].read(data, codec.HEADER_LENGTH))
        in_python = _outcome(
            lambda: PURE._BY_HEADER[data[:codec.HEADER_LENGTH]][0].read(data, codec.HEADER_LENGTH))
        assert with_c == in_python, data


def test_the_readers_really_differ():
    # The comparisons below mean something only if one side reads with C.
    for schema in codec._OUTCOMES.values():
        assert "run" in schema.read.__code__.co_names, schema.name
    for schema in PURE._OUTCOMES.values():
        assert "run" not in schema.read.__code__.co_names, schema.name


# --------------------------------------------------------------------------
# read_run itself, against _read_long and _read_string
# --------------------------------------------------------------------------

def _varint(z: int, length: int | None = None) -> bytes:
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        if z == 0 and (length is None or len(out) + 1 >= length):
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _python_run(buf: bytes, pos: int, kinds: bytes):
    values = []
    for kind in kinds:
        value, pos = (PURE._read_long if kind == ord("l") else PURE._read_string)(buf, pos)
        values.append(value)
    return (*values, pos)


def _same_run(buf: bytes, pos: int, kinds: bytes) -> None:
    with_c = _outcome(lambda: codec._READ_RUN(buf, pos, kinds))
    in_python = _outcome(lambda: _python_run(buf, pos, kinds))
    # Both raise "CodecError", of their own module each.
    assert with_c == in_python, (buf, pos, kinds)


LONG_EDGES = [0, 1, -1, 63, -64, 64, -65, 2**31, -(2**31) - 1, 2**62, 2**63 - 1, -(2**63)]
VARINT_EDGES = (
    [_varint(n << 1 if n >= 0 else ((-n) << 1) - 1) for n in LONG_EDGES]  # zigzag
    + [_varint(z) for z in (2**64 - 1, 2**64 - 2, 2**63, 2**64, 2**64 + 10, 2**70 - 1, 2**77)]
    + [_varint(5, length) for length in range(1, 13)]  # padded: 0x85 0x80 ... 0x00
    + [b"\xff" * 9 + bytes([last]) for last in (0, 1, 2, 0x7F, 0x80, 0x81, 0xFF)]
    + [b"\x80" * 9 + bytes([last]) for last in (0, 1, 2)]
    + [b"\xff" * n for n in range(0, 12)]
)


@pytest.mark.parametrize("varint", VARINT_EDGES, ids=lambda b: b.hex() or "empty")
def test_a_long_reads_the_same(varint):
    for tail in (b"", b"\x00", b"\x02x"):
        for kinds in (b"l", b"ll", b"ls", b"s"):
            _same_run(varint + tail, 0, kinds)
    for cut in range(len(varint)):
        _same_run(varint[:cut], 0, b"l")


STRING_EDGES = [
    b"\x00",                      # ""
    b"\x06EUR",
    b"\x01abc",                   # length -1
    b"\x08abc",                   # 4 bytes announced, 3 there
    b"\x04\xff\xfe",              # not UTF-8
    b"\x06\xed\xa0\x80",          # a UTF-16 surrogate, refused by strict UTF-8
    b"\x08\xf0\x9f\x92\xb0",      # a 4-byte character
    b"\x06\xe2\x82",              # a character cut by the end
    b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01abc",  # length 2**63 - 1
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01abc",  # length -(2**63)
]


@pytest.mark.parametrize("string", STRING_EDGES, ids=lambda b: b.hex())
def test_a_string_reads_the_same(string):
    for kinds in (b"s", b"ss", b"sl"):
        _same_run(string + b"\x02x", 0, kinds)
    for cut in range(len(string)):
        _same_run(string[:cut], 0, b"s")


@FUZZ
@given(buf=st.binary(max_size=64), pos=st.integers(0, 70),
       kinds=st.text(alphabet="ls", min_size=0, max_size=8))
@example(buf=b"", pos=0, kinds="")
@example(buf=b"\x02", pos=1, kinds="l")
def test_any_bytes_read_the_same(buf, pos, kinds):
    _same_run(buf, pos, kinds.encode())


@pytest.mark.parametrize("args, error", [
    ((bytearray(b"\x02"), 0, b"l"), TypeError),
    ((b"\x02", 0, "l"), TypeError),
    ((b"\x02", True, b"l"), TypeError),
    ((b"\x02", -1, b"l"), ValueError),
    ((b"\x02", 2**70, b"l"), OverflowError),
    ((b"\x02", 0, b"x"), ValueError),
    ((b"\x02", 0), TypeError),
])
def test_read_run_refuses_what_it_was_not_made_for(args, error):
    with pytest.raises(error):
        codec._READ_RUN(*args)


# --------------------------------------------------------------------------
# Whole records, every decoder
# --------------------------------------------------------------------------

@pytest.mark.parametrize("index", range(len(ENCODED_ALL)))
def test_every_sample_and_every_truncation_reads_the_same(index):
    raw = ENCODED_ALL[index]
    for cut in range(len(raw) + 1):
        _same_everywhere(raw[:cut])


@FUZZ
@given(header=st.sampled_from(HEADERS), body=st.binary(max_size=200))
def test_random_bodies_read_the_same(header, body):
    _same_everywhere(header + body)


@FUZZ
@given(index=st.integers(0, len(ENCODED_ALL) - 1), position=st.integers(0, 10_000),
       xor=st.integers(1, 255))
def test_a_corrupted_byte_reads_the_same(index, position, xor):
    raw = bytearray(ENCODED_ALL[index])
    raw[position % len(raw)] ^= xor
    _same_everywhere(bytes(raw))


@FUZZ
@given(record=st.one_of(commands, legs, outcomes), tail=st.binary(max_size=30),
       keep=st.integers(0, 300))
def test_valid_records_and_their_rewritten_tails_read_the_same(record, tail, keep):
    if isinstance(record, tuple(codec._OUTCOMES)):
        raw = codec.encode_outcome(record, "h" * 64)
    elif type(record) in codec._ENVELOPE_WRITERS[codec._LEG]:
        raw = codec.encode_leg(record, 7)
    else:
        raw = codec.encode_command(record, 7)
    _same_everywhere(raw)
    keep = codec.HEADER_LENGTH + keep % (len(raw) - codec.HEADER_LENGTH + 1)
    _same_everywhere(raw[:keep] + tail)


# --------------------------------------------------------------------------
# Writing: write_run against the generated Python writers
# --------------------------------------------------------------------------

def _encoded(module, record):
    """What ``module``'s codec makes of a command, leg or log record: its
    bytes, or the error's class name and message."""
    def encode():
        if type(record) in module._OUTCOME_WRITERS:
            return module.encode_outcome(record, "h" * 64)
        if type(record) in module._ENVELOPE_WRITERS[module._LEG]:
            return module.encode_leg(record, 7)
        return module.encode_command(record, 7)
    return _outcome(encode)


def _same_bytes(record) -> None:
    with_c, in_python = _encoded(codec, record), _encoded(PURE, record)
    assert with_c == in_python, record


@FUZZ
@given(record=st.one_of(commands, legs, outcomes))
def test_every_record_is_written_to_the_same_bytes(record):
    _same_bytes(record)
    assert _encoded(codec, record)[0] == "value"


class _Int(int):
    pass


class _Str(str):
    pass


# A value of each kind the C writer must decline, for the Python code to
# write (a subclass) or refuse with its own error.
ODD_VALUES = [True, False, 1.5, None, 2**63, -(2**63) - 1, 2**63 - 1, -(2**63), 10**30,
              _Int(5), "\ud800", "x\udfffy", _Str("abc"), "", "é" * 70, b"bytes", 0]


@pytest.mark.parametrize("value", ODD_VALUES, ids=repr)
def test_odd_values_are_written_or_refused_the_same(value):
    for sample in [*SAMPLE_COMMANDS, *SAMPLE_LEGS, *SAMPLE_OUTCOMES]:
        for field in dataclasses.fields(sample):
            _same_bytes(dataclasses.replace(sample, **{field.name: value}))
    with_c = _outcome(lambda: codec.encode_command(SAMPLE_COMMANDS[0], value))
    assert with_c == _outcome(lambda: PURE.encode_command(SAMPLE_COMMANDS[0], value))


@pytest.mark.parametrize("kinds, values", [
    (b"l", (True,)), (b"l", (2**63,)), (b"l", (_Int(1),)), (b"l", (1.0,)), (b"l", ("1",)),
    (b"s", ("\ud800",)), (b"s", (_Str("a"),)), (b"s", (b"a",)), (b"s", (1,)),
    (b"sls", ("ok", 5, "\ud800")), (b"sls", ("ok", 2**64, "x")),
], ids=repr)
def test_write_run_declines_and_leaves_out_as_it_was(kinds, values):
    out = bytearray(b"head")
    assert codec._WRITE_RUN(out, kinds, values) is False
    assert out == b"head"


@FUZZ
@given(values=st.lists(st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=300)),
                       max_size=8))
def test_write_run_writes_what_python_writes(values):
    kinds = bytes(b"l"[0] if isinstance(v, int) else b"s"[0] for v in values)
    out = bytearray(b"head")
    assert codec._WRITE_RUN(out, kinds, tuple(values)) is True
    expected = bytearray(b"head")
    for v in values:
        (PURE._write_long if isinstance(v, int) else PURE._write_string)(expected, v)
    assert out == expected
    assert codec._READ_RUN(bytes(out), 4, kinds) == (*values, len(out))


@pytest.mark.parametrize("args, error", [
    ((b"head", b"l", (1,)), TypeError),
    ((bytearray(), b"ll", (1,)), TypeError),
    ((bytearray(), b"l", [1]), TypeError),
    ((bytearray(), "l", (1,)), TypeError),
    ((bytearray(), b"x", (1,)), ValueError),
    ((bytearray(),), TypeError),
])
def test_write_run_refuses_what_it_was_not_made_for(args, error):
    with pytest.raises(error):
        codec._WRITE_RUN(*args)


# --------------------------------------------------------------------------
# References: every path of both functions, success and error, many times
# --------------------------------------------------------------------------

def test_no_path_leaks_a_reference():
    # A lost Py_DECREF leaks a tuple or a str per call: on hostile input
    # (every record the worker refuses) memory would grow without bound.
    sample = ENCODED_ALL[0]
    text = "acct-" + "x" * 20
    calls = [
        (codec._READ_RUN, (sample, codec.HEADER_LENGTH, b"sll")),       # values
        (codec._READ_RUN, (sample[:12], codec.HEADER_LENGTH, b"sll")),  # truncated
        (codec._READ_RUN, (b"\x04\xff\xfe", 0, b"s")),                  # not UTF-8
        (codec._READ_RUN, (b"\x01abc", 0, b"ls")),                       # negative length
        (codec._READ_RUN, (b"\xff" * 10, 0, b"l")),                      # past 64 bits
        (codec._READ_RUN, (b"\x02", 0, b"x")),                           # bad kind
        (codec._WRITE_RUN, (None, b"sl", (text, 5))),                    # written
        (codec._WRITE_RUN, (None, b"sl", (text, 2**64))),                # declined
        (codec._WRITE_RUN, (None, b"s", ("\ud800",))),                   # surrogate
        (codec._WRITE_RUN, (None, b"x", (1,))),                          # bad kind
    ]

    def once():
        for function, args in calls:
            if args[0] is None:
                args = (bytearray(b"head"), *args[1:])
            try:
                function(*args)
            except Exception:  # noqa: BLE001 - the errors are part of what is run
                pass

    for _ in range(500):
        once()
    before_refs = sys.getrefcount(text), sys.getrefcount(sample)
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(20_000):
            once()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert (sys.getrefcount(text), sys.getrefcount(sample)) == before_refs
    # 200,000 calls: a leak of one small object per call is megabytes.
    assert grown < 200_000, f"{grown:,} bytes still allocated after 200,000 calls"
