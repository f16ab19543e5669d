"""Metrics against independent brute-force computations (random sets with ties and NaN, and the
reference sample set scored by the reference tool)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from engine.eval import metrics

from .conftest import family


def brute_auc(s, y):
    pos = [a for a, l in zip(s, y) if l]
    neg = [b for b, l in zip(s, y) if not l]
    win = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return win / (len(pos) * len(neg))


def brute_counts(s, y, t):
    tp = sum(1 for a, l in zip(s, y) if l and a >= t)
    fp = sum(1 for a, l in zip(s, y) if not l and a >= t)
    return tp, fp


def brute_ap(s, y):
    npos = sum(y)
    ap, prev_r = 0.0, 0.0
    for t in sorted(set(s), reverse=True):
        tp, fp = brute_counts(s, y, t)
        r = tp / npos
        ap += (r - prev_r) * tp / (tp + fp)
        prev_r = r
    return ap


def random_set(seed, n=120):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    y[:2] = [True, False]
    s = np.where(y, rng.normal(0.75, 0.15, n), rng.normal(0.4, 0.2, n))
    s = np.round(s, 2)  # ties
    return s, y


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_ap_match_brute_force(seed):
    s, y = random_set(seed)
    assert metrics.roc_auc(s, y) == pytest.approx(brute_auc(s.tolist(), y.tolist()), abs=1e-12)
    assert metrics.average_precision(s, y) == pytest.approx(brute_ap(s.tolist(), y.tolist()), abs=1e-12)


def test_nan_never_matches():
    s = np.array([np.nan, 0.9, 0.1, np.nan])
    y = np.array([True, True, False, False])
    c = metrics.counts_at(s, y, -1.0)
    assert (c.tp, c.fp, c.tn, c.fn) == (1, 1, 1, 1)
    # NaN is ranked below everything: the NaN match loses to 0.1, ties with the NaN non-match
    assert metrics.roc_auc(s, y) == pytest.approx(brute_auc([-math.inf, 0.9, 0.1, -math.inf], y.tolist()))


def test_counts_inclusive_and_undefined_rates():
    s, y = np.array([0.7, 0.69999]), np.array([True, False])
    c = metrics.counts_at(s, y, 0.7)
    assert (c.tp, c.fp, c.tn, c.fn) == (1, 0, 1, 0)
    none = metrics.counts_at(s, y, 2.0)
    assert none.precision is None and none.tpr == 0.0 and none.fpr == 0.0
    with pytest.raises(ValueError, match="both matching and non-matching"):
        metrics.roc_auc(s, np.array([True, True]))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("target", [0.0, 0.02, 0.1, 0.5])
def test_threshold_for_fpr_is_the_best_threshold(seed, target):
    s, y = random_set(seed)
    got = metrics.threshold_for_fpr(s, y, target)
    nneg, npos = int((~y).sum()), int(y.sum())
    best = None
    for t in sorted(set(s.tolist()) | {math.inf}):
        tp, fp = brute_counts(s.tolist(), y.tolist(), t)
        if fp <= target * nneg and (best is None or tp > best[1]):
            best = (t, tp, fp)
    assert got["tp"] == best[1] and got["fp"] <= target * nneg
    assert got["tpr"] == pytest.approx(best[1] / npos)
    if best[0] != math.inf:
        assert got["threshold"] == best[0]  # the lowest threshold with that TPR


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("target", [0.0, 0.05, 0.2])
def test_two_level_for_fpr_matches_exhaustive_search(seed, target):
    rng = np.random.default_rng(100 + seed)
    n = 70
    y = rng.random(n) < 0.45
    l1 = np.round(np.where(y, rng.normal(0.75, 0.15, n), rng.normal(0.45, 0.2, n)), 2)
    l2 = np.round(np.clip(l1 + rng.normal(0, 0.12, n), -1, 1), 2)
    got = metrics.two_level_for_fpr(l1, l2, y, target)
    nneg = int((~y).sum())
    best_tp = 0
    for c1 in set(l1.tolist()):
        for c2 in set(l2.tolist()):
            acc = (l1 >= c1) & (l2 >= c2)
            tp, fp = int((acc & y).sum()), int((acc & ~y).sum())
            if fp <= target * nneg:
                best_tp = max(best_tp, tp)
    assert got["tp"] == best_tp
    assert got["fp"] <= target * nneg
    acc = (l1 >= got["c1"]) & (l2 >= got["c2"])
    assert int((acc & y).sum()) == got["tp"] and int((acc & ~y).sum()) == got["fp"]


def test_curves_start_at_origin_and_end_at_one():
    s, y = random_set(7)
    fpr, tpr, thr = metrics.roc_curve(s, y)
    assert (fpr[0], tpr[0], thr[0]) == (0.0, 0.0, math.inf) and fpr[-1] == 1.0 and tpr[-1] == 1.0
    prec, rec, _ = metrics.pr_curve(s, y)
    assert rec[0] == 0.0 and rec[-1] == 1.0 and prec[-1] == pytest.approx(y.mean())


def test_reference_pair_scores_rates(ref):
    """Rates on the 105 reference pairs (reference tool's printed scores, family labels) by plain counting."""
    rows = [ln.split() for ln in (ref / "pair-scores.txt").read_text().splitlines() if ln.strip()]
    l1 = np.array([float(r[0]) for r in rows])
    l2 = np.array([float(r[1]) for r in rows])
    y = np.array([family(r[2]) == family(r[3]) for r in rows])
    assert len(rows) == 105 and y.sum() == 46
    for c1, c2 in itertools.product((0.5, 0.7, 0.9), (0.5, 0.7, 0.9)):
        tp = sum(1 for a, b, l in zip(l1, l2, y) if l and a >= c1 and b >= c2)
        fp = sum(1 for a, b, l in zip(l1, l2, y) if not l and a >= c1 and b >= c2)
        c = metrics.two_level_counts(l1, l2, y, c1, c2)
        assert (c.tp, c.fp, c.fn, c.tn) == (tp, fp, 46 - tp, 59 - fp)
    assert metrics.roc_auc(l1, y) == brute_auc(l1.tolist(), y.tolist())
