"""`vmatch backfill` as a user runs it: bad input lines, exit codes, resume after kill -9 of the driver."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.index import VideoIndex
from tests.engine.ray.conftest import bad_files, clips  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[3]


def vm(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, **kw)


def test_usage_and_bad_inputs_are_one_line(tmp_path):
    r = vm("backfill", "-d", tmp_path / "o", "--manifest", tmp_path / "missing.txt")
    assert r.returncode == 1 and r.stderr.strip() == f"vmatch: {tmp_path / 'missing.txt'}: no such file"
    r = vm("backfill", tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("vmatch: nothing to write") and "Traceback" not in r.stderr
    r = vm("backfill", "-d", tmp_path / "o", tmp_path / "nope")
    assert r.returncode == 2 and r.stderr.strip() == f"vmatch: {tmp_path / 'nope'}: no such file or folder"
    bad = tmp_path / "m.csv"
    bad.write_text("name\nx\n")
    r = vm("backfill", "-d", tmp_path / "o", "--manifest", bad)
    assert r.returncode == 1 and r.stderr.strip().startswith(f"vmatch: {bad}: no path column")


def _done(ledger: Path) -> int:
    try:
        with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT COUNT(*) FROM items WHERE status='done'").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_resume_after_kill_9_of_the_driver(ref_dir, ref_tmks, bad_files, tmp_path):
    """kill -9 mid-run, rerun: every video hashed once, none lost, none twice in the index."""
    videos = sorted((ref_dir / "videos").glob("*.mp4"))
    manifest = tmp_path / "videos.txt"
    manifest.write_text("".join(f"{v}\n" for v in videos) + f"{bad_files['garbage']}\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("ray:\n  num_cpus: 2\n  index_batch: 2\nindex:\n  shards: 2\n")
    out, ix = tmp_path / "out", tmp_path / "ix"
    args = ["--config", cfg, "backfill", "--manifest", manifest, "-d", out, "--index", ix, "--workers", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while _done(out / "backfill.ledger.sqlite") < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)          # the driver only, at an arbitrary moment
        proc.wait()
    finally:
        time.sleep(1)
        try:
            os.killpg(proc.pid, signal.SIGKILL)    # what the killed driver left behind (its local Ray)
        except ProcessLookupError:
            pass
    killed_at = _done(out / "backfill.ledger.sqlite")
    assert 3 <= killed_at < len(videos)
    r = vm(*args, "--summary-json", tmp_path / "s.json")
    assert r.returncode == 1, r.stderr                        # the garbage file failed
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("vmatch: ")]
    assert len(lines) == 1 and lines[0].startswith(f"vmatch: {bad_files['garbage']}: "), r.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["done"] + s["skipped"] == len(videos) and s["failed"] == 1 and s["failed_by"] == {"decode": 1}
    for v in videos:
        assert (out / f"{v.stem}.tmk").read_bytes() == ref_tmks[v.stem].read_bytes()
    index = VideoIndex(ix, device="cpu")
    assert len(index) == len(videos) and sorted(index.ids()) == sorted(v.stem for v in videos)
    # A third run has nothing left to hash.
    r = vm(*args, "-q", "--summary-json", tmp_path / "s3.json")
    s3 = json.loads((tmp_path / "s3.json").read_text())
    assert (s3["done"], s3["skipped"], s3["failed"]) == (0, len(videos), 1)
    assert len(VideoIndex(ix, device="cpu")) == len(videos)


def test_query_ray_prints_what_the_local_query_prints(ref_tmks, tmp_path):
    ix = tmp_path / "ix"
    VideoIndex.create(ix, shards=3, device="cpu").add_paths(list(ref_tmks.values()))
    needles = list(ref_tmks.values())[:6]
    local = vm("query", ix, *needles, "--c1", "0.5", "--c2", "0.5")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("ray:\n  num_cpus: 2\n  query_batch: 4\n")
    ray = vm("--config", cfg, "query", ix, *needles, "--c1", "0.5", "--c2", "0.5", "--ray")
    assert local.returncode == 0 and ray.returncode == 0, ray.stderr
    assert ray.stdout == local.stdout and local.stdout.count("\n") > 6


def test_feature_workers_stream_frames_and_match_the_cpu_path(clips, tmp_path):
    """The GPU path (decoders streaming chunks to feature workers), on a Ray that declares one
    logical GPU: without CUDA the feature workers compute on the CPU, in exact mode."""
    from tests.engine.ray.test_backfill import single_process_bytes

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("ray:\n  num_cpus: 2\n  num_gpus: 1\n  gpus_per_worker: 0.5\nhash:\n  chunk_frames: 8\n")
    r = vm("--config", cfg, "backfill", "--mode", "exact", "-d", tmp_path / "out", *clips,
           "--summary-json", tmp_path / "s.json")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["feature_workers"] == 2 and s["done"] == len(clips)
    assert {p.stem: p.read_bytes() for p in (tmp_path / "out").glob("*.tmk")} == single_process_bytes(clips)


@pytest.mark.cuda
def test_gpu_feature_workers_exact_mode_reproduce_the_reference(ref_dir, ref_tmks, tmp_path):
    """On a CUDA machine: decoders stream to GPU feature workers; exact mode is byte-identical."""
    videos = sorted((ref_dir / "videos").glob("*.mp4"))
    r = vm("backfill", "--mode", "exact", "-q", "-d", tmp_path, *videos, "--gpus-per-worker", "0.25",
           "--summary-json", tmp_path / "s.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "s.json").read_text())["feature_workers"] >= 1
    for v in videos:
        assert (tmp_path / f"{v.stem}.tmk").read_bytes() == ref_tmks[v.stem].read_bytes(), v.stem
