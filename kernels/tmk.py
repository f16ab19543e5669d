"""TMK accumulation and finalisation over per-frame PDQF features (spec section 4).

``TmkAccumulator`` consumes frame features in chunks, so a video of any length is hashed
in constant memory.  ``exact`` mode follows the reference's per-frame binary32/binary64
rounding (bit-identical); ``fast`` mode sums whole chunks with float64 matrix products.
"""
from __future__ import annotations

import numpy as np
import torch

from kernels.params import DEFAULT_PARAMS, TmkParams
# libm trig tables in the reference's angle order: shared with the numpy kernels (kernels/tmk_np.py)
from kernels.tmk_np import TWO_PI, trig_tables_exact  # noqa: F401


def seq_sumsq(v: torch.Tensor) -> torch.Tensor:
    """Sequential binary32 sum of squares over the last axis (reference order)."""
    acc = torch.zeros(v.shape[:-1], dtype=torch.float32, device=v.device)
    for k in range(v.shape[-1]):
        x = v[..., k]
        acc = acc + x * x
    return acc


def ref_norm(v: torch.Tensor) -> torch.Tensor:
    """Reference L2 norm: sequential binary32 sum, correctly rounded sqrt (via float64)."""
    return torch.sqrt(seq_sumsq(v).to(torch.float64)).to(torch.float32)


def trig_tables_fast(t0: int, count: int, params: TmkParams, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of 2*pi*j*t/T in float64 for j=0..m-1: [count, P, m] (torch; within an ulp of libm)."""
    t = torch.arange(t0, t0 + count, dtype=torch.float64, device=device).view(-1, 1, 1)
    j = torch.arange(params.num_coeffs, dtype=torch.float64, device=device).view(1, 1, -1)
    per = torch.tensor(params.periods, dtype=torch.float64, device=device).view(1, -1, 1)
    theta = (TWO_PI * j) * t / per
    return torch.cos(theta), torch.sin(theta)


class TmkAccumulator:
    """Running TMK state for one video; feed PDQF features with ``update``, then ``finalize``."""

    def __init__(self, params: TmkParams = DEFAULT_PARAMS, mode: str = "exact",
                 device: torch.device | str = "cpu") -> None:
        if mode not in ("exact", "fast"):
            raise ValueError(f"unknown mode {mode!r} (expected 'exact' or 'fast')")
        self.params, self.mode, self.device = params, mode, torch.device(device)
        p, m, d = params.num_periods, params.num_coeffs, params.dim
        dt = torch.float32 if mode == "exact" else torch.float64
        self.avg = torch.zeros(d, dtype=dt, device=self.device)
        self.cos = torch.zeros((p, m, d), dtype=dt, device=self.device)
        self.sin = torch.zeros((p, m, d), dtype=dt, device=self.device)
        self.count = 0

    def update(self, feats: torch.Tensor) -> None:
        """Add a chunk of consecutive frame features float32 [B, d]."""
        if feats.shape[0] == 0:
            return
        feats = feats.to(self.device, torch.float32)
        if self.mode == "exact":
            self._update_exact(feats)
        else:
            self._update_fast(feats)
        self.count += int(feats.shape[0])

    def _update_exact(self, f: torch.Tensor) -> None:
        n = ref_norm(f)
        g = torch.where((n > 0).unsqueeze(1), f / torch.where(n > 0, n, 1.0).unsqueeze(1), f)
        g64 = g.to(torch.float64)
        c_np, s_np = trig_tables_exact(self.count, f.shape[0], self.params)
        c_all = torch.from_numpy(c_np).to(self.device).unsqueeze(-1)
        s_all = torch.from_numpy(s_np).to(self.device).unsqueeze(-1)
        avg, cos0, cos, sin = self.avg, self.cos[:, 0, :], self.cos[:, 1:, :], self.sin[:, 1:, :]
        for b in range(f.shape[0]):
            avg.add_(f[b])
            cos0.add_(g[b])
            gb = g64[b]
            cos.copy_(cos.to(torch.float64) + gb * c_all[b])
            sin.copy_(sin.to(torch.float64) + gb * s_all[b])

    def _update_fast(self, f: torch.Tensor) -> None:
        f64 = f.to(torch.float64)
        n = torch.linalg.vector_norm(f64, dim=1, keepdim=True)
        g = torch.where(n > 0, f64 / torch.where(n > 0, n, 1.0), f64)
        c, s = trig_tables_fast(self.count, f.shape[0], self.params, self.device)
        b, p, m = c.shape
        self.avg += f64.sum(0)
        self.cos += (c.reshape(b, p * m).T @ g).view(p, m, -1)
        self.sin += (s.reshape(b, p * m).T @ g).view(p, m, -1)

    def finalize(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(avg float32[d], cos, sin float32[P,m,d], frame count) as written to a `.tmk` file."""
        params, count = self.params, self.count
        if count == 0:
            z = np.zeros((params.num_periods, params.num_coeffs, params.dim), np.float32)
            return np.zeros(params.dim, np.float32), z, z.copy(), 0
        if self.mode == "exact":
            # a same-shape device tensor: CUDA turns division by a scalar into a reciprocal multiply
            avg = self.avg / torch.full_like(self.avg, float(count))
        else:
            avg = (self.avg / count).to(torch.float32)
        cos = finalize_features(self.cos.to(torch.float32), params)
        sin = finalize_features(self.sin.to(torch.float32), params)
        return (avg.cpu().numpy(), cos.cpu().numpy(), sin.cpu().numpy(), count)


def finalize_features(v: torch.Tensor, params: TmkParams) -> torch.Tensor:
    """L2-normalise each [P,m] row (reference order), then scale by f32(sqrt(a_j)) (spec 4.4)."""
    n = ref_norm(v).unsqueeze(-1)
    v = torch.where(n > 0, v / torch.where(n > 0, n, 1.0), v)
    a = torch.from_numpy(params.coeffs32.astype(np.float64)).to(v.device)
    return v * torch.sqrt(a).to(torch.float32).view(1, -1, 1)
