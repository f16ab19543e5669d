"""Sharded query on Ray equals the local query."""
from __future__ import annotations

import pytest

from engine.index import VideoIndex
from engine.synthetic import mixed_strengths, perturbed_features
from engine.ray.shard_query import ShardedQuery, ShardView, merge
from engine.tmkfile import read_many
from kernels.params import DEFAULT_PARAMS


@pytest.fixture(scope="module")
def bank(ref_tmks, tmp_path_factory):
    feats = read_many(list(ref_tmks.values()))
    synth = perturbed_features(feats, 40, mixed_strengths(40, 0.35, seed=3, near=0.15), seed=5)
    for i, f in enumerate(synth):
        f.name = f"synth-{i:03d}"
    path = tmp_path_factory.mktemp("ix") / "ix"
    ix = VideoIndex.create(path, shards=3, device="cpu")
    ix.add(feats[:8])
    ix.add(feats[8:] + synth)     # two segments per shard
    ix.remove(["synth-007"])      # and a tombstone
    return path, feats + synth[:6]


def same(local, sharded) -> None:
    """Same matches in the same order; level-2 within float32 rounding (it depends on batch composition)."""
    assert len(local) == len(sharded)
    for a, b in zip(local, sharded):
        assert [(m.needle, m.id, m.level1) for m in a] == [(m.needle, m.id, m.level1) for m in b]
        for x, y in zip(a, b):
            assert abs(x.level2 - y.level2) <= 1e-6
            # offsets are modulo each period: 0 and T-1 are neighbours
            assert all(min(abs(p - q), t - abs(p - q)) <= 1
                       for p, q, t in zip(x.offsets, y.offsets, DEFAULT_PARAMS.periods)), (x, y)


@pytest.mark.parametrize("c1,c2,top", [(0.7, 0.7, None), (-1.0, -1.0, None), (0.5, 0.5, 3)])
def test_shard_views_merge_to_local_answers(bank, c1, c2, top):
    path, needles = bank
    local = VideoIndex(path, device="cpu").query(needles, c1, c2, top)
    parts = [ShardView(path, s, device="cpu").query(needles, c1, c2, top) for s in range(3)]
    same(local, merge(parts, top))
    assert sum(map(len, local)) > 0


def test_sharded_query_on_ray_equals_local(ray_local, bank):
    path, needles = bank
    ix = VideoIndex(path, device="cpu")
    with ShardedQuery(path, {"query_batch": 7}, device="cpu") as sq:
        assert [s["shard"] for s in sq.shards] == [0, 1, 2]
        assert sum(s["items"] for s in sq.shards) == len(ix)
        for c1, c2, top in [(0.7, 0.7, None), (-1.0, -1.0, 5)]:
            same(ix.query(needles, c1, c2, top), sq.query(needles, c1, c2, top))
