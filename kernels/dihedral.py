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
