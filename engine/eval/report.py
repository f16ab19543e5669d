"""Evaluation report: summary.json, scores.csv, PNG plots and one self-contained report.html."""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engine.eval import metrics
from engine.eval.labels import LabelledSet
from engine.eval.pipeline import PairScores
from engine.tmkfile import atomic_write_bytes

SUMMARY_VERSION = 1
RULES = ("level1", "level2", "two_level")
RULE_TITLES = {"level1": "level-1 alone", "level2": "level-2 alone", "two_level": "two-level rule"}
PLOTS = {"roc": "roc.png", "pr": "precision_recall.png", "hist_level1": "hist_level1.png",
         "hist_level2": "hist_level2.png", "scatter": "scatter_l1_l2.png"}


def _write(path: Path, data: bytes) -> None:
    """Atomic write, readable by others like any report file (the temporary file is 0600)."""
    atomic_write_bytes(path, data)
    path.chmod(0o644)


def rule_scores(scores: PairScores) -> dict[str, np.ndarray]:
    """The score each rule thresholds: level-1, level-2, and min(level-1, level-2) for c1 = c2 = t."""
    return {"level1": metrics.clean_scores(scores.level1), "level2": metrics.clean_scores(scores.level2),
            "two_level": metrics.two_level_score(scores.level1, scores.level2)}


def _pair_rows(lset: LabelledSet, scores: PairScores, idx: np.ndarray) -> list[dict[str, Any]]:
    return [{"a": lset.display(lset.pairs[k].a), "b": lset.display(lset.pairs[k].b),
             "transform": lset.pairs[k].transform, "level1": _num(scores.level1[k]),
             "level2": _num(scores.level2[k])} for k in idx]


