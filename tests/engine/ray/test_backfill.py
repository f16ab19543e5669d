"""Backfill on a local Ray (2 CPUs): outputs, failures, resume, killed and hung workers, index exactly once."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from engine.hasher import VideoHasher
from engine.index import VideoIndex
from engine.ray.backfill import Backfill, BackfillOptions
from engine.ray.ledger import Ledger
from engine.tmkfile import from_bytes, read_tmk, to_bytes

FAST_RAY = {"num_cpus": 2, "num_gpus": 0, "kill_grace_s": 1.0}


def opts(**kw) -> BackfillOptions:
    ray = {**FAST_RAY, **kw.pop("ray", {})}
    return BackfillOptions(mode="exact", ray=ray, **kw)


def single_process_bytes(paths) -> dict[str, bytes]:
    """What `vmatch hash` writes for each video (the single-process path)."""
    h = VideoHasher(mode="exact", device="cpu")
    return {Path(p).stem: to_bytes(h.hash(p)) for p in paths}


def test_reference_videos_and_corrupt_files(ray_local, ref_dir, ref_tmks, bad_files, tmp_path):
    out = tmp_path / "out"
    videos = sorted((ref_dir / "videos").glob("*.mp4"))
    inputs = [str(v) for v in videos] + [str(p) for p in bad_files.values()] + [str(tmp_path / "missing.mp4")]
    s = Backfill(opts(outdir=str(out)), quiet=True).run(inputs)
    assert (s.listed, s.done, s.skipped, s.failed) == (len(videos) + 4, len(videos), 0, 4)
    assert s.failed_by == {"decode": 3, "unreadable": 1}
    assert s.exit_code == 1 and s.frames == 2961
    for v in videos:   # byte-identical to the published reference hashes
        assert (out / f"{v.stem}.tmk").read_bytes() == ref_tmks[v.stem].read_bytes(), v.stem
    led = Ledger(out / "backfill.ledger.sqlite")
    reasons = {Path(p).name: (k, r) for p, k, r in led.failures(int(led.get_meta("runs")))}
    assert reasons["empty.mp4"] == ("decode", "empty file")
    assert reasons["missing.mp4"] == ("unreadable", "no such file")
    assert all(r and "\n" not in r for _, r in reasons.values())
    led.close()
    # A rerun skips what is done and tries the failures again.
    s2 = Backfill(opts(outdir=str(out)), quiet=True).run(inputs)
    assert (s2.done, s2.skipped, s2.failed) == (0, len(videos), 4)


def test_outputs_equal_single_process_path(ray_local, clips, tmp_path):
    s = Backfill(opts(outdir=str(tmp_path)), quiet=True).run(map(str, clips))
    assert (s.done, s.failed) == (len(clips), 0)
    want = single_process_bytes(clips)
    assert {p.stem: p.read_bytes() for p in tmp_path.glob("*.tmk")} == want


def test_killed_worker_task_goes_to_another_worker(ray_local, clips, tmp_path):
    killed: list[int] = []

    def hook(event: str, info: dict) -> None:
        if event == "submit" and not killed and info["pid"]:
            killed.append(info["pid"])
            os.kill(info["pid"], signal.SIGKILL)   # the worker dies while (or before) hashing

    s = Backfill(opts(outdir=str(tmp_path)), quiet=True, hooks=hook).run(map(str, clips))
    assert killed and s.retried >= 1
    assert (s.done, s.failed) == (len(clips), 0)
    assert {p.stem: p.read_bytes() for p in tmp_path.glob("*.tmk")} == single_process_bytes(clips)


class HangingHasher:
    """Hangs (in Python, where no decoder timeout reaches) on videos named hang*."""

    def __init__(self, settings):
        from engine.ray.actors import default_hasher
        self.inner = default_hasher(settings)

    def hash(self, path):
        if Path(path).name.startswith("hang"):
            time.sleep(3600)
        return self.inner.hash(path)


def hanging_hasher(settings):
    return HangingHasher(settings)


def test_hung_decode_is_killed_and_recorded(ray_local, clips, tmp_path):
    hang = tmp_path / "in" / "hang.mp4"
    hang.parent.mkdir()
    hang.write_bytes(clips[0].read_bytes())
    events: list[str] = []
    t0 = time.monotonic()
    s = Backfill(opts(outdir=str(tmp_path / "out"), ray={"timeout_s": 4.0}), quiet=True,
                 hooks=lambda e, i: events.append(e), hasher_factory=hanging_hasher).run([str(hang), *map(str, clips)])
    assert time.monotonic() - t0 < 60
    assert (s.done, s.failed, s.killed) == (len(clips), 1, 1)
    assert s.failed_by == {"timeout": 1} and "kill" in events
    assert not (tmp_path / "out" / "hang.tmk").exists()


class Crash(Exception):
    pass


@pytest.mark.parametrize("when", ["index_commit", "index_committed"])
def test_index_adds_exactly_once_across_a_crash(ray_local, clips, tmp_path, when):
    """The driver dies just before / just after an index commit; the rerun adds each video once."""
    ix = tmp_path / "ix"
    VideoIndex.create(ix, shards=2, device="cpu")
    o = opts(outdir=str(tmp_path / "out"), index=str(ix), ray={"index_batch": 2})
    seen = []

    def hook(event: str, info: dict) -> None:
        if event == when:
            seen.append(info["batch"])
            if len(seen) == 2:
                raise Crash()

    with pytest.raises(Crash):
        Backfill(o, quiet=True, hooks=hook).run(map(str, clips))
    before = len(VideoIndex(ix, device="cpu"))
    assert before == (2 if when == "index_commit" else 4)
    s = Backfill(o, quiet=True).run(map(str, clips))
    assert s.failed == 0 and s.done + s.skipped == len(clips)
    index = VideoIndex(ix, device="cpu")
    assert sorted(index.ids()) == sorted(c.stem for c in clips) and len(index) == len(clips)
    want = single_process_bytes(clips)
    for name, f in zip(sorted(want), index.features(sorted(want))):
        ref = from_bytes(want[name])
        # the index keeps the signature's features as written and the pure average's direction
        assert f.frame_count == ref.frame_count
        assert np.array_equal(f.cos, ref.cos) and np.array_equal(f.sin, ref.sin)
        assert np.allclose(f.avg, ref.avg / np.linalg.norm(ref.avg.astype(np.float64)), atol=1e-6)
    for c in clips:
        assert read_tmk(tmp_path / "out" / f"{c.stem}.tmk").frame_count > 0


def test_more_workers_than_free_cpus_still_finishes(ray_local, clips, tmp_path):
    """A worker the cluster cannot place (3 workers, 2 CPUs) does not hold the run."""
    s = Backfill(opts(outdir=str(tmp_path), ray={"decode_actors": 3}), quiet=True).run(map(str, clips[:3]))
    assert (s.done, s.failed, s.workers) == (3, 0, 3)


def test_decoder_timeout_inside_the_worker_replaces_the_worker(ray_local, clips, tmp_path):
    """The decoder's own time limit fires: recorded as a timeout, the worker is replaced, the run goes on."""
    events: list[str] = []
    s = Backfill(opts(outdir=str(tmp_path), ray={"timeout_s": 1e-4, "kill_grace_s": 30.0}), quiet=True,
                 hooks=lambda e, i: events.append(e)).run(map(str, clips[:3]))
    assert (s.done, s.failed, s.killed) == (0, 3, 0) and s.failed_by == {"timeout": 3}
    assert events.count("worker_ready") >= 3      # replaced after each timed-out decode
