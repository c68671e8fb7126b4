"""``@frozen``: ``@dataclass(frozen=True, slots=True)``, built faster.

A frozen dataclass's generated ``__init__`` sets each field through
``object.__setattr__(self, name, value)``, a lookup by name per field; the
worker builds four or five of these per command (the command, its event,
the account state, the index entry), and that was about a twentieth of its
CPU (issue 10). ``@frozen`` makes the same class with the same fields,
defaults, equality, hash, repr and immutability, and gives it an
``__init__`` with the same signature that stores each field through its
slot directly. Only what the ledger's records use is supported: plain
fields with or without a plain default (no ``default_factory``, no
``init=False``, no ``kw_only``, no ``__post_init__``); anything else is
refused when the class is defined.

Where ``ledger/_frozen.c`` is built (setup.py, optional), the class's
``__init__`` is that module's ``Init``: it stores one positional argument
per field straight into the slots, about a fifth of the Python
``__init__``'s time, and hands every other call to the Python ``__init__``
below, which stays the definition. ``ACCELERATED`` says which is in use.
A record it fills only with values the collector does not track (strs,
ints, None...) and Enum members is left out of the cyclic garbage
collector, as a tuple of such values is (see the C file): a full
collection over 300,000 cached account states took 74-78 ms, now 9.
"""

from __future__ import annotations

import dataclasses
from typing import dataclass_transform

try:
    from ledger import _frozen
except ImportError:  # not built (no C compiler): the Python __init__ alone
    _frozen = None

ACCELERATED = _frozen is not None


@dataclass_transform(frozen_default=True)
def frozen(cls):
    cls = dataclasses.dataclass(frozen=True, slots=True)(cls)
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: @frozen does not call __post_init__")
    fields = dataclasses.fields(cls)
    params, body, env = [], [], {}
    for f in fields:
        if not f.init or f.kw_only or f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: @frozen takes plain fields only")
        env[f"_set_{f.name}"] = getattr(cls, f.name).__set__  # the slot's descriptor
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            env[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        body.append(f"    _set_{f.name}(self, {f.name})")
    source = f"def __init__(self, {', '.join(params)}):\n" + ("\n".join(body) or "    pass")
    exec(source, env)  # noqa: S102 - built above from the class's own field names
    init = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__annotations__ = {**{f.name: f.type for f in fields}, "return": None}
    cls.__init__ = init if _frozen is None else \
        _frozen.Init(cls, tuple(f.name for f in fields), init)
    return cls
