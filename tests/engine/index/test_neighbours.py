"""ListScan (engine/index/neighbours.py): batched k-NN searches against a brute-force reference."""
from __future__ import annotations

import numpy as np
import pytest

import engine.index.neighbours as nbm
from engine.index.neighbours import ListScan


def _bank(n=900, d=24, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(12, d))
    x = c[rng.integers(12, size=n)] + 0.4 * rng.normal(size=(n, d))
    x[5] = x[6]                                      # an exact tie
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute(x, q, k, lo, allowed=None, roots=None):
    """The k best items (score >= lo, allowed, other root) per query as sets of (id, rounded score)."""
    s = x[q] @ x.T
    ok = s >= lo
    if allowed is not None:
        ok &= allowed[None, :]
    if roots is not None:
        ok &= roots[None, :] != roots[q][:, None]
    out = []
    for row, m in zip(s, ok):
        ids = np.nonzero(m)[0]
        best = ids[np.lexsort((ids, -row[ids]))][:k]
        out.append(best)
    return out


@pytest.mark.parametrize("cols", [1 << 14, 100])
def test_exact_search_is_the_brute_force_top_k_with_threshold_and_exclusions(monkeypatch, cols):
    monkeypatch.setattr(nbm, "_COLS", cols)          # one list cut into column blocks, or not
    monkeypatch.setattr(nbm, "_BLOCK", 5000)         # several query blocks per list
    x = _bank()
    rng = np.random.default_rng(1)
    q = np.sort(rng.choice(len(x), 150, replace=False))
    allowed = rng.random(len(x)) < 0.7
    roots = rng.integers(0, 40, len(x))
    ls = ListScan(x, 1, 1)
    for k, lo, al, rt in [(5, -np.inf, None, None), (7, 0.5, None, None), (30, 0.6, allowed, roots), (3, 0.9, allowed, None)]:
        d, i = ls.search(q, k, lo, al, rt)
        assert d.shape == i.shape == (len(q), k)
        want = _brute(x, q, k, lo, al, rt)
        sims = x[q] @ x.T
        for qi, row_d, row_i, w, srow in zip(q, d, i, want, sims):
            got = row_i[row_i >= 0]
            assert len(got) == len(w)                                       # as many as reach lo (at most k)
            np.testing.assert_allclose(row_d[:len(w)], srow[w], atol=1e-5)  # the same scores, best first
            kth = srow[w[-1]] if len(w) else np.inf
            assert set(got[srow[got] > kth + 1e-5].tolist()) == set(w[srow[w] > kth + 1e-5].tolist())
            if al is not None:
                assert al[got].all()
            if rt is not None:
                assert np.all(rt[got] != rt[qi])                          # never its own component
            assert np.all(row_d[len(w):] == -np.inf) and np.all(row_i[len(w):] == -1)


def test_scores_are_the_inner_products():
    x = _bank()
    ls = ListScan(x, 1, 1)
    q = np.arange(0, 900, 37)
    d, i = ls.search(q, 4)
    np.testing.assert_allclose(d, np.einsum("qd,qkd->qk", x[q], x[i]), rtol=1e-5, atol=1e-6)


def test_ivf_probing_every_list_equals_exact_and_one_list_loses_some():
    x = _bank()
    q = np.arange(0, 900, 3)
    exact = ListScan(x, 1, 1).search(q, 8, 0.5)[1]
    full = ListScan(x, 16, 16).search(q, 8, 0.5)[1]
    one = ListScan(x, 16, 1).search(q, 8, 0.5)[1]
    assert np.array_equal(np.sort(exact, 1), np.sort(full, 1))
    assert not np.array_equal(np.sort(exact, 1), np.sort(one, 1))


def test_range_search_is_every_pair_over_the_threshold():
    x = _bank()
    q = np.arange(0, 900, 7)
    qi, ii = ListScan(x, 1, 1).range_search(q, 0.8)
    s = x[q] @ x.T
    a, b = np.nonzero(s >= 0.8)
    assert sorted(zip(qi.tolist(), ii.tolist())) == sorted(zip(q[a].tolist(), b.tolist()))


def test_bf16_scores_stay_within_the_stated_error_and_find_the_same_items():
    x = _bank(n=3000, d=256, seed=4)
    q = np.arange(0, 3000, 5)
    fp = ListScan(x, 1, 1)
    bf = ListScan(x, 1, 1, precision="bf16")
    assert 0.011 < bf.error < 0.0125 and fp.error == 1e-4
    d, i = bf.search(q, 20)
    exact = np.einsum("qd,qkd->qk", x[q], x[i])
    assert np.abs(d - exact).max() <= bf.error
    assert np.abs(d - exact).max() > 1e-4                  # really computed in bf16
    # with the margin, everything the exact search finds at >= 0.8 is among bf16's >= 0.8 - error
    de, ie = fp.search(q, 3000, 0.8)
    db, ib = bf.search(q, 3000, 0.8 - bf.error)
    for a, b in zip(ie, ib):
        assert set(a[a >= 0].tolist()) <= set(b[b >= 0].tolist())