def _num(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def per_transform(lset: LabelledSet, scores: PairScores, c1: float, c2: float) -> list[dict[str, Any]]:
    """Match rate of the two-level rule per (transform, label): the TPR of each edit for matches,
    the false-match rate for non-matches."""
    tags = np.array([p.transform for p in lset.pairs], dtype=object)
    pred = (metrics.clean_scores(scores.level1) >= c1) & (metrics.clean_scores(scores.level2) >= c2)
    out = []
    for tag in sorted(set(tags.tolist())):
        for label in (True, False):
            m = (tags == tag) & (scores.labels == label)
            n = int(m.sum())
            if not n:
                continue
            l1, l2 = scores.level1[m].astype(np.float64), scores.level2[m].astype(np.float64)
            out.append({"transform": tag, "label": label, "n": n, "matched": int(pred[m].sum()),
                        "rate": float(pred[m].mean()),
                        "level1_mean": _num(np.nanmean(l1)) if np.isfinite(l1).any() else None,
                        "level1_min": _num(np.nanmin(l1)) if np.isfinite(l1).any() else None,
                        "level2_mean": _num(np.nanmean(l2)) if np.isfinite(l2).any() else None,
                        "level2_min": _num(np.nanmin(l2)) if np.isfinite(l2).any() else None})
    return out


def build_summary(lset: LabelledSet, scores: PairScores, c1: float = 0.7, c2: float = 0.7,
                  target_fpr: float = 1e-3, grid: Sequence[float] = metrics.DEFAULT_GRID,
                  listed: int = 10, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every number of the report, as a JSON-ready dict (see docs/evaluation.md for the fields)."""
    y = scores.labels
    rs = rule_scores(scores)
    op = metrics.two_level_counts(scores.level1, scores.level2, y, c1, c2)
    rules: dict[str, Any] = {}
    for name, s in rs.items():
        entry: dict[str, Any] = {"auc": metrics.roc_auc(s, y), "average_precision": metrics.average_precision(s, y)}
        if name == "two_level":
            entry["score"] = "min(level1, level2): curves move c1 = c2 = t together"
            entry["at_thresholds"] = {"c1": c1, "c2": c2, **op.to_dict()}
            entry["grid"] = metrics.two_level_grid(scores.level1, scores.level2, y, grid)
            tf = metrics.two_level_for_fpr(scores.level1, scores.level2, y, target_fpr)
            tf["equal_thresholds"] = metrics.threshold_for_fpr(s, y, target_fpr)
            entry["target_fpr"] = tf
        else:
            t = c1 if name == "level1" else c2
            entry["at_thresholds"] = {"threshold": t, **metrics.counts_at(s, y, t).to_dict()}
            entry["grid"] = metrics.grid_rates(s, y, grid)
            entry["target_fpr"] = metrics.threshold_for_fpr(s, y, target_fpr)
        rules[name] = entry
    two = rs["two_level"]
    neg, pos = np.nonzero(~y)[0], np.nonzero(y)[0]
    return {
        "vmatch_eval": SUMMARY_VERSION,
        "inputs": {"kind": lset.kind, "source": str(lset.source), "items": len(lset.items),
                   "pairs": len(lset.pairs), "matches": lset.n_matches, "nonmatches": lset.n_nonmatches,
                   **(inputs or {})},
        "thresholds": {"c1": c1, "c2": c2, "target_fpr": target_fpr, "grid": [float(g) for g in grid],
                       "inclusive": True},
        "operating_point": {"c1": c1, "c2": c2, **op.to_dict()},
        "rules": rules,
        "per_transform": per_transform(lset, scores, c1, c2),
        "top_nonmatches": _pair_rows(lset, scores, neg[np.argsort(-two[neg], kind="stable")[:listed]]),
        "weakest_matches": _pair_rows(lset, scores, pos[np.argsort(two[pos], kind="stable")[:listed]]),
        "plots": dict(PLOTS),
    }


def write_scores_csv(path: Path, lset: LabelledSet, scores: PairScores) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["a", "b", "label", "transform", "level1", "level2"])
    for p, l1, l2 in zip(lset.pairs, scores.level1, scores.level2):
        w.writerow([lset.display(p.a), lset.display(p.b), int(p.label), p.transform, f"{l1:.6f}", f"{l2:.6f}"])
    _write(path, buf.getvalue().encode())


def read_scores_csv(path: str | Path) -> tuple[list[dict[str, str]], PairScores]:
    """Rows and arrays of a scores.csv written by write_scores_csv (for notebooks)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    l1 = np.array([float(r["level1"]) for r in rows], np.float32)
    l2 = np.array([float(r["level2"]) for r in rows], np.float32)
    return rows, PairScores(l1, l2, np.array([r["label"] == "1" for r in rows], dtype=bool))


def write_plots(outdir: Path, summary: dict[str, Any], scores: PairScores) -> dict[str, Path]:
    from engine.eval import plots

    y = scores.labels
    rs = rule_scores(scores)
    c1, c2 = summary["thresholds"]["c1"], summary["thresholds"]["c2"]
    rules = summary["rules"]
    roc_pts = {k: (rules[k]["at_thresholds"]["fpr"], rules[k]["at_thresholds"]["tpr"]) for k in RULES}
    pr_pts = {k: (rules[k]["at_thresholds"]["tpr"], rules[k]["at_thresholds"]["precision"])
              for k in RULES if rules[k]["at_thresholds"]["precision"] is not None}
    return {
        "roc": plots.roc(rs, y, roc_pts, outdir / PLOTS["roc"], summary["thresholds"]["target_fpr"]),
        "pr": plots.precision_recall(rs, y, pr_pts, outdir / PLOTS["pr"]),
        "hist_level1": plots.histogram(scores.level1, y, c1, "level-1", outdir / PLOTS["hist_level1"]),
        "hist_level2": plots.histogram(scores.level2, y, c2, "level-2", outdir / PLOTS["hist_level2"]),
        "scatter": plots.scatter(scores.level1, scores.level2, y, c1, c2, outdir / PLOTS["scatter"]),
    }


def write_report(outdir: str | Path, lset: LabelledSet, scores: PairScores, summary: dict[str, Any],
                 plots: bool = True) -> Path:
    """Write summary.json, scores.csv, the PNGs and report.html into outdir; returns report.html."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    if not plots:
        summary = {**summary, "plots": {}}
    _write(outdir / "summary.json", (json.dumps(summary, indent=1, allow_nan=False) + "\n").encode())
    write_scores_csv(outdir / "scores.csv", lset, scores)
    images = write_plots(outdir, summary, scores) if plots else {}
    page = outdir / "report.html"
    _write(page, render_html(summary, images).encode())
    return page


# --------------------------------------------------------------------------- HTML


def _f(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "match" if x else "non-match"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isinf(x):
            return "∞" if x > 0 else "−∞"
        return f"{x:.{digits}f}" if abs(x) >= 10 ** -digits or x == 0 else f"{x:.2e}"
    return html.escape(str(x))


def _table(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in cols)
    body = "".join("<tr>" + "".join(f"<td>{_f(r.get(k))}</td>" for k, _ in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


_CSS = """body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em}th,td{border:1px solid #ccc;padding:2px 8px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
figure{display:inline-block;margin:.3em}img{max-width:100%}.note{color:#555;font-size:13px}"""


def render_html(summary: dict[str, Any], images: dict[str, Path]) -> str:
    s, th, op = summary, summary["thresholds"], summary["operating_point"]
    inp = s["inputs"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>vmatch eval report</title>"
             f"<style>{_CSS}</style></head><body><h1>vmatch evaluation</h1>",
             f"<p>{html.escape(inp['kind'])} <code>{html.escape(inp['source'])}</code>: {inp['items']} items, "
             f"{inp['pairs']} pairs ({inp['matches']} matches, {inp['nonmatches']} non-matches). "
             "A pair is accepted when level-1 ≥ c1 and level-2 ≥ c2 (inclusive, like the reference).</p>",
             f"<h2>Operating point c1 = {th['c1']:g}, c2 = {th['c2']:g}</h2>",
             _table([op], [(k, k) for k in ("c1", "c2", "tp", "fp", "tn", "fn", "tpr", "fpr", "precision")])]
    rows = []
    for name in RULES:
        r = s["rules"][name]
        tf = r["target_fpr"]
        thr = (f"{_f(tf['c1'])} / {_f(tf['c2'])}" if name == "two_level" else _f(tf["threshold"]))
        at = r["at_thresholds"]
        rows.append({"rule": RULE_TITLES[name], "auc": r["auc"], "ap": r["average_precision"],
                     "tpr": at["tpr"], "fpr": at["fpr"], "precision": at["precision"],
                     "tthr": thr, "ttpr": tf["tpr"], "tfpr": tf["fpr"]})
    parts += [f"<h2>Rules</h2><p class='note'>Curves of the two-level rule move both thresholds together "
              f"(c1 = c2 = t, i.e. they rank pairs by min(level-1, level-2)); its target-FPR thresholds are the "
              f"best (c1, c2) pair. FPR resolution here is 1/{inp['nonmatches']} = "
              f"{1 / inp['nonmatches']:.2e}.</p>",
              _table(rows, [("rule", "rule"), ("auc", "ROC AUC"), ("ap", "average precision"),
                            ("tpr", f"TPR at {th['c1']:g}/{th['c2']:g}"), ("fpr", "FPR"), ("precision", "precision"),
                            ("tthr", f"threshold(s) for FPR ≤ {th['target_fpr']:g}"), ("ttpr", "TPR there"),
                            ("tfpr", "FPR there")])]
    for key, title in (("roc", "ROC"), ("pr", "Precision-recall")):
        if key in images:
            parts.append(_img(images[key], title))
    grid_cols = [("threshold", "threshold"), ("tpr", "TPR"), ("fpr", "FPR"), ("precision", "precision"),
                 ("tp", "tp"), ("fp", "fp")]
    for name in ("level1", "level2"):
        parts += [f"<h2>{RULE_TITLES[name]}: threshold grid</h2>", _table(s["rules"][name]["grid"], grid_cols)]
        if f"hist_{name}" in images:
            parts.append(_img(images[f"hist_{name}"], f"{name} histogram"))
    diag = [g for g in s["rules"]["two_level"]["grid"] if g["c1"] == g["c2"]]
    parts += ["<h2>Two-level rule: grid (c1 = c2)</h2>",
              _table(diag, [("c1", "c1"), ("c2", "c2")] + grid_cols[1:]),
              "<p class='note'>The full c1 × c2 grid is in summary.json.</p>"]
    if "scatter" in images:
        parts.append(_img(images["scatter"], "level-1 vs level-2"))
    if s["per_transform"]:
        parts += ["<h2>Per transform</h2><p class='note'>rate = share accepted at the operating point "
                  "(recall for matches, false-match rate for non-matches).</p>",
                  _table(s["per_transform"], [("transform", "transform"), ("label", "label"), ("n", "pairs"),
                                              ("matched", "accepted"), ("rate", "rate"),
                                              ("level1_mean", "mean L1"), ("level1_min", "min L1"),
                                              ("level2_mean", "mean L2"), ("level2_min", "min L2")])]
    pc = [("a", "a"), ("b", "b"), ("transform", "transform"), ("level1", "level-1"), ("level2", "level-2")]
    parts += ["<h2>Highest-scoring non-matches</h2>", _table(s["top_nonmatches"], pc),
              "<h2>Lowest-scoring matches</h2>", _table(s["weakest_matches"], pc), "</body></html>"]
    return "\n".join(parts)
