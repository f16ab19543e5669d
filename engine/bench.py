"""In-process measurements for sizing machines: hashing vs decoding, and level-2 pairs/s."""
from __future__ import annotations

import os
import time
from typing import Any

import torch

from engine.decode import VideoDecoder
from engine.features import FeatureBatch, TmkFeatures
from engine.hasher import VideoHasher
from engine.scoring import default_batch
from kernels.device import resolve_device, strict_float
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
