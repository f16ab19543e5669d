#!/usr/bin/env python3
"""Level-2 scoring speed: vmatch's batched scorer against a per-pair exhaustive baseline.

Both run side by side in this process on the same synthetic pairs (perturbed reference
hashes when ../shared is present).  The baseline is the reference algorithm as written:
one pair at a time, K_i(o) evaluated at every one of the 31,542 offsets (numpy, float32).
Also prints the ratio against the reference C++ figure (4.6-4.9 ms per pair on one core,
about 210 pairs/s).  For the one-core figure run with OMP_NUM_THREADS=1 --threads 1.

    OMP_NUM_THREADS=1 python scripts/bench_score.py --pairs 8192 --threads 1
    python scripts/bench_score.py --device cuda --pairs 262144 --dtype fp16
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.bench import REFERENCE_LEVEL2_PAIRS_PER_S, bench_score  # noqa: E402
from engine.synthetic import synthetic_batch  # noqa: E402
from engine.tmkfile import read_many  # noqa: E402
from kernels.tmk import TWO_PI  # noqa: E402

REF_TMK = Path(__file__).resolve().parents[2] / "shared/reference/threatexchange/tmk"


def baseline_pair(a_cos, a_sin, b_cos, b_sin, periods, tables) -> float:
    """One pair, every offset: the reference's exhaustive scan (float32 numpy)."""
    cc = (a_cos * b_cos).sum(-1)
    ss = (a_sin * b_sin).sum(-1)
    sc = (a_sin * b_cos).sum(-1)
    cs = (a_cos * b_sin).sum(-1)
    best = -np.inf
    for i in range(len(periods)):
        c, s = tables[i]
        k = cc[i, 0] + (cc[i, 1:] + ss[i, 1:]) @ c + (sc[i, 1:] - cs[i, 1:]) @ s
        best = max(best, float(k.max()))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=8192)
    ap.add_argument("--baseline-pairs", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = read_many(sorted(REF_TMK.glob("*.tmk"))) if REF_TMK.is_dir() else []
    bank = synthetic_batch(args.pairs, base)
    needle = base[0] if base else bank[0]
    ours = bench_score(bank, needle, args.device, args.batch, 3, args.dtype)
    p = bank.params
    j = np.arange(1, p.num_coeffs, dtype=np.float64)[:, None]
    tables = []
    for period in p.periods:
        ang = j * (TWO_PI * np.arange(period) / period)[None, :]
        tables.append((np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)))
    n = min(args.baseline_pairs, len(bank))
    t0 = time.perf_counter()
    for i in range(n):
        baseline_pair(needle.cos, needle.sin, bank.cos[i], bank.sin[i], p.periods, tables)
    base_rate = n / (time.perf_counter() - t0)
    out = {
        "vmatch_pairs_per_s": ours["pairs_per_s"], "device": ours["device"], "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(),
        "baseline_exhaustive_pairs_per_s": round(base_rate, 1),
        "ratio_vs_baseline": round(ours["pairs_per_s"] / base_rate, 1),
        "reference_cpp_pairs_per_s_one_core": REFERENCE_LEVEL2_PAIRS_PER_S,
        "ratio_vs_reference_cpp": round(ours["pairs_per_s"] / REFERENCE_LEVEL2_PAIRS_PER_S, 1),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
