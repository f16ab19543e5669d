"""Threshold metrics for labelled score pairs: ROC, precision-recall, operating points (pure numpy).

Conventions, shared by every function here:

* a pair is *predicted a match* when ``score >= threshold`` (inclusive, like the reference tools);
* NaN scores (level-1 of a zero signature against a non-zero one, spec section 7) never match:
  they are treated as ``-inf``;
* curves are traced over the distinct score values, highest first, starting from the point where
  nothing is predicted (threshold ``+inf``); this is the convention of scikit-learn, whose
  ``roc_auc_score`` and ``average_precision_score`` these functions reproduce without depending on it;
* the *two-level rule* predicts a match when ``level1 >= c1 and level2 >= c2``. Its one-dimensional
  curves move both thresholds together (``c1 = c2 = t``), i.e. they rank pairs by ``min(level1, level2)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

#: Default threshold grid reported in summaries (0.50, 0.55, ..., 0.95, plus 0.97 and 0.99).
DEFAULT_GRID: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10)) + (0.97, 0.99)


def clean_scores(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """float64 copy with NaN replaced by -inf (a NaN score never matches)."""
    s = np.asarray(scores, dtype=np.float64).copy()
    s[np.isnan(s)] = -np.inf
    return s


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = clean_scores(scores)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must be 1-D of the same length")
    return s, y


def two_level_score(level1: np.ndarray, level2: np.ndarray) -> np.ndarray:
    """The score whose threshold t is the two-level rule at c1 = c2 = t: min(level1, level2)."""
    return np.minimum(clean_scores(level1), clean_scores(level2))


@dataclass(frozen=True)
class Counts:
    """Confusion counts of one operating point; rates are None where undefined (0/0)."""

    tp: int
    fp: int
    tn: int
    fn: int

    @classmethod
    def of(cls, predicted: np.ndarray, labels: np.ndarray) -> "Counts":
        p, y = np.asarray(predicted, dtype=bool), np.asarray(labels, dtype=bool)
        tp = int(np.count_nonzero(p & y))
        fp = int(np.count_nonzero(p & ~y))
        return cls(tp, fp, int(np.count_nonzero(~y)) - fp, int(np.count_nonzero(y)) - tp)

    @property
    def tpr(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def fpr(self) -> float | None:
        return _ratio(self.fp, self.fp + self.tn)

    @property
    def precision(self) -> float | None:
        return _ratio(self.tp, self.tp + self.fp)

    def to_dict(self) -> dict[str, int | float | None]:
        return {"tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn,
                "tpr": self.tpr, "fpr": self.fpr, "precision": self.precision}


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def counts_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> Counts:
    """Confusion counts when pairs with ``score >= threshold`` are predicted matches."""
    s, y = _check(scores, labels)
    return Counts.of(s >= threshold, y)


def two_level_counts(level1: np.ndarray, level2: np.ndarray, labels: np.ndarray, c1: float, c2: float) -> Counts:
    """Confusion counts of the reference rule ``level1 >= c1 and level2 >= c2``."""
    return Counts.of((clean_scores(level1) >= c1) & (clean_scores(level2) >= c2), labels)


def _cumulative(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, tp, fp) at each distinct score, highest first (inclusive thresholds)."""
    s, y = _check(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp, fp = np.cumsum(y), np.cumsum(~y)
    last = np.r_[np.nonzero(s[1:] != s[:-1])[0], len(s) - 1] if len(s) else np.zeros(0, np.int64)
    return s[last], tp[last].astype(np.int64), fp[last].astype(np.int64)


def _both_classes(labels: np.ndarray) -> tuple[int, int]:
    y = np.asarray(labels, dtype=bool)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        raise ValueError(f"need both matching and non-matching pairs (have {npos} matches, {nneg} non-matches)")
    return npos, nneg


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds); the first point is (0, 0) at threshold +inf."""
    npos, nneg = _both_classes(labels)
    thr, tp, fp = _cumulative(scores, labels)
    return np.r_[0.0, fp / nneg], np.r_[0.0, tp / npos], np.r_[np.inf, thr]


def pr_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) at each distinct score, highest first.

    The curve starts at recall 0 with precision 1 (threshold +inf), as in scikit-learn.
    """
    npos, _ = _both_classes(labels)
    thr, tp, fp = _cumulative(scores, labels)
    return np.r_[1.0, tp / (tp + fp)], np.r_[0.0, tp / npos], np.r_[np.inf, thr]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids; equals P(match score > non-match score) + P(tie)/2)."""
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision: sum over distinct thresholds of (recall step) x precision."""
    prec, rec, _ = pr_curve(scores, labels)
    return float(np.sum(np.diff(rec) * prec[1:]))


