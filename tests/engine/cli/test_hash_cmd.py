"""`vmatch hash` on CPU: no torch in any process, videos in worker processes, same bytes as one at a time."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.videos import make_testsrc

ROOT = Path(__file__).resolve().parents[3]


def vm(*args: str, importtime: bool = False) -> subprocess.CompletedProcess:
    flags = ["-X", "importtime"] if importtime else []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *flags, "-m", "engine.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("clips")
    return [make_testsrc(d / "a.mp4", 2, 30), make_testsrc(d / "b.mp4", 1, 25, size=(80, 64), source="smptebars"),
            make_testsrc(d / "c.mp4", 1.5, 30, size=(64, 48))]


def _imported(stderr: str) -> set[str]:
    """Top-level modules named in -X importtime lines (the workers' lines land on the same stderr)."""
    return {m.group(1).split(".")[0] for m in re.finditer(r"^import time:.*\|\s*(\S+)\s*$", stderr, re.M)}


def test_hash_on_cpu_imports_no_torch_in_any_process(clips, tmp_path):
    r = vm("hash", clips[0], "-o", tmp_path / "one.tmk", "--device", "cpu", importtime=True)
    assert r.returncode == 0, r.stderr[-2000:]
    mods = _imported(r.stderr)
    assert "numpy" in mods and "torch" not in mods
    r = vm("hash", *clips, "-d", tmp_path / "many", "-j", "2", importtime=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "decord" in _imported(r.stderr) and "torch" not in _imported(r.stderr)
    assert (tmp_path / "many" / "a.tmk").read_bytes() == (tmp_path / "one.tmk").read_bytes()


def test_worker_processes_give_the_bytes_of_one_at_a_time(clips, tmp_path):
    r1 = vm("hash", *clips, "-d", tmp_path / "j1", "-j", "1")
    r2 = vm("hash", *clips, "-d", tmp_path / "j3", "-j", "3")
    assert r1.returncode == r2.returncode == 0, r1.stderr + r2.stderr
    for c in clips:
        one = (tmp_path / "j1" / f"{c.stem}.tmk").read_bytes()
        assert len(one) == 263_344 and one == (tmp_path / "j3" / f"{c.stem}.tmk").read_bytes()


def test_failures_come_in_input_order_from_worker_processes(clips, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video\n")
    r = vm("hash", tmp_path / "missing.mp4", clips[0], bad, clips[1], "-d", tmp_path / "o", "-j", "2")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("vmatch: ")]
    assert lines[0].startswith(f"vmatch: {tmp_path / 'missing.mp4'}: ")
    assert lines[1].startswith(f"vmatch: {bad}: ")
    assert lines[2] == "vmatch: 2 of 4 inputs failed"
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.tmk", "b.tmk"]
