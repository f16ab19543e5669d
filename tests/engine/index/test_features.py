import numpy as np
import pytest

from engine.index import VideoIndex
from engine.scoring import Scorer
from engine.tmkfile import read_tmk


@pytest.mark.parametrize("store", ["fp32", "fp16"])
def test_stored_signatures_come_back(tmp_path, ref_tmks, store):
    names = ["chair-19-sd-bar", "doorknob-hd-no-bar", "pattern-hd-no-bar"]
    VideoIndex.create(tmp_path / "ix", shards=2, store=store)
    ix = VideoIndex(tmp_path / "ix", device="cpu")
    ix.add_paths([ref_tmks[n] for n in names])
    got = ix.features(["doorknob-hd-no-bar", "chair-19-sd-bar"])
    orig = [read_tmk(ref_tmks[n]) for n in ("doorknob-hd-no-bar", "chair-19-sd-bar")]
    tol = 0 if store == "fp32" else 1e-3
    for g, o in zip(got, orig):
        assert g.name == o.name and g.frame_count == o.frame_count
        assert np.abs(g.cos - o.cos).max() <= tol and np.abs(g.sin - o.sin).max() <= tol
        assert np.allclose(g.avg, o.avg / np.linalg.norm(o.avg.astype(np.float64)), atol=1e-6)
    s = Scorer(orig[0].params, "cpu")
    l1, l2, _ = s.pair(got[0], got[1])
    r1, r2, _ = s.pair(orig[0], orig[1])
    assert abs(l1 - r1) < 1e-6 and abs(l2 - r2) < (1e-6 if store == "fp32" else 1e-3)
    with pytest.raises(KeyError, match="no item 'nope'"):
        ix.features(["nope"])
