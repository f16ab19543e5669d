#!/usr/bin/env python3
"""Level-2 scoring speed with both baselines run in this benchmark.

* in-process: vmatch's batched scorer (`engine.bench.bench_score`, one needle against candidates
  in memory) against the reference algorithm written naively in numpy (every offset, one pair at
  a time), on the same synthetic pairs (perturbed reference hashes), results checked equal;
* whole process: `vmatch score` against the reference `tmk-two-level-score` (built by
  tests/oracle.py) on the same .tmk files, every pair at --c1 -1 --c2 0, outputs compared.

Ratios are taken within each kind only.  Without the reference tool the README constant
(210 pairs/s per core, another machine) is reported instead and labelled as a fallback.

    OMP_NUM_THREADS=1 python scripts/bench_score.py --pairs 8192 --threads 1 --files 40
    python scripts/bench_score.py --device cuda --pairs 262144 --dtype fp16 --files 0
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _oracle import FALLBACK_NOTE, REPO, machine, oracle  # noqa: E402

import torch  # noqa: E402

from engine.bench import (REFERENCE_LEVEL2_PAIRS_PER_S, bench_score_processes,  # noqa: E402
                          bench_score_vs_naive)
from engine.synthetic import synthetic_batch  # noqa: E402
from engine.tmkfile import read_many  # noqa: E402

REF_TMK = REPO.parent / "shared/reference/threatexchange/tmk"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=8192)
    ap.add_argument("--baseline-pairs", type=int, default=50, help="pairs for the naive numpy scan")
    ap.add_argument("--files", type=int, default=40, help=".tmk files for the whole-process comparison (0: skip)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = read_many([p for p in sorted(REF_TMK.glob("*.tmk")) if p.stem != "test-padded-dimensions"]) \
        if REF_TMK.is_dir() else []
    bank = synthetic_batch(args.pairs, base)
    needle = base[0] if base else bank[0]
    out: dict = {"benchmark": "score", "machine_before": machine(), "bank": "synthetic (perturbed reference hashes)"
                 if base else "synthetic (random)"}
    out["in_process"] = bench_score_vs_naive(bank, needle, args.device, args.batch, args.repeat, args.dtype,
                                             args.baseline_pairs)
    orc, why = oracle()
    if args.files > 1:
        tool = orc.tool("tmk-two-level-score") if orc is not None else None
        out["whole_process"] = bench_score_processes(bank, args.files, args.repeat, tool)
    if orc is None:
        out["reference_fallback"] = {"note": FALLBACK_NOTE.format(why=why),
                                     "readme_pairs_per_s_one_core": REFERENCE_LEVEL2_PAIRS_PER_S,
                                     "ratio_in_process_vs_readme": round(
                                         out["in_process"]["vmatch"]["pairs_per_s"] / REFERENCE_LEVEL2_PAIRS_PER_S, 1)}
    out["machine_after"] = machine()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
