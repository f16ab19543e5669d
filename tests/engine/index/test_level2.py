"""Head-first level-2 (engine/index/level2.py): same answers as the full computation, less read."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.index import VideoIndex, int8, level2
from engine.index.level2 import PairScorer
from engine.synthetic import mixed_strengths, perturbed_features
from engine.index.segment import unit_average
from kernels.score_np import block_norms
from tests.engine.index.conftest import assert_same, passing


@pytest.fixture(scope="module")
def bank(real_feats):
    feats = list(real_feats) + perturbed_features(real_feats[:15], 90, mixed_strengths(90, 0.3, seed=4), seed=4)
    return feats, np.stack([np.stack([f.cos, f.sin]) for f in feats])


def _stores(rows):
    shape = rows.shape[1:]
    rec = int8.quantize(rows)
    return {"fp32": (rows, block_norms(rows)), "fp16": (rows.astype(np.float16), block_norms(rows.astype(np.float16))),
            "int8": (rec, int8.block_norms(rec, shape))}


@pytest.mark.parametrize("store", ["fp32", "fp16", "int8"])
def test_head_first_gives_the_same_matches_scores_and_offsets(bank, store, monkeypatch):
    feats, rows = bank
    data, norms = _stores(rows)[store]
    scorer = PairScorer(feats[0].params, torch.device("cpu"))
    needles = feats[:4]
    n_cos = torch.from_numpy(np.stack([f.cos for f in needles]))
    n_sin = torch.from_numpy(np.stack([f.sin for f in needles]))
    rng = np.random.default_rng(0)
    pn = np.repeat(np.arange(4), len(rows))
    ps = np.tile(np.arange(len(rows)), 4)
    pick = rng.random(len(pn)) < 0.7           # scattered slots: the gathered path too
    pick[:len(rows)] = True                    # needle 0 against every row: the direct path
    pn, ps = pn[pick], ps[pick]
    read = []
    real = level2.score_np.needle_block_dots
    monkeypatch.setattr(level2.score_np, "needle_block_dots",
                        lambda w, cand, sc, js, idx=None: read.append(len(js) * len(cand if idx is None else idx))
                        or real(w, cand, sc, js, idx))

    def run(c2, nrm):
        if store == "fp32":
            return scorer.score(n_cos, n_sin, pn, ps, torch.from_numpy(data), c2, nrm)
        return scorer.score_raw(n_cos, n_sin, pn, ps, data, c2, nrm)

    full, _ = run(0.0, None)
    # thresholds: defaults, exactly at computed scores (inclusive), and low ones most rows survive
    for c2 in (0.5, 0.7, 0.9, float(np.sort(full[full < 0.99])[-3]), float(np.median(full)),
               float(np.quantile(full, 0.1))):
        a, oa = run(c2, None)
        read.clear()
        b, ob = run(c2, norms)
        ma, mb = a >= c2, b >= c2
        # a pair's offset search does not depend on the rows read with it, and its products
        # only within float32 rounding (BLAS shapes follow the batch: bit-equal with AVX2
        # OpenBLAS kernels, last bits apart with AVX-512 ones), so the survivors score as on
        # the full path; a pair within rounding of c2 may fall either side
        near = np.abs(np.nan_to_num(a, nan=-9.0) - c2) <= 2e-6
        assert ma.any() and np.array_equal(ma[~near], mb[~near]), c2
        both = ma & mb
        np.testing.assert_allclose(a[both], b[both], rtol=0, atol=2e-6)
        assert np.abs(oa[both] - ob[both]).max(initial=0) <= 1   # neighbouring offsets may tie within rounding
        assert np.all(np.isnan(b[~mb]) | (b[~mb] < c2))
        if c2 >= 0.7:
            assert sum(read) < 0.5 * 32 * len(pn)     # blocks read: most candidates only head first


def test_int8_block_norms_are_those_of_the_stored_values(bank):
    _, rows = bank
    rec = int8.quantize(rows[:9])
    got = int8.block_norms(rec, rows.shape[1:], chunk=4)
    back = int8.dequantize(rec, rows.shape[1:]).astype(np.float64)
    exact = np.sqrt((back ** 2).sum(-1).sum(1))
    assert np.all(got >= exact) and np.allclose(got, exact, rtol=1e-6)


def test_in_memory_cpu_bank_queries_head_first_like_the_brute_force(real_feats, real_full):
    rows = torch.from_numpy(np.stack([np.stack([f.cos, f.sin]) for f in real_feats]))
    mem = VideoIndex.in_memory([f.name for f in real_feats], np.stack([unit_average(f.avg) for f in real_feats]),
                               rows, device="cpu", batch_rows=7)
    names = [f.name for f in real_feats]
    for c1, c2 in ((0.5, 0.5), (-1.0, 0.7), (-1.0, 0.9)):
        assert_same(mem.query(real_feats, c1, c2), passing(real_full, c1, c2), names)
    assert mem._read()._state()[0]._norms is not None          # the bank's block norms were used


@pytest.mark.parametrize("store", ["fp16", "int8"])
def test_one_batch_query_of_a_low_precision_index_on_cpu(tmp_path, real_feats, real_full, store):
    """One shard, one batch (a typical lookup): rows scored as read, like the many-batch path."""
    ix = VideoIndex.create(tmp_path / store, shards=1, store=store, device="cpu")
    ix.add(real_feats)
    names = [f.name for f in real_feats]
    tol = 1e-3 if store == "fp16" else 0.05
    got = ix.query(real_feats, 0.7, 0.9)
    want = passing(real_full, 0.7, 0.9)
    for n, ms in zip(names, got):
        assert {m.id for m in ms} <= set(real_full[n]) and set(want[n]) - {m.id for m in ms} <= {
            k for k, v in real_full[n].items() if abs(v[1] - 0.9) < tol}
        assert all(abs(m.level2 - real_full[n][m.id][1]) < tol for m in ms)


def test_in_memory_float16_cpu_bank_is_scored_as_read(real_feats, real_full):
    rows = torch.from_numpy(np.stack([np.stack([f.cos, f.sin]) for f in real_feats])).half()
    mem = VideoIndex.in_memory([f.name for f in real_feats], np.stack([unit_average(f.avg) for f in real_feats]),
                               rows, device="cpu", batch_rows=7)
    raw = []
    scorer = mem._read()._scorer
    real = scorer.score_raw
    scorer.score_raw = lambda *a: raw.append(a[4].dtype) or real(*a)
    got = mem.query(real_feats, -1.0, 0.7)
    assert raw and all(d == np.float16 for d in raw)
    assert_same(got, passing(real_full, -1.0, 0.7), [f.name for f in real_feats], tol=1e-3)
