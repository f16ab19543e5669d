"""The numpy exact kernels (kernels/pdqf_np.py, kernels/tmk_np.py) against the torch ones, bit for bit.

The torch kernels are themselves checked against scalar emulations (test_pdqf.py, test_tmk.py)
and the reference bytes (tests/engine/test_hasher.py); here every output word must be equal.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kernels import pdqf as pdqf_torch
from kernels import pdqf_np, tmk_np
from kernels.params import DEFAULT_PARAMS, TmkParams
from kernels.tmk import TmkAccumulator, finalize_features

P = DEFAULT_PARAMS


def same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    rng = np.random.default_rng(7)
    out = rng.integers(0, 256, size=(40, 64, 64, 3), dtype=np.uint8)
    out[1] = 126                                                     # flat grey: round-off only
    out[2] = 0                                                       # black: an all-zero feature
    out[3] = 255                                                     # white
    out[4] = np.arange(64, dtype=np.uint8)[None, :, None] * 4        # varies along one axis
    out[5] = np.arange(64, dtype=np.uint8)[:, None, None] * 4        # the other axis
    out[6, :, :, 0], out[6, :, :, 1:] = 255, 0                       # pure red
    out[7] = rng.integers(0, 2, size=(64, 64, 1), dtype=np.uint8) * 255  # black/white noise
    return out


def test_luma_and_pdqf_equal_the_torch_kernels(frames):
    assert same(pdqf_np.luma(frames), pdqf_torch.luma(torch.from_numpy(frames)).numpy())
    got = pdqf_np.pdqf(frames)
    want = pdqf_torch.pdqf(torch.from_numpy(frames), "exact").numpy()
    assert got.shape == (40, 256) and same(got, want)
    assert not got[2].any() and not np.signbit(got[2]).any()          # black: +0 everywhere, as torch
    assert 0 < np.linalg.norm(got[1]) < 1e-6


def test_pdqf_of_no_frames_and_of_one_frame(frames):
    assert pdqf_np.pdqf(frames[:0]).shape == (0, 256)
    for i in (0, 1, 2):
        assert same(pdqf_np.pdqf(frames[i:i + 1])[0], pdqf_np.pdqf(frames)[i])


def _feats(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = (rng.standard_normal((n, 256)) * 40).astype(np.float32)
    f[2] = 0                                                         # a black frame: left unnormalised
    f[4] = np.float32(1e-23)                                         # squares underflow: norm 0, kept
    f[5] = -f[5]
    f[6, ::2] = 0
    return f


def _both(feats: np.ndarray, chunks: list[int], start: int = 0, params: TmkParams = P):
    a, b = tmk_np.TmkAccumulatorNp(params), TmkAccumulator(params, "exact", "cpu")
    a.count = b.count = start                                        # frame index of the first frame
    s = 0
    for n in chunks:
        a.update(feats[s:s + n])
        b.update(torch.from_numpy(feats[s:s + n]))
        s += n
    assert s == len(feats)
    return a.finalize(), b.finalize()


@pytest.mark.parametrize("chunks,start", [([30], 0), ([1, 0, 7, 13, 9], 0), ([11, 19], 123_457)])
def test_accumulator_equals_the_torch_kernel(chunks, start):
    feats = _feats(30, seed=len(chunks) + start)
    (avg, cos, sin, count), (tavg, tcos, tsin, tcount) = _both(feats, chunks, start)
    assert count == tcount == 30 + start
    assert same(avg, tavg) and same(cos, tcos) and same(sin, tsin)
    assert not sin[:, 0].any()


def test_accumulator_edge_videos():
    z = np.zeros((4, 256), np.float32)
    for feats in (z, z[:1], _feats(8, seed=3)[:1]):                  # all-black video, one frame
        (avg, cos, sin, count), (tavg, tcos, tsin, tcount) = _both(feats, [len(feats)])
        assert count == tcount and same(avg, tavg) and same(cos, tcos) and same(sin, tsin)
    avg, cos, sin, count = tmk_np.TmkAccumulatorNp().finalize()      # no frames at all
    assert count == 0 and not avg.any() and not cos.any() and not sin.any()
    assert cos.shape == (4, 32, 256) and cos.dtype == np.float32


def test_other_parameters():
    params = TmkParams(periods=(97, 211), coeffs=P.coeffs[:5])
    feats = _feats(12, seed=11)
    (avg, cos, sin, _), (tavg, tcos, tsin, _) = _both(feats, [5, 7], params=params)
    assert cos.shape == (2, 5, 256) and same(avg, tavg) and same(cos, tcos) and same(sin, tsin)


def test_trig_tables_are_libm_in_the_reference_angle_order():
    c, s = tmk_np.trig_tables_exact(99_990, 12, P)
    assert c.shape == s.shape == (12, 4, 31)
    for n in (0, 11):
        for i, period in enumerate(P.periods):
            for j in (1, 17, 31):
                th = (tmk_np.TWO_PI * j) * (99_990 + n) / period
                assert c[n, i, j - 1] == math.cos(th) and s[n, i, j - 1] == math.sin(th)


def test_norms_and_finalize_equal_torch():
    rng = np.random.default_rng(5)
    v = (rng.standard_normal((4, 32, 256)) * 3).astype(np.float32)
    v[1, 3] = 0
    assert same(tmk_np.seq_sumsq(v), pdqf_torch_sumsq(v))
    assert same(tmk_np.finalize_features(v, P), finalize_features(torch.from_numpy(v), P).numpy())
    assert tmk_np.seq_sumsq(np.zeros((3, 0), np.float32)).shape == (3,)


def pdqf_torch_sumsq(v: np.ndarray) -> np.ndarray:
    from kernels.tmk import seq_sumsq
    return seq_sumsq(torch.from_numpy(v)).numpy()


def test_the_numpy_kernels_import_no_torch():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, kernels.pdqf_np, kernels.tmk_np, kernels.device, engine.hasher; "
            "h = engine.hasher.VideoHasher(device='cpu'); "
            "print(h.kernels, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0 and r.stdout.split() == ["numpy", "False"], r.stderr
