"""TMK accumulation and finalisation in the reference's exact order, in numpy (no torch).

The exact TMK (spec 4.3-4.4) is, per element, a sequence of binary32 adds (average, j = 0
term) and of binary64 multiply-add-then-round-to-binary32 steps (j >= 1 terms), one per frame,
in frame order.  numpy evaluates each elementwise op correctly rounded, so this is bit-identical
to kernels/tmk.py's exact mode (and to the reference) without torch.  What is reorganised keeps
every element's sequence of roundings:

* sums over frames of the average and of the j = 0 term are ``np.add.accumulate`` (a sequential
  scan) seeded with the running state; the j = 0 term is the same for every period, so it is
  kept once;
* the j >= 1 cos and sin terms are one [2, P, m-1, d] array updated once per frame with two
  ufuncs: the binary64 product, then the binary64 add whose result numpy rounds to binary32
  on store;
* sequential binary32 sums of squares are ``np.add.accumulate`` along the row (a sum from +0
  equals the scan's last value plus +0: only the sign of an all-zero sum can differ).
"""
from __future__ import annotations

import math

import numpy as np

from kernels.params import DEFAULT_PARAMS, TmkParams

TWO_PI = 6.283185307179586
_F32, _F64 = np.float32, np.float64


def seq_sumsq(v: np.ndarray) -> np.ndarray:
    """Sequential binary32 sum of squares over the last axis (reference order), from +0."""
    v = np.asarray(v, dtype=_F32)
    if v.shape[-1] == 0:
        return np.zeros(v.shape[:-1], _F32)
    sq = np.multiply(v, v)
    return np.add.accumulate(sq, axis=-1, dtype=_F32)[..., -1] + _F32(0.0)


def ref_norm(v: np.ndarray) -> np.ndarray:
    """Reference L2 norm: sequential binary32 sum, correctly rounded sqrt (via binary64)."""
    return np.sqrt(seq_sumsq(v).astype(_F64)).astype(_F32)


def _normalise(v: np.ndarray, n: np.ndarray) -> np.ndarray:
    """v / n per row (binary32), rows with n == 0 left as they are."""
    pos = n > 0
    return np.where(pos[..., None], v / np.where(pos, n, _F32(1.0))[..., None], v)


def trig_tables_exact(t0: int, count: int, params: TmkParams) -> tuple[np.ndarray, np.ndarray]:
    """libm cos/sin of theta = f64(f64(2*pi*j)*t)/T for t in [t0, t0+count), j=1..m-1: [count,P,m-1].

    The angles are IEEE binary64 products and quotients (numpy computes them exactly like C);
    cos and sin are Python's ``math`` (the C library's, as the reference calls), not numpy's
    own SIMD versions, which may differ in the last bit.
    """
    m = params.num_coeffs
    j = np.arange(1, m, dtype=_F64)
    t = np.arange(t0, t0 + count, dtype=_F64)
    per = np.asarray(params.periods, dtype=_F64)
    theta = ((TWO_PI * j)[None, None, :] * t[:, None, None]) / per[None, :, None]
    flat = theta.ravel().tolist()
    c = np.fromiter(map(math.cos, flat), dtype=_F64, count=len(flat)).reshape(theta.shape)
    s = np.fromiter(map(math.sin, flat), dtype=_F64, count=len(flat)).reshape(theta.shape)
    return c, s


class TmkAccumulatorNp:
    """Running exact TMK state for one video; feed PDQF features with ``update``, then ``finalize``.

    Same interface and bytes as ``kernels.tmk.TmkAccumulator(mode="exact", device="cpu")``.
    """

    mode = "exact"

    def __init__(self, params: TmkParams = DEFAULT_PARAMS) -> None:
        self.params = params
        p, m, d = params.num_periods, params.num_coeffs, params.dim
        self.avg = np.zeros(d, _F32)
        self.cos0 = np.zeros(d, _F32)                        # the j = 0 cos term, equal for every period
        self.trig = np.zeros((2, p, m - 1, d), _F32)         # [cos, sin] j >= 1 terms
        self._prod = np.empty((2, p, m - 1, d), _F64)
        self.count = 0

    def update(self, feats: np.ndarray) -> None:
        """Add a chunk of consecutive frame features float32 [B, d]."""
        f = np.ascontiguousarray(feats, dtype=_F32)
        b = f.shape[0]
        if b == 0:
            return
        g = _normalise(f, ref_norm(f))
        self.avg = np.add.accumulate(np.concatenate([self.avg[None], f]), axis=0, dtype=_F32)[-1]
        self.cos0 = np.add.accumulate(np.concatenate([self.cos0[None], g]), axis=0, dtype=_F32)[-1]
        c, s = trig_tables_exact(self.count, b, self.params)
        cs = np.stack([c, s], axis=1)[..., None]              # [B, 2, P, m-1, 1] float64
        g64 = g.astype(_F64)
        trig, prod = self.trig, self._prod
        for i in range(b):
            np.multiply(cs[i], g64[i], out=prod)              # binary64 product
            np.add(trig, prod, out=trig, casting="unsafe")    # binary64 add, rounded to binary32
        self.count += b

    def finalize(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(avg float32[d], cos, sin float32[P,m,d], frame count) as written to a `.tmk` file."""
        params, count = self.params, self.count
        p, m, d = params.num_periods, params.num_coeffs, params.dim
        if count == 0:
            z = np.zeros((p, m, d), _F32)
            return np.zeros(d, _F32), z, z.copy(), 0
        avg = self.avg / _F32(count)
        cos = np.empty((p, m, d), _F32)
        sin = np.zeros((p, m, d), _F32)
        cos[:, 0] = self.cos0
        cos[:, 1:] = self.trig[0]
        sin[:, 1:] = self.trig[1]
        return avg, finalize_features(cos, params), finalize_features(sin, params), count


def finalize_features(v: np.ndarray, params: TmkParams) -> np.ndarray:
    """L2-normalise each [P,m] row (reference order), then scale by f32(sqrt(a_j)) (spec 4.4)."""
    v = _normalise(v, ref_norm(v))
    scale = np.sqrt(params.coeffs32.astype(_F64)).astype(_F32)
    return (v * scale.reshape(1, -1, 1)).astype(_F32)


__all__ = ["TWO_PI", "TmkAccumulatorNp", "finalize_features", "ref_norm", "seq_sumsq", "trig_tables_exact"]
