import math

import numpy as np
import torch

from kernels.params import DEFAULT_PARAMS
from kernels.tmk import TWO_PI, TmkAccumulator, finalize_features, trig_tables_exact

P = DEFAULT_PARAMS


def _numpy_reference(feats: np.ndarray):
    """Per-frame emulation of spec 4.3-4.4 in numpy (independent of the torch code)."""
    f32, f64 = np.float32, np.float64
    m = P.num_coeffs
    avg = np.zeros(256, f32)
    cos = np.zeros((4, m, 256), f32)
    sin = np.zeros((4, m, 256), f32)
    for t, f in enumerate(feats):
        avg = (avg + f).astype(f32)
        ss = f32(0)
        for v in f:
            ss = f32(ss + f32(v * v))
        n = f32(math.sqrt(f64(ss)))
        g = (f / n).astype(f32) if n > 0 else f
        for i, period in enumerate(P.periods):
            cos[i, 0] = (cos[i, 0] + g).astype(f32)
            for j in range(1, m):
                th = (TWO_PI * j) * t / period
                cos[i, j] = (cos[i, j].astype(f64) + g.astype(f64) * math.cos(th)).astype(f32)
                sin[i, j] = (sin[i, j].astype(f64) + g.astype(f64) * math.sin(th)).astype(f32)
    avg = (avg / f32(len(feats))).astype(f32)
    a = P.coeffs32
    for arr in (cos, sin):
        for i in range(4):
            for j in range(m):
                ss = f32(0)
                for v in arr[i, j]:
                    ss = f32(ss + f32(v * v))
                n = f32(math.sqrt(f64(ss)))
                if n > 0:
                    arr[i, j] = (arr[i, j] / n).astype(f32)
                arr[i, j] = (arr[i, j] * f32(math.sqrt(f64(a[j])))).astype(f32)
    return avg, cos, sin


def _feats(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = (rng.standard_normal((n, 256)) * 50).astype(np.float32)
    f[3] = 0  # a black frame: zero feature, left unnormalised
    return f


def test_exact_accumulator_is_bit_identical_to_emulation_across_chunks():
    feats = _feats(9)
    acc = TmkAccumulator(mode="exact")
    for s in (slice(0, 4), slice(4, 5), slice(5, 9)):
        acc.update(torch.from_numpy(feats[s]))
    avg, cos, sin, count = acc.finalize()
    ravg, rcos, rsin = _numpy_reference(feats)
    assert count == 9
    for got, want in ((avg, ravg), (cos, rcos), (sin, rsin)):
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_fast_accumulator_within_bounds():
    feats = _feats(40, seed=2)
    ex, fa = TmkAccumulator(mode="exact"), TmkAccumulator(mode="fast")
    ex.update(torch.from_numpy(feats))
    for s in range(0, 40, 16):
        fa.update(torch.from_numpy(feats[s:s + 16]))
    e, f = ex.finalize(), fa.finalize()
    assert np.abs(e[1] - f[1]).max() < 1e-5 and np.abs(e[2] - f[2]).max() < 1e-5
    assert np.abs(e[0] - f[0]).max() / np.abs(e[0]).max() < 1e-5


def test_empty_video_is_all_zero():
    avg, cos, sin, count = TmkAccumulator().finalize()
    assert count == 0 and not avg.any() and not cos.any() and not sin.any()


def test_invariants_of_finalised_features():
    acc = TmkAccumulator(mode="exact")
    acc.update(torch.from_numpy(_feats(30, seed=5)))
    _, cos, sin, _ = acc.finalize()
    norms_c = np.linalg.norm(cos.astype(np.float64), axis=2)
    norms_s = np.linalg.norm(sin.astype(np.float64), axis=2)
    sqrt_a = np.sqrt(P.coeffs32.astype(np.float64))
    assert np.allclose(norms_c, sqrt_a[None, :], rtol=1e-6)
    assert np.allclose(norms_s[:, 1:], sqrt_a[None, 1:], rtol=1e-6)
    assert not sin[:, 0].any()
    assert all(np.array_equal(cos[0, 0], cos[i, 0]) for i in range(4))


def test_trig_tables_use_reference_angle_order():
    c, s = trig_tables_exact(7, 1, P)
    th = (TWO_PI * 5) * 7 / P.periods[2]
    assert c[0, 2, 4] == math.cos(th) and s[0, 2, 4] == math.sin(th)


def test_finalize_leaves_zero_rows_zero():
    v = torch.zeros((4, 32, 256))
    assert not finalize_features(v, P).any()


import pytest  # noqa: E402


@pytest.mark.cuda
def test_cuda_exact_accumulator_is_bit_identical():
    feats = torch.from_numpy(_feats(12, seed=9))
    cpu, gpu = TmkAccumulator(mode="exact"), TmkAccumulator(mode="exact", device="cuda")
    cpu.update(feats)
    gpu.update(feats.cuda())
    for x, y in zip(cpu.finalize()[:3], gpu.finalize()[:3]):
        assert np.array_equal(x.view(np.uint32), y.view(np.uint32))