def test_auto_precision_is_bf16_where_native_else_int8_where_exact_else_fp32(monkeypatch):
    x = _bank(n=200, d=16, seed=5)
    for native, exact, want in ((True, True, "bf16"), (True, False, "bf16"), (False, True, "int8"),
                                (False, False, "fp32")):
        monkeypatch.setattr(nbm, "cpu_has_bf16", lambda: native)
        monkeypatch.setattr(nbm, "int8_products_exact", lambda: exact)
        assert ListScan(x, 1, 1, precision="auto").precision == want
    wide = np.zeros((4, 3000), np.float32)                    # int32 sums too large to convert exactly
    wide[:, 0] = 1
    assert ListScan(wide, 1, 1, precision="auto").precision == "fp32"
    with pytest.raises(ValueError, match="fewer than"):
        ListScan(wide, 1, 1, precision="int8")
    with pytest.raises(ValueError, match="unknown precision"):
        ListScan(x, 1, 1, precision="fp8")
    monkeypatch.setattr(nbm, "int8_products_exact", lambda: False)
    with pytest.raises(ValueError, match="not exact on this machine"):
        ListScan(x, 1, 1, precision="int8")
    assert isinstance(nbm.cpu_has_bf16(), bool)


def test_the_int8_probe_catches_saturating_products(monkeypatch):
    import torch

    nbm.int8_products_exact.cache_clear()
    try:
        real = torch._int_mm
        assert nbm.int8_products_exact() == torch.equal(
            real(torch.full((20, 256), 127, dtype=torch.int8), torch.full((256, 8), -63, dtype=torch.int8)),
            torch.full((20, 8), -127 * 63 * 256, dtype=torch.int32))

        def saturating(a, b):                 # as vpmaddubsw without VNNI: a shifted to uint8,
            p = (a.int() + 128)[:, :, None] * b.int()[None, :, :]       # int16 sums of product pairs
            pairs = (p[:, 0::2] + p[:, 1::2]).clamp(-32768, 32767)
            return (pairs.sum(1) - 128 * b.int().sum(0)[None, :]).int()

        monkeypatch.setattr(torch, "_int_mm", saturating)
        nbm.int8_products_exact.cache_clear()
        assert nbm.int8_products_exact() is True                    # +-127 by +-63 never saturates...
        monkeypatch.setattr(nbm, "_Q", 127)
        nbm.int8_products_exact.cache_clear()
        assert nbm.int8_products_exact() is False                   # ...+-127 by +-127 does
    finally:
        nbm.int8_products_exact.cache_clear()


needs_int8 = pytest.mark.skipif(not nbm.int8_products_exact(), reason="torch._int_mm is not exact on this CPU")


@needs_int8
def test_int8_scores_stay_within_the_stated_error_and_rank_within_it():
    x = _bank(n=3000, d=256, seed=4)
    q = np.arange(0, 3000, 5)
    i8 = ListScan(x, 1, 1, precision="int8")
    assert np.abs(i8.xs.numpy()).max() <= nbm._Q and np.abs(i8.xq8).max() <= nbm._QA
    assert 1e-3 < i8.error < 0.05
    d, i = i8.search(q, 20)
    exact = np.einsum("qd,qkd->qk", x[q], x[i])
    assert np.abs(d - exact).max() <= i8.error
    assert np.abs(d - exact).max() > 1e-4                   # really computed in int8
    # nothing missed by more than the error: an item left out scores at most the k-th's + 2 error
    sims = x[q] @ x.T
    for row_i, srow in zip(i, sims):
        out = np.setdiff1d(np.arange(len(x)), row_i)
        assert srow[out].max() <= srow[row_i].min() + 2 * i8.error
    # with the margin, everything the exact search finds at >= 0.8 is among int8's >= 0.8 - error
    de, ie = ListScan(x, 1, 1).search(q, 3000, 0.8)
    db, ib = i8.search(q, 3000, 0.8 - i8.error)
    for a, b in zip(ie, ib):
        assert set(a[a >= 0].tolist()) <= set(b[b >= 0].tolist())


@needs_int8
def test_int8_search_keeps_the_exclusions():
    x = _bank()
    rng = np.random.default_rng(2)
    q = np.sort(rng.choice(len(x), 120, replace=False))
    allowed = rng.random(len(x)) < 0.6
    roots = rng.integers(0, 30, len(x))
    for nlist, nprobe in ((1, 1), (12, 5)):
        ls = ListScan(x, nlist, nprobe, precision="int8")
        d, i = ls.search(q, 25, -np.inf, allowed, roots)
        for qi, row_d, row_i in zip(q, d, i):
            got = row_i[row_i >= 0]
            assert allowed[got].all() and np.all(roots[got] != roots[qi])
            assert np.isfinite(row_d[:len(got)]).all() and np.all(row_d[len(got):] == -np.inf)
        if nlist == 1:                                  # exact: as many as the brute force finds
            want = _brute(x, q, 25, -np.inf, allowed, roots)
            assert [int((r >= 0).sum()) for r in i] == [len(w) for w in want]


def test_cached_probes_are_the_probes_computed_per_search(monkeypatch):
    x = _bank(n=1200, d=24, seed=6)
    q = np.arange(0, 1200, 4)
    cached = ListScan(x, 16, 6)
    assert cached._probes.shape == (1200, 6) and cached._probes.dtype == np.int16
    assert np.array_equal(np.sort(cached.ids), np.arange(1200))
    monkeypatch.setattr(nbm, "_PROBE_CACHE", 0)
    fresh = ListScan(x, 16, 6)
    assert fresh._probes is None
    for p in (6, 2):                                    # fewer probed lists later: the cache's first columns
        cached.nprobe = fresh.nprobe = p
        a, b = cached.search(q, 9, 0.3), fresh.search(q, 9, 0.3)
        assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])