def threshold_for_fpr(scores: np.ndarray, labels: np.ndarray, target: float) -> dict[str, object]:
    """The lowest threshold whose false-positive rate is <= target (hence the highest TPR there).

    The threshold is a score value of the data; every threshold in ``(next_below, threshold]``
    gives the same counts. When even the highest score exceeds the target, the threshold is just
    above the highest score (nothing predicted).
    """
    _, nneg = _both_classes(labels)
    s, y = _check(scores, labels)
    thr, tp, fp = _cumulative(s, y)
    ok = np.nonzero(fp <= target * nneg)[0]
    if len(ok):
        i = int(ok[-1])
        t = float(thr[i])
        below = float(thr[i + 1]) if i + 1 < len(thr) else None
    else:
        t = float(np.nextafter(np.float32(thr[0]), np.float32(np.inf))) if len(thr) else float("inf")
        below = float(thr[0]) if len(thr) else None
    c = Counts.of(s >= t, y)
    return {"target_fpr": target, "threshold": t, "next_below": below, **c.to_dict(),
            "fpr_resolution": 1.0 / nneg}


def two_level_for_fpr(level1: np.ndarray, level2: np.ndarray, labels: np.ndarray, target: float,
                      max_candidates: int = 4096) -> dict[str, object]:
    """(c1, c2) maximising the TPR of the two-level rule subject to FPR <= target.

    Exact search: an optimal c1 can always be raised to a level-1 value of a matching pair without
    losing a true positive, so only those values are tried (thinned to ``max_candidates`` quantiles
    on very large sets); for each, c2 is the lowest level-2 value that keeps at most
    ``floor(target * non-matches)`` false positives. Ties keep the fewer false positives, then the
    higher thresholds (c1 first).
    """
    _, nneg = _both_classes(labels)
    a, b, y = clean_scores(level1), clean_scores(level2), np.asarray(labels, dtype=bool)
    allowed = int(np.floor(target * nneg + 1e-9))
    cands = np.unique(a[y & np.isfinite(a)])[::-1]
    if len(cands) > max_candidates:
        cands = np.unique(np.quantile(cands, np.linspace(0, 1, max_candidates), method="nearest"))[::-1]
    best: tuple[int, int, float, float] | None = None  # (tp, -fp, c1, c2)
    for c1 in cands:
        sel = a >= c1
        neg2, pos2 = b[sel & ~y], b[sel & y]
        k = len(neg2) - allowed - 1  # c2 must be above the (allowed+1)-th highest non-match
        floor2 = np.partition(neg2, k)[k] if k >= 0 else -np.inf
        ok = pos2[pos2 > floor2]
        if len(ok) == 0:
            continue
        c2 = float(ok.min())
        tp, fp = len(ok), int(np.count_nonzero(neg2 >= c2))
        key = (tp, -fp, float(c1), c2)
        if best is None or key > best:
            best = key
    if best is None:
        c1 = c2 = float(np.nextafter(np.float32(max(np.max(a), np.max(b))), np.float32(np.inf)))
    else:
        c1, c2 = best[2], best[3]
    c = two_level_counts(a, b, y, c1, c2)
    return {"target_fpr": target, "c1": c1, "c2": c2, **c.to_dict(), "fpr_resolution": 1.0 / nneg}


def grid_rates(scores: np.ndarray, labels: np.ndarray, grid: Iterable[float]) -> list[dict[str, object]]:
    """Counts and rates at each threshold of ``grid``."""
    s, y = _check(scores, labels)
    return [{"threshold": float(t), **Counts.of(s >= t, y).to_dict()} for t in grid]


def two_level_grid(level1: np.ndarray, level2: np.ndarray, labels: np.ndarray,
                   grid: Iterable[float]) -> list[dict[str, object]]:
    """Counts and rates of the two-level rule at every (c1, c2) of grid x grid."""
    g = list(grid)
    return [{"c1": float(c1), "c2": float(c2), **two_level_counts(level1, level2, labels, c1, c2).to_dict()}
            for c1 in g for c2 in g]
