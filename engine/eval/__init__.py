"""Threshold research: labelled pairs, ROC / precision-recall metrics, plots and reports (`vmatch eval`).

* ``labels``: pairs CSV or groups folder -> LabelledSet;
* ``pipeline``: signatures of the items (videos hashed once) and level-1/level-2 of every pair;
* ``metrics``: ROC AUC, average precision, operating points, thresholds for a target FPR (numpy only);
* ``report``: summary.json, scores.csv, report.html; ``plots``: the PNGs (matplotlib, imported lazily).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from engine.eval.metrics import DEFAULT_GRID


@dataclass
class EvalConfig:
    """The ``eval:`` section of the configuration (flags override it)."""

    c1: float = 0.7
    c2: float = 0.7
    target_fpr: float = 1e-3
    grid: list[float] = field(default_factory=lambda: list(DEFAULT_GRID))
    plots: bool = True
    listed: int = 10
    cache_dir: str | None = None

    @classmethod
    def from_section(cls, values: dict[str, Any], where: str = "eval") -> "EvalConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        cfg = dataclasses.replace(cls(), **values)
        try:
            cfg.c1, cfg.c2, cfg.target_fpr = float(cfg.c1), float(cfg.c2), float(cfg.target_fpr)
            cfg.grid = [float(g) for g in cfg.grid]
            cfg.listed = int(cfg.listed)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None
        if not 0 < cfg.target_fpr < 1:
            raise ValueError(f"{where}: target_fpr must be between 0 and 1 (got {cfg.target_fpr})")
        return cfg


__all__ = ["EvalConfig"]
