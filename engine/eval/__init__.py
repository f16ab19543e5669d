"""Threshold research: labelled pairs, ROC / precision-recall metrics, plots and reports (`vmatch eval`).

* ``labels``: pairs CSV or groups folder -> LabelledSet;
* ``pipeline``: signatures of the items (videos hashed once) and level-1/level-2 of every pair;
* ``metrics``: ROC AUC, average precision, operating points, thresholds for a target FPR (numpy only);
* ``report``: summary.json, scores.csv, report.html; ``plots``: the PNGs (matplotlib, imported lazily).
"""
from __future__ import annotations

# The ``eval:`` section is typed with the other sections in engine.config (one loader).
from engine.config import EvalConfig

__all__ = ["EvalConfig"]
