"""VideoIndex: equivalence with a brute-force scan, persistence, removal, shards, coarse kinds."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.index import VideoIndex, shard_of
from engine.index.segment import unit_average
from engine.index.coarse import FaissRange, GrowingKnn, TorchScan, build_searcher
from tests.engine.index.conftest import assert_same, brute_force, passing


@pytest.fixture(scope="module")
def real_index(tmp_path_factory, ref_tmks):
    ix = VideoIndex.create(tmp_path_factory.mktemp("ix") / "real", shards=3, device="cpu")
    ix.add_paths(list(ref_tmks.values()))
    return ix


@pytest.mark.parametrize("c1,c2", [(-1.0, 0.0), (0.7, 0.7), (0.9, 0.95)])
@pytest.mark.parametrize("dense", [True, False])
def test_real_hashes_equal_brute_force(real_index, real_feats, real_full, c1, c2, dense):
    real_index._scorer.matrix_pairs = 1 << 17 if dense else 0   # all-pairs product or per needle
    got = real_index.query(real_feats, c1, c2)
    assert_same(got, passing(real_full, c1, c2), [f.name for f in real_feats])


def test_matches_reference_pair_table(real_index, real_feats, ref_pairs):
    got = {(m.needle, m.id): (m.level1, m.level2) for ms in real_index.query(real_feats, 0.7, 0.0) for m in ms}
    for l1, l2, a, b in ref_pairs:
        if l1 < 0.7:
            continue
        g1, g2 = got[(a.removesuffix(".tmk"), b.removesuffix(".tmk"))]
        assert abs(g1 - l1) <= 2e-6 and abs(g2 - l2) <= 2e-6, (a, b)


def test_synthetic_bank_with_removals_equals_brute_force(tmp_path, synth_feats):
    ix = VideoIndex.create(tmp_path / "syn", shards=4, device="cpu", batch_rows=16)
    ix.add(synth_feats[:50])
    ix.add(synth_feats[50:])
    gone = [f.name for f in synth_feats[::7]]
    ix.remove(gone)
    live = [f for f in synth_feats if f.name not in set(gone)]
    needles = synth_feats[:8]
    full = brute_force(needles, live, 0.6, 0.0)
    for c1, c2 in [(0.6, 0.6), (0.8, 0.8)]:
        assert_same(ix.query(needles, c1, c2), passing(full, c1, c2), [f.name for f in needles])
    top = ix.query(needles, 0.6, 0.6, top=2)
    assert all(len(ms) <= 2 for ms in top)
    assert len(ix) == len(live) and sorted(ix.ids()) == sorted(f.name for f in live)


def test_ivf_with_all_lists_probed_equals_flat(tmp_path, synth_feats):
    ivf = VideoIndex.create(tmp_path / "ivf", shards=2, coarse="ivf", ivf_nlist=2, device="cpu")
    ivf.add(synth_feats[:80])
    ivf.add(synth_feats[80:])
    assert ivf.compact() == 2                        # segments' inverted lists rebuilt
    flat = VideoIndex.create(tmp_path / "flat", shards=2, device="cpu")
    flat.add(synth_feats)
    assert ivf.info()["ivf"]["trained"]
    exact = VideoIndex(tmp_path / "ivf", device="cpu", nprobe=2)
    needles = synth_feats[:10]
    for a, b in zip(exact.query(needles, 0.6, 0.6), flat.query(needles, 0.6, 0.6)):
        assert [(m.id, m.level2) for m in a] == [(m.id, m.level2) for m in b]


def test_threshold_searchers_agree():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:20] + 0.3 * rng.normal(size=(20, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    flat = build_searcher("flat", x, torch.device("cpu"))
    assert isinstance(flat, FaissRange)
    grow = GrowingKnn(flat.index, flat, k0=2, max_k=8)      # exercises doubling and the fallback
    scan = TorchScan(x, torch.device("cpu"), chunk=128)
    want = flat.search(q, 0.3)
    for other in (grow, scan):
        got = other.search(q, 0.3)
        for i in range(len(q)):
            assert sorted(got[1][got[0][i]:got[0][i + 1]]) == sorted(want[1][want[0][i]:want[0][i + 1]])


def test_stable_sharding():
    assert [shard_of("chair-19-sd-bar", 7), shard_of("x", 7), shard_of("y", 1)] == [3, 2, 0]


def test_reader_keeps_its_snapshot_while_a_writer_adds(tmp_path, real_feats):
    w = VideoIndex.create(tmp_path / "c", shards=2, device="cpu")
    w.add(real_feats[:4])
    r = VideoIndex(tmp_path / "c", device="cpu")
    before = r.query(real_feats[:2], -1.0, 0.0)
    w.add(real_feats[4:8])
    w.remove([real_feats[0].name])
    assert [len(ms) for ms in r.query(real_feats[:2], -1.0, 0.0)] == [len(ms) for ms in before] == [4, 4]
    r.reload()
    assert [len(ms) for ms in r.query(real_feats[:2], -1.0, 0.0)] == [7, 7]


def test_removed_id_can_be_added_again(tmp_path, real_feats):
    ix = VideoIndex.create(tmp_path / "r", shards=1, device="cpu")
    ix.add(real_feats[:3])
    ix.remove([real_feats[1].name])
    assert real_feats[1].name not in ix
    ix.add([real_feats[1]])
    assert real_feats[1].name in ix and len(ix) == 3
    assert ix.query([real_feats[1]], 0.99, 0.99)[0][0].id == real_feats[1].name


def test_in_memory_bank_answers_like_the_disk_index(real_index, real_feats):
    rows = torch.from_numpy(np.stack([np.stack([f.cos, f.sin]) for f in real_feats])).half()
    mem = VideoIndex.in_memory([f.name for f in real_feats], np.stack([unit_average(f.avg) for f in real_feats]),
                               rows, device="cpu", batch_rows=5)
    assert len(mem) == len(real_feats)
    for a, b in zip(mem.query(real_feats, 0.7, 0.7), real_index.query(real_feats, 0.7, 0.7)):
        want = {m.id: m.level2 for m in b}
        assert {m.id for m in a} == set(want)
        assert all(abs(m.level2 - want[m.id]) < 1e-3 for m in a)
    assert mem.clusters() == real_index.clusters()


def test_gathered_pair_scoring_equals_needle_by_needle(real_index, real_feats, real_full):
    """The GPU's many-needle path (gathered pairs, chunked), run on CPU."""
    from engine.index.level2 import PairScorer
    gathered = VideoIndex(real_index.root, device="cpu", batch_rows=7)
    gathered._scorer = PairScorer(gathered.params, gathered.device, pair_chunk=5, gather_pairs=True)
    gathered._scorer.matrix_pairs = 0                # not the dense all-pairs product either
    assert_same(gathered.query(real_feats, 0.5, 0.5), passing(real_full, 0.5, 0.5), [f.name for f in real_feats])


