"""TmkFeatures: the in-memory form of one TMK+PDQF signature (what a `.tmk` file holds)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from engine.errors import check_compatible
from kernels.params import DEFAULT_PARAMS, TmkParams


@dataclass
class TmkFeatures:
    """One video's signature.

    ``avg`` is the (un-normalised) pure average float32[d]; ``cos``/``sin`` are the
    finalised Fourier features float32[P, m, d]; ``frame_count`` is the number of 15 fps
    frames that were hashed.
    """

    avg: np.ndarray
    cos: np.ndarray
    sin: np.ndarray
    frame_count: int
    params: TmkParams = field(default_factory=lambda: DEFAULT_PARAMS)
    name: str = ""

    def __post_init__(self) -> None:
        p = self.params
        self.avg = np.ascontiguousarray(self.avg, dtype=np.float32).reshape(p.dim)
        shape = (p.num_periods, p.num_coeffs, p.dim)
        self.cos = np.ascontiguousarray(self.cos, dtype=np.float32).reshape(shape)
        self.sin = np.ascontiguousarray(self.sin, dtype=np.float32).reshape(shape)
        self.frame_count = int(self.frame_count)

    def equal(self, other: "TmkFeatures") -> bool:
        """Bitwise equality of parameters, frame count and every value."""
        return (
            self.params == other.params
            and self.frame_count == other.frame_count
            and all(np.array_equal(getattr(self, k).view(np.uint32), getattr(other, k).view(np.uint32))
                    for k in ("avg", "cos", "sin"))
        )


@dataclass
class FeatureBatch:
    """Many signatures stacked for batched scoring: avg [B,d], cos/sin [B,P,m,d]."""

    avg: np.ndarray
    cos: np.ndarray
    sin: np.ndarray
    frame_counts: np.ndarray
    names: list[str]
    params: TmkParams = field(default_factory=lambda: DEFAULT_PARAMS)

    def __len__(self) -> int:
        return int(self.avg.shape[0])

    @classmethod
    def stack(cls, items: Sequence[TmkFeatures]) -> "FeatureBatch":
        if not items:
            p = DEFAULT_PARAMS
            z = np.zeros((0, p.num_periods, p.num_coeffs, p.dim), np.float32)
            return cls(np.zeros((0, p.dim), np.float32), z, z.copy(), np.zeros(0, np.int64), [], p)
        params = items[0].params
        for it in items[1:]:
            check_compatible(params, it.params, it.name or "<features>", f"{items[0].name or 'the first'}'s")
        return cls(
            np.stack([i.avg for i in items]),
            np.stack([i.cos for i in items]),
            np.stack([i.sin for i in items]),
            np.array([i.frame_count for i in items], dtype=np.int64),
            [i.name for i in items],
            params,
        )

    def view(self, start: int, stop: int | None = None) -> "FeatureBatch":
        """Items start..stop as views of these arrays (no copy)."""
        sl = slice(start, stop)
        return FeatureBatch(self.avg[sl], self.cos[sl], self.sin[sl], self.frame_counts[sl], self.names[sl],
                            self.params)

    def __getitem__(self, i: int) -> TmkFeatures:
        return TmkFeatures(self.avg[i], self.cos[i], self.sin[i], int(self.frame_counts[i]),
                           self.params, self.names[i])


@dataclass
class Signatures:
    """Every signature of one video: the reference ``main`` one and, for a video with
    letterbox / pillarbox / window-box borders, ``borders``: the signature of the content inside
    them (engine/borders.py).  ``--robust`` matching compares every signature of one video with
    every signature of the other."""

    main: TmkFeatures
    borders: TmkFeatures | None = None

    @property
    def name(self) -> str:
        return self.main.name
