"""`vmatch bench hash VIDEO` and `vmatch bench score`: measurements printed as JSON."""
from __future__ import annotations

import argparse
import json

import torch

from engine.bench import (REFERENCE_LEVEL2_PAIRS_PER_S, bench_hash, bench_score_processes, bench_score_vs_naive,
                          find_reference_tool)
from engine.synthetic import synthetic_batch
from engine.cli.common import CliError
from engine.decode import DecodeError
from engine.tmkfile import TmkFormatError, iter_tmk_paths, read_many


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure hashing and scoring speed on this machine (JSON)")
    bsub = p.add_subparsers(dest="bench_what", metavar="WHAT", required=True)
    h = bsub.add_parser("hash", help="decode-only vs end-to-end hashing of one video")
    h.add_argument("video")
    h.add_argument("--mode", choices=["exact", "fast", "auto"], default="auto")
    h.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    h.add_argument("--repeat", type=int, default=3)
    h.add_argument("--threads", type=int, help="torch intra-op threads")
    h.set_defaults(func=run_hash)
    s = bsub.add_parser("score", help="level-2 pairs/s against a naive scan (in-process) and the reference "
                                      "tmk-two-level-score (whole process), side by side")
    s.add_argument("--pairs", type=int, default=8192, help="bank size (candidates)")
    s.add_argument("--from", dest="source", nargs="*", default=[], metavar="TMK",
                   help=".tmk files or folders to perturb into the bank (default: random features)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    s.add_argument("--batch", type=int, default=0, help="candidates per batch (0: 512 on CPU, 32768 on CUDA)")
    s.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32")
    s.add_argument("--repeat", type=int, default=3)
    s.add_argument("--threads", type=int, help="torch intra-op threads (e.g. 1 for the one-core figure)")
    s.add_argument("--naive-pairs", type=int, default=50, help="pairs scored by the naive numpy scan (baseline)")
    s.add_argument("--process-files", type=int, default=24,
                   help="whole process: `vmatch score` vs the reference on this many .tmk files (0: skip)")
    s.add_argument("--reference-bin", metavar="DIR",
                   help="folder of the built reference tools (default: $VMATCH_ORACLE_DIR, PATH, the tests' cache)")
    s.set_defaults(func=run_score)


def _threads(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)


def run_hash(args: argparse.Namespace) -> int:
    _threads(args)
    try:
        print(json.dumps(bench_hash(args.video, args.mode, args.device, args.repeat), indent=2))
    except DecodeError as e:
        raise CliError(str(e)) from None
    return 0


def run_score(args: argparse.Namespace) -> int:
    _threads(args)
    try:
        base = read_many(iter_tmk_paths(args.source)) if args.source else []
    except TmkFormatError as e:
        raise CliError(str(e)) from None
    bank = synthetic_batch(args.pairs, base)
    needle = base[0] if base else bank[0]
    r = bench_score_vs_naive(bank, needle, args.device, args.batch, args.repeat, args.dtype, args.naive_pairs)
    out = {**r.pop("vmatch"), "in_process": True, **r}
    if args.process_files > 1:
        tool = find_reference_tool("tmk-two-level-score", args.reference_bin)
        out["whole_process"] = bench_score_processes(bank, args.process_files, args.repeat, tool)
        if tool is None:
            out["ratio_vs_reference_readme_fallback"] = round(out["pairs_per_s"] / REFERENCE_LEVEL2_PAIRS_PER_S, 1)
    print(json.dumps(out, indent=2))
    return 0
