"""Fixtures of the index tests: real and synthetic signatures and a brute-force reference scan."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import pytest
import torch

from engine.features import FeatureBatch, TmkFeatures
from engine.index.segment import unit_average
from engine.synthetic import mixed_strengths, perturbed_features
from engine.scoring import Scorer
from engine.tmkfile import read_many

BruteForce = dict[str, dict[str, tuple[float, float]]]


@pytest.fixture(autouse=True, scope="package")
def one_torch_thread():
    """Small tensors: one intra-op thread avoids spin-wait stalls on a busy 2-core CI box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def real_feats(ref_tmks: dict[str, Path]) -> list[TmkFeatures]:
    return read_many(list(ref_tmks.values()))


@pytest.fixture(scope="session")
def synth_feats(real_feats: list[TmkFeatures]) -> list[TmkFeatures]:
    """90 perturbed copies: a third near copies (so both levels pass often), the rest far."""
    return perturbed_features(real_feats[:15], 90, mixed_strengths(90, 0.35, seed=3, near=0.15), seed=5)


def brute_force(needles: Sequence[TmkFeatures], items: Sequence[TmkFeatures], c1: float = -1.0,
                c2: float = 0.0) -> BruteForce:
    """tmk-query semantics: pure averages L2-normalised on load, L1 >= c1 then L2 >= c2 (inclusive)."""
    unit = [dataclasses.replace(f, avg=unit_average(f.avg)) for f in items]
    batch = FeatureBatch.stack(unit)
    scorer = Scorer(items[0].params, "cpu")
    out: BruteForce = {}
    for n in needles:
        r = scorer.one_to_many(dataclasses.replace(n, avg=unit_average(n.avg)), batch, c1)
        out[n.name] = {f.name: (float(a), float(b)) for f, a, b in zip(items, r.level1, r.level2)
                       if a >= c1 and b >= c2}
    return out


def assert_same(got: Sequence, want: BruteForce, names: Sequence[str], tol: float = 1e-5) -> None:
    for name, ms in zip(names, got):
        g = {m.id: (m.level1, m.level2) for m in ms}
        w = want[name]
        assert set(g) == set(w), f"{name}: extra {sorted(set(g) - set(w))} missing {sorted(set(w) - set(g))}"
        for k in w:
            assert abs(g[k][0] - w[k][0]) <= tol and abs(g[k][1] - w[k][1]) <= tol, (name, k, g[k], w[k])
        assert [m.level2 for m in ms] == sorted((m.level2 for m in ms), reverse=True)



def passing(full: BruteForce, c1: float, c2: float) -> BruteForce:
    """The pairs of a full scan that pass both thresholds."""
    return {n: {k: v for k, v in d.items() if v[0] >= c1 and v[1] >= c2} for n, d in full.items()}


@pytest.fixture(scope="session")
def real_full(real_feats: list[TmkFeatures]) -> BruteForce:
    """Every pair of the real hashes, scored by the brute-force scan."""
    return brute_force(real_feats, real_feats)
