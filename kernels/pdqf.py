"""PDQF: the float 256-d DCT feature of a 64x64 RGB frame (spec section 3), batched in torch.

Two evaluation orders:
* ``exact``: the reference's binary32 operation order, bit-identical to the C++;
* ``fast``: float64 matrix products, then frames whose feature is (near) zero - flat or
  one-directional frames, whose direction is pure round-off (spec 3.6) - recomputed exactly.
"""
from __future__ import annotations

import torch

# The DCT matrix is the numpy kernels' (kernels/pdqf_np.py): one definition.
from kernels.pdqf_np import NUM_FREQ, dct_matrix  # noqa: F401

# Binary32 luma weights (spec 3.2); torch rounds these Python floats to binary32.
_LUMA = (0.299, 0.587, 0.114)


def _dct(device: torch.device, size: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(dct_matrix(size).copy()).to(device=device, dtype=dtype)


def luma(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [B,H,W,3] RGB -> float32 [B,H,W] luma with binary32 products and sums."""
    f = frames.to(torch.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    return (r * _LUMA[0] + g * _LUMA[1]) + b * _LUMA[2]


def pdqf_exact(y: torch.Tensor) -> torch.Tensor:
    """Luma float32 [B,64,64] -> features float32 [B,256] in the reference's exact order.

    Each step is a separate multiply then add on whole tensors: no matmul, no FMA, so the
    result is the reference's sequential binary32 sum (spec 3.4 / 10.3).
    """
    b, n, _ = y.shape
    d = _dct(y.device, n, torch.float32)
    t = torch.zeros((b, NUM_FREQ, n), dtype=torch.float32, device=y.device)
    for k in range(n):
        t = t + d[:, k].view(1, NUM_FREQ, 1) * y[:, k, :].unsqueeze(1)
    f = torch.zeros((b, NUM_FREQ, NUM_FREQ), dtype=torch.float32, device=y.device)
    for k in range(n):
        f = f + t[:, :, k].unsqueeze(2) * d[:, k].view(1, 1, NUM_FREQ)
    return f.reshape(b, NUM_FREQ * NUM_FREQ)


def pdqf_fast(y: torch.Tensor, exact_below: float) -> torch.Tensor:
    """Float64 matrix-product PDQF; frames with norm < ``exact_below`` are redone exactly."""
    n = y.shape[-1]
    d64 = _dct(y.device, n, torch.float64)
    f = (d64 @ y.to(torch.float64) @ d64.T).reshape(y.shape[0], -1)
    small = torch.linalg.vector_norm(f, dim=1) < exact_below
    out = f.to(torch.float32)
    if bool(small.any()):
        idx = small.nonzero().squeeze(1)
        out[idx] = pdqf_exact(y[idx])
    return out


def pdqf(frames: torch.Tensor, mode: str = "exact", exact_below: float = 32.0) -> torch.Tensor:
    """uint8 RGB frames [B,64,64,3] -> PDQF features float32 [B,256]."""
    y = luma(frames)
    if mode == "exact":
        return pdqf_exact(y)
    if mode == "fast":
        return pdqf_fast(y, exact_below)
    raise ValueError(f"unknown mode {mode!r} (expected 'exact' or 'fast')")
