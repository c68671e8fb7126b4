"""@frozen (ledger/frozen.py) builds the same records as
@dataclass(frozen=True, slots=True): same signature, fields, defaults,
equality, hash and immutability, for every record class the ledger has."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from ledger import domain
from ledger.frozen import frozen
from streams import store

RECORDS = sorted(
    {obj for module in (domain, store) for obj in vars(module).values()
     if isinstance(obj, type) and dataclasses.is_dataclass(obj)
     and obj.__module__ == module.__name__},
    key=lambda c: c.__qualname__)


def test_every_record_class_is_built_by_frozen():
    assert len(RECORDS) > 30
    for cls in RECORDS:
        assert cls.__init__.__module__ == cls.__module__, cls
        assert "_set_" in cls.__init__.__code__.co_names[0], cls  # ours, not dataclasses'
        assert cls.__dataclass_params__.frozen and "__slots__" in vars(cls), cls


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__qualname__)
def test_the_same_record_as_a_frozen_dataclass(cls):
    fields = dataclasses.fields(cls)
    reference = dataclasses.dataclass(frozen=True, slots=True)(
        type(cls.__name__, (), {"__annotations__": {f.name: f.type for f in fields},
                                **{f.name: f.default for f in fields
                                   if f.default is not dataclasses.MISSING}}))
    ours = inspect.signature(cls.__init__).parameters
    theirs = inspect.signature(reference.__init__).parameters
    assert [(p.name, p.default, p.kind) for p in ours.values()] == \
        [(p.name, p.default, p.kind) for p in theirs.values()]

    values = {f.name: object() for f in fields}
    by_name, by_position = cls(**values), cls(*values.values())
    for f in fields:
        assert getattr(by_name, f.name) is values[f.name]
        assert getattr(by_position, f.name) is values[f.name]
    assert by_name == by_position and not (by_name != by_position)
    required = {f.name: values[f.name] for f in fields if f.default is dataclasses.MISSING}
    defaulted = cls(**required)
    for f in fields:
        expected = values[f.name] if f.name in required else f.default
        assert getattr(defaulted, f.name) is expected
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(by_name, fields[0].name, 1)
    with pytest.raises(TypeError):
        cls(*values.values(), object())  # one argument too many
    if required:
        with pytest.raises(TypeError):
            cls()
    other = object()
    changed = dataclasses.replace(by_name, **{fields[0].name: other})
    assert getattr(changed, fields[0].name) is other and changed != by_name


def test_equal_records_hash_alike():
    a = domain.Credited("acct", 1, "c-1", "EUR", 5, 5, 1000)
    b = domain.Credited("acct", 1, "c-1", "EUR", 5, 5, 1000)
    assert a == b and hash(a) == hash(b) and a != domain.Debited(*dataclasses.astuple(a))


def test_what_frozen_cannot_build_is_refused_at_definition():
    with pytest.raises(TypeError, match="plain fields"):
        @frozen
        class WithFactory:
            items: list = dataclasses.field(default_factory=list)
    with pytest.raises(TypeError, match="__post_init__"):
        @frozen
        class WithPostInit:
            x: int

            def __post_init__(self):
                pass
