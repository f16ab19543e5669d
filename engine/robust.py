"""``--robust`` matching: every mirror and quarter turn of the needle, and border-cropped signatures.

A pair of videos is scored under several *variants*, and its result is its best variant:

* the 8 transforms of kernels/dihedral.py applied to the needle's features (a mirrored or
  rotated copy matches its original at level-1 and level-2 >= 0.999 under the right transform;
  transforming one side covers both directions, the transforms being orthogonal);
* each of those for every signature of the needle (the reference one, ``main``, and the
  border-cropped one, ``borders``, where engine/borders.py found borders) against every
  signature of the item, except one: when **both** videos have borders their two uncropped
  signatures are not compared, since bars shared by two different films are what makes
  them look alike (docs/evaluation.md); their cropped contents are compared instead.

Variant names: the transform (``hflip``, ``rot90``, ...; nothing for the identity), then
``borders`` when the needle's cropped signature was used, then ``match-borders`` when the
item's was, joined by ``+``; ``identity`` when none applies.  Example: ``hflip+borders`` is the
mirrored cropped content of the needle against the item as hashed.  A transform names what maps
the needle onto the match: ``rot90`` means the match is the needle turned 90 degrees clockwise.

Choosing the best variant: with thresholds (query, score, cluster), among the variants passing
both levels the highest level-2 (ties: level-1, then the order above); without (``vmatch
eval``, which needs one score pair per pair) the highest min(level-1, level-2), the quantity
the two-level ROC ranks by, ties broken by level-2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from engine.features import FeatureBatch, Signatures, TmkFeatures
from engine.scoring import Scorer
from kernels import dihedral

MAIN, BORDERS = "main", "borders"


def variant_name(transform: str, needle_kind: str = MAIN, item_kind: str = MAIN) -> str:
    parts = [] if transform == "identity" else [transform]
    if needle_kind == BORDERS:
        parts.append("borders")
    if item_kind == BORDERS:
        parts.append("match-borders")
    return "+".join(parts) or "identity"


def signature_pairs(needle_has_borders: bool, item_has_borders: bool) -> list[tuple[str, str]]:
    """(needle kind, item kind) pairs compared; see the module docstring for the one left out."""
    nk = [MAIN, BORDERS] if needle_has_borders else [MAIN]
    ik = [MAIN, BORDERS] if item_has_borders else [MAIN]
    both = needle_has_borders and item_has_borders
    return [(a, b) for a in nk for b in ik if not (both and a == MAIN and b == MAIN)]


def transformed(f: TmkFeatures, name: str) -> TmkFeatures:
    """The signature of the video mirrored / rotated by ``name``, from the stored one."""
    if name == "identity":
        return f
    return TmkFeatures(dihedral.apply(f.avg, name), dihedral.apply(f.cos, name), dihedral.apply(f.sin, name),
                       f.frame_count, f.params, f.name)


def kinds_of(s: Signatures) -> dict[str, TmkFeatures]:
    return {MAIN: s.main, **({BORDERS: s.borders} if s.borders is not None else {})}


def needle_variants(s: Signatures, transforms: Sequence[str] = dihedral.NAMES
                    ) -> list[tuple[TmkFeatures, str, str]]:
    """(features, transform, needle kind) of every variant of a needle, main signature first."""
    out = []
    for kind, f in kinds_of(s).items():
        avg = dihedral.apply_all(f.avg, transforms)
        cos = dihedral.apply_all(f.cos, transforms)
        sin = dihedral.apply_all(f.sin, transforms)
        out += [(TmkFeatures(avg[i], cos[i], sin[i], f.frame_count, f.params, f.name), t, kind)
                for i, t in enumerate(transforms)]
    return out


@dataclass
class RobustResult:
    """The best variant of one pair (level-2 NaN, offsets -1 when level-2 was not computed)."""

    level1: float
    level2: float
    offsets: np.ndarray
    variant: str


def _nan_low(x: float) -> float:
    return float("-inf") if np.isnan(x) else float(x)


def better(a: tuple[float, float], b: tuple[float, float] | None, choose: str) -> bool:
    """Whether scores a = (level-1, level-2) beat b under the rule ``choose`` ('level2' or 'min')."""
    if b is None:
        return True
    if choose == "min":
        ka = (min(_nan_low(a[0]), _nan_low(a[1])), _nan_low(a[1]))
        kb = (min(_nan_low(b[0]), _nan_low(b[1])), _nan_low(b[1]))
    else:
        ka = (_nan_low(a[1]), _nan_low(a[0]))
        kb = (_nan_low(b[1]), _nan_low(b[0]))
    return ka > kb


class RobustScorer:
    """Best-variant scores of one needle against many items (brute force over the variants)."""

    def __init__(self, scorer: Scorer, transforms: Sequence[str] = dihedral.NAMES) -> None:
        self.scorer, self.transforms = scorer, tuple(transforms)

    def one_to_many(self, needle: Signatures, items: Sequence[Signatures], c1: float = -1.0,
                    c2: float | None = None, choose: str = "level2") -> list[RobustResult | None]:
        """Per item, its best variant among those passing level-1 >= c1 (and level-2 >= c2 when
        given); None where no variant passes.  Level-2 is computed only where level-1 passes."""
        best: list[RobustResult | None] = [None] * len(items)
        variants = needle_variants(needle, self.transforms)
        for item_kind in (MAIN, BORDERS):
            idx = [i for i, it in enumerate(items) if item_kind == MAIN or it.borders is not None]
            if not idx:
                continue
            bank = FeatureBatch.stack([kinds_of(items[i])[item_kind] for i in idx])
            for feats, t, nkind in variants:
                allowed = [(nkind, item_kind) in signature_pairs(needle.borders is not None,
                                                                  items[i].borders is not None) for i in idx]
                if not any(allowed):
                    continue
                r = self.scorer.one_to_many(feats, bank, c1)
                name = variant_name(t, nkind, item_kind)
                for k, i in enumerate(idx):
                    l1, l2 = float(r.level1[k]), float(r.level2[k])
                    if not allowed[k] or not l1 >= c1 or (c2 is not None and not l2 >= c2):
                        continue
                    cur = best[i]
                    if better((l1, l2), None if cur is None else (cur.level1, cur.level2), choose):
                        best[i] = RobustResult(l1, l2, r.offsets[k], name)
        return best
