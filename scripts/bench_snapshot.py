#!/usr/bin/env python3
"""Index open and one-needle lookups, this checkout side by side with another (a baseline tree).

    python scripts/bench_snapshot.py --baseline /tmp/vmatch-main --items 5000 --workdir /tmp/vmatch-bench

Why: the index was split into a read snapshot and a writer (engine/index/snapshot.py,
writer.py) behind the same `VideoIndex`; this checks that opening and querying did not get
slower.  The bank is the perturbed real hashes of scripts/bench_index.py (--items .tmk files,
--store, 4 shards, flat), built once with this checkout and then opened read-only by both.
Each run is a fresh process (`--worker`) importing `engine` from one tree; the trees alternate
--runs times after one warm-up round (not kept).  Per tree, in process: ``open_first_lookup_s`` (open + map + first one-needle
lookup at c1 = c2 = 0.7), ``lookup_ms`` (best of 30 one-needle lookups, 0.7/0.7),
``scan_all_s`` (best of 3 one-needle queries at c1 = -1, c2 = 0: every item scored at level 2)
and ``refresh_noop_ms`` (best of 30 `refresh()` with nothing committed).  Prints one JSON
object with medians and the ratios baseline / this (> 1: this checkout is faster).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, args.engine_root)
    import engine
    from engine.index import VideoIndex
    from engine.tmkfile import read_tmk

    assert Path(engine.__file__).resolve().is_relative_to(Path(args.engine_root).resolve()), engine.__file__
    # the heavy libraries are imported before timing in both trees: a tree that imports faiss
    # lazily (on the first level-1 search) would otherwise pay that import inside the first lookup
    import faiss  # noqa: F401
    import torch  # noqa: F401

    needle = read_tmk(args.needle)
    t0 = time.perf_counter()
    ix = VideoIndex(args.index, device="cpu")
    ix.query([needle], 0.7, 0.7)
    first = time.perf_counter() - t0
    look = []
    for _ in range(30):
        t0 = time.perf_counter()
        res = ix.query([needle], 0.7, 0.7)
        look.append(time.perf_counter() - t0)
    scan = []
    for _ in range(3):
        t0 = time.perf_counter()
        allr = ix.query([needle], -1.0, 0.0)
        scan.append(time.perf_counter() - t0)
    ref = []
    for _ in range(30):
        t0 = time.perf_counter()
        ix.refresh()
        ref.append(time.perf_counter() - t0)
    print(json.dumps({"open_first_lookup_s": round(first, 4), "lookup_ms": round(min(look) * 1e3, 3),
                      "scan_all_s": round(min(scan), 4), "refresh_noop_ms": round(min(ref) * 1e3, 3),
                      "matches": len(res[0]), "scanned_matches": len(allr[0])}))


def build(args: argparse.Namespace) -> tuple[Path, Path]:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "scripts"))
    from bench_index import load_bases, make_bank_files
    from engine.index import VideoIndex

    work = Path(args.workdir)
    files = make_bank_files(load_bases(args.ref), work / f"bank-{args.items}-0", args.items, 0.002, 0)
    ix_path = work / f"snapshot-index-{args.items}-{args.store}"
    if not (ix_path / "MANIFEST.json").exists():
        VideoIndex.create(ix_path, shards=4, store=args.store, device="cpu").add_paths(files)
    return ix_path, files[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=False, help="root of the baseline tree (e.g. main, unpacked)")
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--store", choices=["fp32", "fp16", "int8"], default="fp32")
    ap.add_argument("--runs", type=int, default=2, help="processes per tree, alternated")
    ap.add_argument("--workdir", default="/tmp/vmatch-bench")
    ap.add_argument("--ref", help="folder of real .tmk hashes to perturb (default: shared/)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--engine-root", help=argparse.SUPPRESS)
    ap.add_argument("--index", help=argparse.SUPPRESS)
    ap.add_argument("--needle", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if not args.baseline:
        ap.error("--baseline DIR is required")
    ix_path, needle = build(args)
    trees = {"baseline": str(Path(args.baseline).resolve()), "this": str(REPO)}
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    for rep in range(args.runs + 1):      # the first round warms the page cache and is not kept
        for name, root in trees.items():
            out = subprocess.run([sys.executable, __file__, "--worker", "--engine-root", root, "--index",
                                  str(ix_path), "--needle", str(needle)], env={**os.environ, "PYTHONPATH": root},
                                 cwd=root, check=True,
                                 capture_output=True, text=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            print(f"[bench_snapshot] {name}{' (warm-up)' if rep == 0 else ''}: {res}", file=sys.stderr, flush=True)
            if rep:
                runs[name].append(res)
    keys = ("open_first_lookup_s", "lookup_ms", "scan_all_s", "refresh_noop_ms")
    med = {n: {k: round(statistics.median(r[k] for r in rs), 4) for k in keys} for n, rs in runs.items()}
    print(json.dumps({"items": args.items, "store": args.store, "shards": 4, "runs": runs, "median": med,
                      "ratio_baseline_over_this": {k: round(med["baseline"][k] / med["this"][k], 2)
                                                   if med["this"][k] else None for k in keys},
                      "load_average": list(os.getloadavg()), "note": "in process, fresh process per run"},
                     indent=1))


if __name__ == "__main__":
    main()
