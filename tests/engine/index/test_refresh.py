"""VideoIndex.refresh / snapshot: incremental pick-up of commits, equal to a fresh open."""
from __future__ import annotations

import numpy as np

from engine.index import VideoIndex
from engine.index.coarse import Appended, GrowingRows
from tests.engine.index.conftest import assert_same, brute_force, passing


def answers(ix: VideoIndex, needles, c1=0.6, c2=0.6):
    return [[(m.id, round(m.level1, 5), round(m.level2, 5)) for m in ms] for ms in ix.query(needles, c1, c2)]


def test_refresh_equals_fresh_open_and_snapshots_stay(tmp_path, synth_feats):
    path = tmp_path / "ix"
    writer = VideoIndex.create(path, shards=2, device="cpu")
    writer.add(synth_feats[:40])
    reader = VideoIndex(path, device="cpu")
    needles = synth_feats[:10]
    before = answers(reader, needles)
    snap = reader.snapshot()
    shard_objs = list(reader._shards)
    for k in range(40, 90, 10):                         # five commits, each read incrementally
        writer.add(synth_feats[k:k + 10])
        assert reader.refresh()
    assert not reader.refresh()                         # nothing new: same view
    assert all(isinstance(sh.searcher, Appended) for sh in reader._shards)
    assert all(a.readers[0] is b.readers[0] for a, b in zip(reader._shards, shard_objs))   # old files reused
    assert_same(reader.query(needles, 0.6, 0.6), passing(brute_force(needles, synth_feats, 0.6, 0.0), 0.6, 0.6),
                [f.name for f in needles])
    assert answers(reader, needles) == answers(VideoIndex(path, device="cpu"), needles)
    assert answers(snap, needles) == before              # the snapshot still sees 40 items
    assert len(snap) == 40 and len(reader) == 90

    gone = [f.name for f in synth_feats[::3]]
    writer.remove(gone)
    assert reader.refresh()
    live = [f for f in synth_feats if f.name not in set(gone)]
    assert sorted(reader.ids()) == sorted(f.name for f in live)
    assert answers(reader, needles) == answers(VideoIndex(path, device="cpu"), needles)
    writer.add([synth_feats[0]])                        # a removed id comes back
    reader.refresh()
    assert synth_feats[0].name in reader and answers(reader, needles) == answers(VideoIndex(path, device="cpu"),
                                                                                  needles)
    writer.compact()                                    # shards rewritten: loaded afresh
    assert reader.refresh()
    assert answers(reader, needles) == answers(VideoIndex(path, device="cpu"), needles)
    assert reader.item_info(synth_feats[1].name)["id"] == synth_feats[1].name


def test_growing_rows_never_change_an_older_view():
    g = GrowingRows.wrap(np.ones((2, 3), np.float32))
    a = g.extend(2, [np.full((1, 3), 2, np.float32)])
    va = a.view(3)
    b = a.extend(3, [np.full((1, 3), 3, np.float32)])       # in place: va still has 3 rows
    c = a.extend(3, [np.full((1, 3), 4, np.float32)])       # a is no longer the newest: copies
    assert b is a and c is not a
    assert va.tolist() == [[1] * 3, [1] * 3, [2] * 3]
    assert b.view(4)[3].tolist() == [3] * 3 and c.view(4)[3].tolist() == [4] * 3
