"""@frozen (ledger/frozen.py) builds the same records as
@dataclass(frozen=True, slots=True): same signature, fields, defaults,
equality, hash and immutability, for every record class the ledger has.
Where ledger/_frozen.c is built, its Init fills the slots of a call with
every field positional and hands any other call to the Python __init__."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from ledger import domain
from ledger import frozen as frozen_module
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
        init = getattr(cls.__init__, "__wrapped__", cls.__init__)  # under ledger/_frozen.c's
        assert init.__module__ == cls.__module__, cls
        assert "_set_" in init.__code__.co_names[0], cls  # ours, not dataclasses'
        assert frozen_module.ACCELERATED == (init is not cls.__init__), cls
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


# --------------------------------------------------------------------------
# ledger/_frozen.c
# --------------------------------------------------------------------------

needs_c = pytest.mark.skipif(not frozen_module.ACCELERATED, reason="ledger/_frozen.c not built")


@needs_c
def test_a_subclass_and_a_foreign_instance_go_to_the_python_init():
    class Sub(domain.Credited):
        pass

    sub = Sub("acct", 1, "c-1", "EUR", 5, 5, 1000)  # a subclass: the Python __init__
    assert sub == Sub("acct", 1, "c-1", "EUR", 5, 5, 1000) and sub.amount_minor == 5
    state = domain.AccountState("acct", "EUR", 0, 0, 1, domain.AccountStatus.open, 1, 1)
    with pytest.raises(TypeError):  # the slot descriptor's own refusal
        domain.Credited.__init__(state, "x", 2, "c-2", "USD", 6, 6, 2000)
    assert state == domain.AccountState("acct", "EUR", 0, 0, 1, domain.AccountStatus.open, 1, 1)


def _hints(function):
    import typing

    try:
        return typing.get_type_hints(function)
    except Exception as exc:  # noqa: BLE001 - compared, not handled
        return type(exc), str(exc)


@needs_c
def test_the_c_init_shows_the_python_init_it_stands_for():
    for cls in RECORDS:
        python_init = cls.__init__.__wrapped__
        for name in ("__name__", "__qualname__", "__module__", "__annotations__"):
            assert getattr(cls.__init__, name) == getattr(python_init, name), (cls, name)
        assert _hints(cls.__init__) == _hints(python_init), cls  # the same, or the same error
    with pytest.raises(AttributeError):
        domain.Credited.__init__.no_such_attribute


@needs_c
def test_init_refuses_what_is_not_an_object_slot():
    Init = frozen_module._frozen.Init

    class Plain:
        x = 1

    @dataclasses.dataclass(slots=True)
    class Slotted:
        x: int

    def python_init(self, x):
        pass

    with pytest.raises(TypeError, match="not an object slot"):
        Init(Plain, ("x",), python_init)
    with pytest.raises(TypeError, match="not an object slot"):
        Init(Slotted, ("missing",), python_init)
    with pytest.raises(TypeError, match="not an object slot"):
        Init(int, ("real",), python_init)  # a getset, not a member slot
    with pytest.raises(TypeError, match="callable"):
        Init(Slotted, ("x",), None)
    with pytest.raises(TypeError):
        Init(Slotted, ["x"], python_init)
    assert Init(Slotted, ("x",), python_init).__wrapped__ is python_init


@needs_c
def test_the_c_init_keeps_no_reference_and_drops_what_it_replaces():
    import sys

    value, other = object(), object()
    before = sys.getrefcount(value), sys.getrefcount(other)
    records = [domain.AccountState(value, value, 1, 0, 1, value, 1, 1, 0, 0, 0, 0)
               for _ in range(1000)]
    assert sys.getrefcount(value) == before[0] + 3000
    for record in records:  # __init__ again on a built record
        record.__init__(other, other, 1, 0, 1, other, 1, 1, 0, 0, 0, 0)
    assert sys.getrefcount(value) == before[0]
    assert sys.getrefcount(other) == before[1] + 3000
    del records, record
    assert (sys.getrefcount(value), sys.getrefcount(other)) == before


@needs_c
def test_the_c_init_leaks_nothing_over_many_calls():
    import gc
    import tracemalloc

    args = ("acct", 1, "c-1", "EUR", 5, 5, 1000)

    def churn(n):
        for _ in range(n):
            domain.Credited(*args)
            try:
                domain.Credited(*args[:-1])  # one short: the Python __init__ raises
            except TypeError:
                pass
            store.Outcome("c", "a", "h", "applied", None, (1, 2)).__init__(
                "c", "a", "h", "applied", None, (1, 2))

    churn(10_000)
    gc.collect()
    tracemalloc.start()
    try:
        first = tracemalloc.get_traced_memory()[0]
        churn(200_000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - first
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, grown


class _Sentinel:
    """Weakly referable: says when the cycle that holds it is freed."""


def _state(account_id="acct"):
    """Every field positional: the C path."""
    return domain.AccountState(account_id, "EUR", 0, 0, 1, domain.AccountStatus.open, 1, 1,
                               0, 0, 0, 0)


def _cycle_through(fill):
    """A record that refers to a list that refers back to it, made unreachable;
    ``fill(record, holder)`` puts the list in the record. Returns a weak
    reference to something only the cycle holds."""
    import weakref

    sentinel = _Sentinel()
    record = _state()
    holder = [record, sentinel]
    fill(record, holder)
    return weakref.ref(sentinel)


@needs_c
def test_a_record_of_leaves_is_left_out_of_the_collector():
    import gc

    assert not gc.is_tracked(_state())  # strs, ints and an Enum member
    assert not gc.is_tracked(domain.Credited("acct", 1, "c-1", "EUR", 5, 5, 1000))
    # A new tuple is tracked until a collection finds it holds leaves only.
    assert gc.is_tracked(store.Outcome("c", "a", "h", "applied", None, tuple([1, 2])))
    assert gc.is_tracked(_state([]))  # a list is no leaf
    # Keywords: the Python __init__ builds it, tracked as every object.
    assert gc.is_tracked(domain.AccountState(
        account_id="acct", currency="EUR", balance_minor=0, overdraft_limit_minor=0,
        version=1, status=domain.AccountStatus.open, opened_at_ms=1, updated_at_ms=1))


@needs_c
@pytest.mark.parametrize("how", ["c", "python"])
def test_a_record_filled_again_with_a_container_is_collected_again(how):
    import gc

    def refill(record, holder):
        assert not gc.is_tracked(record)
        args = (holder, "EUR", 0, 0, 1, domain.AccountStatus.open, 1, 1)
        if how == "c":
            record.__init__(*args, 0, 0, 0, 0)  # every field positional: the C path
        else:
            record.__init__(*args)  # defaults left out: the Python __init__
        assert gc.is_tracked(record)

    gone = _cycle_through(refill)
    gc.collect()
    assert gone() is None  # the cycle through the record was found and freed


@needs_c
def test_a_record_filled_again_with_leaves_is_left_out_again():
    import gc

    record = _state([])
    assert gc.is_tracked(record)
    record.__init__("acct", "EUR", 0, 0, 1, domain.AccountStatus.open, 1, 1, 0, 0, 0, 0)
    assert not gc.is_tracked(record)


@needs_c
def test_states_evolved_or_read_from_a_store_are_left_out():
    import gc

    opened = domain.AccountOpened("acct", 1, "open-1", "EUR", 0, 0, 1000, 0)
    credited = domain.Credited("acct", 2, "c-1", "EUR", 5, 5, 1001)
    state = domain.fold([opened, credited])
    assert not gc.is_tracked(state)  # what evolve builds from an earlier state
    assert not gc.is_tracked(store.decode_state(store.encode_state(state)))  # a cache miss
