"""IndexWriter: a failed add or compact (disk full at the commit, a segment that cannot be
finished) leaves the index as it was and no file that its manifest does not list (_rollback)."""
from __future__ import annotations

import errno
import os

import pytest

from engine.errors import StorageError
from engine.index import segment, writer
from engine.index.snapshot import IndexSnapshot
from engine.index.writer import LOCK_NAME, IndexWriter
from engine.synthetic import random_signatures


def _files(root) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != LOCK_NAME)


def _seen(root, needles) -> tuple:
    snap = IndexSnapshot.open(root, device="cpu")
    return snap.generation, snap.ids(), [[(m.id, m.level2) for m in ms] for ms in snap.query(needles, 0.5, 0.5)]


@pytest.fixture
def full_index(tmp_path):
    feats = random_signatures(10, seed=31)
    for i, f in enumerate(feats):
        f.name = f"w{i}"
    w = IndexWriter.create(tmp_path / "ix", shards=3)
    w.add(feats[:4])
    w.add(feats[4:6])
    w.remove(["w1"])
    return w, feats


def _disk_full(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["manifest", "segment"])
@pytest.mark.parametrize("op", ["add", "add_paths", "compact"])
def test_a_failed_write_leaves_the_index_and_no_orphans(full_index, where, op, tmp_path, monkeypatch):
    w, feats = full_index
    paths = []
    if op == "add_paths":                       # the .tmk path of add (its own loader)
        from engine.tmkfile import write_tmk
        for f in feats[6:]:
            paths.append(tmp_path / f"{f.name}.tmk")
            write_tmk(paths[-1], f)
    before, files = _seen(w.root, feats), _files(w.root)
    if where == "manifest":                     # every segment finished, then the commit fails
        monkeypatch.setattr(writer, "write_manifest", _disk_full)
    else:                                       # the second segment of the write cannot be finished
        real, calls = segment.SegmentWriter.finish, []

        def finish(self, *a, **k):
            calls.append(self.rel)
            if len(calls) == 2:
                _disk_full()
            return real(self, *a, **k)
        monkeypatch.setattr(segment.SegmentWriter, "finish", finish)
    with pytest.raises(StorageError, match="No space left on device; nothing was changed"):
        {"add": lambda: w.add(feats[6:]), "add_paths": lambda: w.add_paths(paths), "compact": w.compact}[op]()
    monkeypatch.undo()
    assert _files(w.root) == files              # nothing left behind by the failed writer
    assert _seen(w.root, feats) == before and w.snapshot().ids() == before[1]
    IndexSnapshot.open(w.root, device="cpu").verify()
    assert (w.compact() if op == "compact" else w.add(feats[6:])) > 0     # the next write goes through
    assert "w1" not in w.snapshot() and len(w.snapshot()) == (5 if op == "compact" else 9)


def test_a_failed_write_keeps_its_own_error(full_index, monkeypatch, caplog):
    """The cleanup failing too (e.g. the mount went read-only) does not hide why the write failed."""
    w, feats = full_index
    failed: list[bool] = []

    def commit(*_a):
        failed.append(True)
        _disk_full()
    monkeypatch.setattr(writer, "write_manifest", commit)
    monkeypatch.setattr(IndexWriter, "_remove_orphans", lambda self, m: _disk_full() if failed else None)
    with pytest.raises(StorageError, match="No space left"):
        w.add(feats[6:])
    assert "could not remove the files of the failed write" in caplog.text
