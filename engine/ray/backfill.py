"""The backfill driver: list inputs into the ledger, keep Ray workers busy, write results.

Flow: inputs are streamed into the ledger (`Ledger.scan`), then this run's pending rows are read
page by page and handed to a fixed pool of `HashWorker` actors, one video at a time each
(backpressure: memory does not grow with the input, and the per-video timeout is exact).
Finished videos come back as `.tmk` bytes; the driver writes them atomically and/or adds them
to an index in batches, and records every outcome in the ledger.

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
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from engine.ray.actors import FeatureWorker, HashWorker, HasherFactory
from engine.ray.cluster import RaySession, connect
from engine.ray.ledger import Item, Ledger
from engine.tmkfile import TmkFormatError, atomic_write_bytes, from_bytes
from kernels.params import DEFAULT_PARAMS, TmkParams
from engine.errors import VmatchError, check_compatible

LEDGER_NAME = "backfill.ledger.sqlite"
#: A run whose workers all stay unstarted (no free resources in the cluster) this long gives up.
WORKER_START_TIMEOUT_S = 600.0
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


class _Slot:
    """One worker: its actor, state (starting | idle | busy) and the task it runs."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.actor: Any = None
        self.feature: Any = None
        self.ref: Any = None
        self.state = "idle"
        self.item: Item | None = None
        self.token = ""
        self.started = 0.0
        self.pid = 0


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
        from engine.ray.cluster import ray_config

        self.opts = opts
        self.rc = ray_config(opts.ray)
        self.quiet, self.hooks, self.hasher_factory = quiet, hooks, hasher_factory
        if not opts.outdir and not opts.index:
            raise BackfillError("nothing to write: give an output folder (-d) and/or an index (--index)")
        self.index: Any = None
        self.summary = BackfillSummary()
        self._pending_done: dict[int, tuple[int, float]] = {}
        self._pending_failed: list[tuple[int, str, str]] = []
        self._index_buf: list[tuple[Item, Any, int, float]] = []
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
                if hasattr(self, "ledger"):
                    self.ledger.close()
                if hasattr(self, "reporter"):
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
        import ray

        todo = self.ledger.counts(run).get("pending", 0)
        if todo == 0:
            return
        rc = self.rc
        cpa = float(rc["cpus_per_actor"] or 1)
        n = int(rc["decode_actors"] or max(1, int(session.cpus / cpa + 1e-9)))
        n = max(1, min(n, todo))
        settings = self._worker_settings(mode)
        self.features: list[Any] = []
        self.summary.workers, self.summary.feature_workers = n, n_feat
        self._actor_cls = ray.remote(HashWorker).options(num_cpus=cpa, max_restarts=0, max_task_retries=0)
        self._settings_ref = settings
        slots = [_Slot(i) for i in range(n)]
        try:
            if n_feat:
                feat_cls = ray.remote(FeatureWorker).options(num_gpus=float(rc["gpus_per_worker"]), num_cpus=0,
                                                             max_restarts=-1, max_task_retries=0)
                self.features = [feat_cls.remote(self.opts.params, mode, self.opts.fast_exact_below,
                                                 rc["torch_threads"]) for _ in range(n_feat)]
                try:
                    ray.get([f.ready.remote() for f in self.features], timeout=600)
                except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as e:
                    raise BackfillError(f"cannot start GPU feature workers: {_first_line(e)}") from None
            self._t_work = time.monotonic()
            for sl in slots:
                self._start(sl)
            self._t_first: float | None = None
            self._loop(run, slots, settings)
            if self._t_first is not None:
                self.summary.hash_seconds = time.monotonic() - self._t_first
        finally:  # free the cluster's resources even when the run is interrupted
            for a in [sl.actor for sl in slots if sl.actor is not None] + self.features:
                try:
                    ray.kill(a, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass

    def _loop(self, run: int, slots: list[_Slot], settings: dict[str, Any]) -> None:
        import ray

        n, rc = len(slots), self.rc
        items: Iterator[Item] = self.ledger.pending(run)
        retry: deque[Item] = deque()
        exhausted = False
        start_failures = 0
        timeout = settings["timeout_s"]
        deadline_s = None if timeout is None else float(timeout) + float(rc["kill_grace_s"])
        t_progress = time.monotonic()

        def next_item() -> Item | None:
            nonlocal exhausted
            if retry:
                return retry.popleft()
            if exhausted:
                return None
            it = next(items, None)
            if it is None:
                exhausted = True
            return it

        while True:
            for sl in slots:
                if sl.state == "idle":
                    it = next_item()
                    if it is None:
                        break
                    self._submit(sl, it)
            if exhausted and not retry and not any(sl.state == "busy" for sl in slots):
                break  # all done (a worker that never got started does not hold the run)
            busy = {sl.ref: sl for sl in slots if sl.ref is not None}
            if all(sl.state == "starting" for sl in slots):
                if time.monotonic() - t_progress > WORKER_START_TIMEOUT_S:
                    raise BackfillError(f"no hash worker started in {WORKER_START_TIMEOUT_S:g} s "
                                        f"(does the cluster have {rc['cpus_per_actor']} free CPU per worker?)")
            else:
                t_progress = time.monotonic()
            if not busy:
                break
            ready, _ = ray.wait(list(busy), num_returns=1, timeout=0.25)
            if ready:
                more, _ = ray.wait(list(busy), num_returns=len(busy), timeout=0)
                ready = list(dict.fromkeys(ready + more))
            for ref in ready:
                sl = busy[ref]
                sl.ref = None
                if sl.state == "starting":
                    try:
                        sl.pid = ray.get(ref)
                        sl.state = "idle"
                        if self._t_first is None:
                            self._t_first = time.monotonic()
                        self._event("worker_ready", slot=sl.n, pid=sl.pid)
                    except ray.exceptions.RayError as e:
                        start_failures += 1
                        if start_failures > 3 * n:
                            raise BackfillError(f"cannot start hash workers: {_first_line(e)}") from None
                        self._start(sl)
                    continue
                it = sl.item
                assert it is not None
                sl.item, sl.state = None, "idle"
                try:
                    res = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                        ray.exceptions.ObjectLostError, ray.exceptions.OutOfMemoryError) as e:
                    self._worker_died(sl, it, retry, e)
                    continue
                except ray.exceptions.RayTaskError as e:
                    self._failed(it, "error", _first_line(e.cause if getattr(e, "cause", None) else e))
                    continue
                if res.get("ok"):
                    nxt = next_item()  # keep the worker busy while this result is written
                    if nxt is not None:
                        self._submit(sl, nxt)
                    self._finished(it, res)
                elif res.get("kind") == "lost":
                    self._retry(it, retry, res.get("reason", "feature worker lost"))
                else:
                    self._failed(it, res["kind"], res["reason"])
                    if res.get("recycle"):
                        self._replace(sl)
            if deadline_s is not None:
                now = time.monotonic()
                for sl in slots:
                    if sl.state == "busy" and now - sl.started > deadline_s:
                        it = sl.item
                        assert it is not None
                        self._event("kill", slot=sl.n, pid=sl.pid, path=it.path)
                        self.summary.killed += 1
                        self._failed(it, "timeout", f"decode timed out after {float(timeout):g} s (worker killed)")
                        sl.item = None
                        self._replace(sl)
            self._flush()
        self._flush_index()

    def _start(self, sl: _Slot) -> None:
        feature = self.features[sl.n % len(self.features)] if self.features else None
        sl.feature = feature
        sl.actor = self._actor_cls.remote(self._settings_ref, feature, self.hasher_factory)
        sl.ref, sl.state, sl.item = sl.actor.ready.remote(), "starting", None

    def _replace(self, sl: _Slot) -> None:
        import ray

        if sl.feature is not None and sl.token:
            sl.feature.abort.remote(sl.token)
        try:
            ray.kill(sl.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead
            pass
        self._start(sl)

    def _submit(self, sl: _Slot, it: Item) -> None:
        sl.item, sl.state, sl.started = it, "busy", time.monotonic()
        sl.token = f"{it.id}.{it.attempts}.{sl.n}.{time.monotonic_ns()}"
        sl.ref = sl.actor.hash.remote(it.id, it.path, sl.token)
        self._event("submit", slot=sl.n, pid=sl.pid, path=it.path, id=it.id)

    def _worker_died(self, sl: _Slot, it: Item, retry: deque, e: BaseException) -> None:
        self._event("worker_died", slot=sl.n, pid=sl.pid, path=it.path)
        self._retry(it, retry, f"worker died ({type(e).__name__})")
        self._replace(sl)

    def _retry(self, it: Item, retry: deque, why: str) -> None:
        with self.ledger.transaction():
            it.attempts = self.ledger.add_attempt(it.id)
        if it.attempts >= int(self.rc["max_attempts"]):
            self._failed(it, "crash", f"{why}; gave up after {it.attempts} attempts")
        else:
            self.summary.retried += 1
            retry.append(it)

    # ------------------------------------------------------------------ results
    def _failed(self, it: Item, kind: str, reason: str) -> None:
        self._pending_failed.append((it.id, kind, reason))
        self._count_failure(it.path, kind, reason)
        self.reporter.update(failed=self.summary.failed)

    def _finished(self, it: Item, res: dict[str, Any]) -> None:
        tmk: bytes = res["tmk"]
        frames, secs = int(res["frames"]), float(res["seconds"])
        if self.opts.outdir:
            target = Path(self.opts.outdir) / f"{it.name}.tmk"
            try:
                atomic_write_bytes(target, tmk)
            except OSError as e:
                self._failed(it, "write", f"cannot write {target} ({e.strerror or e})")
                return
        self.summary.frames += frames
        if self.index is not None:
            try:
                feats = from_bytes(tmk, it.name)
            except TmkFormatError as e:
                self._failed(it, "error", e.reason)
                return
            feats.name = it.name
            self._index_buf.append((it, feats, frames, secs))
            if len(self._index_buf) >= int(self.rc["index_batch"]):
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
        if not hasattr(self, "ledger"):
            return
        with self.ledger.transaction():
            self.ledger.set_done(list(self._pending_done), self._pending_done)
            for i, kind, reason in self._pending_failed:
                self.ledger.set_failed(i, kind, reason)
        self._pending_done.clear()
        self._pending_failed.clear()
        self._last_commit = time.monotonic()

    def _flush_index(self) -> None:
        """Add the buffered signatures to the index in one commit, bracketed by ledger updates."""
        buf, self._index_buf = self._index_buf, []
        if not buf:
            return
        from engine.index import VideoIndexError

        self._flush(force=True)
        self.index.reload()
        taken = [b for b in buf if b[0].name in self.index]
        for it, *_ in taken:
            self._failed(it, "index", f"id {it.name!r} is already in the index {self.opts.index} "
                                      f"(added by something else, or the video changed: remove it first)")
        buf = [b for b in buf if b[0].name not in self.index]
        if not buf:
            self._flush(force=True)
            return
        batch = self.ledger.next_batch()
        with self.ledger.transaction():
            self.ledger.set_indexing([b[0].id for b in buf], batch, {b[0].id: (b[2], b[3]) for b in buf})
        self._event("index_commit", batch=batch, size=len(buf))
        try:
            self.index.add([b[1] for b in buf], ids=[b[0].name for b in buf], sources=[b[0].path for b in buf])
        except (VideoIndexError, TmkFormatError, OSError) as e:
            for it, *_ in buf:
                self._failed(it, "index", f"index add failed: {_first_line(e)}")
            self._flush(force=True)
            return
        self._event("index_committed", batch=batch, size=len(buf))
        with self.ledger.transaction():
            self.ledger.set_done([b[0].id for b in buf])
        self.summary.done += len(buf)


def _first_line(e: BaseException | str) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def backfill(inputs: Iterable[str], opts: BackfillOptions, **kw: Any) -> BackfillSummary:
    """Run one backfill (see Backfill)."""
    return Backfill(opts, **kw).run(inputs)
