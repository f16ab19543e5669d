"""Crash safety and bad input: kill -9 during add, corrupt or truncated files, foreign parameters."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.features import TmkFeatures
from engine.index import IndexCorruptError, IndexFormatError, VideoIndex
from engine.index.manifest import MANIFEST_NAME
from engine.tmkfile import TmkFormatError, write_tmk
from kernels.params import TmkParams

REPO = Path(__file__).resolve().parents[3]


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _links(folder: Path, targets: list[Path], n: int, prefix: str) -> Path:
    """n uniquely named .tmk files (symlinks to real hashes) for a large, cheap batch."""
    folder.mkdir()
    for i in range(n):
        (folder / f"{prefix}{i:05d}.tmk").symlink_to(targets[i % len(targets)])
    return folder


def test_kill_9_during_add_leaves_the_previous_index(tmp_path, ref_tmks, real_feats):
    ix_path = tmp_path / "ix"
    # Persistence across processes: one process creates and adds, others read.
    code = ("import sys; from engine.cli import main; "
            "sys.exit(main(['index', 'create', sys.argv[1], '--shards', '2']) or main(['index', 'add', *sys.argv[1:]]))")
    r = subprocess.run([sys.executable, "-c", code, str(ix_path), *map(str, ref_tmks.values())], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    before = VideoIndex(ix_path, device="cpu").query(real_feats, 0.7, 0.7)
    manifest = (ix_path / MANIFEST_NAME).read_bytes()
    big = _links(tmp_path / "big", list(ref_tmks.values()), 3000, "big")
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "index", "add", str(ix_path), str(big)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        stores = list(ix_path.glob("shard-*/seg-00000002-*.store"))
        if stores and sum(p.stat().st_size for p in stores) > 64 << 20:
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.fail("the add finished before it could be killed; make the batch larger")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    dead = {p.name.split(".")[0] for p in stores}
    assert (ix_path / MANIFEST_NAME).read_bytes() == manifest
    ix = VideoIndex(ix_path, device="cpu")
    assert len(ix) == len(ref_tmks)
    after = ix.query(real_feats, 0.7, 0.7)
    assert [[(m.id, m.level2) for m in ms] for ms in after] == [[(m.id, m.level2) for m in ms] for ms in before]
    # The next writer removes the dead add's files and works normally.
    ix.add_paths(sorted(big.iterdir())[:5])
    assert len(ix) == len(ref_tmks) + 5
    assert not [p for p in ix_path.glob("shard-*/*") if p.name.split(".")[0] in dead]


@pytest.fixture
def small_index(tmp_path, real_feats) -> VideoIndex:
    ix = VideoIndex.create(tmp_path / "s", shards=1, device="cpu")
    ix.add(real_feats[:4])
    return ix


def _seg_file(ix: VideoIndex, suffix: str) -> Path:
    return next(ix.root.glob(f"shard-000/*.{suffix}"))


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_corrupt_manifest_is_detected(small_index):
    p = small_index.root / MANIFEST_NAME
    text = p.read_text().replace('"generation": 1', '"generation": 2')
    p.write_text(text)
    with pytest.raises(IndexCorruptError, match="checksum mismatch"):
        VideoIndex(small_index.root)
    p.write_text(text[: len(text) // 2])
    with pytest.raises(IndexCorruptError, match="unreadable JSON"):
        VideoIndex(small_index.root)


@pytest.mark.parametrize("suffix", ["l1", "ids.json"])
def test_corrupt_small_files_are_detected_at_open(small_index, real_feats, suffix):
    _flip(_seg_file(small_index, suffix), 100)
    with pytest.raises(IndexCorruptError, match="checksum mismatch"):
        VideoIndex(small_index.root, device="cpu").query(real_feats[:1], 0.7, 0.7)


def test_truncated_store_is_detected_at_open(small_index, real_feats):
    p = _seg_file(small_index, "store")
    os.truncate(p, p.stat().st_size - 4096)
    with pytest.raises(IndexCorruptError, match="truncated"):
        VideoIndex(small_index.root, device="cpu").query(real_feats[:1], 0.7, 0.7)


def test_corrupt_store_row_is_detected_when_read(small_index, real_feats):
    p = _seg_file(small_index, "store")
    _flip(p, p.stat().st_size - 1000)          # a byte of the last row
    ix = VideoIndex(small_index.root, device="cpu")
    with pytest.raises(IndexCorruptError, match="row 3"):
        ix.query(real_feats[:1], -1.0, 0.0)
    with pytest.raises(IndexCorruptError):
        ix.verify()


def test_newer_format_version_is_refused(small_index):
    p = small_index.root / MANIFEST_NAME
    body = json.loads(p.read_text())
    body["format_version"] = 99
    p.write_text(json.dumps(body))
    with pytest.raises(IndexFormatError, match="newer"):
        VideoIndex(small_index.root)
    r = _cli("index", "info", str(small_index.root))
    assert r.returncode != 0 and r.stderr.startswith(f"vmatch: {p}: index format version 99 is newer")
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1


def test_foreign_parameters_and_duplicates_are_refused_whole(small_index, real_feats, tmp_path):
    f = real_feats[5]
    other = TmkParams(periods=(2731, 4391, 9767, 14654))
    write_tmk(tmp_path / "foreign.tmk", TmkFeatures(f.avg, f.cos, f.sin, f.frame_count, other))
    write_tmk(tmp_path / "fine.tmk", f)
    gen = small_index.manifest.generation
    with pytest.raises(TmkFormatError, match="foreign.tmk: TMK parameters differ"):
        small_index.add_paths([tmp_path / "fine.tmk", tmp_path / "foreign.tmk"])
    write_tmk(tmp_path / f"{real_feats[0].name}.tmk", real_feats[0])
    with pytest.raises(IndexFormatError, match="already in the index; nothing was added"):
        small_index.add_paths([tmp_path / "fine.tmk", tmp_path / f"{real_feats[0].name}.tmk"])
    with pytest.raises(IndexFormatError, match="duplicate id"):
        small_index.add([f, f])
    assert len(small_index) == 4 and small_index.manifest.generation == gen
    assert "fine" not in small_index
    assert not [p for p in small_index.root.glob("shard-000/*") if "00000002" in p.name]
    with pytest.raises(IndexFormatError, match="no such id"):
        small_index.remove([real_feats[0].name, "nope"])
    assert len(small_index) == 4


def test_create_refuses_bad_arguments_and_non_empty_dirs(tmp_path):
    with pytest.raises(IndexFormatError, match="coarse"):
        VideoIndex.create(tmp_path / "a", coarse="hnsw")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("x")
    with pytest.raises(IndexFormatError, match="not an empty directory"):
        VideoIndex.create(tmp_path / "b")
    with pytest.raises(IndexFormatError, match="not an index"):
        VideoIndex(tmp_path / "b")
