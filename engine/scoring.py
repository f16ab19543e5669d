"""Level-1 / level-2 scoring of signatures: one needle against many, or all pairs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from engine.config import ScoreConfig
from engine.errors import IncompatibleError, check_compatible  # noqa: F401  (IncompatibleError: importable from here as before)
from engine.features import FeatureBatch, TmkFeatures
from kernels.device import resolve_device, strict_float
from kernels.params import TmkParams
from kernels.score import DEFAULT_GRID, TmkScorer, level1, needle_coeffs


def default_batch(device: torch.device) -> int:
    """Candidates per level-2 batch: cache-sized on CPU (measured best at 512), large on CUDA to fill the GPU."""
    return 32768 if device.type == "cuda" else 512


@dataclass
class ScoreResult:
    """Scores of one needle against B candidates.

    ``level2`` is NaN and ``offsets`` -1 where level-2 was skipped (level-1 below c1).
    ``offsets`` [B, P] are the best time offsets (frames, modulo each period).
    """

    level1: np.ndarray
    level2: np.ndarray
    offsets: np.ndarray


class Scorer:
    """Batched TMK scorer on one device; reuse it across calls (it caches trig tables)."""

    def __init__(self, params: TmkParams, device: str | torch.device = "auto", batch_size: int = 0,
                 grid: int = DEFAULT_GRID) -> None:
        self.params = params
        self.device = resolve_device(device)
        if self.device.type == "cuda":
            strict_float()
        self.batch_size = batch_size or default_batch(self.device)
        self._kernel = TmkScorer(params, self.device, grid)

    @classmethod
    def from_config(cls, cfg: "ScoreConfig", params: TmkParams, device: str | None = None) -> "Scorer":
        """The one way to build a scorer from the ``score:`` section (``device`` overrides it)."""
        return cls(params, device or cfg.device, cfg.batch_size, cfg.grid)

    def _t(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    def one_to_many(self, needle: TmkFeatures, cands: FeatureBatch | Sequence[TmkFeatures],
                    c1: float = -1.0, c2: float | None = None) -> ScoreResult:
        """Level-1 for every candidate, level-2 where level-1 >= c1 (inclusive, like the reference).

        With ``c2``, level-2 is also left NaN where the kernel's bound proves it below c2 (the
        pruning bound of the index's queries); the scores that can reach c2 are unchanged.
        """
        if not isinstance(cands, FeatureBatch):
            cands = FeatureBatch.stack(list(cands))
        check_compatible(self.params, needle.params, needle.name)
        if len(cands):
            check_compatible(self.params, cands.params, "candidates")
        nb, npd = len(cands), self.params.num_periods
        l1 = level1(self._t(needle.avg).unsqueeze(0), self._t(cands.avg)).cpu().numpy()
        l2 = np.full(nb, np.nan, dtype=np.float32)
        offs = np.full((nb, npd), -1, dtype=np.int64)
        todo = np.nonzero(l1 >= c1)[0]
        n_cos, n_sin = self._t(needle.cos), self._t(needle.sin)
        for s in range(0, len(todo), self.batch_size):
            idx = todo[s:s + self.batch_size]
            # a run of consecutive candidates is a view; only scattered ones are gathered (copied)
            rows = slice(int(idx[0]), int(idx[-1]) + 1) if idx[-1] - idx[0] + 1 == len(idx) else idx
            c_cos, c_sin = self._t(cands.cos[rows]), self._t(cands.sin[rows])
            if c2 is None:
                sc, off = self._kernel.level2(n_cos, n_sin, c_cos, c_sin)
                l2[idx] = sc.cpu().numpy()
                offs[idx] = off.cpu().numpy()
                continue
            k0, a, b = needle_coeffs(n_cos, n_sin, c_cos.contiguous(), c_sin.contiguous())
            kept, sc, off = self._kernel.level2_pruned(k0, a, b, c2)
            keep = idx[kept.cpu().numpy()]
            l2[keep] = sc.cpu().numpy()
            offs[keep] = off.cpu().numpy()
        return ScoreResult(l1.astype(np.float32), l2, offs)

    def pair(self, a: TmkFeatures, b: TmkFeatures) -> tuple[float, float, np.ndarray]:
        """(level-1, level-2, best offsets) of a against b."""
        r = self.one_to_many(a, FeatureBatch.stack([b]))
        return float(r.level1[0]), float(r.level2[0]), r.offsets[0]


def score_pair(a: TmkFeatures, b: TmkFeatures, device: str = "auto") -> tuple[float, float]:
    """Level-1 and level-2 of two signatures (convenience; build a Scorer for many calls)."""
    l1, l2, _ = Scorer(a.params, device).pair(a, b)
    return l1, l2


def score_one_to_many(needle: TmkFeatures, cands: FeatureBatch | Sequence[TmkFeatures], c1: float = -1.0,
                      device: str = "auto") -> ScoreResult:
    return Scorer(needle.params, device).one_to_many(needle, cands, c1)
