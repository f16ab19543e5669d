"""In-process measurements for sizing machines: hashing vs decoding, and level-2 pairs/s."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from engine.decode import VideoDecoder
from engine.features import FeatureBatch, TmkFeatures
from engine.hasher import VideoHasher
from engine.scoring import default_batch
from kernels.device import resolve_device, strict_float
from kernels.params import DEFAULT_PARAMS
from kernels.score import TmkScorer, needle_coeffs

#: Reference figures (shared/reference/threatexchange/README.md), for ratios.
REFERENCE_LEVEL2_PAIRS_PER_S = 210.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_hash(path: str | os.PathLike[str], mode: str = "auto", device: str = "auto", repeat: int = 3,
               chunk_frames: int = 256) -> dict[str, Any]:
    """Best-of-`repeat` decode-only, features-only and end-to-end times for the same frames."""
    hasher = VideoHasher(mode=mode, device=device, chunk_frames=chunk_frames)
    decode_s, hash_s, compute_s = [], [], []
    frames = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        chunks = []
        with VideoDecoder(path, chunk_frames=chunk_frames) as dec:
            for c in dec:
                chunks.append(c)
        decode_s.append(time.perf_counter() - t0)
        frames = sum(len(c) for c in chunks)
        t0 = time.perf_counter()
        hasher.hash_frames(iter(chunks))
        _sync(hasher.device)
        compute_s.append(time.perf_counter() - t0)
        del chunks
        t0 = time.perf_counter()
        hasher.hash(path)
        _sync(hasher.device)
        hash_s.append(time.perf_counter() - t0)
    d, h, c = min(decode_s), min(hash_s), min(compute_s)
    return {
        "video": str(path), "frames": frames, "mode": hasher.mode, "device": str(hasher.device),
        "torch_threads": torch.get_num_threads(),
        "decode_only_s": round(d, 4), "decode_only_fps": round(frames / d, 1),
        "features_only_s": round(c, 4), "features_only_fps": round(frames / c, 1) if c else None,
        "end_to_end_s": round(h, 4), "end_to_end_fps": round(frames / h, 1),
        "overhead_over_decode": round(h / d - 1.0, 4),
    }


def synthetic_bank(n: int, base: Sequence[TmkFeatures] = (), noise: float = 0.003, seed: int = 0) -> FeatureBatch:
    """n signatures made by perturbing `base` (or random ones), re-normalised like real features."""
    p = DEFAULT_PARAMS
    g = np.random.default_rng(seed)
    shape = (p.num_periods, p.num_coeffs, p.dim)
    sqrt_a = np.sqrt(p.coeffs32.astype(np.float64)).astype(np.float32).reshape(1, 1, -1, 1)
    if base:
        src = FeatureBatch.stack(list(base))
        pick = np.arange(n) % len(src)
        cos, sin, avg = src.cos[pick].copy(), src.sin[pick].copy(), src.avg[pick].copy()
    else:
        cos = g.standard_normal((n, *shape), dtype=np.float32)
        sin = g.standard_normal((n, *shape), dtype=np.float32)
        avg = g.standard_normal((n, p.dim), dtype=np.float32) * 100
    for arr in (cos, sin):
        arr += g.standard_normal(arr.shape, dtype=np.float32) * noise
        nrm = np.linalg.norm(arr, axis=-1, keepdims=True)
        np.divide(arr, np.where(nrm > 0, nrm, 1), out=arr)
        arr *= sqrt_a
    sin[:, :, 0] = 0
    avg += g.standard_normal(avg.shape, dtype=np.float32) * noise * 100
    return FeatureBatch(avg, cos, sin, np.full(n, 300), [f"syn{i}" for i in range(n)], p)


def bench_score(bank: FeatureBatch, needle: TmkFeatures, device: str = "auto", batch: int = 0,
                repeat: int = 3, dtype: str = "fp32") -> dict[str, Any]:
    """Level-2 pairs/s of one needle against `bank` (candidates resident on the device)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        strict_float()
    batch = batch or default_batch(dev)
    tdt = torch.float16 if dtype == "fp16" else torch.float32
    scorer = TmkScorer(bank.params, dev)
    cos = torch.from_numpy(bank.cos).to(dev, tdt)
    sin = torch.from_numpy(bank.sin).to(dev, tdt)
    n_cos = torch.from_numpy(needle.cos).to(dev, tdt)
    n_sin = torch.from_numpy(needle.sin).to(dev, tdt)
    n = len(bank)

    def once() -> float:
        _sync(dev)
        t0 = time.perf_counter()
        for s in range(0, n, batch):
            k0, a, b = needle_coeffs(n_cos, n_sin, cos[s:s + batch], sin[s:s + batch])
            scorer.level2_from_coeffs(k0.float(), a.float(), b.float())
        _sync(dev)
        return time.perf_counter() - t0

    once()
    best = min(once() for _ in range(repeat))
    rate = n / best
    return {"pairs": n, "batch": batch, "device": str(dev), "dtype": dtype, "torch_threads": torch.get_num_threads(),
            "seconds": round(best, 4), "pairs_per_s": round(rate, 1),
            "reference_pairs_per_s": REFERENCE_LEVEL2_PAIRS_PER_S,
            "ratio_vs_reference_one_core": round(rate / REFERENCE_LEVEL2_PAIRS_PER_S, 1)}


def reference_bank_files(directory: str | os.PathLike[str]) -> list[Path]:
    return sorted(Path(directory).glob("*.tmk"))
