import numpy as np
import pytest

from engine.features import FeatureBatch
from engine.scoring import IncompatibleError, Scorer, score_one_to_many, score_pair
from engine.tmkfile import read_tmk
from kernels.params import TmkParams


@pytest.fixture(scope="module")
def feats(ref_tmks):
    return {p.name: read_tmk(p) for s, p in ref_tmks.items() if s != "test-padded-dimensions"}


def test_all_105_reference_pairs_within_2e6(feats, ref_pairs):
    assert len(ref_pairs) == 105
    scorer = Scorer(next(iter(feats.values())).params, "cpu")
    worst = 0.0
    for l1, l2, a, b in ref_pairs:
        g1, g2, off = scorer.pair(feats[a], feats[b])
        worst = max(worst, abs(g1 - l1), abs(g2 - l2))
        assert off.shape == (4,) and (off >= 0).all()
    assert worst <= 2e-6


def test_one_to_many_matches_pairwise_and_respects_c1(feats):
    names = sorted(feats)
    batch = FeatureBatch.stack([feats[n] for n in names])
    needle = feats[names[0]]
    r = score_one_to_many(needle, batch, c1=0.9, device="cpu")
    for i, n in enumerate(names):
        l1, l2 = score_pair(needle, feats[n], device="cpu")
        assert r.level1[i] == pytest.approx(l1, abs=1e-7)
        if r.level1[i] >= 0.9:
            assert r.level2[i] == pytest.approx(l2, abs=1e-6)
        else:
            assert np.isnan(r.level2[i]) and (r.offsets[i] == -1).all()
    assert r.level2[0] == pytest.approx(1.0, abs=1e-6)


def test_incompatible_parameters_are_refused(feats):
    f = next(iter(feats.values()))
    other = type(f)(f.avg, f.cos, f.sin, f.frame_count, TmkParams(periods=(2731, 4391, 9767, 14000)), "odd")
    with pytest.raises(IncompatibleError, match="periods"):
        Scorer(f.params, "cpu").pair(f, other)
