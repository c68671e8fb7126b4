"""Store checkpoints: copies of each partition's store in shared storage.

A worker that takes over a partition whose store it lacks (a new host, a
lost disk, another ``--processes`` child) must fold the partition's whole
event log before it may apply a command there: one core, minutes for
millions of events. With ``LEDGER_CHECKPOINT_DIR`` set to storage the
workers share, the owner of each partition leaves a checkpoint of its store
there every ``LEDGER_CHECKPOINT_EVERY`` events, and a worker taking the
partition over starts from the newest checkpoint and folds only the log
after it (:func:`restore`, called by ``Processor._catch_up``).

Layout, per partition::

    <root>/<events topic>/p<N>/blobs/<sha256>    the checkpoints' files, each
                                                named by its content: shared
                                                between checkpoints (RocksDB's
                                                SST files never change)
    <root>/<events topic>/p<N>/<offset:020d>.json   one checkpoint (its
                                                manifest), the store as of that
                                                event-log offset

**Writing** (:class:`Writer`). Between two batches, after the store has
applied a committed batch, the worker takes a RocksDB checkpoint of it: hard
links in its data dir, so the copy holds exactly the committed batches up to
its ``events_offset`` (the store's rule: nothing is written before its
transaction commits). A thread of its own then hashes each file, copies the
files the shared folder lacks, writes the manifest last (an atomic rename)
and keeps the newest :data:`KEEP` manifests and the blobs they name. The
worker's loop waits for none of that; a checkpoint that fails (disk full, the
folder gone) is logged and counted, and the next one is tried
``checkpoint_every`` events later.

**Restoring** (:func:`restore`). A checkpoint is trusted for nothing but
saving time. It is used only if its manifest is well formed, of this store
format, of this partition of this very topic (the topic's id: a topic deleted
and created again has another), within the log's offsets, and far enough
ahead of the local store; each file is copied into a new directory and
checked against its hash, and the copy opened to check its format and
offset, before it replaces the local store. Anything wrong: a warning, a
metric, and the next older checkpoint or the log itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

from streams import metrics
from streams.config import Settings
from streams.files import atomic_file, partial_name, sync_dir
from streams.store import STORE_FORMAT, PartitionStore, store_path

log = logging.getLogger("ledger.checkpoints")

KEEP = 2  # manifests kept per partition (a reader may be copying the older)
# A blob no kept manifest names is removed only once it is this old: a
# zombie may be writing a checkpoint that names it (the manifest comes last).
STALE_S = 600.0
MANIFEST_MAX_BYTES = 1 << 20  # a store has tens of files; a manifest is a few kB
_CHUNK = 1 << 20
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # a RocksDB file name, no path
_SHA = re.compile(r"^[0-9a-f]{64}$")
_MANIFEST = re.compile(r"^(\d{20})\.json$")


class CheckpointInvalid(ValueError):
    """A checkpoint that cannot be used (its reason is the message)."""


def partition_dir(settings: Settings, partition: int) -> Path:
    return Path(settings.checkpoint_root) / settings.events_topic / f"p{partition}"


@dataclass(frozen=True)
class Manifest:
    path: Path
    events_offset: int
    topic_id: str
    files: tuple[tuple[str, str, int], ...]  # (name, sha256, size)

    @classmethod
    def read(cls, settings: Settings, partition: int, path: Path) -> "Manifest":
        """Parse and check a manifest; raises CheckpointInvalid or OSError."""
        if path.stat().st_size > MANIFEST_MAX_BYTES:
            raise CheckpointInvalid(f"manifest larger than {MANIFEST_MAX_BYTES} bytes")
        try:
            raw = json.loads(path.read_bytes())
            files = tuple((f["name"], f["sha256"], f["size"]) for f in raw["files"])
            offset, topic_id = raw["events_offset"], raw["topic_id"]
            fmt, topic, p = raw["store_format"], raw["topic"], raw["partition"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointInvalid(f"malformed manifest: {exc!r}") from None
        if fmt != STORE_FORMAT:
            raise CheckpointInvalid(f"store format {fmt!r}, not {STORE_FORMAT}")
        if topic != settings.events_topic or p != partition:
            raise CheckpointInvalid(f"of {topic!r} partition {p!r}")
        if type(offset) is not int or offset < 0 or not isinstance(topic_id, str):
            raise CheckpointInvalid("bad events_offset or topic_id")
        if f"{offset:020d}.json" != path.name:
            raise CheckpointInvalid(f"names offset {offset}")
        names = set()
        for name, sha, size in files:
            if not (isinstance(name, str) and _NAME.match(name) and isinstance(sha, str)
                    and _SHA.match(sha) and type(size) is int and size >= 0) or name in names:
                raise CheckpointInvalid(f"bad file entry {name!r}")
            names.add(name)
        if "CURRENT" not in names:
            raise CheckpointInvalid("no CURRENT file")
        return cls(path, offset, topic_id, files)


def manifests(settings: Settings, partition: int) -> list[Path]:
    """The partition's manifest files, newest (highest offset) first."""
    try:
        names = os.listdir(partition_dir(settings, partition))
    except FileNotFoundError:
        return []
    except OSError as exc:  # unreadable shared storage: the log will do
        log.warning("checkpoints of partition %d unreadable: %r", partition, exc)
        return []
    return [partition_dir(settings, partition) / n
            for n in sorted((n for n in names if _MANIFEST.match(n)), reverse=True)]


