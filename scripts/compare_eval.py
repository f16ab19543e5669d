#!/usr/bin/env python3
"""Per-transform match and false-match rates of `vmatch eval` reports side by side.

    python scripts/compare_eval.py plain=REPORT_DIR robust=REPORT_DIR [--c1 0.7 --c2 0.7]

Reads each report's ``scores.csv`` and ``summary.json`` and prints a Markdown table: for every
transform tag, the match rate (accepted matches / matches) and the false-match rate (accepted
non-matches / non-matches) of each report at (c1, c2) and at that report's own two-level
thresholds for its target FPR (``rules.two_level.target_fpr``), then the overall rates.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


def load(report: Path) -> tuple[list[dict], dict]:
    with open(report / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rows, json.loads((report / "summary.json").read_text())


def rates(rows: list[dict], c1: float, c2: float) -> dict[str, dict[str, list[int]]]:
    """tag -> {'m': [accepted, total], 'n': [accepted, total]} (inclusive thresholds, NaN never accepted)."""
    out: dict[str, dict[str, list[int]]] = {}
    for r in rows:
        d = out.setdefault(r["transform"] or "-", {"m": [0, 0], "n": [0, 0]})
        k = "m" if r["label"] in ("1", "True", "true") else "n"
        l1, l2 = float(r["level1"]), float(r["level2"])
        d[k][1] += 1
        d[k][0] += int(l1 >= c1 and l2 >= c2)
    return out


def fmt(acc_tot: list[int]) -> str:
    a, t = acc_tot
    return "–" if t == 0 else f"{a / t:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="+", metavar="NAME=REPORT_DIR")
    ap.add_argument("--c1", type=float, default=0.7)
    ap.add_argument("--c2", type=float, default=0.7)
    args = ap.parse_args(argv)
    cols = []
    for spec in args.reports:
        name, _, path = spec.partition("=")
        rows, summ = load(Path(path))
        tf = summ["rules"]["two_level"]["target_fpr"]
        cols.append((f"{name} @ {args.c1:g}/{args.c2:g}", rates(rows, args.c1, args.c2)))
        cols.append((f"{name} @ FPR<={summ['thresholds']['target_fpr']:g} (c1={tf['c1']:.4f}, c2={tf['c2']:.4f})",
                     rates(rows, round(tf["c1"], 6), round(tf["c2"], 6))))   # scores.csv has 6 decimals
    tags = sorted({t for _, r in cols for t in r})
    w = sys.stdout.write
    w("| transform | matches / non-matches | " + " | ".join(f"{c} match / false-match" for c, _ in cols) + " |\n")
    w("|" + " --- |" * (2 + len(cols)) + "\n")
    for t in tags:
        first = cols[0][1].get(t, {"m": [0, 0], "n": [0, 0]})
        cells = [f"{fmt(r.get(t, {'m': [0, 0]})['m'])} / {fmt(r.get(t, {'n': [0, 0]})['n'])}" for _, r in cols]
        w(f"| {t} | {first['m'][1]} / {first['n'][1]} | " + " | ".join(cells) + " |\n")
    tot = []
    for _, r in cols:
        m = [sum(d["m"][0] for d in r.values()), sum(d["m"][1] for d in r.values())]
        n = [sum(d["n"][0] for d in r.values()), sum(d["n"][1] for d in r.values())]
        tot.append(f"**{fmt(m)}** ({m[0]}/{m[1]}) / **{n[0] / max(n[1], 1):.2e}** ({n[0]}/{n[1]})")
    w("| **all** | | " + " | ".join(tot) + " |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
