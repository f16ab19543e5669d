"""Documented backfill guarantees (README "Running on a cluster", engine/ray/*.py) under test:
a video that keeps killing its worker ends as failed after ray.max_attempts; bounded read-ahead
(frame chunks to a feature worker, ledger pages); one driver per ledger, --timeout and --ledger
through the command line."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np

from engine.decode import decode_frames
from engine.ray.actors import CHUNKS_IN_FLIGHT, HashWorker
from engine.ray.backfill import Backfill, BackfillOptions
from engine.ray.ledger import Ledger
from kernels.params import DEFAULT_PARAMS

ROOT = Path(__file__).resolve().parents[3]


class KillerHasher:
    """Kills its own worker process on videos named crash*; hashes the others normally."""

    def __init__(self, settings):
        from engine.ray.actors import default_hasher
        self.inner = default_hasher(settings)

    def hash(self, path):
        if Path(path).name.startswith("crash"):
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.hash(path)


def killer_hasher(settings):
    return KillerHasher(settings)


def test_a_video_that_keeps_killing_its_worker_fails_after_max_attempts(ray_local, clips, tmp_path):
    crash = tmp_path / "in" / "crash.mp4"
    crash.parent.mkdir()
    crash.write_bytes(clips[0].read_bytes())
    died: list[str] = []
    o = BackfillOptions(outdir=str(tmp_path / "out"), mode="exact",
                        ray={"num_cpus": 2, "num_gpus": 0, "kill_grace_s": 1.0, "max_attempts": 2})
    s = Backfill(o, quiet=True, hasher_factory=killer_hasher,
                 hooks=lambda e, i: died.append(i["path"]) if e == "worker_died" else None
                 ).run([str(crash), *map(str, clips[1:3])])
    assert died == [str(crash)] * 2                      # one fresh worker per attempt, no more
    assert (s.done, s.failed, s.retried) == (2, 1, 1) and s.failed_by == {"crash": 1}
    led = Ledger(tmp_path / "out" / "backfill.ledger.sqlite")
    (path, kind, reason), = led.failures(int(led.get_meta("runs")))
    attempts = led.db.execute("SELECT attempts FROM items WHERE path=?", (str(crash),)).fetchone()[0]
    led.close()
    assert (path, kind, attempts) == (str(crash), "crash", 2)
    assert "gave up after 2 attempts" in reason and "\n" not in reason
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.tmk")) == sorted(c.stem for c in clips[1:3])


class _Ref:
    def __init__(self, fa: "_FakeFeatureActor", kind: str, value=None) -> None:
        self.fa, self.kind, self.value, self.done = fa, kind, value, False


class _Method:
    def __init__(self, fa: "_FakeFeatureActor", name: str) -> None:
        self.fa, self.name = fa, name

    def remote(self, *args):
        return self.fa.call(self.name, args)


class _FakeFeatureActor:
    """Stands in for a FeatureWorker handle: records the chunks and how many are unconsumed."""

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.outstanding = 0
        self.max_outstanding = 0
        for name in ("begin", "update", "finish", "abort"):
            setattr(self, name, _Method(self, name))

    def call(self, name: str, args: tuple) -> _Ref:
        if name == "update":
            self.chunks.append(np.array(args[1]))
            self.outstanding += 1
            self.max_outstanding = max(self.max_outstanding, self.outstanding)
        return _Ref(self, name, (b"tmk", sum(map(len, self.chunks))) if name == "finish" else None)

    def get(self, refs):
        one = not isinstance(refs, list)
        for r in [refs] if one else refs:
            if r.kind == "update" and not r.done:
                self.outstanding -= 1
            r.done = True
        return refs.value if one else [r.value for r in refs]


def test_frames_stream_to_the_feature_worker_at_most_two_chunks_ahead(clips, monkeypatch):
    """A decode worker never has more than CHUNKS_IN_FLIGHT chunks queued beyond the one being
    processed (bounded memory per decoder), and the stream is the whole video in order."""
    import ray

    fa = _FakeFeatureActor()
    monkeypatch.setattr(ray, "get", fa.get)
    settings = {"params": DEFAULT_PARAMS, "mode": "exact", "chunk_frames": 4, "backend": "auto",
                "timeout_s": None, "torch_threads": 1}
    w = HashWorker(settings, feature_actor=fa)
    tmk, frames = w._hash_remote(str(clips[1]), "token")
    want = decode_frames(clips[1])
    assert len(fa.chunks) >= 8 and frames == len(want)
    assert np.array_equal(np.concatenate(fa.chunks), want)
    assert CHUNKS_IN_FLIGHT == 2 and fa.max_outstanding == CHUNKS_IN_FLIGHT + 1


def test_ledger_reads_pending_rows_page_by_page(tmp_path, clips):
    led = Ledger(tmp_path / "l.sqlite")
    run = led.new_run()
    led.scan(map(str, clips), run)
    selects: list[str] = []
    led.db.set_trace_callback(lambda q: selects.append(q) if "LIMIT" in q else None)
    it = led.pending(run, page=2)
    first = next(it)
    assert len(selects) == 1                     # one page read, not the whole table
    rest = list(it)
    assert len(selects) == 1 + len(clips) // 2   # pages of 2, then the empty page
    assert [first, *rest] == list(led.pending(run, page=1000)) and len(rest) == len(clips) - 1
    led.close()


def vm(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, **kw)


def _ledger_rows(path: Path) -> dict[str, tuple[str, str | None]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return {Path(p).stem: (s, k) for p, s, k in db.execute("SELECT path, status, kind FROM items")}


def test_cli_ledger_timeout_and_one_driver_per_ledger(clips, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("ray:\n  num_cpus: 2\n  kill_grace_s: 5\n")
    ledger = tmp_path / "elsewhere" / "my.ledger"
    out = tmp_path / "out"
    args = ["--config", cfg, "backfill", *clips[:2], "-d", out, "--ledger", ledger, "--workers", "1"]
    # A second driver on a ledger in use is refused (the first holds the ledger's lock).
    holder = Ledger(ledger, lock=True)
    r = vm(*args)
    holder.close()
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"vmatch: {ledger}: another backfill is running with this ledger", r.stderr
    # --timeout reaches the workers: an impossible limit fails every video as timed out, in --ledger.
    r = vm(*args, "--timeout", "0.0001", "-q", "--summary-json", tmp_path / "s1.json")
    s1 = json.loads((tmp_path / "s1.json").read_text())
    assert r.returncode == 1 and (s1["done"], s1["failed"], s1["failed_by"]) == (0, 2, {"timeout": 2}), r.stderr
    assert ledger.exists() and not (out / "backfill.ledger.sqlite").exists()
    assert _ledger_rows(ledger) == {c.stem: ("failed", "timeout") for c in clips[:2]}
