"""Documented guarantees of docs/index.md under test: concurrent writers, damage caught at open
(`.ivf`, trained quantizer, over-long `.store`), `vmatch index verify` through the CLI, and
level-1 scores that sit exactly on c1 (or within faiss round-off of it)."""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine.index import IndexCorruptError, VideoIndex

REPO = Path(__file__).resolve().parents[3]


def _cli(*args: object, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def _links(folder: Path, targets: list[Path], n: int, prefix: str) -> Path:
    folder.mkdir()
    for i in range(n):
        (folder / f"{prefix}{i:04d}.tmk").symlink_to(targets[i % len(targets)])
    return folder


def _holds_open(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open (the writer is inside its lock loop)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
        except OSError:
            pass
    return False


def test_two_concurrent_cli_writers_both_commit(tmp_path, ref_tmks):
    """Two `vmatch index add` processes start while a third party holds the writer lock, so both
    read the index before either can commit; neither may lose its batch."""
    ix = tmp_path / "ix"
    assert _cli("index", "create", ix, "--shards", "2").returncode == 0
    targets = [p for s, p in sorted(ref_tmks.items())]
    a = _links(tmp_path / "a", targets, 20, "a")
    b = _links(tmp_path / "b", targets, 25, "b")
    lock = ix / "LOCK"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    procs = [subprocess.Popen([sys.executable, "-m", "engine.cli", "index", "add", str(ix), str(d)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for d in (a, b)]
    try:
        deadline = time.monotonic() + 120
        while not all(_holds_open(p.pid, lock) for p in procs):
            assert all(p.poll() is None for p in procs), "a writer ended while the lock was held"
            assert time.monotonic() < deadline, "the writers never reached the lock"
            time.sleep(0.05)
        time.sleep(0.3)
        assert all(p.poll() is None for p in procs)   # both wait for the lock
    finally:
        os.close(fd)                                   # release: they now commit one after the other
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "added 20 items" in outs[0][1] and "added 25 items" in outs[1][1]
    index = VideoIndex(ix, device="cpu")
    want = sorted([f"a{i:04d}" for i in range(20)] + [f"b{i:04d}" for i in range(25)])
    assert len(index) == 45 and sorted(index.ids()) == want
    assert json.loads(_cli("index", "verify", ix).stdout) == {"ok": True, "count": 45}


@pytest.fixture
def ivf_index(tmp_path, synth_feats) -> VideoIndex:
    ix = VideoIndex.create(tmp_path / "ivf", shards=1, coarse="ivf", ivf_nlist=2, device="cpu")
    ix.add(synth_feats[:80])
    return ix


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_verify_passes_on_a_clean_index_through_the_cli(ivf_index):
    r = _cli("index", "verify", ivf_index.root)
    assert r.returncode == 0 and r.stderr == ""
    assert json.loads(r.stdout) == {"ok": True, "count": 80}


@pytest.mark.parametrize("damage", ["ivf", "trained", "store-extended"])
def test_damage_is_caught_at_open(ivf_index, synth_feats, damage):
    root = ivf_index.root
    if damage == "ivf":
        target = next(root.glob("shard-000/*.ivf"))
        _flip(target, target.stat().st_size // 2)
        match = "checksum mismatch"
    elif damage == "trained":
        target = next(root.glob("ivf-trained-*.faiss"))
        _flip(target, target.stat().st_size - 10)
        match = "checksum mismatch"
    else:
        target = next(root.glob("shard-000/*.store"))
        with open(target, "ab") as fh:                 # one more (garbage) row's worth of bytes
            fh.write(b"\0" * (target.stat().st_size // 80))
        match = "truncated or inconsistent"
    with pytest.raises(IndexCorruptError, match=match) as ei:
        VideoIndex(root, device="cpu").query(synth_feats[:1], 0.7, 0.7)
    assert ei.value.path == str(target) or str(target) in str(ei.value)
    r = _cli("index", "verify", root)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"vmatch: {target}: ") and match in r.stderr


@pytest.mark.parametrize("coarse", ["flat", "ivf"])
def test_level1_exactly_on_c1_is_a_match(tmp_path, real_feats, synth_feats, coarse):
    """Thresholds are inclusive: an item whose level-1 equals c1 is returned, whatever faiss's own
    inner product is (it may round below c1); the next float32 above excludes it."""
    items = real_feats[:15] + synth_feats[:40]
    ix = VideoIndex.create(tmp_path / coarse, shards=2, coarse=coarse, ivf_nlist=1, device="cpu")
    ix.add(items)
    needles = real_feats[:3]
    full = ix.query(needles, -1.0, -1.0)
    checked = 0
    for needle, ms in zip(needles, full):
        for m in ms[:: max(1, len(ms) // 12)]:
            if m.level1 < -0.99:
                continue
            on = ix.query([needle], m.level1, -1.0)[0]
            assert m.id in {x.id for x in on}, (needle.name, m.id, m.level1)
            above = float(np.nextafter(np.float32(m.level1), np.float32(2)))
            assert m.id not in {x.id for x in ix.query([needle], above, -1.0)[0]}
            on2 = ix.query([needle], -1.0, m.level2)[0]       # level-2 inclusive as well
            assert m.id in {x.id for x in on2}
            checked += 1
    assert checked >= 20
