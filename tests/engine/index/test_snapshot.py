"""The index as an immutable read snapshot plus a writer: a snapshot never moves; after a writer's
commit, refresh() gives a new snapshot with it, and the old one still answers as before."""
from __future__ import annotations

import pytest

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
    import numpy as np
    import torch
    rows = torch.from_numpy(np.stack([np.stack([f.cos, f.sin]) for f in feats]))
    avgs = np.stack([f.avg / np.linalg.norm(f.avg) for f in feats]).astype(np.float32)
    mem = IndexSnapshot.in_memory([f.name for f in feats], avgs, rows, device="cpu")
    assert len(mem) == 6 and mem.refresh() is mem
    assert [m.id for m in mem.query([feats[2]], 0.99, 0.99)[0]] == ["s2"]
