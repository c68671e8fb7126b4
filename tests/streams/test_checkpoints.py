"""Store checkpoints in shared storage (streams/checkpoints.py).

- A worker killed with kill -9 in the middle of a load of debits and
  transfers is taken over by a worker on an empty data dir, which starts
  every partition from a checkpoint the dead one left: every command has
  exactly one outcome, the model's, and the stores it built are byte for
  byte those a worker folding the whole log builds.
- Checkpoints are hostile input: a flipped byte, a file name that climbs out
  of the store, another topic's id, an offset past the log's end or a
  truncated manifest each make the worker fold the log instead, and say why.
- Without a broker: a checkpoint folder that cannot be written costs the
  worker nothing but a warning and a metric, and only the newest KEEP
  checkpoints and the files they name are kept.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest

from ledger import domain
from streams import checkpoints, metrics
from streams.store import Batch, PartitionStore, open_store
from tests.conftest import data_only, dump_stores, wait_until
from tests.streams import faultload


def _restored(log_path: Path) -> set[int]:
    return {int(p) for p in re.findall(r"partition (\d+): restored the checkpoint",
                                       log_path.read_text())}


def _complete(settings, partition: int, count: int) -> bool:
    """At least ``count`` checkpoints of the partition have been written."""
    return len(checkpoints.manifests(settings, partition)) >= min(count, checkpoints.KEEP)


def _rebuilt_from_the_log(settings, workers, tmp_path, name: str) -> dict:
    """The stores a worker folding the whole log builds (no checkpoints)."""
    plain = settings.with_(worker_id=name, data_dir=tmp_path / f"data-{name}",
                           checkpoint_root=None)
    worker = workers.start(plain)
    workers.stop(worker)
    return dump_stores(plain)


@pytest.mark.kafka
@pytest.mark.slow
def test_a_takeover_after_kill_9_starts_from_checkpoints_and_loses_nothing(
        settings, workers, tmp_path):
    s = settings.with_(checkpoint_root=tmp_path / "checkpoints", checkpoint_every=150)
    rng = random.Random(31)
    setup, load = faultload.make_load(rng, 6_000)
    first = workers.start(s)
    faultload.apply_all(s, setup)
    sender = faultload.Sender(s, load, rate_per_s=400)
    sender.start()
    try:
        # Every partition has checkpoints (pruned to KEEP) and the load runs on.
        wait_until(lambda: all(_complete(s, p, 3) for p in range(s.partitions)), 120,
                   "checkpoints of every partition", first.log_path)
        assert sender.is_alive(), "the load ended before the kill"
        workers.kill(first)
        # A new host: nothing on its disk, the same shared checkpoint folder.
        second = workers.start(s.with_(worker_id="w2", data_dir=tmp_path / "data-w2"),
                               wait=False)
        second.wait_ready(120)
        assert set(range(s.partitions)) == _restored(second.log_path), \
            second.log_path.read_text()[-3000:]
        sender.join(120)
        assert not sender.is_alive() and sender.error is None, sender.error
    finally:
        sender.stop.set()
        sender.join(30)
    expected, balances = faultload.model(setup, sender.sent())
    records, outcomes = faultload.wait_for_all_outcomes(s, expected)
    faultload.check_against_model(records, outcomes, expected, balances)
    workers.stop(second)

    restored = dump_stores(second.settings)
    folded = _rebuilt_from_the_log(s, workers, tmp_path, "w3")
    for p in range(s.partitions):
        assert data_only(folded[p]) == data_only(restored[p]), p


def _tamper(s, partition: int, how: str) -> None:
    newest, *older = checkpoints.manifests(s, partition)
    for old in older:
        old.unlink()  # one manifest left, the tampered one
    manifest = json.loads(newest.read_text())
    if how == "flipped byte":
        sst = max((f for f in manifest["files"] if f["name"].endswith(".sst")),
                  key=lambda f: f["size"])
        blob = newest.parent / "blobs" / sst["sha256"]
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0x40
        blob.write_bytes(bytes(data))
        return
    if how == "path escape":
        manifest["files"][0]["name"] = "../../../escaped"
    elif how == "other topic id":
        manifest["topic_id"] = "AAAAAAAAAAAAAAAAAAAAAA"
    elif how == "past the log's end":
        manifest["events_offset"] += 1_000_000
        newest.unlink()
        newest = newest.with_name(f"{manifest['events_offset']:020d}.json")
    if how == "truncated":
        newest.write_text(json.dumps(manifest)[:50])
    else:
        newest.write_text(json.dumps(manifest))


@pytest.mark.kafka
def test_a_bad_checkpoint_is_never_restored(settings, workers, tmp_path):
    s = settings.with_(checkpoint_root=tmp_path / "checkpoints", checkpoint_every=60)
    rng = random.Random(5)
    setup, load = faultload.make_load(rng, 1_500)
    first = workers.start(s)
    faultload.apply_all(s, setup + load)
    wait_until(lambda: all(_complete(s, p, 2) for p in range(s.partitions)), 60,
               "checkpoints of every partition", first.log_path)
    workers.stop(first)
    wrote = dump_stores(s)

    harms = {0: "flipped byte", 1: "path escape", 2: "other topic id",
             3: "past the log's end", 4: "truncated"}
    for p, how in harms.items():
        _tamper(s, p, how)
    second = workers.start(s.with_(worker_id="w2", data_dir=tmp_path / "data-w2"))
    workers.stop(second)
    text = second.log_path.read_text()
    assert {5} == _restored(second.log_path), text[-3000:]
    reasons = {int(p): why for p, why in
               re.findall(r"checkpoint \d+\.json of partition (\d+) not used: (.*)", text)}
    assert "do not match the manifest" in reasons[0]
    assert "bad file entry" in reasons[1]
    assert "the topic was created again" in reasons[2]
    assert "outside the log" in reasons[3]
    assert "malformed manifest" in reasons[4]
    assert not (tmp_path / "escaped").exists()

    rebuilt = dump_stores(second.settings)
    for p in range(s.partitions):
        assert data_only(wrote[p]) == data_only(rebuilt[p]), p


# -- without a broker -------------------------------------------------------

def _grown(settings, partition: int, events: int) -> PartitionStore:
    """The partition's store, opened, with account "a" grown to ``events`` events."""
    store = open_store(settings, partition)
    state = store.account("a")
    for n in range((state.version if state else 0) + 1, events + 1):
        command = domain.Credit(f"c{n}", "a", 5, "EUR") if state else \
            domain.OpenAccount("o", "a", "EUR")
        (event,) = domain.decide(state, command, 1_000 + n)
        state = domain.evolve(state, event)
        batch = Batch(store)
        batch.put_history(event, b"record %d" % n, state)
        batch.put_account(state)
        store.apply(batch, n)
    return store


