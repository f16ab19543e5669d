"""Backfill inputs and ledger, without Ray: manifests, folder walking, resume bookkeeping."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from engine.ray.ledger import DONE, FAILED, INDEXING, PENDING, Ledger, LedgerError
from engine.ray.manifest import ManifestError, iter_inputs, read_manifest, walk_videos


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    for rel in ("a/x.mp4", "a/b/y.MOV", "a/notes.txt", "c/z.mkv", "a/.hidden.mp4"):
        p = tmp_path / "videos" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"v" * 10)
    return tmp_path / "videos"


def test_walk_finds_videos_by_extension_in_sorted_order(tree: Path):
    got = [Path(p).relative_to(tree).as_posix() for p in walk_videos(tree)]
    assert got == ["a/x.mp4", "a/b/y.MOV", "c/z.mkv"]   # a folder's files, then its sub-folders


def test_text_csv_parquet_manifests(tree: Path, tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    want = [str(tree / "a/x.mp4"), str(tree / "c/z.mkv")]
    txt = tmp_path / "list.txt"
    txt.write_text(f"# comment\n\nvideos/a/x.mp4\n{tree / 'c/z.mkv'}\n")   # relative to the manifest's folder
    assert list(read_manifest(txt)) == want
    csvf = tmp_path / "list.csv"
    csvf.write_text("id,Path,label\n1,videos/a/x.mp4,q\n2," + str(tree / "c/z.mkv") + ",r\n")
    assert list(read_manifest(csvf)) == want
    pqf = tmp_path / "list.parquet"
    pq.write_table(pa.table({"path": ["videos/a/x.mp4", str(tree / "c/z.mkv")], "n": [1, 2]}), pqf)
    assert list(read_manifest(pqf)) == want
    assert list(iter_inputs(txt, [tree / "c"])) == want + [str(tree / "c/z.mkv")]


def test_manifest_errors_are_one_line(tmp_path: Path):
    bad = tmp_path / "x.csv"
    bad.write_text("name,size\nfoo,1\n")
    with pytest.raises(ManifestError, match=r"x\.csv: no path column"):
        list(read_manifest(bad))
    with pytest.raises(ManifestError, match="no such file"):
        list(read_manifest(tmp_path / "missing.txt"))
    notpq = tmp_path / "y.parquet"
    notpq.write_text("hello")
    with pytest.raises(ManifestError, match="not a Parquet file"):
        list(read_manifest(notpq))


def test_ledger_skips_done_redoes_changed_and_names_uniquely(tree: Path, tmp_path: Path):
    x, y, z = str(tree / "a/x.mp4"), str(tree / "a/b/y.MOV"), str(tree / "c/z.mkv")
    dup = tree / "c/x.mp4"
    dup.write_bytes(b"w" * 10)
    led = Ledger(tmp_path / "l.sqlite", {"mode": "exact"})
    run = led.new_run()
    res = led.scan([x, y, z, str(dup), x, str(tree / "gone.mp4")], run)
    assert (res.listed, res.todo, res.skipped, res.missing) == (5, 4, 0, 1)
    items = {i.path: i for i in led.pending(run)}
    assert items[x].name == "x" and items[str(dup)].name.startswith("x-")   # stems collide: a suffix
    assert led.failures(run) == [(str(tree / "gone.mp4"), "unreadable", "no such file")]
    with led.transaction():
        led.set_done([items[x].id, items[y].id], {items[x].id: (10, 0.1)})
        led.set_failed(items[z].id, "decode", "not a video file")
        led.set_indexing([items[str(dup)].id], led.next_batch(), {})
    led.close()

    led = Ledger(tmp_path / "l.sqlite", {"mode": "exact"})
    run = led.new_run()
    time.sleep(0.01)
    os.utime(y, ns=(time.time_ns(), time.time_ns() + 10**9))   # y changed since it was hashed
    res = led.scan([x, y, z, str(dup)], run)
    assert (res.listed, res.todo, res.skipped) == (4, 3, 1)
    assert sorted(i.path for i in led.pending(run)) == sorted([y, z])          # failed ones are retried
    assert [i.path for i in led.indexing(run)] == [str(dup)]
    assert {i.name for i in led.pending(run)} == {"y", "z"}                      # names are kept
    assert led.counts(run) == {DONE: 1, PENDING: 2, INDEXING: 1}
    assert FAILED not in led.counts(run)
    led.close()
    with pytest.raises(LedgerError, match="made with other settings .*mode: 'exact' -> 'fast'"):
        Ledger(tmp_path / "l.sqlite", {"mode": "fast"})


def test_one_driver_per_ledger(tmp_path: Path):
    first = Ledger(tmp_path / "l.sqlite", lock=True)
    with pytest.raises(LedgerError, match="another backfill is running with this ledger"):
        Ledger(tmp_path / "l.sqlite", lock=True)
    Ledger(tmp_path / "l.sqlite").close()      # readers do not lock
    first.close()
    Ledger(tmp_path / "l.sqlite", lock=True).close()
