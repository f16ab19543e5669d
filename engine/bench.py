"""Measurements for sizing machines: hashing vs decoding, level-2 pairs/s, each with its baseline.

In-process figures (`bench_hash`, `bench_score`, `naive_scan`) time work inside one warm process;
whole-process figures (`time_process`, `bench_score_processes`) time commands as a user runs
them, start-up included.  Ratios are only ever taken between figures of the same kind.  The
reference C++ tools are found with `find_reference_tool` (built from ../shared/reference/oracle
by tests/oracle.py); without them the README constant is reported, labelled as a fallback.
"""
from __future__ import annotations

import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
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
from kernels.score import TmkScorer, needle_coeffs

#: Reference figure of shared/reference/threatexchange/README.md (4.6-4.9 ms per pair on one core
#: of the 2-core machine): only a fallback where the reference tool cannot be run side by side.
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
    runs = [once() for _ in range(repeat)]
    best = min(runs)
    rate = n / best
    return {"pairs": n, "batch": batch, "device": str(dev), "dtype": dtype, "torch_threads": torch.get_num_threads(),
            "seconds": round(best, 4), "seconds_median": round(statistics.median(runs), 4),
            "seconds_max": round(max(runs), 4), "pairs_per_s": round(rate, 1)}


def naive_scan(needle: TmkFeatures, bank: FeatureBatch, n: int) -> tuple[np.ndarray, float]:
    """The reference algorithm written naively (numpy, float32, one pair at a time, all 31,542
    offsets): level-2 of `needle` against the first `n` bank items, and the seconds it took."""
    p = bank.params
    j = np.arange(1, p.num_coeffs, dtype=np.float64)[:, None]
    tables = []
    for period in p.periods:
        ang = j * (2 * np.pi * np.arange(period) / period)[None, :]
        tables.append((np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)))
    z = float(np.float32(p.coeffs32[0]) + 2 * np.float32(p.coeffs32[1:].sum()))
    out = np.empty(n)
    t0 = time.perf_counter()
    for k in range(n):
        cc = (needle.cos * bank.cos[k]).sum(-1)
        ss = (needle.sin * bank.sin[k]).sum(-1)
        sc = (needle.sin * bank.cos[k]).sum(-1)
        cs = (needle.cos * bank.sin[k]).sum(-1)
        best = -np.inf
        for i, (c, s) in enumerate(tables):
            kk = cc[i, 0] + (cc[i, 1:] + ss[i, 1:]) @ c + (sc[i, 1:] - cs[i, 1:]) @ s
            best = max(best, float(kk.max()))
        out[k] = best / z
    return out, time.perf_counter() - t0


def bench_score_vs_naive(bank: FeatureBatch, needle: TmkFeatures, device: str = "auto", batch: int = 0,
                         repeat: int = 3, dtype: str = "fp32", naive_pairs: int = 50) -> dict[str, Any]:
    """In-process: vmatch's batched level-2 against the naive scan, same pairs, results compared."""
    from engine.scoring import Scorer

    ours = bench_score(bank, needle, device, batch, repeat, dtype)
    n = min(naive_pairs, len(bank))
    runs = [naive_scan(needle, bank, n) for _ in range(max(1, repeat))]   # best of runs, as for vmatch
    want, secs = runs[0][0], min(r[1] for r in runs)
    got = Scorer(bank.params, "cpu").one_to_many(needle, FeatureBatch.stack([bank[i] for i in range(n)])).level2
    diff = float(np.abs(got - want).max())
    naive_rate = n / secs
    return {"vmatch": ours, "naive_numpy_scan": {"pairs": n, "seconds": round(secs, 4),
                                                 "seconds_median": round(statistics.median(r[1] for r in runs), 4),
                                                 "pairs_per_s": round(naive_rate, 1)},
            "ratio_vs_naive": round(ours["pairs_per_s"] / naive_rate, 1),   # best run against best run
            "equal_results": diff <= 2e-6, "max_abs_level2_difference": diff,
            "note": "in-process, one needle against candidates already in memory"}


