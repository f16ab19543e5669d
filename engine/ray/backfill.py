"""The backfill driver: list inputs into the ledger, run the scheduler, record outcomes, feed the sinks.

Flow: inputs are streamed into the ledger (`Ledger.scan`), then this run's pending rows are read
page by page and handed to the scheduler (engine/ray/scheduler.py: a fixed pool of `HashWorker`
actors, one video at a time each, deadlines and retries), which yields one outcome per video.
Finished videos come back as `.tmk` bytes; the sinks (engine/ray/sinks.py) write them atomically
(`TmkDirSink`) and/or add them to an index in batches (`IndexSink`), and the driver records every
outcome in the ledger.

Exactly once: a `.tmk` file is written (atomically) before its row is marked done, so a driver
killed in between just rewrites the same bytes on the rerun.  An index batch is first marked
``indexing`` in the ledger (committed), then added to the index (one atomic commit), then marked
done; a rerun that finds ``indexing`` rows looks their ids up in the index and marks them done
or pending, so no video is ever added twice.

Faults: a worker that dies (or is killed) costs its video one attempt and the video goes to a
fresh worker; after `max_attempts` it is recorded as failed.  A worker still busy past the
per-video timeout (plus `kill_grace_s`) is killed and the video recorded as timed out.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from engine.ray.actors import HasherFactory
from engine.ray.session import RaySession, connect
from engine.ray.ledger import Item, Ledger
from engine.ray.scheduler import WORKER_START_TIMEOUT_S, Outcome, Scheduler, SchedulerError  # noqa: F401
from engine.ray.sinks import IndexSink, TmkDirSink
from kernels.params import DEFAULT_PARAMS, TmkParams
from engine.errors import VmatchError, check_compatible

LEDGER_NAME = "backfill.ledger.sqlite"
EventHook = Callable[[str, dict[str, Any]], None]


@dataclass
class BackfillOptions:
    outdir: str | None = None
    index: str | None = None          # path of an existing index (see engine.index)
    ledger: str | None = None         # default: OUTDIR/backfill.ledger.sqlite, else INDEX.ledger.sqlite
    mode: str = "auto"                # exact | fast | auto (exact on CPU workers, fast on GPU workers)
    params: TmkParams = DEFAULT_PARAMS
    chunk_frames: int = 256
    backend: str = "auto"
    timeout_s: float | None = 600.0
    fast_exact_below: float = 32.0
    ray: dict[str, Any] = field(default_factory=dict)   # the `ray:` section (see cluster.RAY_DEFAULTS)


@dataclass
class BackfillSummary:
    listed: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failed_by: Counter = field(default_factory=Counter)
    retried: int = 0
    killed: int = 0
    frames: int = 0
    seconds: float = 0.0
    hash_seconds: float = 0.0     # from the first worker ready to the last result (no Ray start-up)
    workers: int = 0
    feature_workers: int = 0
    mode: str = ""
    ledger: str = ""

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def lines(self) -> list[str]:
        s = max(self.seconds, 1e-9)
        out = [f"backfill: {self.listed} videos: {self.done} done, {self.skipped} skipped (done before), "
               f"{self.failed} failed; {self.frames} frames in {self.seconds:.1f} s "
               f"({self.done / s:.2f} videos/s, {self.frames / s:.1f} frames/s; {self.workers} workers"
               f"{f', {self.feature_workers} GPU feature workers' if self.feature_workers else ''}, "
               f"{self.mode} mode)"]
        if self.failed_by:
            out.append("backfill: failed by reason: " + ", ".join(f"{k} {n}" for k, n in sorted(self.failed_by.items())))
        if self.retried or self.killed:
            out.append(f"backfill: {self.retried} videos retried after a worker died, {self.killed} workers killed")
        out.append(f"backfill: ledger {self.ledger}")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"listed": self.listed, "done": self.done, "skipped": self.skipped, "failed": self.failed,
                "failed_by": dict(self.failed_by), "retried": self.retried, "killed": self.killed,
                "frames": self.frames, "seconds": round(self.seconds, 3), "workers": self.workers,
                "feature_workers": self.feature_workers, "mode": self.mode,
                "videos_per_s": round(self.done / max(self.seconds, 1e-9), 3),
                "frames_per_s": round(self.frames / max(self.seconds, 1e-9), 1),
                "hash_seconds": round(self.hash_seconds, 3),
                "hash_frames_per_s": round(self.frames / max(self.hash_seconds, 1e-9), 1)}


class BackfillError(VmatchError):
    """The run cannot go on (no output given, workers cannot start, ...); str() is one line."""


class _Reporter:
    """Progress bar and one-line failure messages (engine.progress.Progress unless quiet)."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.bar = None
        if not quiet:
            from engine.progress import Progress
            self.bar = Progress(total, "backfill", "video")

    def update(self, **post: Any) -> None:
        if self.bar is not None:
            self.bar.update(1, **post)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def default_ledger_path(opts: BackfillOptions) -> Path:
    if opts.ledger:
        return Path(opts.ledger)
    if opts.outdir:
        return Path(opts.outdir) / LEDGER_NAME
    if opts.index:
        return Path(str(opts.index).rstrip("/\\") + ".ledger.sqlite")
    raise BackfillError("nothing to write: give an output folder (-d) and/or an index (--index)")


