"""Synthetic banks made by perturbing real signatures (tests and benchmarks).

A perturbed copy keeps the structure of a real hash: the pure average moves to
``normalise(u + s*g)`` (g Gaussian with unit expected norm, so its cosine to the original is
about 1/sqrt(1+s^2)), and every non-zero cos/sin block ``v`` becomes ``|v| * normalise(v/|v| +
s*g)``, so block norms stay sqrt(a_j) and the zero blocks (sin of j = 0) stay zero.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from engine.features import TmkFeatures


def _unit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x / torch.where(n > 0, n, torch.ones_like(n)), n


def perturb_rows(base_avg: torch.Tensor, base_rows: torch.Tensor, strength: torch.Tensor,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """B perturbed copies of one signature on its device.

    base_avg [d], base_rows [2,P,m,d] (cos, sin); strength [B] -> avg [B,d], rows [B,2,P,m,d] (float32).
    """
    b, d = len(strength), base_avg.shape[-1]
    dev = base_avg.device
    s = strength.to(dev, torch.float32)
    u, na = _unit(base_avg.float())
    g = torch.randn((b, d), generator=gen, device=dev) / d ** 0.5
    avg = _unit(u + s.view(b, 1) * g)[0] * na
    v, nv = _unit(base_rows.float())
    g = torch.randn((b, *base_rows.shape), generator=gen, device=dev) / d ** 0.5
    rows = _unit(v + s.view(b, 1, 1, 1, 1) * g)[0] * nv
    return avg, rows


def perturbed_features(bases: Sequence[TmkFeatures], n: int, strengths: np.ndarray, seed: int = 0,
                       prefix: str = "syn") -> list[TmkFeatures]:
    """n perturbed copies (item i from base i mod len(bases), strength strengths[i]) as TmkFeatures."""
    gen = torch.Generator().manual_seed(seed)
    out: list[TmkFeatures] = []
    for i in range(n):
        f = bases[i % len(bases)]
        avg, rows = perturb_rows(torch.from_numpy(f.avg), torch.from_numpy(np.stack([f.cos, f.sin])),
                                 torch.tensor([float(strengths[i])]), gen)
        out.append(TmkFeatures(avg[0].numpy(), rows[0, 0].numpy(), rows[0, 1].numpy(), f.frame_count,
                               f.params, f"{prefix}-{i:07d}-{f.name}"))
    return out


def mixed_strengths(n: int, near_fraction: float, seed: int = 0, near: float = 0.3, far: float = 3.0
                    ) -> np.ndarray:
    """Mostly strongly perturbed items (cosine ~0.3 to their base) with a fraction of near copies."""
    rng = np.random.default_rng(seed)
    s = np.full(n, far, dtype=np.float32)
    s[rng.random(n) < near_fraction] = near
    return s
