"""The 8 mirrors and quarter-turn rotations of a frame as signed permutations of PDQF features.

PDQF keeps DCT frequencies 1..16 of the 64x64 luma, ``F[u][v]`` (u vertical, v horizontal),
stored as ``feature[16u + v]``.  Mirroring ``x -> 63 - x`` multiplies horizontal frequency v by
``S[v] = (-1)^(v+1)`` exactly, and transposing the frame transposes F (spec section 12).  TMK
features (pure average, cos, sin) are sums of frame features with scalar weights, so the same
signed permutation along the last (256) axis of a stored signature gives the signature of the
mirrored or rotated video without decoding it.

A transform ``g`` is the pair (perm, sign) with ``g(x)[..., k] = sign[k] * x[..., perm[k]]``;
``compose(a, b)`` is "a, then b".  Names follow the ffmpeg filters that make the video:
``hflip``, ``vflip``, ``rot180`` (hflip,vflip), ``transpose`` (transpose=cclock_flip),
``rot90`` (transpose=clock: 90 degrees clockwise), ``rot270`` (transpose=cclock: 90 degrees
counter-clockwise), ``antitranspose`` (transpose=clock_flip).  Every element is orthogonal
(a signed permutation), so level-1 and level-2 of ``g(a)`` against ``b`` equal those of ``a``
against ``inverse(g)(b)``: transforming one side of a pair covers both.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence, TypeVar

import numpy as np
import torch

from kernels.pdqf import NUM_FREQ

#: The dihedral group of the square, identity first (the order of every batched output).
NAMES: tuple[str, ...] = ("identity", "hflip", "vflip", "rot180", "transpose", "rot90", "rot270",
                          "antitranspose")
#: The ffmpeg filter that applies each transform to a video (None: nothing to do).
FFMPEG_FILTERS: dict[str, str | None] = {
    "identity": None, "hflip": "hflip", "vflip": "vflip", "rot180": "hflip,vflip",
    "transpose": "transpose=cclock_flip", "rot90": "transpose=clock", "rot270": "transpose=cclock",
    "antitranspose": "transpose=clock_flip",
}

# (transpose?, sign on u, sign on v) of each element in the table of spec 12: the output is
# F[u][v] (or F[v][u] when transposed) times S[u]^su * S[v]^sv.
_SPEC: dict[str, tuple[bool, bool, bool]] = {
    "identity": (False, False, False), "hflip": (False, False, True), "vflip": (False, True, False),
    "rot180": (False, True, True), "transpose": (True, False, False), "rot90": (True, False, True),
    "rot270": (True, True, False), "antitranspose": (True, True, True),
}

T = TypeVar("T", np.ndarray, torch.Tensor)


def _build(name: str, n: int = NUM_FREQ) -> tuple[np.ndarray, np.ndarray]:
    tr, su, sv = _SPEC[name]
    s = np.array([(-1.0) ** (k + 1) for k in range(n)], dtype=np.float32)
    u, v = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    perm = (v * n + u) if tr else (u * n + v)
    sign = np.ones((n, n), np.float32)
    if su:
        sign = sign * s[u]
    if sv:
        sign = sign * s[v]
    return perm.reshape(-1).astype(np.int64), sign.reshape(-1)


@lru_cache(maxsize=None)
def table(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(perm int64 [256], sign float32 [256]) of one transform (read-only arrays)."""
    if name not in _SPEC:
        raise ValueError(f"unknown transform {name!r} (expected one of {', '.join(NAMES)})")
    perm, sign = _build(name)
    perm.setflags(write=False)
    sign.setflags(write=False)
    return perm, sign


def _find(perm: np.ndarray, sign: np.ndarray) -> str:
    for n in NAMES:
        p, s = table(n)
        if np.array_equal(p, perm) and np.array_equal(s, sign):
            return n
    raise AssertionError("not an element of the group")  # pragma: no cover - the group is closed


@lru_cache(maxsize=None)
def compose(a: str, b: str) -> str:
    """The transform "a, then b": apply(apply(x, a), b) == apply(x, compose(a, b))."""
    pa, sa = table(a)
    pb, sb = table(b)
    # apply(x, a)[k] = sa[k] x[pa[k]]; then b: sb[k] * (sa[pb[k]] x[pa[pb[k]]])
    return _find(pa[pb], sb * sa[pb])


@lru_cache(maxsize=None)
def inverse(name: str) -> str:
    """The transform undoing ``name``."""
    for n in NAMES:
        if compose(name, n) == "identity":
            return n
    raise AssertionError("no inverse")  # pragma: no cover


def composition_table() -> dict[tuple[str, str], str]:
    """compose(a, b) for every ordered pair."""
    return {(a, b): compose(a, b) for a in NAMES for b in NAMES}


def apply(x: T, name: str) -> T:
    """One transform along the last axis (numpy or torch, any leading shape, any device)."""
    perm, sign = table(name)
    if name == "identity":
        return x.copy() if isinstance(x, np.ndarray) else x.clone()
    if isinstance(x, np.ndarray):
        return x[..., perm] * sign.astype(x.dtype)
    p = torch.from_numpy(perm.copy()).to(x.device)
    return x.index_select(-1, p) * torch.from_numpy(sign.copy()).to(x.device, x.dtype)


