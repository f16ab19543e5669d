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


def test_auto_precision_is_bf16_only_where_the_cpu_multiplies_it(monkeypatch):
    x = _bank(n=200, d=16, seed=5)
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(nbm, "cpu_has_bf16", lambda: native)
        assert ListScan(x, 1, 1, precision="auto").precision == want
    with pytest.raises(ValueError, match="unknown precision"):
        ListScan(x, 1, 1, precision="fp8")
    assert isinstance(nbm.cpu_has_bf16(), bool)
