"""command_hash is the idempotency check of every command ever sent: a retry
is a duplicate only if its hash equals the stored one, so the hash of a
command must never change between versions. It is written member by member
for speed; here it is checked against the definition it must equal, the
SHA-256 of one json.dumps of the whole command, for commands of every type
with fields of any value (the domain's dataclasses take anything: text with
quotes, backslashes, control and non-ASCII characters, bools, huge ints,
None, nested tuples)."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import domain

ALL_COMMANDS = [*domain.COMMAND_TYPES.values(), domain.TransferCreditLeg,
                domain.TransferSettleLeg, domain.ExpireHold]


def defined_hash(command) -> str:
    """The definition: the canonical JSON of type plus sorted fields, with
    expected_version absent when it is ANY_VERSION."""
    fields = {name: getattr(command, name) for name in command.__dataclass_fields__}
    if fields.get("expected_version") == domain.ANY_VERSION:
        del fields["expected_version"]
    canonical = json.dumps({"type": command.type, **fields}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
plain = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)
scalars = st.one_of(text, plain, st.integers(), st.integers(-2**70, 2**70), st.booleans(),
                    st.none(), st.just(domain.ANY_VERSION))
values = st.one_of(scalars, st.just(()), st.tuples(st.tuples(text, text)),
                   st.lists(scalars, max_size=3))


@pytest.mark.parametrize("cls", ALL_COMMANDS, ids=lambda c: c.__name__)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_command_hash_is_the_hash_of_its_canonical_json(cls, data):
    fields = {name: data.draw(values, label=name) for name in cls.__dataclass_fields__}
    command = cls(**fields)
    assert defined_hash(command) == domain.command_hash(command)


def test_known_hashes_never_change():
    """Hashes computed by the json.dumps implementation this replaced."""
    assert "3fe39c1b1c3bcca8457e47d9cc022e07c1bc757ee2552d869e56f39bb1d87df3" == \
        domain.command_hash(domain.Credit("c-1", "acct-1", 500, "EUR"))
    assert "ec50efcde9140063e8999e8f00c8310b038f1a2f003730a257420c42247a21d8" == \
        domain.command_hash(domain.Debit("d-1", "acct-1", 5, "EUR", expected_version=3))
    assert "11439aceda81044852d13d99bd77d217b9322ed2a0c16d174fecf5604ac3cc92" == \
        domain.command_hash(domain.PlaceHold("h-1", "acct-1", 700, "EUR", "acct-2", 0, 60000,
                                             (("k", "v\u00e9"),)))
