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

from engine.features import FeatureBatch, TmkFeatures
from kernels.params import DEFAULT_PARAMS, TmkParams


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


def random_signatures(n: int, params: TmkParams = DEFAULT_PARAMS, seed: int = 0) -> list[TmkFeatures]:
    """Random signatures with the invariants of real ones (block norms sqrt(a_j), sin of j = 0 zero)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (params.num_periods, params.num_coeffs, params.dim)
    sqrt_a = torch.from_numpy(params.coeffs32.astype(np.float64)).sqrt().float().view(1, -1, 1)
    out = []
    for i in range(n):
        cos = _unit(torch.randn(shape, generator=gen))[0] * sqrt_a
        sin = _unit(torch.randn(shape, generator=gen))[0] * sqrt_a
        sin[:, 0] = 0
        out.append(TmkFeatures(torch.randn(params.dim, generator=gen).numpy() * 100, cos.numpy(), sin.numpy(),
                               300, params, f"random-{i}"))
    return out


def synthetic_batch(n: int, bases: Sequence[TmkFeatures] = (), strength: float = 0.2, seed: int = 0,
                    chunk: int = 1024) -> FeatureBatch:
    """n perturbed copies (item i from base i mod len(bases)) stacked as a FeatureBatch.

    Without bases, 15 random signatures are perturbed. Generated base by base in chunks, so
    the temporaries stay bounded whatever n is.
    """
    bases = list(bases) or random_signatures(15, seed=seed)
    p = bases[0].params
    gen = torch.Generator().manual_seed(seed)
    avg = np.empty((n, p.dim), np.float32)
    cos = np.empty((n, p.num_periods, p.num_coeffs, p.dim), np.float32)
    sin = np.empty_like(cos)
    for k, f in enumerate(bases):
        base_avg, base_rows = torch.from_numpy(f.avg), torch.from_numpy(np.stack([f.cos, f.sin]))
        idx = np.arange(k, n, len(bases))
        for s in range(0, len(idx), chunk):
            j = idx[s:s + chunk]
            a, rows = perturb_rows(base_avg, base_rows, torch.full((len(j),), strength), gen)
            avg[j], cos[j], sin[j] = a.numpy(), rows[:, 0].numpy(), rows[:, 1].numpy()
    names = [f"syn-{i:07d}-{bases[i % len(bases)].name}" for i in range(n)]
    counts = np.array([bases[i % len(bases)].frame_count for i in range(n)], dtype=np.int64)
    return FeatureBatch(avg, cos, sin, counts, names, p)