def resolved_mode(mode: str, gpu_features: bool) -> str:
    from engine.hasher import resolve_mode
    import torch

    return resolve_mode(mode, torch.device("cuda" if gpu_features else "cpu"))


class Backfill:
    """One backfill run; `run(inputs)` returns a BackfillSummary (see module docstring)."""

    def __init__(self, opts: BackfillOptions, *, quiet: bool = False, hooks: EventHook | None = None,
                 hasher_factory: HasherFactory | None = None) -> None:
        from engine.ray.session import ray_config

        self.opts = opts
        self.rc = ray_config(opts.ray)
        self.quiet, self.hooks, self.hasher_factory = quiet, hooks, hasher_factory
        if not opts.outdir and not opts.index:
            raise BackfillError("nothing to write: give an output folder (-d) and/or an index (--index)")
        self.index: Any = None
        self.ledger: Ledger | None = None
        self.reporter: _Reporter | None = None
        self.tmk_sink: TmkDirSink | None = None
        self.index_sink: IndexSink | None = None
        self._t_work = time.monotonic()
        self.summary = BackfillSummary()
        self._pending_done: dict[int, tuple[int, float]] = {}
        self._pending_failed: list[tuple[int, str, str]] = []
        self._last_commit = time.monotonic()

    # ------------------------------------------------------------------ setup
    def _open_outputs(self) -> None:
        if self.opts.outdir:
            try:
                os.makedirs(self.opts.outdir, exist_ok=True)
            except OSError as e:
                raise BackfillError(f"{self.opts.outdir}: cannot create ({e.strerror or e})") from None
        if self.opts.index:
            from engine.index import VideoIndex

            self.index = VideoIndex(self.opts.index, device="cpu")
            check_compatible(self.index.params, self.opts.params, self.opts.index, "the index's")
            self.index_sink = IndexSink(self.index, str(self.opts.index), int(self.rc["index_batch"]), self._failed,
                                        self._event)
        if self.opts.outdir:
            self.tmk_sink = TmkDirSink(self.opts.outdir)

    def _settings(self, mode: str) -> dict[str, Any]:
        p = self.opts.params
        return {"mode": mode, "periods": list(p.periods), "fps": p.fps, "frame_size": p.frame_size,
                "tmk_files": bool(self.opts.outdir),
                "index": os.path.abspath(self.opts.index) if self.opts.index else None}

    def _worker_settings(self, mode: str) -> dict[str, Any]:
        timeout = self.rc["timeout_s"] if self.rc["timeout_s"] is not None else self.opts.timeout_s
        return {"params": self.opts.params, "mode": mode, "chunk_frames": self.opts.chunk_frames,
                "backend": self.opts.backend, "timeout_s": timeout, "fast_exact_below": self.opts.fast_exact_below,
                "torch_threads": self.rc["torch_threads"]}

    def _event(self, name: str, **info: Any) -> None:
        if self.hooks is not None:
            self.hooks(name, info)

    # ------------------------------------------------------------------ run
    def run(self, inputs: Iterable[str]) -> BackfillSummary:
        t0 = time.monotonic()
        self._open_outputs()
        session: RaySession | None = None
        try:
            # Ray first: whether GPUs exist decides the mode that `auto` means.
            session = connect(self.rc["address"], self.rc["num_cpus"], self.rc["num_gpus"], self.rc["namespace"])
            gpw = float(self.rc["gpus_per_worker"] or 0)
            n_feat = 0
            if session.gpus > 0 and gpw > 0:
                n_feat = int(self.rc["feature_actors"] or max(1, int(session.gpus / gpw + 1e-9)))
            mode = resolved_mode(self.opts.mode, n_feat > 0)
            s = self.summary
            s.mode = mode
            ledger_path = default_ledger_path(self.opts)
            self.ledger = Ledger(ledger_path, self._settings(mode), lock=True)
            s.ledger = str(ledger_path)
            run = self.ledger.new_run()
            scan = self.ledger.scan(inputs, run)
            s.listed, s.skipped = scan.listed, scan.skipped
            self.reporter = _Reporter(scan.todo, self.quiet)
            for path, kind, reason in self.ledger.failures(run):
                self._count_failure(path, kind, reason)
            self._resolve_indexing(run)
            self._work(run, session, n_feat, mode)
        finally:
            try:
                self._flush(force=True)
            finally:
                if self.ledger is not None:
                    self.ledger.close()
                if self.reporter is not None:
                    self.reporter.close()
                if session is not None:
                    session.close()
            self.summary.seconds = time.monotonic() - t0
        return self.summary

    def _count_failure(self, path: str, kind: str, reason: str) -> None:
        self.summary.failed += 1
        self.summary.failed_by[kind] += 1
        self.reporter.write(f"vmatch: {path}: {reason}")

    def _resolve_indexing(self, run: int) -> None:
        """Rows left `indexing` by a killed driver: done if their ids made it into the index."""
        stuck = self.ledger.indexing(run)
        if not stuck:
            return
        if self.index is None:
            with self.ledger.transaction():
                self.ledger.set_pending(i.id for i in stuck)
            return
        self.index.reload()
        landed = [i for i in stuck if i.name in self.index]
        with self.ledger.transaction():
            self.ledger.set_done(i.id for i in landed)
            self.ledger.set_pending(i.id for i in stuck if i.name not in self.index)
        self.summary.done += len(landed)
        for _ in landed:
            self.reporter.update()

    # ------------------------------------------------------------------ workers
    def _work(self, run: int, session: RaySession, n_feat: int, mode: str) -> None:
        """Hand the pending rows to the scheduler; record each outcome and feed the sinks."""
        todo = self.ledger.counts(run).get("pending", 0)
        if todo == 0:
            return
        rc = self.rc
        cpa = float(rc["cpus_per_actor"] or 1)
        n = int(rc["decode_actors"] or max(1, int(session.cpus / cpa + 1e-9)))
        n = max(1, min(n, todo))
        self.summary.workers, self.summary.feature_workers = n, n_feat
        sched = Scheduler(rc, self._worker_settings(mode), self._attempt, self.hasher_factory, self.hooks)
        try:
            try:
                sched.start(n, n_feat, mode, self.opts.params, self.opts.fast_exact_below)
                self._t_work = time.monotonic()
                for out in sched.outcomes(self.ledger.pending(run)):
                    if out is None:
                        self._flush()
                    elif out.ok:
                        self._finished(out)
                    else:
                        self._failed(out.item, out.kind, out.reason)
            except SchedulerError as e:
                raise BackfillError(e.reason) from None
            self._flush_index()
            if sched.t_first is not None:
                self.summary.hash_seconds = time.monotonic() - sched.t_first
        finally:  # free the cluster's resources even when the run is interrupted
            self.summary.killed += sched.killed
            self.summary.retried += sched.retried
            sched.close()

    def _attempt(self, it: Item) -> int:
        """Record one more attempt of a video whose worker died (the scheduler retries it)."""
        with self.ledger.transaction():
            return self.ledger.add_attempt(it.id)

    # ------------------------------------------------------------------ results
    def _failed(self, it: Item, kind: str, reason: str) -> None:
        self._pending_failed.append((it.id, kind, reason))
        self._count_failure(it.path, kind, reason)
        self.reporter.update(failed=self.summary.failed)

    def _finished(self, out: Outcome) -> None:
        it, frames, secs = out.item, out.frames, out.seconds
        if self.tmk_sink is not None:
            why = self.tmk_sink.write(it, out.tmk)  # before the row is marked done (exactly once)
            if why is not None:
                self._failed(it, "write", why)
                return
        self.summary.frames += frames
        if self.index_sink is not None:
            feats = self.index_sink.parse(it, out.tmk)
            if isinstance(feats, str):
                self._failed(it, "error", feats)
                return
            if self.index_sink.add(it, feats, frames, secs):
                self._flush_index()
        else:
            self._pending_done[it.id] = (frames, secs)
            self.summary.done += 1
        self._progress()

    def _progress(self) -> None:
        el = max(time.monotonic() - self._t_work, 1e-9)
        self.reporter.update(fps=f"{self.summary.frames / el:.0f}", failed=self.summary.failed)

    def _flush(self, force: bool = False) -> None:
        """Commit finished and failed rows (at most every ledger_commit_s, or now)."""
        if not (self._pending_done or self._pending_failed):
            return
        if not force and time.monotonic() - self._last_commit < float(self.rc["ledger_commit_s"]):
            return
        if self.ledger is None:
            return
        with self.ledger.transaction():
            self.ledger.set_done(list(self._pending_done), self._pending_done)
            for i, kind, reason in self._pending_failed:
                self.ledger.set_failed(i, kind, reason)
        self._pending_done.clear()
        self._pending_failed.clear()
        self._last_commit = time.monotonic()

    def _flush_index(self) -> None:
        """Commit the index sink's batch (engine/ray/sinks.py), bracketed by ledger updates."""
        if self.index_sink is not None and self.ledger is not None:
            self.summary.done += self.index_sink.commit(self.ledger, lambda: self._flush(force=True))


def _first_line(e: BaseException | str) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def backfill(inputs: Iterable[str], opts: BackfillOptions, **kw: Any) -> BackfillSummary:
    """Run one backfill (see Backfill)."""
    return Backfill(opts, **kw).run(inputs)
