"""Evaluation plots as small PNGs (matplotlib with the Agg backend, imported only when plotting)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from engine.eval import metrics
from engine.errors import VmatchError

_DPI = 90
_COLORS = {"level1": "#1f77b4", "level2": "#ff7f0e", "two_level": "#2ca02c"}
_LABELS = {"level1": "level-1", "level2": "level-2", "two_level": "two-level (c1 = c2 = t)"}
MATCH, NONMATCH = "#d62728", "#7f7f7f"


class PlotsUnavailable(VmatchError, RuntimeError):
    """matplotlib is not installed."""


def require() -> None:
    """Raise PlotsUnavailable now rather than after the scoring."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotsUnavailable("matplotlib is not installed (pip install matplotlib), "
                               "or pass --no-plots") from None


def _plt():
    require()
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    _plt().close(fig)
    return path


def roc(scores: Mapping[str, np.ndarray], labels: np.ndarray, points: Mapping[str, tuple[float, float]],
        path: Path, target_fpr: float | None = None) -> Path:
    """ROC curves of each rule, linear and log-FPR panels; ``points`` marks (fpr, tpr) per rule."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    nneg = int((~labels.astype(bool)).sum())
    for ax, log in zip(axes, (False, True)):
        for name, s in scores.items():
            fpr, tpr, _ = metrics.roc_curve(s, labels)
            auc = metrics.roc_auc(s, labels)
            x = np.maximum(fpr, 0.5 / nneg) if log else fpr
            ax.step(x, tpr, where="post", color=_COLORS.get(name), label=f"{_LABELS.get(name, name)} (AUC {auc:.4f})")
            if name in points:
                px, py = points[name]
                ax.plot(max(px, 0.5 / nneg) if log else px, py, "o", color=_COLORS.get(name), ms=6, mec="k")
        if target_fpr and log:
            ax.axvline(target_fpr, color="k", ls=":", lw=1)
            ax.text(target_fpr, 0.02, f" target FPR {target_fpr:g}", fontsize=7)
        ax.set_xlabel("false-positive rate" + (" (log; 0 drawn at 1/(2·non-matches))" if log else ""))
        ax.set_ylabel("true-positive rate")
        ax.set_ylim(-0.02, 1.02)
        if log:
            ax.set_xscale("log")
            ax.set_xlim(min(0.4 / nneg, (target_fpr or 1.0) / 2), 1.05)
        else:
            ax.set_xlim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=7)
    fig.suptitle("ROC (dots: the operating point)", fontsize=10)
    return _save(fig, path)


def precision_recall(scores: Mapping[str, np.ndarray], labels: np.ndarray,
                     points: Mapping[str, tuple[float, float]], path: Path) -> Path:
    """Precision-recall curves; ``points`` marks (recall, precision) per rule."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for name, s in scores.items():
        prec, rec, _ = metrics.pr_curve(s, labels)
        ap = metrics.average_precision(s, labels)
        ax.step(rec, prec, where="post", color=_COLORS.get(name), label=f"{_LABELS.get(name, name)} (AP {ap:.4f})")
        if name in points:
            ax.plot(*points[name], "o", color=_COLORS.get(name), ms=6, mec="k")
    base = labels.mean()
    ax.axhline(base, color="k", ls=":", lw=1, label=f"chance ({base:.3f})")
    ax.set_xlabel("recall (true-positive rate)")
    ax.set_ylabel("precision")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=7)
    ax.set_title("Precision-recall (dots: the operating point)", fontsize=10)
    return _save(fig, path)


def histogram(scores: np.ndarray, labels: np.ndarray, threshold: float, name: str, path: Path) -> Path:
    """Score histograms of matches and non-matches (log counts) with the threshold line."""
    plt = _plt()
    s = np.asarray(scores, dtype=np.float64)
    y = labels.astype(bool)
    fin = np.isfinite(s)
    lo = min(float(s[fin].min()) if fin.any() else 0.0, threshold - 0.05)
    bins = np.linspace(lo, 1.0 + 1e-6, 61)
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    ax.hist(np.clip(s[fin & ~y], lo, 1.0), bins, color=NONMATCH, alpha=0.7, label=f"non-matches ({(~y).sum()})")
    ax.hist(np.clip(s[fin & y], lo, 1.0), bins, color=MATCH, alpha=0.6, label=f"matches ({y.sum()})")
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set_yscale("log")
    ax.set_xlabel(f"{name} score")
    ax.set_ylabel("pairs (log)")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    ax.set_title(f"{name} scores of matches vs non-matches", fontsize=10)
    return _save(fig, path)


def scatter(level1: np.ndarray, level2: np.ndarray, labels: np.ndarray, c1: float, c2: float, path: Path) -> Path:
    """Level-1 vs level-2 of every pair, coloured by label, with the two-level acceptance region."""
    plt = _plt()
    y = labels.astype(bool)
    a, b = metrics.clean_scores(level1), metrics.clean_scores(level2)
    fin = np.isfinite(a) & np.isfinite(b)
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    # matches first: the non-matches drawn on top stay visible where the two overlap
    ax.scatter(a[fin & y], b[fin & y], s=8, c=MATCH, alpha=0.5, lw=0, label="match")
    ax.scatter(a[fin & ~y], b[fin & ~y], s=7, c="#404040", alpha=0.6, lw=0, label="non-match")
    ax.axvline(c1, color="k", ls="--", lw=1)
    ax.axhline(c2, color="k", ls="--", lw=1)
    ax.fill_between([c1, 1.02], c2, 1.02, color="#2ca02c", alpha=0.08, label=f"accepted (c1={c1:g}, c2={c2:g})")
    ax.set_xlabel("level-1 (cosine of pure averages)")
    ax.set_ylabel("level-2 (TMK kernel)")
    lo1 = min(float(a[fin].min()), 0.0) if fin.any() else 0.0
    lo2 = min(float(b[fin].min()), 0.0) if fin.any() else 0.0
    ax.set_xlim(lo1 - 0.02, 1.02)
    ax.set_ylim(lo2 - 0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Level-1 vs level-2 by label", fontsize=10)
    return _save(fig, path)
