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
import torch

from engine.scoring import Scorer, check_compatible
from kernels import dihedral
from kernels.score import level1

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
    """Best-variant scores of one needle against many items (every variant of every allowed
    signature pair; level-1 as one matrix, level-2 as batched pairs where level-1 passes)."""

    def __init__(self, scorer: Scorer, transforms: Sequence[str] = dihedral.NAMES, pair_batch: int = 256) -> None:
        self.scorer, self.transforms, self.pair_batch = scorer, tuple(transforms), pair_batch
        self.searched = 0      # level-2 offset searches run (statistics)

    def one_to_many(self, needle: Signatures, items: Sequence[Signatures], c1: float = -1.0,
                    c2: float | None = None, choose: str = "level2") -> list[RobustResult | None]:
        """Per item, its best variant among those passing level-1 >= c1 (and level-2 >= c2 when
        given); None where no variant passes.  Level-2 is computed only where level-1 passes; with
        ``choose='min'`` also only for variants whose level-1 exceeds the item's best min(level-1,
        level-2) so far (min <= level-1, so the others cannot win: the same result, fewer searches)."""
        sc = self.scorer
        best: list[RobustResult | None] = [None] * len(items)
        variants = needle_variants(needle, self.transforms)
        if not items or not variants:
            return best
        for f, _, _ in variants:
            check_compatible(sc.params, f.params, f.name)
        v_avg = sc._t(np.stack([f.avg for f, _, _ in variants]))
        v_cos = sc._t(np.stack([f.cos for f, _, _ in variants]))
        v_sin = sc._t(np.stack([f.sin for f, _, _ in variants]))
        banks: dict[str, FeatureBatch] = {}
        cands: list[list[tuple[float, int, int, str, int]]] = [[] for _ in items]  # (l1, order, v, kind, row)
        order = 0
        for item_kind in (MAIN, BORDERS):
            idx = [i for i, it in enumerate(items) if item_kind == MAIN or it.borders is not None]
            if not idx:
                continue
            bank = banks[item_kind] = FeatureBatch.stack([kinds_of(items[i])[item_kind] for i in idx])
            check_compatible(sc.params, bank.params, "candidates")
            l1 = level1(v_avg.unsqueeze(1), sc._t(bank.avg).unsqueeze(0)).cpu().numpy()      # [V, B]
            for vi, (_, _, nk) in enumerate(variants):
                for r, i in enumerate(idx):
                    if (nk, item_kind) in signature_pairs(needle.borders is not None, items[i].borders is not None) \
                            and l1[vi, r] >= c1:
                        cands[i].append((float(l1[vi, r]), order, vi, item_kind, r))
                        order += 1
        if choose == "min":
            for c in cands:
                c.sort(key=lambda x: (-x[0], x[1]))
        pending = [list(reversed(c)) for c in cands]         # pop() takes the next candidate
        while True:
            todo: list[tuple[int, tuple[float, int, int, str, int]]] = []
            for i, pend in enumerate(pending):
                if choose == "min":
                    cur = best[i]
                    floor = -np.inf if cur is None else min(cur.level1, _nan_low(cur.level2))
                    while pend and not pend[-1][0] > floor and not (pend[-1][0] == floor and cur is not None
                                                                    and np.isnan(cur.level2)):
                        pend.clear()
                    if pend:
                        todo.append((i, pend.pop()))
                else:
                    todo += [(i, x) for x in reversed(pend)]
                    pend.clear()
            if not todo:
                break
            todo.sort(key=lambda t: t[1][1])                  # candidate order (item kind first)
            self.searched += len(todo)
            for kind in (MAIN, BORDERS):
                part = [t for t in todo if t[1][3] == kind]
                for s in range(0, len(part), self.pair_batch):
                    chunk = part[s:s + self.pair_batch]
                    pv = torch.tensor([x[2] for _, x in chunk], dtype=torch.int64, device=sc.device)
                    pb = np.array([x[4] for _, x in chunk], dtype=np.int64)
                    r, o = sc._kernel.level2(v_cos[pv], v_sin[pv], sc._t(banks[kind].cos[pb]),
                                             sc._t(banks[kind].sin[pb]))
                    l2s, offs = r.cpu().numpy(), o.cpu().numpy()
                    for k, (i, (a, _, vi, _, _)) in enumerate(chunk):
                        b = float(l2s[k])
                        if c2 is not None and not b >= c2:
                            continue
                        cur = best[i]
                        if better((a, b), None if cur is None else (cur.level1, cur.level2), choose):
                            _, t, nk = variants[vi]
                            best[i] = RobustResult(a, b, offs[k], variant_name(t, nk, kind))
        return best
