"""kernels/score_np.py (the torch-free CPU level-2 kernel) against the exhaustive scan and the torch kernel."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from kernels import score_np
from kernels.params import DEFAULT_PARAMS, TmkParams
from kernels.score import TmkScorer, level1, needle_coeffs
from tests.kernels.test_score import _random_features, level2_exhaustive


def _coeffs(n: int = 6, seed: int = 0, near: int = 4):
    c, s = _random_features(n, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    c2 = c[0:1] + 0.02 * torch.randn(c[:near].shape, generator=g)     # near copies: sharp peaks
    s2 = s[0:1] + 0.02 * torch.randn(s[:near].shape, generator=g)
    k0, a, b = needle_coeffs(c[0], s[0], torch.cat([c, c2]), torch.cat([s, s2]))
    return k0.numpy(), a.numpy(), b.numpy()


def _offset_ok(k0, a, b, got, want, params=DEFAULT_PARAMS):
    """Offsets agree except where two offsets are within round-off of each other."""
    j = np.arange(1, params.num_coeffs)
    for bi, pi in zip(*np.nonzero(got != want)):
        per = params.periods[pi]

        def k(o):
            d = 2 * np.pi * o / per
            return k0[bi, pi] + (a[bi, pi].astype(np.float64) * np.cos(j * d)).sum() + (
                b[bi, pi].astype(np.float64) * np.sin(j * d)).sum()
        assert abs(k(got[bi, pi]) - k(want[bi, pi])) < 2e-6, (bi, pi)


def test_kernel_max_equals_the_exhaustive_scan():
    k0, a, b = _coeffs()
    best, off = score_np.TmkScorerNp().kernel_max(k0, a, b)
    eb, eo = level2_exhaustive(k0.astype(np.float64), a.astype(np.float64), b.astype(np.float64))
    assert best.dtype == np.float32 and off.dtype == np.int64
    assert np.abs(best - eb).max() < 2e-6
    _offset_ok(k0, a, b, off, eo)


def test_numpy_and_torch_kernels_agree_on_scores_offsets_and_pruning():
    k0, a, b = _coeffs(8, seed=3)
    np_s, t_s = score_np.TmkScorerNp(), TmkScorer()
    assert np_s.grid == t_s.grid
    nb_, no = np_s.level2_from_coeffs(k0, a, b)
    tb, to = t_s.level2_from_coeffs(*(torch.from_numpy(x) for x in (k0, a, b)))
    assert np.abs(nb_ - tb.numpy()).max() < 1e-6
    _offset_ok(k0, a, b, no, to.numpy())
    for c2 in (0.0, 0.5, 0.9, 1.5):
        tt = t_s.may_reach(*(torch.from_numpy(x) for x in (k0, a, b)), c2).numpy()
        assert np.array_equal(np_s.may_reach(k0, a, b, c2), tt)
        todo, sc, off = np_s.level2_pruned(k0, a, b, c2)
        assert np.array_equal(todo, tt) and np.allclose(sc, nb_[todo], atol=0)
    todo, sc, off = np_s.level2_pruned(k0, a, b, 2.0)          # nothing can reach 2
    assert todo.shape == (0,) and sc.shape == (0,) and off.shape == (0, DEFAULT_PARAMS.num_periods)


def test_small_params_and_a_coarse_grid():
    params = TmkParams(periods=(31, 45), coeffs=tuple(1.0 / (1 + j) for j in range(8)), dim=16)
    g = np.random.default_rng(5)
    k0 = g.normal(size=(20, 2)).astype(np.float32)
    a, b = (g.normal(size=(20, 2, 7)).astype(np.float32) for _ in range(2))
    best, off = score_np.TmkScorerNp(params, grid=16).kernel_max(k0, a, b)
    eb, eo = level2_exhaustive(k0.astype(np.float64), a.astype(np.float64), b.astype(np.float64), params)
    assert np.abs(best - eb).max() < 1e-5
    _offset_ok(k0, a, b, off, eo, params)


def test_level1_matches_torch_including_zero_vectors():
    g = np.random.default_rng(0)
    x = g.normal(size=(50, 256)).astype(np.float32)
    y = g.normal(size=(50, 256)).astype(np.float32)
    x[3] = 0
    y[3] = 0       # both zero: 0
    x[4] = 0       # one zero: NaN
    got = score_np.level1(x, y)
    want = level1(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    assert got.dtype == np.float32 and got[3] == 0 and np.isnan(got[4])
    ok = ~np.isnan(want)
    assert np.array_equal(np.isnan(got), ~ok) and np.abs(got[ok] - want[ok]).max() < 1e-6


def test_low_precision_block_dots_widen_without_torch(monkeypatch):
    c, s = _random_features(5, seed=2)
    rows = torch.stack([c, s], 1).numpy()                      # [B,2,P,m,d]
    w = score_np.block_weights(c[0].numpy(), s[0].numpy())
    full = score_np.needle_block_dots(w, rows, None, range(32))
    half = score_np.needle_block_dots(w, rows.astype(np.float16), None, range(32))
    sub = score_np.needle_block_dots(w, rows.astype(np.float16), None, range(3, 9), np.array([4, 1]))
    assert np.abs(half - full).max() < 2e-3
    # a subset is a product of another shape: BLAS may round it differently (AVX-512 OpenBLAS
    # kernels do; AVX2 ones gave equal bits), never by more than float32 rounding
    np.testing.assert_allclose(sub, half[:, :, 3:9][:, :, :, [4, 1]], rtol=1e-5, atol=1e-8)
    q = (rows * 100).astype(np.int8)
    with_torch = [score_np.needle_block_dots(w, x, None, range(2, 7), i)
                  for x in (rows.astype(np.float16), q) for i in (None, np.array([3, 0, 2]))]
    monkeypatch.delitem(sys.modules, "torch")       # as in a process that never imported torch
    without = [score_np.needle_block_dots(w, x, None, range(2, 7), i)
               for x in (rows.astype(np.float16), q) for i in (None, np.array([3, 0, 2]))]
    assert all(np.array_equal(a, b) for a, b in zip(with_torch, without))


def test_the_numpy_kernel_imports_no_torch():
    code = "import sys, kernels.score_np; kernels.score_np.TmkScorerNp(); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0 and r.stdout.split() == ["False"], r.stderr


def test_a_pair_scores_the_same_in_any_batch():
    """Scores and offsets of a pair do not depend on the other pairs scored with it beyond
    float32 rounding: its block dot products are BLAS products whose shape follows the batch
    (bit-equal with AVX2 OpenBLAS kernels, last-bit differences with AVX-512 ones, measured)."""
    c, s = _random_features(24, seed=4)
    rows = torch.stack([c, s], 1).numpy()
    w = score_np.block_weights(c[0].numpy(), s[0].numpy())
    ker = score_np.TmkScorerNp()
    full = score_np.needle_block_dots(w, rows, None, range(32))
    sc, off = ker.level2_from_coeffs(*score_np.coeffs_from_dots(full))
    rng = np.random.default_rng(0)
    for size in (1, 2, 3, 7, 13):
        idx = np.sort(rng.choice(len(rows), size, replace=False))
        part = score_np.needle_block_dots(w, rows, None, range(32), idx)
        np.testing.assert_allclose(part, full[:, :, :, idx], rtol=1e-5, atol=1e-8)
        s2, o2 = ker.level2_from_coeffs(*score_np.coeffs_from_dots(part))
        np.testing.assert_allclose(s2, sc[idx], rtol=0, atol=2e-6)
        assert np.abs(o2 - off[idx]).max() <= 1        # neighbouring offsets may tie within rounding
