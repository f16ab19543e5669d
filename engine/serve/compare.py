"""Level-1 and level-2 of one pair of signatures (POST /m/compare), with a cached CPU scorer."""
from __future__ import annotations

import threading

from engine.features import TmkFeatures
from engine.scoring import Scorer

_lock = threading.Lock()
_scorers: dict[object, Scorer] = {}


def compare_pair(a: TmkFeatures, b: TmkFeatures) -> tuple[float, float]:
    """(level-1, level-2) as `vmatch score` computes them, the first signal as the needle."""
    with _lock:
        sc = _scorers.get(a.params)
        if sc is None:
            sc = _scorers[a.params] = Scorer(a.params, "cpu")
    l1, l2, _ = sc.pair(a, b)
    return float(l1), float(l2)