# ---------------------------------------------------------------------------- whole process


def find_reference_tool(name: str, bin_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """A built reference tool: in `bin_dir`, $VMATCH_ORACLE_DIR, PATH, or the tests' build cache."""
    dirs = [d for d in (bin_dir, os.environ.get("VMATCH_ORACLE_DIR")) if d]
    for d in dirs:
        if (Path(d) / name).is_file():
            return Path(d) / name
    if shutil.which(name):
        return Path(shutil.which(name))  # type: ignore[arg-type]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vmatch-oracle"
    found = sorted(glob.glob(str(cache / "*" / name)), key=os.path.getmtime)
    return Path(found[-1]) if found else None


def time_process(cmd: Sequence[object], repeat: int, cwd: str | None = None) -> tuple[list[float], bytes]:
    """Wall seconds of `repeat` runs of a whole command (start-up included), and its last stdout."""
    times, out = [], b""
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = subprocess.run([str(c) for c in cmd], capture_output=True, cwd=cwd, check=False)
        times.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise RuntimeError(f"{Path(str(cmd[0])).name} exited {r.returncode}: "
                               f"{r.stderr.decode(errors='replace').strip()[-300:]}")
        out = r.stdout
    return times, out


def _spread(xs: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3),
            "runs": len(xs)}


def _pair_table(text: bytes) -> dict[tuple[str, str], tuple[float, float]]:
    out = {}
    for line in text.decode().splitlines():
        l1, l2, a, b = line.split()
        a, b = sorted((Path(a).stem, Path(b).stem))
        out[(a, b)] = (float(l1), float(l2))
    return out


def bench_score_processes(bank: FeatureBatch, files: int, repeat: int, tool: Path | None) -> dict[str, Any]:
    """Whole process: `vmatch score` and the reference `tmk-two-level-score` on the same .tmk files
    (every pair, --c1 -1 --c2 0), alternating; outputs compared pair by pair."""
    from engine.tmkfile import write_tmk

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(min(files, len(bank))):
            p = Path(tmp) / f"b{i:05d}.tmk"
            write_tmk(p, bank[i])
            paths.append(p)
        ours_cmd = [sys.executable, "-m", "engine.cli", "score", "--c1", "-1", "--c2", "0", "--device", "cpu", *paths]
        root = str(Path(__file__).resolve().parents[1])
        ours_t, ref_t, ours_out, ref_out = [], [], b"", b""
        for _ in range(repeat):
            t, ours_out = time_process(ours_cmd, 1, cwd=root)
            ours_t += t
            if tool is not None:
                t, ref_out = time_process([tool, "--c1", "-1", "--c2", "0", *paths], 1, cwd=tmp)
                ref_t += t
    n = len(paths)
    out: dict[str, Any] = {"files": n, "pairs": n * (n - 1) // 2, "vmatch_score_s": _spread(ours_t)}
    if tool is None:
        out["reference"] = ("reference tmk-two-level-score not found (build it: tests/oracle.py); README "
                            f"constant {REFERENCE_LEVEL2_PAIRS_PER_S:g} pairs/s per core on another machine, "
                            "not side by side")
        out["vmatch_pairs_per_s_whole_process"] = round(out["pairs"] / statistics.median(ours_t), 1)
        return out
    a, b = _pair_table(ours_out), _pair_table(ref_out)
    diff = max(max(abs(a[k][0] - b[k][0]), abs(a[k][1] - b[k][1])) for k in b) if set(a) == set(b) else None
    out.update({"reference_s": _spread(ref_t), "reference_tool": str(tool),
                "speedup_vs_reference": round(statistics.median(ref_t) / statistics.median(ours_t), 2),
                "same_pairs": set(a) == set(b), "max_abs_score_difference": diff})
    return out
