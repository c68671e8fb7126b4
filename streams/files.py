"""Files written whole or not at all: the one way the ledger replaces a file
(snapshots, account exports, checkpoint manifests, the local broker's
secrets and settings)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def partial_name(path: Path) -> Path:
    """Where a copy of ``path`` is written before it is put in place: a
    dot-file next to it (``.<name>.<random>``), never matched by a reader's
    glob of finished files, and told apart from them by whoever prunes
    copies a crash left behind (streams.checkpoints)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")


def sync_dir(path: Path) -> None:
    """Make a rename or a new file in folder ``path`` survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w", *, private: bool = False) -> Iterator[IO]:
    """Yield a new file opened with ``mode`` ("w" or "wb") at a partial name
    next to ``path``; when the block ends without an exception, flush it to
    disk and rename it over ``path``. A reader sees the old file or the whole
    new one, never a part; a block that raises leaves ``path`` as it was and
    no partial copy behind. ``private``: readable by the owner only (0600),
    from the moment the file exists. The block may read its own writing back
    through the file's ``name`` (after a flush) before it is put in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_name(path)
    perm = 0o600 if private else 0o666  # less the umask

    def opener(name, flags):
        return os.open(name, flags | os.O_EXCL, perm)

    try:
        with open(partial, mode, opener=opener) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
        sync_dir(path.parent)
    finally:
        partial.unlink(missing_ok=True)
