"""streams.files.atomic_file: a file is replaced whole or not at all (no broker)."""

import os
import stat

import pytest

from streams.files import atomic_file


def test_a_finished_block_replaces_the_file_and_leaves_no_partial_copy(tmp_path):
    path = tmp_path / "sub" / "out.json"
    with atomic_file(path) as f:
        f.write("one")
        f.flush()
        assert open(f.name).read() == "one"  # readable by its name before it is in place
        assert not path.exists()
    assert path.read_text() == "one"
    with atomic_file(path, "wb") as f:
        f.write(b"two")
    assert path.read_bytes() == b"two"
    assert sorted(os.listdir(path.parent)) == ["out.json"]


def test_a_block_that_raises_leaves_the_old_file_and_no_partial_copy(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as f:
            f.write("half of the new")
            raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]


def test_a_private_file_is_the_owners_alone_even_over_a_wider_one(tmp_path):
    path = tmp_path / "secret"
    path.write_text("old")
    path.chmod(0o644)
    with atomic_file(path, private=True) as f:
        assert stat.S_IMODE(os.stat(f.name).st_mode) == 0o600
        f.write("s3cret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "s3cret"