def apply_all(x: T, names: Sequence[str] = NAMES) -> T:
    """Every transform of ``names`` at once: [..., 256] -> [len(names), ..., 256].

    One gather with a [G, 256] index table, so a batch of needles is expanded in one kernel.
    """
    perms = np.stack([table(n)[0] for n in names])
    signs = np.stack([table(n)[1] for n in names])
    if isinstance(x, np.ndarray):
        out = x[..., perms] * signs.astype(x.dtype)           # [..., G, 256]
        return np.moveaxis(out, -2, 0)
    p = torch.from_numpy(perms).to(x.device)
    s = torch.from_numpy(signs).to(x.device, x.dtype)
    out = x[..., p] * s                                        # [..., G, 256]
    return out.movedim(-2, 0)


def frame_transform(img: np.ndarray, name: str) -> np.ndarray:
    """The same transform on frames [..., H, W, C] (row 0 = top): what the ffmpeg filter does.

    Used to check the feature tables against PDQF of transformed frames.
    """
    y, x = img.ndim - 3, img.ndim - 2
    t = np.swapaxes(img, y, x)                                 # transpose: out[y][x] = in[x][y]
    out = {
        "identity": img, "hflip": np.flip(img, x), "vflip": np.flip(img, y),
        "rot180": np.flip(np.flip(img, x), y), "transpose": t,
        "rot90": np.flip(t, x),           # clockwise: out[y][x] = in[H-1-x][y]
        "rot270": np.flip(t, y),          # counter-clockwise
        "antitranspose": np.flip(np.flip(t, x), y),
    }.get(name)
    if out is None:
        raise ValueError(f"unknown transform {name!r}")
    return np.ascontiguousarray(out)


@lru_cache(maxsize=None)
def parity_blocks() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order int64 [256], signs float32 [8, 4], transposed bool [8]).

    ``order`` groups the features by the parities of (u, v) into 4 blocks of 64.  Every element
    multiplies a whole block by one sign (S[k] depends on the parity of k only), and either
    keeps or transposes (u, v); so g(x) . y is a signed sum of 4 block dot products of x, or of
    transpose(x), with y: all 8 from 8 products of length 64, i.e. twice one full product.
    """
    u, v = np.meshgrid(np.arange(NUM_FREQ), np.arange(NUM_FREQ), indexing="ij")
    block = (2 * (u % 2) + (v % 2)).reshape(-1)
    order = np.argsort(block, kind="stable").astype(np.int64)
    signs = np.empty((len(NAMES), 4), np.float32)
    for i, n in enumerate(NAMES):
        s = table(n)[1]
        for b in range(4):
            vals = np.unique(s[block == b])
            assert len(vals) == 1
            signs[i, b] = vals[0]
    transposed = np.array([_SPEC[n][0] for n in NAMES])
    for a in (order, signs, transposed):
        a.setflags(write=False)
    return order, signs, transposed


def blocked(bank: np.ndarray) -> np.ndarray:
    """Bank rows [N, 256] as the 4 parity blocks [4, N, 64] (contiguous), for ``all_dots``."""
    order = parity_blocks()[0]
    return np.ascontiguousarray(np.moveaxis(bank[:, order].reshape(len(bank), 4, 64), 1, 0))


def all_dots(bank4: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Dot products of every transform of each x with each bank row: bank4 [4, N, 64]
    (``blocked``), x [B, 256] -> [8, B, N] in NAMES order; equal to ``apply_all(x) @ bank.T`` up
    to round-off, at the cost of two products instead of eight (one batched matmul)."""
    order, signs, transposed = parity_blocks()
    dev, dt = bank4.device, bank4.dtype
    o = torch.from_numpy(order.copy()).to(dev)
    tperm = torch.from_numpy(table("transpose")[0].copy()).to(dev)
    x = x.to(dev, dt)
    nb = x.shape[0]
    both = torch.cat([x, x.index_select(-1, tperm)], 0).index_select(-1, o)   # [2B, 256] in block order
    parts = torch.bmm(both.view(2 * nb, 4, 64).transpose(0, 1), bank4.transpose(1, 2))   # [4, 2B, N]
    n = parts.shape[-1]
    parts = parts.reshape(4, 2, nb * n)                                       # [block, transposed?, B*N]
    s = torch.from_numpy(signs.copy()).to(dev, dt)                            # [8, 4]
    out = torch.empty((len(NAMES), nb * n), dtype=dt, device=dev)
    for t in (False, True):     # out[g] = sum_b s[g, b] * parts[b, transposed[g]]: a [4, 4] x [4, B*N] product
        g = torch.from_numpy(np.nonzero(transposed == t)[0]).to(dev)
        out[g] = s[g] @ parts[:, int(t)]
    return out.view(len(NAMES), nb, -1)
