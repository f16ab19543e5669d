"""IndexWriter: the write side of an index: the lock, add, remove, compact, each one commit.

Writers hold an exclusive lock (``LOCK``), write new segment files, fsync them and atomically
replace the manifest (engine/index/manifest.py); a writer killed at any point leaves the
previous manifest, i.e. the previous index, in force, and a failed write removes the files it
left (`_rollback`; else the next writer does).  Readers never lock: they hold an
`IndexSnapshot`.  The writer keeps one too (`view`: the state after its last commit, used to
check ids and to find rows), refreshed incrementally at the start and end of every write;
`snapshot()` hands it out.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Container, Iterable, Iterator, Sequence

import numpy as np

from engine import signals
from engine.errors import InputError, VmatchError, check_compatible, storage_error
from engine.features import Signatures, TmkFeatures
from engine.index import borders as borders_mod
from engine.index import coarse as coarse_mod
from engine.index.manifest import (COARSE_KINDS, STORE_KINDS, FileRef, IndexFormatError, IndexLockedError, Manifest,
                                   read_manifest, write_manifest)
from engine.index.segment import Prepared, SegmentWriter, prepare, read_checked, write_small_file
from engine.index.shards import _Shard, _ShardBase, shard_of
from engine.index.snapshot import IndexSnapshot
from engine.inputs import id_problem
from engine.progress import ProgressFn
from kernels.params import DEFAULT_PARAMS, TmkParams

__all__ = ["IndexWriter", "LOCK_NAME", "create_index"]

LOG = logging.getLogger(__name__)
LOCK_NAME = "LOCK"


def create_index(path: str | os.PathLike[str], shards: int = 4, coarse: str = "flat", store: str = "fp32",
                 params: TmkParams = DEFAULT_PARAMS, ivf_nlist: int = 0, ivf_nprobe: int = 16) -> Path:
    """Make an empty index directory (refused if `path` already holds anything)."""
    root = Path(path)
    if coarse not in COARSE_KINDS:
        raise IndexFormatError(root, f"unknown coarse index kind {coarse!r} (expected {', '.join(COARSE_KINDS)})")
    if store not in STORE_KINDS:
        raise IndexFormatError(root, f"unknown store kind {store!r} (expected {', '.join(STORE_KINDS)})")
    if shards < 1:
        raise IndexFormatError(root, f"shard count must be at least 1 (got {shards})")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise IndexFormatError(root, "already exists and is not an empty directory")
    root.mkdir(parents=True, exist_ok=True)
    write_manifest(root, Manifest(params=params, shards=shards, coarse=coarse, store=store,
                                  ivf_nlist=ivf_nlist, ivf_nprobe=ivf_nprobe))
    return root


def _writable(m: Manifest) -> Manifest:
    """A copy of `m` a writer may change (segments, tombstones, retired lists): never the one a
    snapshot holds.  File references and parameters are never changed in place, so they are shared."""
    def seg(s):  # type: ignore[no-untyped-def]
        return dataclasses.replace(s, deleted=list(s.deleted))
    return dataclasses.replace(m, segments=[[seg(s) for s in shard] for shard in m.segments],
                               retired=list(m.retired), borders=[seg(s) for s in m.borders])


class IndexWriter:
    """The writer of one index (see the module docstring); options are the `IndexSnapshot.open` ones
    of its view (default device: cpu)."""

    def __init__(self, path: str | os.PathLike[str], lock_timeout_s: float | None = None, *,
                 view: IndexSnapshot | None = None, **options: Any) -> None:
        self.root = Path(path)
        self._options = {"device": "cpu", **options}
        #: The state after this writer's last commit (or `refresh`); lazily loaded.
        self.view = view if view is not None else IndexSnapshot.open(self.root, load=False, **self._options)
        self._shared = False          # view handed out by snapshot(): refresh copies, never updates it
        #: How long a writer waits for another process's add or remove to commit.
        self.lock_timeout_s = 600.0 if lock_timeout_s is None else lock_timeout_s
        #: How long files replaced by `compact` stay for readers of older manifests.
        self.retire_after_s = 3600.0

    @classmethod
    def create(cls, path: str | os.PathLike[str], shards: int = 4, coarse: str = "flat", store: str = "fp32",
               params: TmkParams = DEFAULT_PARAMS, ivf_nlist: int = 0, ivf_nprobe: int = 16,
               **options: Any) -> "IndexWriter":
        """Make an empty index directory and return its writer."""
        return cls(create_index(path, shards, coarse, store, params, ivf_nlist, ivf_nprobe), **options)

    @property
    def params(self) -> TmkParams:
        return self.view.params

    @property
    def manifest(self) -> Manifest:
        return self.view.manifest

    # ------------------------------------------------------------------ the writer's view
    def refresh(self) -> bool:
        """Pick up what other writers committed (incrementally); whether the view changed."""
        old = self.view
        new = old._refreshed(own=not self._shared)
        if new is not old:
            self.view, self._shared = new, False
        return new is not old or not old.is_loaded

    def reload(self) -> None:
        """Re-read the committed state from scratch (nothing loaded until used)."""
        self.view, self._shared = self.view._derive(self.view._restricted(read_manifest(self.root))), False

    def snapshot(self, **options: Any) -> IndexSnapshot:
        """An immutable snapshot of the state after this writer's last commit (its own view, loaded;
        with options, a new one opened with them)."""
        if options:
            return IndexSnapshot.open(self.root, **{**self._options, **options})
        view = self.view.loaded()
        self.view, self._shared = view, True
        return view

    def _state(self) -> list[_ShardBase]:
        if not self.view.is_loaded:
            self.view = self.view.loaded()
        return self.view._state()

    def _locations(self) -> dict[str, tuple[int, int]]:
        self._state()
        return self.view._locations()

    # ------------------------------------------------------------------------ writing
    @contextmanager
    def _writing(self) -> Iterator[Manifest]:
        """Exclusive writer section on the latest manifest (a private copy: the snapshots holding
        the committed one never see it change); leftovers of crashed writers are removed."""
        try:
            fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # read-only mount, permission: a one-line refusal, reading still works
            raise storage_error(e, self.root) from None
        try:
            deadline = time.monotonic() + self.lock_timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise IndexLockedError(self.root, f"another process has been writing to this index "
                                                          f"for over {self.lock_timeout_s:g} s") from None
                    time.sleep(0.05)
            self.refresh()        # incremental: an add does not reload the whole index
            m = _writable(self.view.manifest)
            self._remove_orphans(m)
            try:
                yield m
            except OSError as e:
                if isinstance(e, VmatchError):
                    raise
                # disk full and the like: the manifest was not replaced, so the index is as it was;
                # the files this writer left were removed (_rollback), else the next writer does
                raise storage_error(e, self.root, "nothing was changed") from None
        finally:
            os.close(fd)
            self.refresh()

    @contextmanager
    def _rollback(self, writers: dict[int, SegmentWriter]) -> Iterator[None]:
        """On any failure inside: close the new segment files and delete every file the committed
        manifest does not list (read again from disk: `m` may already name the new segments, or,
        in `compact`, no longer name the live ones), then re-raise the failure itself."""
        try:
            yield
        except BaseException:
            for w in writers.values():
                w.abort()
            try:
                self._remove_orphans(read_manifest(self.root))
            except Exception as e:  # the failure that matters is the one being raised
                LOG.warning("%s: could not remove the files of the failed write (%s)", self.root, e)
            raise

    def _remove_orphans(self, m: Manifest) -> None:
        """Delete files no manifest lists (a crashed writer's) and retired files past their grace."""
        now = time.time()
        for t, files in [r for r in m.retired if now - r[0] >= self.retire_after_s]:
            for f in files:
                (self.root / f.name).unlink(missing_ok=True)
        m.retired = [r for r in m.retired if now - r[0] < self.retire_after_s]
        live = {f.name for f in m.all_files()} | {f.name for _, files in m.retired for f in files}
        for p in [*self.root.glob("shard-*/*"), *self.root.glob("ivf-trained-*"),
                  *self.root.glob(f"{borders_mod.BORDERS_DIR}/*")]:
            if p.relative_to(self.root).as_posix() not in live:
                p.unlink(missing_ok=True)
        for p in self.root.glob(".*.tmp"):
            p.unlink(missing_ok=True)

    def _check_new_ids(self, ids: Sequence[str], sources: Sequence[str], existing: Container[str]) -> None:
        seen: dict[str, str] = {}
        for i, src in zip(ids, sources):
            if not i:
                raise IndexFormatError(src, "empty item id; nothing was added")
            why = id_problem(i)  # the one id rule (engine.inputs): no control characters
            if why:
                raise InputError(src, f"{why}; nothing was added")
            if i in seen:
                raise IndexFormatError(src, f"duplicate id {i!r} in this batch (also {seen[i]}); nothing was added")
            if i in existing:
                raise IndexFormatError(src, f"id {i!r} is already in the index; nothing was added")
            seen[i] = src

    def add(self, items: Iterable[TmkFeatures | Signatures], ids: Sequence[str] | None = None,
            sources: Sequence[str] | None = None, progress: ProgressFn | None = None) -> int:
        """Add in-memory signatures (id = ``ids[i]`` or the signature's name) in one transaction.

        A ``Signatures`` item with a border-cropped signature stores it in the side table."""
        items = list(items)
        ids = list(ids) if ids is not None else [f.name for f in items]
        sources = list(sources) if sources is not None else list(ids)
        jobs = [(lambda f=f: f) for f in items]
        return self._add_jobs(ids, sources, jobs, progress)

    def add_paths(self, paths: Sequence[str | os.PathLike[str]], hasher: object | None = None,
                  progress: ProgressFn | None = None, workers: int = 8) -> int:
        """Add `.tmk` files (read in parallel) or videos (hashed with `hasher`); id = file stem.

        ``X.borders.tmk`` given with ``X.tmk`` is X's border-cropped signature, not an item; a
        hasher whose ``hash`` returns ``Signatures`` (engine/borders.py) stores videos' borders too.
        """
        from engine.tmkfile import read_tmk

        paths, sidecars = borders_mod.split_sidecars([Path(p) for p in paths])
        jobs: list[Callable[[], TmkFeatures | Signatures]] = []
        one_video_at_a_time = threading.Lock()   # the hasher is stateful and parallel inside

        def hash_video(p: Path, h: object) -> TmkFeatures:
            with one_video_at_a_time:
                return h.hash(p)  # type: ignore[attr-defined]

        if paths and not sidecars and all(p.suffix.lower() == ".tmk" for p in paths):
            return self._add_tmk_files(paths, progress)
        for p in paths:
            if p in sidecars:
                jobs.append(lambda p=p: Signatures(read_tmk(p), read_tmk(sidecars[p])))
            elif p.suffix.lower() == ".tmk":
                jobs.append(lambda p=p: read_tmk(p))
            else:
                if hasher is None:
                    from engine.hasher import VideoHasher
                    hasher = VideoHasher(self.params)
                jobs.append(lambda p=p, h=hasher: hash_video(p, h))
        return self._add_jobs([p.stem for p in paths], [str(p) for p in paths], jobs, progress, workers)

    def _add_tmk_files(self, paths: Sequence[Path], progress: ProgressFn | None) -> int:
        """Add `.tmk` files through the bulk pipeline (engine/index/segment.py `add_tmk_files`:
        chunks read and prepared on every core while the previous one is written)."""
        from engine.index.segment import add_tmk_files

        ids, sources = [p.stem for p in paths], [str(p) for p in paths]
        with self._writing() as m:
            self._check_new_ids(ids, sources, self._locations())   # a dict: no O(N) copy per commit
            name = f"seg-{m.generation + 1:08d}-{uuid.uuid4().hex[:8]}"
            writers: dict[int, SegmentWriter] = {}
            with self._rollback(writers):
                add_tmk_files(self.root, name, paths, ids, sources, self.params, m.store,
                              lambda i: shard_of(i, m.shards), writers, progress)
                self._finish_add(m, writers)
        return len(ids)

    def add_signal_list(self, path: str | os.PathLike[str], progress: ProgressFn | None = None,
                        workers: int = 8) -> int:
        """Add the signals of a list file (``[tmk_pdqf ]SIGNAL[<TAB>ID]`` per line, engine.signals)
        in one transaction: any bad line, duplicate or existing id adds nothing.

        An entry without an id gets `signals.content_id` of its bytes.  The list is read twice
        (ids first, then each signal again by its byte offset when it is stored), so memory
        holds one batch of signatures, not the whole list.
        """
        where = str(Path(path))
        ids, sources, offsets = [], [], []
        with open(path, "rb") as fh:
            pos = 0
            for n, raw in enumerate(fh, 1):
                at, start, pos = f"{where}:{n}", pos, pos + len(raw)
                try:
                    entry = signals.parse_line(raw.decode("ascii"), n)
                except UnicodeDecodeError:
                    raise signals.SignalError(at, "not ASCII text; nothing was added") from None
                except signals.SignalError as e:
                    raise signals.SignalError(at, f"{e.reason}; nothing was added") from None
                if entry is None:
                    continue
                try:
                    data = signals.decode_bytes(entry.signal, at, self.params)
                except signals.SignalError as e:
                    raise signals.SignalError(at, f"{e.reason}; nothing was added") from None
                ids.append(entry.id if entry.id is not None else signals.content_id(data))
                sources.append(at)
                offsets.append(start)

        def load(at: str, offset: int) -> TmkFeatures:
            with open(path, "rb") as fh:
                fh.seek(offset)
                entry = signals.parse_line(fh.readline().decode("ascii"))
            assert entry is not None, at
            return signals.decode(entry.signal, at, self.params)

        jobs = [lambda a=a, o=o: load(a, o) for a, o in zip(sources, offsets)]
        return self._add_jobs(ids, sources, jobs, progress, workers)

    def _add_jobs(self, ids: list[str], sources: list[str], jobs: list[Callable[[], TmkFeatures | Signatures]],
                  progress: ProgressFn | None, workers: int = 8, chunk: int = 256) -> int:
        with self._writing() as m:
            self._check_new_ids(ids, sources, self._locations())   # a dict: no O(N) copy per commit
            name = f"seg-{m.generation + 1:08d}-{uuid.uuid4().hex[:8]}"
            writers: dict[int, SegmentWriter] = {}
            store = m.store
            border_rows: list[Prepared] = []

            def load(k: int) -> Prepared:
                f = jobs[k]()
                extra = None
                if isinstance(f, Signatures):
                    f, extra = f.main, f.borders
                for g in (f, extra):
                    if g is not None:
                        check_compatible(self.params, g.params, sources[k], "the index's")  # the one check
                if extra is not None:   # list.append is atomic: safe from the loader threads
                    border_rows.append(prepare(extra, ids[k], sources[k], borders_mod.BORDER_STORE))
                return prepare(f, ids[k], sources[k], store)

            with self._rollback(writers):
                with ThreadPoolExecutor(max_workers=workers) as ex:
                    pending: list[Future[Prepared]] = []
                    for s in range(0, len(jobs) + chunk, chunk):
                        batch = [f.result() for f in pending]   # chunk s-1 while chunk s loads
                        pending = [ex.submit(load, k) for k in range(s, min(s + chunk, len(jobs)))]
                        for it in batch:
                            sid = shard_of(it.id, m.shards)
                            if sid not in writers:
                                writers[sid] = SegmentWriter(self.root, sid, name)
                            writers[sid].append([it])
                        if progress and batch:
                            progress(len(batch))
                if border_rows:
                    bw = writers[-1] = borders_mod.border_writer(self.root, name)
                    order = {i: k for k, i in enumerate(ids)}
                    bw.append(sorted(border_rows, key=lambda it: order[it.id]))
                self._finish_add(m, writers)
        return len(ids)

    def _finish_add(self, m: Manifest, writers: dict[int, SegmentWriter]) -> None:
        if not writers:
            return
        trained = None
        if -1 in writers:                    # the border side table (engine/index/borders.py)
            m.borders.append(writers.pop(-1).finish())
        if m.coarse == "ivf":
            if m.ivf_trained is None:
                vecs = np.concatenate([np.stack(w.l1_rows) for w in writers.values()])
                m.ivf_nlist = coarse_mod.ivf_nlist(len(vecs), m.ivf_nlist)
                m.ivf_trained = write_small_file(self.root, f"ivf-trained-{uuid.uuid4().hex[:8]}.faiss",
                                                 coarse_mod.train_ivf(vecs, m.ivf_nlist))
            trained = read_checked(self.root, m.ivf_trained)
        for sid in sorted(writers):
            w = writers[sid]
            ivf = coarse_mod.ivf_lists(trained, np.stack(w.l1_rows)) if trained is not None else None
            m.segments[sid].append(w.finish(ivf))
        m.generation += 1
        write_manifest(self.root, m)

    def remove(self, ids: Sequence[str]) -> int:
        """Tombstone items by id (all or nothing: an unknown id is an error)."""
        with self._writing() as m:
            where = self._locations()
            missing = [i for i in ids if i not in where]
            if missing:
                raise IndexFormatError(self.root, f"no such id{'s' if len(missing) > 1 else ''}: "
                                                  f"{', '.join(map(repr, missing[:5]))}; nothing was removed")
            shards = self._state()
            for i in dict.fromkeys(ids):
                sid, row = where[i]
                s, local = shards[sid].locate(row)
                m.segments[sid][s].deleted.append(local)
            borders_mod.tombstone(self.root, m, list(ids))
            m.generation += 1
            write_manifest(self.root, m)
        return len(set(ids))

    @staticmethod
    def _tail_start(counts: Sequence[int]) -> int:
        """Where the small segments at the end of a shard begin: walking back from the last one, a
        segment joins the tail while it holds no more rows than the tail after it (size tiers: each
        row is rewritten O(log n) times, a large first segment is left alone)."""
        j, acc = len(counts), 0
        while j > 0 and (j == len(counts) or counts[j - 1] <= acc):
            acc += counts[j - 1]
            j -= 1
        return j

    def compact(self, tail: int = 0) -> int:
        """Rewrite every shard that has tombstones or several segments as one segment of its live
        rows (rows copied as stored, checksums checked on the way); returns the shards rewritten.

        ``tail > 0``: only shards with more than `tail` segments, and only their small trailing
        segments (`_tail_start`, and enough of them to leave at most ``tail // 2 + 1``) are merged
        into one; the cheap form a long-running writer such
        as ``vmatch serve`` runs after its commits (the border side table is left as it is).
        The replaced files are listed as retired and deleted by a writer `retire_after_s` later,
        since a reader holding an older manifest may still open them.
        """
        with self._writing() as m:
            shards = self._state()
            name = f"seg-{m.generation + 1:08d}-{uuid.uuid4().hex[:8]}"
            trained = read_checked(self.root, m.ivf_trained) if m.ivf_trained else None
            writers: dict[int, SegmentWriter] = {}
            keep: dict[int, int] = {}          # shard -> segments left as they are (a prefix)
            with self._rollback(writers):
                for sid, sh in enumerate(shards):
                    segs = m.segments[sid]
                    if tail > 0:
                        if len(segs) <= tail:
                            continue
                        # at most tail // 2 segments stay, so the next merge is tail // 2 commits away
                        keep[sid] = min(self._tail_start([s.count - len(s.deleted) for s in segs]), tail // 2)
                        if len(segs) - keep[sid] < 2:
                            continue
                    elif not (len(segs) > 1 or any(s.deleted for s in segs)):
                        continue
                    writers[sid] = SegmentWriter(self.root, sid, name)
                    self._copy_live(sh, segs, writers[sid], keep.get(sid, 0))
                retired: list[FileRef] = []
                for sid, w in writers.items():
                    k = keep.get(sid, 0)
                    retired += [f for s in m.segments[sid][k:] for f in (s.l1, s.store, s.ids, s.ivf) if f]
                    ivf = coarse_mod.ivf_lists(trained, np.stack(w.l1_rows)) if trained and w.count else None
                    m.segments[sid] = m.segments[sid][:k] + ([w.finish(ivf)] if w.count else [])
                retired_borders = borders_mod.compact_table(self.root, m, name) if tail <= 0 else None
                if writers or retired_borders is not None:
                    m.retired.append((time.time(), retired + (retired_borders or [])))
                    m.generation += 1
                    write_manifest(self.root, m)
        return len(writers)

    def _copy_live(self, sh: _Shard, segs: list, w: SegmentWriter, start: int = 0, batch: int = 256) -> None:
        for k, (seg, reader) in enumerate(zip(segs, sh.readers)):
            if k < start:
                continue
            cols = json.loads(read_checked(self.root, seg.ids))
            live = np.setdiff1d(np.arange(seg.count), np.asarray(seg.deleted, dtype=np.int64))
            for s in range(0, len(live), batch):
                idx = live[s:s + batch]
                data = reader.rows(idx)
                w.append([Prepared(cols["id"][i], cols["source"][i], cols["frame_count"][i],
                                   sh.l1[sh.first[k] + i], (data[j],), cols["row_sum64"][i],
                                   cols["content_hash"][i], cols["time_added"][i])
                          for j, i in enumerate(idx.tolist())])