def _writer(settings) -> checkpoints.Writer:
    return checkpoints.Writer(settings, lambda: "topic-id")


def test_a_checkpoint_folder_that_cannot_be_written_costs_a_warning(tmp_path, settings_offline):
    root = tmp_path / "not-a-folder"
    root.write_text("a file where the folder should be")
    s = settings_offline.with_(checkpoint_root=root, checkpoint_every=10)
    store = _grown(s, 0, 25)
    failed = metrics.CHECKPOINTS_FAILED._value.get()
    writer = _writer(s)
    try:
        writer.after_apply(0, store, store.events_offset)
        wait_until(lambda: metrics.CHECKPOINTS_FAILED._value.get() > failed, 30,
                   "the failure counted")
        # The local copy is gone; the store is untouched.
        wait_until(lambda: not any((s.data_dir / ".checkpoints").rglob("p0")), 30,
                   "the local checkpoint removed")
        assert 25 == store.account("a").version
        # A takeover finds no checkpoint there, and says so rather than fail.
        assert 0 == checkpoints.newest_offset(s, 0)
        assert None is checkpoints.restore(s, 0, have=0, low=0, high=25,
                                           topic_id=lambda: "topic-id")
    finally:
        writer.close(30)
        store.close()


def test_only_the_newest_checkpoints_and_their_files_are_kept(
        tmp_path, settings_offline, monkeypatch):
    monkeypatch.setattr(checkpoints, "STALE_S", 0.0)
    s = settings_offline.with_(checkpoint_root=tmp_path / "shared", checkpoint_every=10)
    store = _grown(s, 0, 10)
    writer = _writer(s)
    written = metrics.CHECKPOINTS_WRITTEN._value.get()
    try:
        for n in range(1, 5):
            if n > 1:
                store.close()
                store = _grown(s, 0, 10 * n)
            writer.after_apply(0, store, store.events_offset)
            wait_until(lambda: metrics.CHECKPOINTS_WRITTEN._value.get() >= written + n, 30,
                       f"checkpoint {n} written")
            wait_until(lambda: not writer._busy, 30, "the writer idle")
    finally:
        writer.close(30)
    found = checkpoints.manifests(s, 0)
    assert [40, 30] == [int(p.stem) for p in found]
    named = {f["sha256"] for path in found for f in json.loads(path.read_text())["files"]}
    assert named == {p.name for p in (found[0].parent / "blobs").iterdir()}

    # A newer manifest whose files RocksDB cannot open (an SST left out, every
    # hash right) is skipped, not raised; the newest good one restores to a
    # store equal to the one it was taken of.
    manifest = json.loads(found[0].read_text())
    manifest["files"] = [f for f in manifest["files"] if not f["name"].endswith(".sst")]
    manifest["events_offset"] = 45
    (found[0].parent / f"{45:020d}.json").write_text(json.dumps(manifest))
    mine = [kv for kv in store.items(b"")]
    store.close()
    shutil.rmtree(s.data_dir)
    rejected = metrics.CHECKPOINTS_REJECTED._value.get()
    assert 40 == checkpoints.restore(s, 0, have=0, low=0, high=45, topic_id=lambda: "topic-id")
    assert rejected + 1 == metrics.CHECKPOINTS_REJECTED._value.get()
    copy = open_store(s, 0)
    try:
        assert mine == [kv for kv in copy.items(b"")]
    finally:
        copy.close()


@pytest.fixture
def settings_offline(tmp_path):
    from streams.config import Settings

    return Settings(topic_prefix="offline", partitions=1, data_dir=tmp_path / "data")

