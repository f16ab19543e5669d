"""PDQF in the reference's exact binary32 order, in numpy (no torch): the CPU hashing default.

The exact PDQF (spec 3.2-3.4) is a sequence of elementwise binary32 multiplies and adds; numpy
evaluates each of them correctly rounded, one ufunc at a time (no matmul, no FMA), so this is
bit-identical to kernels/pdqf.py's ``pdqf_exact`` and to the reference, while a process that
hashes on CPU need not import torch (1.5 s of start-up on a small machine).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

# Binary32 luma weights (spec 3.2).
_LUMA = tuple(np.float32(w) for w in (0.299, 0.587, 0.114))
#: Number of DCT frequencies kept per axis (1..16; the DC row is dropped).
NUM_FREQ = 16


@lru_cache(maxsize=None)
def dct_matrix(size: int = 64) -> np.ndarray:
    """D[u][x] (float32 [16, size]) evaluated with libm cos in double, as the reference does."""
    s = float(np.float32(math.sqrt(2.0 / size)))
    d = np.empty((NUM_FREQ, size), dtype=np.float32)
    for u in range(NUM_FREQ):
        w = (math.pi / 2.0 / size) * (u + 1)
        for x in range(size):
            d[u, x] = np.float32(s * math.cos(w * (2 * x + 1)))
    d.setflags(write=False)
    return d


def luma(frames: np.ndarray) -> np.ndarray:
    """uint8 [B,H,W,3] RGB -> float32 [B,H,W] luma: (r*0.299 + g*0.587) + b*0.114 in binary32."""
    f = np.asarray(frames).astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    return (r * _LUMA[0] + g * _LUMA[1]) + b * _LUMA[2]


def pdqf_exact(y: np.ndarray) -> np.ndarray:
    """Luma float32 [B,n,n] -> features float32 [B,256], each a sequential binary32 sum from +0.

    T[b,u,x] = sum_k D[u,k] * Y[b,k,x], then F[b,u,v] = sum_k T[b,u,k] * D[v,k], k ascending:
    one multiply and one add per k over whole arrays, in place (same roundings as the torch
    kernel, fewer temporaries).
    """
    y = np.asarray(y, dtype=np.float32)
    b, n, _ = y.shape
    d = dct_matrix(n)
    yk = np.ascontiguousarray(y.transpose(1, 0, 2))            # [k, B, x]: row k contiguous
    t = np.zeros((b, NUM_FREQ, n), dtype=np.float32)
    tmp = np.empty_like(t)
    for k in range(n):
        np.multiply(d[:, k].reshape(1, NUM_FREQ, 1), yk[k].reshape(b, 1, n), out=tmp)
        np.add(t, tmp, out=t)
    tk = np.ascontiguousarray(t.transpose(2, 0, 1))            # [k, B, u]
    f = np.zeros((b, NUM_FREQ, NUM_FREQ), dtype=np.float32)
    tmp2 = np.empty_like(f)
    for k in range(n):
        np.multiply(tk[k].reshape(b, NUM_FREQ, 1), d[:, k].reshape(1, 1, NUM_FREQ), out=tmp2)
        np.add(f, tmp2, out=f)
    return f.reshape(b, NUM_FREQ * NUM_FREQ)


def pdqf(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB frames [B,64,64,3] -> exact PDQF features float32 [B,256]."""
    return pdqf_exact(luma(frames))


__all__ = ["NUM_FREQ", "dct_matrix", "luma", "pdqf", "pdqf_exact"]
