"""One scoring core: Scorer (one-to-many) and the index's PairScorer (pairs) run the same kernel
(kernels.score.TmkScorer) and both can use its pruning bound; pruning changes no answer."""
from __future__ import annotations

import numpy as np
import torch

from engine.features import FeatureBatch
from engine.index.level2 import PairScorer
from engine.scoring import Scorer
from engine.synthetic import mixed_strengths, perturbed_features, random_signatures


def test_pruned_one_to_many_equals_the_full_scan_where_it_matters():
    torch.set_num_threads(1)
    base = random_signatures(3, seed=1)
    cands = perturbed_features(base, 40, mixed_strengths(40, 0.5, seed=2, near=0.1), seed=4)
    bank = FeatureBatch.stack(cands)
    s = Scorer(base[0].params, "cpu")
    full = s.one_to_many(base[0], bank)
    for c2 in (0.5, 0.8, 0.95):
        pruned = s.one_to_many(base[0], bank, c2=c2)
        keep = ~np.isnan(pruned.level2)
        assert np.all(full.level2[~keep] < c2)                       # only pairs that cannot pass are skipped
        assert np.array_equal(pruned.level2[keep], full.level2[keep])  # the others are the same scores
        assert np.array_equal(pruned.offsets[keep], full.offsets[keep])
        assert np.array_equal(pruned.level1, full.level1)
    assert np.isnan(s.one_to_many(base[0], bank, c2=0.95).level2).sum() > 0  # the bound did prune


def test_pairs_and_one_to_many_share_the_core():
    base = random_signatures(2, seed=7)
    bank = FeatureBatch.stack(perturbed_features(base, 6, np.full(6, 0.2), seed=1))
    s = Scorer(base[0].params, "cpu")
    ps = PairScorer(base[0].params, torch.device("cpu"))
    # on CPU the index scores with the numpy twin of the torch core: the same tables and bounds
    assert type(ps.kernel).__name__ == "TmkScorerNp" and type(s._kernel).__name__ == "TmkScorer"
    assert np.array_equal(ps.kernel._grid_cs, s._kernel._grid_cs.numpy())
    rows = torch.from_numpy(np.stack([bank.cos, bank.sin], 1))
    n_cos = torch.from_numpy(np.stack([base[0].cos]))
    n_sin = torch.from_numpy(np.stack([base[0].sin]))
    l2, offs = ps.score(n_cos, n_sin, np.zeros(6, np.int64), np.arange(6), ps.rows_to_device(rows))
    ref = s.one_to_many(base[0], bank)
    assert np.allclose(l2, ref.level2, atol=1e-6) and np.array_equal(offs, ref.offsets)
