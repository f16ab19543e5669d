#!/usr/bin/env python3
"""pytx index for tmk_pdqf: `TmkPdqfIndex` (two-stage) against pytx's `TrivialLinearSearchHashIndex`
(`compare_hash` on every entry, the reference semantics), side by side, in one process.

Bank: N synthetic signatures (perturbed copies of 15 random ones, engine.synthetic) as hash
strings; needles: Q more copies. Prints build time, pickled bytes per hash, query time per
needle and their ratios, and checks that both indexes return the same matches.

    python scripts/bench_pytx_index.py --bank 100 --needles 3
"""
from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from threatexchange.signal_type.signal_base import TrivialLinearSearchHashIndex  # noqa: E402

from engine import signals  # noqa: E402
from engine.pytx import TmkPdqfIndex, TmkPdqfSignal  # noqa: E402
from engine.synthetic import random_signatures, synthetic_batch  # noqa: E402
from engine.tmkfile import to_bytes  # noqa: E402


class LinearTmkIndex(TrivialLinearSearchHashIndex):
    _SIGNAL_TYPE = TmkPdqfSignal


def strings(n: int, seed: int, bases=()) -> list[str]:
    b = synthetic_batch(n, bases, strength=0.25, seed=seed)
    return [signals.encode(to_bytes(b[i])) for i in range(n)]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bank", type=int, default=100)
    ap.add_argument("--needles", type=int, default=3)
    ap.add_argument("--store", choices=["fp32", "fp16"], default="fp32")
    args = ap.parse_args()
    TmkPdqfIndex.DEVICE = "cpu"
    TmkPdqfSignal.compare_hash(*strings(2, 99))   # warm the scorer (torch start-up, tables)
    bases = random_signatures(15, seed=0)     # bank and needles are copies of the same 15
    bank = strings(args.bank, 1, bases)
    needles = strings(args.needles, 2, bases)
    entries = [(s, f"item-{i}") for i, s in enumerate(bank)]
    rows = {}
    for name, build in (("linear", lambda: LinearTmkIndex.build(entries)),
                        ("tmk_pdqf", lambda: TmkPdqfIndex.build(entries, store=args.store))):
        ix, t_build = timed(build)
        buf = io.BytesIO()
        ix.serialize(buf)
        size = buf.tell()
        buf.seek(0)
        ix, t_load = timed(lambda: pickle.load(buf))
        ix.query(needles[0])                          # first query builds the searcher
        res, t_query = timed(lambda: [ix.query(q) for q in needles])
        rows[name] = {"build_s": round(t_build, 3), "load_s": round(t_load, 3),
                      "pickle_bytes_per_hash": round(size / len(bank)),
                      "query_ms_per_needle": round(1000 * t_query / len(needles), 2),
                      "matches": sorted((k, m.metadata) for k, r in enumerate(res) for m in r)}
    found = rows["linear"].pop("matches")
    same = found == rows["tmk_pdqf"].pop("matches")
    load = os.getloadavg()
    print(json.dumps({"bank": args.bank, "needles": args.needles, "store": args.store, "in_process": True,
                      "load_avg_1m": round(load[0], 2), **rows,
                      "ratio_query_linear_over_tmk_pdqf": round(rows["linear"]["query_ms_per_needle"]
                                                                / rows["tmk_pdqf"]["query_ms_per_needle"], 1),
                      "ratio_pickle_linear_over_tmk_pdqf": round(rows["linear"]["pickle_bytes_per_hash"]
                                                                 / rows["tmk_pdqf"]["pickle_bytes_per_hash"], 2),
                      "matches": len(found), "same_matches": same}, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
