"""The int8 level-2 store: read-back error, level-2 within the proven bound, CPU scoring as read."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.index import IndexCorruptError, VideoIndex, int8
from engine.index.level2 import PairScorer
from engine.synthetic import perturbed_features


def _rows(f):
    return np.stack([f.cos, f.sin])


def test_quantize_round_trip_is_within_half_a_step(real_feats):
    rows = np.stack([_rows(f) for f in real_feats[:4]])
    rec = int8.quantize(rows)
    assert rec.shape == (4, 66_560) and rec.dtype == np.uint8
    back = int8.dequantize(rec, rows.shape[1:])
    q, s = int8.split(rec, rows.shape[1:])
    assert np.all(np.abs(back - rows) <= s[..., None] / 2 * (1 + 1e-6) + 1e-12)
    assert np.all(back[:, 1, :, 0] == 0)          # the zero sin blocks of j = 0 stay exactly zero
    eps = int8.row_error(rows)
    assert np.all(eps > 0) and np.all(eps <= int8.worst_case_eps(256))


def test_level2_from_int8_within_its_bound(tmp_path, real_feats):
    feats = list(real_feats) + perturbed_features(real_feats[:15], 30, np.full(30, 0.4, np.float32), seed=2)
    eps = {f.name: float(int8.row_error(_rows(f))[0]) for f in feats}
    got = {}
    for store in ("fp32", "int8"):
        ix = VideoIndex.create(tmp_path / store, shards=2, store=store, device="cpu")
        ix.add(feats)
        got[store] = {(m.needle, m.id): m.level2 for ms in ix.query(feats, -1, -1) for m in ms}
    assert len(got["int8"]) == len(feats) ** 2
    worst = 0.0
    for key, ref in got["fp32"].items():
        err = abs(got["int8"][key] - ref)
        assert err <= int8.level2_bound(eps[key[1]]), key      # one side (the stored candidate) int8
        worst = max(worst, err / int8.level2_bound(eps[key[1]]))
    assert 0 < worst < 1


def test_cpu_scoring_from_fp16_and_int8_as_read_equals_widened_rows(real_feats):
    scorer = PairScorer(real_feats[0].params, torch.device("cpu"))
    needles = real_feats[:3]
    n_cos = torch.from_numpy(np.stack([f.cos for f in needles]))
    n_sin = torch.from_numpy(np.stack([f.sin for f in needles]))
    rows = np.stack([_rows(f) for f in real_feats])
    pn = np.repeat(np.arange(3), len(rows))
    ps = np.tile(np.arange(len(rows)), 3)
    for raw in (rows.astype(np.float16), int8.quantize(rows)):
        a, oa = scorer.score_raw(n_cos, n_sin, pn, ps, raw, 0.5)
        b, ob = scorer.score(n_cos, n_sin, pn, ps, scorer.rows_to_device(raw), 0.5)
        assert np.array_equal(np.isnan(a), np.isnan(b)) and np.nanmax(np.abs(a - b)) < 1e-5
        assert np.array_equal(oa[~np.isnan(a)], ob[~np.isnan(b)])


def test_a_corrupt_int8_row_is_caught(tmp_path, real_feats):
    ix = VideoIndex.create(tmp_path / "q", shards=1, store="int8", device="cpu")
    ix.add(real_feats[:3])
    store = next((tmp_path / "q").glob("shard-000/*.store"))
    data = bytearray(store.read_bytes())
    assert len(data) == 3 * 66_560
    data[66_560 + 65_600] ^= 0x40            # a scale byte of row 1
    store.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match="checksum mismatch"):
        VideoIndex(tmp_path / "q", device="cpu").verify()