def _offset_of(manifest: Path) -> int:
    """The offset a manifest's file name gives."""
    return int(_MANIFEST.match(manifest.name).group(1))


def newest_offset(settings: Settings, partition: int) -> int:
    """The offset the newest manifest names (0: none); read from its name."""
    found = manifests(settings, partition)
    return _offset_of(found[0]) if found else 0


def worth_restoring(settings: Settings, have: int, offset: int) -> bool:
    """Whether a checkpoint at ``offset`` saves enough over a store at
    ``have``: a fifth of a checkpoint interval or more (20,000 records by
    default; a store that close is folded about as fast as one is copied)."""
    return offset - have >= max(1, settings.checkpoint_every // 5)


def _hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_checked(src: Path, dst: Path, sha: str, size: int) -> None:
    """Copy src to dst, raising CheckpointInvalid unless its bytes hash to sha."""
    digest, copied = hashlib.sha256(), 0
    with open(src, "rb") as f, open(dst, "wb") as out:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            copied += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    if copied != size or digest.hexdigest() != sha:
        raise CheckpointInvalid(f"{src.name}: its bytes do not match the manifest")


# -- restoring ---------------------------------------------------------------

def restore(settings: Settings, partition: int, *, have: int, low: int, high: int,
            topic_id) -> int | None:
    """Replace the local store of ``partition`` (closed by the caller; at log
    offset ``have``) with the newest usable checkpoint; return its offset,
    or None if there is none worth using. ``low``/``high``: the log's start
    and end offsets; ``topic_id``: a callable giving the events topic's id,
    asked only when there is a candidate."""
    wanted_id = None
    for path in manifests(settings, partition):
        offset = _offset_of(path)
        if not worth_restoring(settings, have, offset):
            return None  # older ones save even less
        try:
            manifest = Manifest.read(settings, partition, path)
            if not low <= offset <= high:
                raise CheckpointInvalid(f"offset {offset} is outside the log's {low}..{high}")
            if wanted_id is None:
                try:
                    wanted_id = topic_id()
                except Exception as exc:  # unreachable or refused: the log will do
                    log.warning("partition %d: no checkpoint used, the topic's id is "
                                "unknown: %r", partition, exc)
                    return None
            if manifest.topic_id != wanted_id:
                raise CheckpointInvalid(f"of topic id {manifest.topic_id}, not {wanted_id} "
                                        "(the topic was created again)")
            started = time.perf_counter()
            _install(settings, partition, manifest)
        except Exception as exc:  # RocksDB raises plain Exception for a copy it cannot open
            log.warning("checkpoint %s of partition %d not used: %s", path.name, partition, exc)
            metrics.CHECKPOINTS_REJECTED.inc()
            continue
        log.info("partition %d: restored the checkpoint at offset %d (%d records ahead of "
                 "the local store) in %.1f s", partition, offset, offset - have,
                 time.perf_counter() - started)
        metrics.CHECKPOINTS_RESTORED.inc()
        return offset
    return None


def _install(settings: Settings, partition: int, manifest: Manifest) -> None:
    target = store_path(settings, partition)
    staging = target.with_name(f"{target.name}.restore-{uuid.uuid4().hex[:8]}")
    blobs = manifest.path.parent / "blobs"
    for leftover in target.parent.glob(f"{target.name}.restore-*"):  # of a crash
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        for name, sha, size in manifest.files:
            _copy_checked(blobs / sha, staging / name, sha, size)
        copy = PartitionStore(staging, read_only=True)
        try:
            found_format, found = copy.format, copy.events_offset
        finally:
            copy.close()
        if found_format != STORE_FORMAT or found != manifest.events_offset:
            raise CheckpointInvalid(f"the copy is at offset {found}, not "
                                    f"{manifest.events_offset}, or of another format")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# -- writing -----------------------------------------------------------------

@dataclass
class _Job:
    partition: int
    local: Path  # the RocksDB checkpoint (hard links) in the worker's data dir
    events_offset: int
    hashes: dict[str, str]  # SST name -> sha256, for the store it was taken of


class Writer:
    """Takes checkpoints of one worker's stores and copies them out on a thread."""

    def __init__(self, settings: Settings, topic_id):
        self.settings = settings
        self._topic_id = topic_id  # callable: the events topic's id
        self._every = max(1, settings.checkpoint_every)
        self._local_root = Path(settings.data_dir) / ".checkpoints" / settings.events_topic
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._busy: set[int] = set()  # partitions with a checkpoint being copied
        self._last: dict[int, int] = {}  # partition -> offset of its newest checkpoint
        # SST files never change, and their names are never reused within one
        # open store: their hashes are kept per store object.
        self._hashes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._thread = threading.Thread(target=self._run, name="checkpoints", daemon=True)
        self._thread.start()

    def known(self, partition: int, offset: int) -> None:
        """The newest checkpoint of ``partition`` is at ``offset``."""
        self._last[partition] = max(offset, self._last.get(partition, 0))

    def after_apply(self, partition: int, store: PartitionStore, offset: int) -> None:
        """Called with each committed batch the store applied (core thread)."""
        if offset - self._last.get(partition, 0) < self._every or partition in self._busy:
            return
        local = self._local_root / f"p{partition}"
        self._last[partition] = offset  # failed or not, the next one is due an interval on
        try:
            shutil.rmtree(local, ignore_errors=True)  # a leftover of a crash
            local.parent.mkdir(parents=True, exist_ok=True)
            store.checkpoint(local)
        except Exception as exc:  # the worker goes on
            log.warning("partition %d: no checkpoint at offset %d: %r", partition, offset, exc)
            metrics.CHECKPOINTS_FAILED.inc()
            shutil.rmtree(local, ignore_errors=True)
            return
        self._busy.add(partition)
        self._jobs.put(_Job(partition, local, offset, self._hashes.setdefault(store, {})))

    def close(self, timeout_s: float = 0.0) -> None:
        """Stop the thread after the copy under way (waiting at most timeout_s)."""
        self._jobs.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            started = time.perf_counter()
            try:
                copied = self._copy_out(job)
                log.info("partition %d: checkpoint at offset %d written (%d bytes copied) "
                         "in %.1f s", job.partition, job.events_offset, copied,
                         time.perf_counter() - started)
                metrics.CHECKPOINTS_WRITTEN.inc()
            except Exception as exc:  # disk full, folder gone: try again later
                log.warning("partition %d: checkpoint at offset %d failed: %r",
                            job.partition, job.events_offset, exc)
                metrics.CHECKPOINTS_FAILED.inc()
            finally:
                shutil.rmtree(job.local, ignore_errors=True)
                self._busy.discard(job.partition)

    def _copy_out(self, job: _Job) -> int:
        s = self.settings
        home = partition_dir(s, job.partition)
        blobs = home / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        files, copied = [], 0
        for path in sorted(job.local.iterdir()):
            name, size = path.name, path.stat().st_size
            sha = job.hashes.get(name) if name.endswith(".sst") else None
            if sha is None:
                sha = _hash(path)
                if name.endswith(".sst"):
                    job.hashes[name] = sha
            blob = blobs / sha
            try:
                present = blob.stat().st_size == size
            except FileNotFoundError:
                present = False
            if present:
                os.utime(blob)  # named again: not stale (STALE_S)
            else:
                partial = partial_name(blob)
                try:
                    _copy_checked(path, partial, sha, size)
                    os.replace(partial, blob)
                finally:
                    partial.unlink(missing_ok=True)
                copied += size
            files.append({"name": name, "sha256": sha, "size": size})
        sync_dir(blobs)
        manifest = {"store_format": STORE_FORMAT, "topic": s.events_topic,
                    "topic_id": self._topic_id(), "partition": job.partition,
                    "events_offset": job.events_offset, "written_by": s.worker_id,
                    "written_at_ms": int(time.time() * 1000), "files": files}
        with atomic_file(home / f"{job.events_offset:020d}.json") as f:
            json.dump(manifest, f)
        _prune(s, job.partition)
        return copied


def _prune(settings: Settings, partition: int) -> None:
    """Keep the newest KEEP manifests and the blobs they name (and young ones)."""
    home = partition_dir(settings, partition)
    found = manifests(settings, partition)
    for old in found[KEEP:]:
        old.unlink(missing_ok=True)
    named = set()
    for path in found[:KEEP]:
        try:
            named.update(sha for _n, sha, _s in Manifest.read(settings, partition, path).files)
        except (CheckpointInvalid, OSError):
            continue
    now = time.time()
    # Unnamed blobs, and partial copies (files.partial_name: blobs and
    # manifests of a writer that died), go once stale.
    doomed = [e for e in os.scandir(home / "blobs") if e.name not in named]
    doomed += [e for e in os.scandir(home) if e.name.startswith(".") and e.is_file()]
    for entry in doomed:
        try:
            if now - entry.stat().st_mtime > STALE_S:
                os.unlink(entry.path)
        except FileNotFoundError:
            pass
