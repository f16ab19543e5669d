"""The index as an immutable read snapshot plus a writer: a snapshot never moves; after a writer's
commit, refresh() gives a new snapshot with it, and the old one still answers as before."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.index import IndexFormatError, VideoIndex
from engine.index.snapshot import IndexSnapshot
from engine.index.writer import IndexWriter
from engine.synthetic import random_signatures


def test_snapshot_refresh_after_a_writers_commit(tmp_path):
    feats = random_signatures(4, seed=13)
    for i, f in enumerate(feats):
        f.name = f"v{i}"
    w = IndexWriter.create(tmp_path / "ix", shards=2)
    w.add(feats[:2])
    snap = IndexSnapshot.open(tmp_path / "ix", device="cpu")
    assert len(snap) == 2 and "v0" in snap and snap.refresh() is snap  # nothing committed: the same object
    w.add(feats[2:])
    w.remove(["v0"])
    assert len(snap) == 2 and "v0" in snap and "v3" not in snap       # immutable: the old state
    assert [m.id for m in snap.query([feats[0]], 0.99, 0.99)[0]] == ["v0"]
    new = snap.refresh()
    assert new is not snap and new.generation > snap.generation
    assert sorted(new.ids()) == ["v1", "v2", "v3"]
    assert [m.id for m in new.query([feats[3]], 0.99, 0.99)[0]] == ["v3"]
    assert new.query([feats[0]], 0.99, 0.99) == [[]]
    assert [m.id for m in snap.query([feats[0]], 0.99, 0.99)[0]] == ["v0"]   # still answers from its state
    assert sorted(w.snapshot(device="cpu").ids()) == ["v1", "v2", "v3"]
    w.compact()
    after = new.refresh()
    assert sorted(after.ids()) == ["v1", "v2", "v3"] and after.generation > new.generation


def test_snapshot_constructors_and_read_only(tmp_path):
    feats = random_signatures(6, seed=17)
    for i, f in enumerate(feats):
        f.name = f"s{i}"
    w = IndexWriter.create(tmp_path / "ix", shards=3)
    w.add(feats)
    full = VideoIndex(tmp_path / "ix", device="cpu")
    parts = [IndexSnapshot.shard(tmp_path / "ix", s, device="cpu") for s in range(3)]
    assert sorted(i for p in parts for i in p.ids()) == sorted(full.ids())
    assert all(p.shard_index == s for s, p in enumerate(parts))
    with pytest.raises(IndexFormatError, match="no shard 3"):
        IndexSnapshot.shard(tmp_path / "ix", 3, device="cpu")
    snap = IndexSnapshot.open(tmp_path / "ix", device="cpu")
    assert not hasattr(snap, "add") and not hasattr(snap, "remove")     # reads only: writes are IndexWriter's
    with pytest.raises(AttributeError, match="immutable"):
        snap.manifest = None
    rows = torch.from_numpy(np.stack([np.stack([f.cos, f.sin]) for f in feats]))
    avgs = np.stack([f.avg / np.linalg.norm(f.avg) for f in feats]).astype(np.float32)
    mem = IndexSnapshot.in_memory([f.name for f in feats], avgs, rows, device="cpu")
    assert len(mem) == 6 and mem.refresh() is mem
    assert [m.id for m in mem.query([feats[2]], 0.99, 0.99)[0]] == ["s2"]


def _named(n: int, seed: int, prefix: str):
    feats = random_signatures(n, seed=seed)
    for i, f in enumerate(feats):
        f.name = f"{prefix}{i}"
    return feats


def _state(snap: IndexSnapshot, needles) -> tuple:
    """Everything a reader can observe of a snapshot (answers rounded: they are compared exactly)."""
    return (snap.generation, len(snap), snap.ids(), json.dumps(snap.manifest.to_json(), sort_keys=True),
            [[(m.id, round(m.level1, 6), round(m.level2, 6)) for m in ms] for ms in snap.query(needles, 0.5, 0.5)],
            [f.cos.tobytes() for f in snap.features(snap.ids()[:2])], snap.item_info(snap.ids()[0])["id"])


def test_a_snapshot_never_changes_under_writes(tmp_path):
    """add, remove and compact by a writer (and by the VideoIndex that handed the snapshot out)
    leave a snapshot exactly as it was: its manifest object, locations, shards and answers."""
    feats = _named(8, 21, "i")
    w = IndexWriter.create(tmp_path / "ix", shards=2)
    w.add(feats[:5])
    ix = VideoIndex(tmp_path / "ix", device="cpu")
    snaps = [w.snapshot(), IndexSnapshot.open(tmp_path / "ix", device="cpu"), ix.snapshot()]
    before = [_state(s, feats) for s in snaps]
    shards = [list(s._shards) for s in snaps]
    w.add(feats[5:])
    w.remove(["i0", "i6"])
    ix.refresh()                                      # the facade moves on ...
    ix.add([_named(1, 22, "x")[0]])
    ix.remove(["i1"])
    w.compact()
    assert ix.refresh() and "i1" not in ix and "x0" in ix
    for s, b, sh in zip(snaps, before, shards):       # ... its snapshots do not
        assert _state(s, feats) == b and s._shards == sh
        with pytest.raises(AttributeError, match="immutable"):
            s.batch_rows = 1
    assert sorted(w.snapshot().ids()) == sorted(["i2", "i3", "i4", "i5", "i7", "x0"])


def test_refresh_reuses_unchanged_shards_and_old_snapshots_keep_theirs(tmp_path):
    feats = _named(12, 23, "r")
    w = IndexWriter.create(tmp_path / "ix", shards=3)
    w.add(feats[:6])
    old = IndexSnapshot.open(tmp_path / "ix", device="cpu")
    w.add(feats[6:])
    w.remove(["r0"])
    new = old.refresh()
    assert new is not old and new.generation == old.generation + 2
    for a, b in zip(old._shards, new._shards):         # the old segment readers are reused, none re-read
        assert all(x is y for x, y in zip(a.readers, b.readers)) and len(b.readers) == len(a.readers) + 1
    assert "r0" in old and "r0" not in new and "r11" in new and "r11" not in old
    assert old.ids() == sorted(f.name for f in feats[:6])
    fresh = IndexSnapshot.open(tmp_path / "ix", device="cpu")
    assert [[(m.id, m.level2) for m in ms] for ms in new.query(feats, 0.5, 0.5)] == \
        [[(m.id, m.level2) for m in ms] for ms in fresh.query(feats, 0.5, 0.5)]


def test_shard_snapshots_refresh_within_their_shard_and_in_memory_equals_disk(tmp_path):
    feats = _named(9, 29, "m")
    w = IndexWriter.create(tmp_path / "ix", shards=3)
    w.add(feats[:4])
    parts = [IndexSnapshot.shard(tmp_path / "ix", s, device="cpu") for s in range(3)]
    w.add(feats[4:])
    later = [p.refresh() for p in parts]
    assert all(b.shard_index == a.shard_index for a, b in zip(parts, later))
    assert sorted(i for p in later for i in p.ids()) == sorted(f.name for f in feats)
    assert sum(len(p) for p in parts) == 4 and sum(len(p) for p in later) == 9
    disk = w.snapshot()
    ids = disk.ids()
    stored = disk.features(ids)
    rows = torch.from_numpy(np.stack([np.stack([f.cos, f.sin]) for f in stored]))
    mem = IndexSnapshot.in_memory(ids, np.stack([f.avg for f in stored]), rows, device="cpu")
    assert mem.generation == 0 and mem.shard_index is None and ids == mem.ids()
    got = [[(m.id, round(m.level1, 5), round(m.level2, 5)) for m in ms] for ms in mem.query(feats, 0.3, 0.3)]
    want = [[(m.id, round(m.level1, 5), round(m.level2, 5)) for m in ms] for ms in disk.query(feats, 0.3, 0.3)]
    assert got == want and any(got)
