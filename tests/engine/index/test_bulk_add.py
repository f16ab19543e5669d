"""The bulk add of `.tmk` files and the read-ahead of a query (issue 13): the same bytes as the
one-signature-at-a-time path, nothing added on a bad file, and checks that still catch corruption."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.errors import FormatError
from engine.index import IndexCorruptError, VideoIndex, int8
from engine.index import segment
from engine.index.manifest import read_manifest
from engine.synthetic import mixed_strengths, perturbed_features
from engine.tmkfile import write_tmk


@pytest.fixture(scope="module")
def bank(tmp_path_factory, real_feats) -> list[Path]:
    """41 `.tmk` files (perturbed reference hashes, one of them with a zero sin block)."""
    d = tmp_path_factory.mktemp("bulk")
    feats = perturbed_features(real_feats[:15], 41, mixed_strengths(41, 0.3, seed=7), seed=8)
    feats[3].sin[1, 2] = 0.0
    feats[4].cos[0, 1, :7] = -0.0
    paths = []
    for i, f in enumerate(feats):
        p = d / f"item-{i:03d}.tmk"
        write_tmk(p, f)
        paths.append(p)
    return paths


def _segments(root: Path) -> dict[int, dict[str, object]]:
    """Per shard: level-1 bytes, store bytes and id table (time_added aside) of its one segment."""
    m = read_manifest(root)
    out = {}
    for sid, segs in enumerate(m.segments):
        if not segs:
            continue
        (seg,) = segs
        cols = json.loads((root / seg.ids.name).read_bytes())
        cols.pop("time_added")
        out[sid] = {"l1": (root / seg.l1.name).read_bytes(), "store": (root / seg.store.name).read_bytes(),
                    "cols": cols, "count": seg.count}
    return out


@pytest.mark.parametrize("store", ["fp32", "fp16", "int8"])
def test_bulk_add_writes_what_the_per_signature_path_writes(tmp_path, bank, store, monkeypatch):
    from engine.tmkfile import read_tmk

    # small chunks: many chunks in flight across the two loader threads, several per shard
    real = segment.add_tmk_files
    monkeypatch.setattr(segment, "add_tmk_files", lambda *a, **k: real(*a, **{**k, "chunk": 5}))
    bulk = VideoIndex.create(tmp_path / "bulk", shards=3, store=store, device="cpu")
    assert bulk.add_paths(bank) == len(bank)
    one = VideoIndex.create(tmp_path / "one", shards=3, store=store, device="cpu")
    one.add([read_tmk(p) for p in bank], sources=[str(p) for p in bank])   # `prepare` per signature
    a, b = _segments(tmp_path / "bulk"), _segments(tmp_path / "one")
    assert a.keys() == b.keys() and sum(s["count"] for s in a.values()) == len(bank)
    for sid in a:
        assert a[sid] == b[sid], sid
    assert [m.id for m in bulk.query([read_tmk(bank[5])], -1, -1)[0]] == \
        [m.id for m in one.query([read_tmk(bank[5])], -1, -1)[0]]


def test_a_bad_file_in_a_bulk_add_adds_nothing_and_leaves_no_files(tmp_path, bank):
    files = [tmp_path / p.name for p in bank]
    for p, q in zip(bank, files):
        q.write_bytes(p.read_bytes())
    files[23].write_bytes(files[23].read_bytes()[:-10])        # truncated, in a later chunk
    ix = VideoIndex.create(tmp_path / "ix", shards=2, store="int8", device="cpu")
    ix.add_paths(files[:4])
    before = sorted(p.name for p in (tmp_path / "ix").rglob("*"))
    with pytest.raises(FormatError) as e:
        ix.add_paths(files[4:])
    assert str(files[23]) in str(e.value) and "truncated body" in str(e.value)
    assert len(VideoIndex(tmp_path / "ix", device="cpu")) == 4
    assert sorted(p.name for p in (tmp_path / "ix").rglob("*")) == before   # the failed add removed its files


def test_border_sidecars_of_tmk_only_adds_are_stored(tmp_path, bank):
    main, side = tmp_path / "a.tmk", tmp_path / "a.borders.tmk"
    main.write_bytes(bank[0].read_bytes())
    side.write_bytes(bank[1].read_bytes())
    other = tmp_path / "b.tmk"
    other.write_bytes(bank[2].read_bytes())
    ix = VideoIndex.create(tmp_path / "ix", shards=2, device="cpu")
    assert ix.add_paths([main, side, other]) == 2
    assert sorted(ix.ids()) == ["a", "b"]
    table = ix.border_table()
    assert list(table.row_of) == ["a"] and table.features("a") is not None


def test_quantize_into_from_parts_equals_the_formula(bank):
    from engine.tmkfile import read_batch

    b = read_batch(bank[:9])
    rows = np.stack([b.cos, b.sin], axis=1)
    scale = (np.abs(rows).max(axis=-1) / np.float32(127)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.clip(np.rint(rows / safe[..., None]), -127, 127).astype(np.int8)
    want = np.concatenate([q.reshape(9, -1).view(np.uint8), scale.reshape(9, -1).view(np.uint8)], axis=1)
    for block in (1, 4, 8):
        got = int8.quantize_into((b.cos, b.sin), np.empty((12, want.shape[1]), np.uint8), block)
        assert got.shape == want.shape and np.array_equal(got, want), block
    assert np.array_equal(int8.quantize(rows), want) and np.array_equal(int8.quantize(rows[3]), want[3])
    zero = int8.split(want, rows.shape[1:])[1][3, 1, 1, 2]     # the zeroed sin block: scale +0.0
    assert zero == 0 and not np.signbit(zero)


def test_read_ahead_is_adopted_and_still_reports_a_corrupt_row(tmp_path, bank):
    from engine.tmkfile import read_tmk

    root = tmp_path / "ix"
    ix = VideoIndex.create(root, shards=2, device="cpu")
    ix.add_paths(bank)
    needle = read_tmk(bank[7])
    want = [(m.id, m.level1, m.level2) for m in VideoIndex(root, device="cpu", batch_rows=4).query([needle], -1, -1)[0]]
    from engine.cli import main
    segment._AHEAD.clear()
    assert main(["query", str(root), str(tmp_path / "missing.tmk"), "--c1", "-1"]) != 0   # fails after the read-ahead
    assert not segment._AHEAD                                  # which it then forgets
    m = read_manifest(root)
    segs = [s for shard in m.segments for s in shard]
    assert segment.open_ahead(root, segs, m.params, m.store, True, precheck_all=True) == len(bank)
    assert len(segment._AHEAD) == len(segs) and all(r._prechecked.all() for r in segment._AHEAD.values())
    ahead = VideoIndex(root, device="cpu", batch_rows=4)
    got = [(x.id, x.level1, x.level2) for x in ahead.query([needle], -1, -1)[0]]
    assert got == want and not segment._AHEAD                 # adopted, same answers
    readers = [r for sh in ahead._state() for r in sh.readers]
    assert all(r._prechecked is not None and not r._prechecked.any() for r in readers)  # each check used once
    # a row corrupted on disk before the read-ahead is still reported, with the usual message
    seg = segs[0]
    with open(root / seg.store.name, "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x7f" * 8)
    with pytest.raises(IndexCorruptError) as plain:
        VideoIndex(root, device="cpu").query([needle], -1, -1)
    segment.open_ahead(root, segs, m.params, m.store, True, precheck_all=True)
    with pytest.raises(IndexCorruptError) as after:
        VideoIndex(root, device="cpu").query([needle], -1, -1)
    assert str(after.value) == str(plain.value) and "row 0" in str(after.value)
    segment._AHEAD.clear()


def test_scoring_in_two_workers_equals_one_worker(tmp_path, real_feats, synth_feats, monkeypatch):
    import engine.index.index as index_mod

    for store in ("fp32", "int8"):
        root = tmp_path / store
        VideoIndex.create(root, shards=1, store=store, device="cpu").add(synth_feats)
        needles = real_feats[:3]
        got = {}
        for cores in (1, 2):
            monkeypatch.setattr(index_mod.os, "cpu_count", lambda: cores)
            res = VideoIndex(root, device="cpu", batch_rows=7).query(needles, -1, 0.3)   # 13 batches
            got[cores] = [[(m.id, m.level1, m.level2, m.offsets) for m in ms] for ms in res]
        assert got[1] == got[2] and any(got[1])