def test_writers_wait_for_each_other(tmp_path, real_feats):
    import fcntl
    import os
    from engine.index import IndexFormatError
    ix = VideoIndex.create(tmp_path / "w", shards=1, device="cpu")
    ix.lock_timeout_s = 0.2
    fd = os.open(tmp_path / "w" / "LOCK", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)                 # another writer holds the lock
    with pytest.raises(IndexFormatError, match="another process has been writing"):
        ix.add(real_feats[:1])
    os.close(fd)
    ix.add(real_feats[:1])
    assert len(ix) == 1


def test_compact_keeps_answers_and_retires_old_files(tmp_path, synth_feats):
    root = tmp_path / "k"
    ix = VideoIndex.create(root, shards=2, device="cpu")
    ix.add(synth_feats[:30])
    ix.add(synth_feats[30:60])
    ix.remove([f.name for f in synth_feats[:60:5]])
    stale = VideoIndex(root, device="cpu")          # holds this manifest; opens files lazily
    needles = synth_feats[:6]

    def answers(index):
        return [{m.id: m.level2 for m in ms} for ms in index.query(needles, 0.6, 0.6)]

    before = answers(ix)
    def files():
        return {p.relative_to(root).as_posix() for p in root.glob("shard-*/*")}

    old = files()
    assert ix.compact() == 2 and ix.compact() == 0
    info = ix.info()
    assert (info["segments"], info["deleted"], info["count"], len(ix)) == (2, 0, 48, 48)
    assert info["retired_files"] == len(old)
    for got, want in zip(answers(ix), before):
        assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-6 for k in want)
    assert old <= files()                                            # kept for older readers
    ix.retire_after_s = 0
    ix.add(synth_feats[60:61])                                       # a later writer deletes them
    assert not old & files() and ix.info()["retired_files"] == 0
    for got, want in zip(answers(stale), before):                   # the stale reader reloads
        assert want.keys() <= got.keys()


def test_compact_tail_merges_only_the_small_trailing_segments(tmp_path, synth_feats):
    root = tmp_path / "t"
    ix = VideoIndex.create(root, shards=1, device="cpu")
    ix.add(synth_feats[:40])                                          # a bulk load: one large segment
    for f in synth_feats[40:52]:                                      # then one commit per item
        ix.add([f])
    ix.remove([synth_feats[3].name, synth_feats[45].name])
    needles = synth_feats[:52:4]
    before = [{m.id: m.level2 for m in ms} for ms in ix.query(needles, 0.6, 0.6)]
    big = ix.manifest.segments[0][0].name
    assert ix.compact(tail=20) == 0                                   # 13 segments: under the limit
    assert ix.compact(tail=8) == 1
    segs = ix.manifest.segments[0]
    assert [s.name for s in segs][:1] == [big] and len(segs) == 2     # the large one left as it was
    assert (segs[1].count, len(segs[1].deleted), len(ix)) == (11, 0, 50)
    assert segs[0].deleted                                            # its tombstone stays
    after = [{m.id: m.level2 for m in ms} for ms in ix.query(needles, 0.6, 0.6)]
    for got, want in zip(after, before):
        assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-6 for k in want)
    ix.verify()
    reopened = VideoIndex(root, device="cpu")
    assert sorted(reopened.ids()) == sorted(f.name for f in synth_feats[:52] if f.name not in
                                            (synth_feats[3].name, synth_feats[45].name))
