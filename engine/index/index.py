"""VideoIndex: a sharded, append-only bank of TMK signatures with two-stage matching.

Layout: ``MANIFEST.json`` (the committed state) plus immutable segment files under
``shard-NNN/`` (see segment.py).  Writers hold an exclusive lock (``LOCK``), write new segment
files, fsync them and atomically replace the manifest; readers never lock: they read the
manifest once and map the files it lists, so a writer can add while readers query, and a
writer killed at any point leaves the previous manifest, i.e. the previous index, in force.
"""
from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Container, Iterable, Iterator, Sequence

import numpy as np
import torch

from engine import signals
from engine.errors import InputError, VmatchError, check_compatible, storage_error
from engine.features import Signatures, TmkFeatures
from engine.index import borders as borders_mod
from engine.inputs import id_problem
from engine.index import coarse as coarse_mod
from engine.index.cluster import ClusterStats, cluster_pairs
from engine.index.level2 import PairScorer
from engine.index.manifest import (COARSE_KINDS, MANIFEST_NAME, STORE_KINDS, FileRef, IndexCorruptError, IndexLockedError,
                                   IndexFormatError, Manifest, describe,
                                   read_manifest, write_manifest)
from engine.index.segment import (Prepared, SegmentReader, SegmentWriter, prepare, read_checked, unit_average,
                                  write_small_file)
from engine.tmkfile import TmkFormatError
from kernels.device import resolve_device, strict_float
from kernels.params import DEFAULT_PARAMS, TmkParams
from kernels.score import level1

LOCK_NAME = "LOCK"
#: Largest flat index whose clusters use the exact (all-pairs, in BLAS) candidate search by default.
EXACT_CLUSTER_LIMIT = 100_000
from engine.progress import ProgressFn  # noqa: E402  (one progress type: engine.progress)


def shard_of(item_id: str, shards: int) -> int:
    """Stable shard of an id (independent of Python's per-process hash seed)."""
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little") % shards


@dataclass
class Match:
    """One needle-item pair that passed both levels; offsets are the best offset per period."""

    needle: str
    id: str
    level1: float
    level2: float
    offsets: list[int] = field(default_factory=list)
    #: --robust only: the variant that matched (engine/robust.py), e.g. "hflip", "borders".
    variant: str = ""


@dataclass
class QueryStats:
    """What the last query did: needles, level-1 candidates, level-2 pairs scored, matches."""

    needles: int = 0
    candidates: int = 0
    scored: int = 0
    matches: int = 0
    seconds: float = 0.0


@dataclass
class _Needles:
    names: list[str]
    unit: np.ndarray          # [Q, d] float32 unit averages
    cos: torch.Tensor         # [Q, P, m, d] float32 on the device
    sin: torch.Tensor


@dataclass
class _Pairs:
    needle: np.ndarray        # int64 [K]
    shard: np.ndarray         # int64 [K]
    row: np.ndarray           # int64 [K] row within the shard
    l1: np.ndarray            # float32 [K]

    def take(self, mask: np.ndarray) -> "_Pairs":
        return _Pairs(self.needle[mask], self.shard[mask], self.row[mask], self.l1[mask])

    @staticmethod
    def concat(parts: Sequence["_Pairs"]) -> "_Pairs":
        if not parts:
            z = np.zeros(0, np.int64)
            return _Pairs(z, z, z, np.zeros(0, np.float32))
        return _Pairs(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("needle", "shard", "row", "l1")))


class _ShardBase:
    n: int
    first: np.ndarray        # first shard row of each segment, then n
    ids: list[str]
    l1: np.ndarray
    deleted: np.ndarray
    searcher: coarse_mod.Coarse

    def live_rows(self) -> np.ndarray:
        return np.nonzero(~self.deleted)[0]

    def rows(self, rows: np.ndarray) -> np.ndarray | torch.Tensor:
        raise NotImplementedError


class _MemoryShard(_ShardBase):
    """A bank held in memory (e.g. GPU-resident float16 rows): same queries, no files."""

    def __init__(self, ids: Sequence[str], l1: np.ndarray, rows: torch.Tensor, device: torch.device) -> None:
        self.ids, self.l1, self._rows = list(ids), np.ascontiguousarray(l1, dtype=np.float32), rows
        self.n = len(self.ids)
        self.first = np.array([0, self.n], dtype=np.int64)
        self.deleted = np.zeros(self.n, dtype=bool)
        self.searcher = coarse_mod.build_searcher("flat", self.l1, device)

    def rows(self, rows: np.ndarray) -> torch.Tensor:
        return self._rows[torch.from_numpy(rows).to(self._rows.device)]


class _Shard(_ShardBase):
    """Read-only view of one shard at one manifest: segments, row offsets, tombstones, searcher."""

    def __init__(self, root: Path, m: Manifest, sid: int, device: torch.device, verify_reads: bool,
                 nprobe: int) -> None:
        segs = m.segments[sid]
        self.readers = [SegmentReader(root, s, m.params, m.store, verify_reads) for s in segs]
        counts = [s.count for s in segs]
        self.first = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.n = int(self.first[-1])
        d = m.params.dim
        # one resident copy of the level-1 vectors (plus faiss's)
        self.l1 = np.concatenate([r.load_l1() for r in self.readers]) if self.readers else np.zeros((0, d), np.float32)
        self.ids: list[str] = [i for r in self.readers for i in r.ids]
        self.deleted = np.zeros(self.n, dtype=bool)
        for s, f in zip(segs, self.first):
            self.deleted[np.asarray(s.deleted, dtype=np.int64) + f] = True
        trained = read_checked(root, m.ivf_trained) if (m.coarse == "ivf" and m.ivf_trained) else None
        ivfs = [(read_checked(root, s.ivf), int(f)) for s, f in zip(segs, self.first) if s.ivf is not None]
        self.searcher = coarse_mod.build_searcher(m.coarse, self.l1, device, trained, ivfs, nprobe)
        self._l1buf = coarse_mod.GrowingRows.wrap(self.l1)
        self.built_from = [(s.name, len(s.deleted)) for s in segs]

    def extended(self, root: Path, m: Manifest, sid: int, device: torch.device, verify_reads: bool,
                 nprobe: int) -> "_Shard | None":
        """This shard at manifest `m`, reusing what is loaded: None if `m` is not this shard's
        segments plus new ones (a compaction), or the index is IVF (its lists are rebuilt on load).

        Only the new segments are read; their level-1 rows are appended to a shared growing
        buffer (readers of this shard only see its first n rows) and searched exactly until
        they are worth merging into the faiss searcher; new tombstones only change the mask.
        This object is left as it was, so queries running on it are not disturbed.
        """
        segs = m.segments[sid]
        if m.coarse != "flat" or [s.name for s in segs[:len(self.built_from)]] != \
                [n for n, _ in self.built_from]:
            return None
        if len(segs) == len(self.built_from) and all(len(s.deleted) == k for s, (_, k) in zip(segs, self.built_from)):
            return self
        new = [SegmentReader(root, s, m.params, m.store, verify_reads) for s in segs[len(self.built_from):]]
        out = _Shard.__new__(_Shard)
        out.readers = self.readers + new
        out.first = np.concatenate([self.first, self.n + np.cumsum([s.count for s in segs[len(self.built_from):]])
                                    ]).astype(np.int64)
        out.n = int(out.first[-1])
        out._l1buf = self._l1buf.extend(self.n, [r.load_l1() for r in new])
        out.l1 = out._l1buf.view(out.n)
        out.ids = self.ids + [i for r in new for i in r.ids]
        out.deleted = np.zeros(out.n, dtype=bool)
        for s, f in zip(segs, out.first):
            out.deleted[np.asarray(s.deleted, dtype=np.int64) + f] = True
        out.searcher = coarse_mod.appended(self.searcher, out.l1, device)
        out.built_from = [(s.name, len(s.deleted)) for s in segs]
        return out

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Store rows for sorted shard rows, gathered segment by segment."""
        seg = np.searchsorted(self.first, rows, side="right") - 1
        parts = []
        for s in np.unique(seg):
            parts.append(self.readers[s].rows(rows[seg == s] - self.first[s]))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def locate(self, row: int) -> tuple[int, int]:
        s = int(np.searchsorted(self.first, row, side="right") - 1)
        return s, row - int(self.first[s])


class VideoIndex:
    """Create with `VideoIndex.create`, open with `VideoIndex(path)`; see module docstring."""

    def __init__(self, path: str | os.PathLike[str], device: str | torch.device = "auto",
                 verify_reads: bool = True, batch_rows: int = 0, nprobe: int | None = None,
                 grid: int | None = None, prefetch: int = 2) -> None:
        self.root = Path(path)
        self.device = resolve_device(device)
        if self.device.type == "cuda":
            strict_float()
        self.verify_reads, self._nprobe = verify_reads, nprobe
        #: Candidate rows per level-2 batch (0: 512 on CPU, 4096 on CUDA).
        self.batch_rows = batch_rows or (4096 if self.device.type == "cuda" else 512)
        self.prefetch = max(1, prefetch)
        self.manifest = read_manifest(self.root)
        self.params = self.manifest.params
        self._scorer = PairScorer(self.params, self.device, **({"grid": grid} if grid else {}))
        self._shards: list[_ShardBase] | None = None
        self._where: dict[str, tuple[int, int]] | None = None
        self._where_shared = False    # the dict is also a snapshot's: copy before changing it
        self._border_table: borders_mod.BorderTable | None = None
        self._memory = False
        #: How long a writer waits for another process's add or remove to commit.
        self.lock_timeout_s = 600.0
        #: How long files replaced by `compact` stay for readers of older manifests.
        self.retire_after_s = 3600.0
        self.last_stats = QueryStats()
        self.last_cluster_stats = ClusterStats()

    # ----------------------------------------------------------------- creation and state
    @classmethod
    def create(cls, path: str | os.PathLike[str], shards: int = 4, coarse: str = "flat", store: str = "fp32",
               params: TmkParams = DEFAULT_PARAMS, ivf_nlist: int = 0, ivf_nprobe: int = 16,
               **open_kw: object) -> "VideoIndex":
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
        return cls(root, **open_kw)  # type: ignore[arg-type]

    @classmethod
    def in_memory(cls, ids: Sequence[str], unit_averages: np.ndarray, rows: torch.Tensor,
                  params: TmkParams = DEFAULT_PARAMS, device: str | torch.device = "auto",
                  batch_rows: int = 4096) -> "VideoIndex":
        """A read-only index over a bank already in memory: unit averages [N,d], rows [N,2,P,m,d]
        (float32 or float16, on the query device to keep level-2 there).  Used for banks too
        large for the disk at hand, such as the 1M-item GPU benchmark."""
        self = cls.__new__(cls)
        self.root, self.device = Path("<memory>"), resolve_device(device)
        if self.device.type == "cuda":
            strict_float()
        self.verify_reads, self.batch_rows, self._nprobe, self.prefetch = False, batch_rows, None, 1
        self.manifest = Manifest(params=params, shards=1)
        self.params = params
        self._scorer = PairScorer(params, self.device)
        self._shards = [_MemoryShard(ids, unit_averages, rows, self.device)]
        self._where, self._memory, self._where_shared = None, True, False
        self._border_table = None
        self.last_stats = QueryStats()
        self.last_cluster_stats = ClusterStats()
        return self

    def reload(self) -> None:
        """Pick up what other writers committed since this object read the manifest."""
        if self._memory:
            return
        self.manifest = read_manifest(self.root)
        self._shards, self._where, self._border_table = None, None, None

    def border_table(self) -> borders_mod.BorderTable:
        """The border-cropped signatures of this manifest's items (engine/index/borders.py)."""
        if self._border_table is None:
            self._border_table = borders_mod.BorderTable(self.root, self.manifest, self.params, self.verify_reads)
        return self._border_table

    def refresh(self) -> bool:
        """Pick up new commits incrementally (the cheap form of `reload` for long-lived readers):
        shards that only gained segments or tombstones read just the new segment files; a shard
        rewritten by `compact` (or any IVF shard) is loaded afresh.  Always re-reads the manifest;
        returns whether the loaded view changed.  Objects returned by `snapshot` are unaffected.
        """
        if self._memory:
            return False
        m = read_manifest(self.root)
        self.manifest = m
        self._border_table = None     # re-read from the new manifest when --robust needs it
        if self._shards is None:
            self._where = None
            return True
        nprobe = self._nprobe or m.ivf_nprobe
        shards: list[_ShardBase] = []
        changed = False
        for sid, old in enumerate(self._shards):
            sh = old.extended(self.root, m, sid, self.device, self.verify_reads, nprobe) \
                if isinstance(old, _Shard) else None
            if sh is None:
                sh, self._where = _Shard(self.root, m, sid, self.device, self.verify_reads, nprobe), None
            if sh is not old:
                changed = True
                if self._where is not None:
                    self._update_where(sid, old, sh)
            shards.append(sh)
        self._shards = shards
        return changed

    def _update_where(self, sid: int, old: _ShardBase, new: _ShardBase) -> None:
        if self._where_shared:
            self._where, self._where_shared = dict(self._where or {}), False
        where = self._where
        assert where is not None
        for r in np.nonzero(new.deleted[:old.n] & ~old.deleted)[0]:
            if where.get(new.ids[r]) == (sid, int(r)):
                del where[new.ids[r]]
        for r in range(old.n, new.n):
            if not new.deleted[r]:
                where[new.ids[r]] = (sid, r)

    def snapshot(self) -> "VideoIndex":
        """A read-only view of the state loaded now, sharing its memory; later `refresh` calls
        on this object do not change it (a server swaps snapshots in while lookups run)."""
        self._state()
        view = copy.copy(self)
        view._shards = list(self._shards or [])
        self._where_shared = view._where_shared = True
        view.last_stats = QueryStats()
        return view

    def item_info(self, item_id: str) -> dict[str, object]:
        """The stored columns of one live item: id, source, frame_count, content_hash, time_added."""
        where, shards = self._locations(), self._state()
        if item_id not in where:
            raise KeyError(f"{self.root}: no item {item_id!r} in the index")
        si, r = where[item_id]
        sh = shards[si]
        if not isinstance(sh, _Shard):
            return {"id": item_id}
        seg, local = sh.locate(r)
        cols = json.loads(read_checked(self.root, sh.readers[seg].seg.ids))
        return {k: cols[k][local] for k in ("id", "source", "frame_count", "content_hash", "time_added")}

    def _state(self) -> list[_ShardBase]:
        if self._shards is None:
            try:
                self._shards = self._load()
            except IndexCorruptError:
                # files of an old manifest may have been retired after a compaction: retry on the new one
                if read_manifest(self.root).generation == self.manifest.generation:
                    raise
                self.reload()
                self._shards = self._load()
        return self._shards

    def _load(self) -> list[_ShardBase]:
        m = self.manifest
        nprobe = self._nprobe or m.ivf_nprobe
        return [_Shard(self.root, m, i, self.device, self.verify_reads, nprobe) for i in range(m.shards)]

    def _locations(self) -> dict[str, tuple[int, int]]:
        """id -> (shard, row) of every live item."""
        if self._where is None:
            self._where, self._where_shared = {}, False
            for si, sh in enumerate(self._state()):
                for r in sh.live_rows():
                    self._where[sh.ids[r]] = (si, int(r))
        return self._where

    def __len__(self) -> int:
        if self._memory:
            return sum(int((~s.deleted).sum()) for s in self._state())
        return self.manifest.count

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._locations()

    def ids(self) -> list[str]:
        return sorted(self._locations())

    def features(self, ids: Sequence[str]) -> list[TmkFeatures]:
        """The stored signatures of `ids`, in that order (KeyError names an id not in the index).

        The pure average comes back L2-normalised: the index keeps only its direction, which is
        all level-1 uses. Features stored as float16 come back widened to float32; banks built
        in memory carry no frame counts (0).
        """
        where, shards = self._locations(), self._state()
        counts: dict[tuple[int, int], list[int]] = {}
        out = []
        for item_id in ids:
            if item_id not in where:
                raise KeyError(f"{self.root}: no item {item_id!r} in the index")
            si, r = where[item_id]
            sh = shards[si]
            row = sh.rows(np.array([r], dtype=np.int64))
            row = self._scorer.rows_to_device(row).cpu().numpy()[0]
            frames = 0
            if isinstance(sh, _Shard):
                seg, local = sh.locate(r)
                if (si, seg) not in counts:
                    counts[(si, seg)] = sh.readers[seg].frame_counts()
                frames = counts[(si, seg)][local]
            out.append(TmkFeatures(sh.l1[r], row[0], row[1], frames, self.params, item_id))
        return out

    def info(self) -> dict[str, object]:
        return describe(self.root, self.manifest)

    def verify(self) -> None:
        """Check every file and every store row against the manifest's checksums."""
        for sh in self._state():
            for r in sh.readers:
                r.verify()
        for r in self.border_table().readers:
            r.verify()

    # ------------------------------------------------------------------------ writing
    @contextmanager
    def _writing(self) -> Iterator[Manifest]:
        """Exclusive writer section on the latest manifest; leftovers of crashed writers are removed."""
        if self._memory:
            raise IndexFormatError(self.root, "an in-memory index is read-only")
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
            self._remove_orphans(self.manifest)
            try:
                yield self.manifest
            except OSError as e:
                if isinstance(e, VmatchError):
                    raise
                # disk full and the like: the manifest was not replaced, so the index is as it was;
                # the next writer removes the files this one left (_remove_orphans)
                raise storage_error(e, self.root, "nothing was changed") from None
        finally:
            os.close(fd)
            self.refresh()

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

        if paths and all(p.suffix.lower() == ".tmk" for p in paths):
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

    def _add_tmk_files(self, paths: Sequence[Path], progress: ProgressFn | None, chunk: int = 256) -> int:
        """Add `.tmk` files: each chunk is read straight into one of two reused buffers and
        prepared (checksums) in a loader thread while the previous chunk is written."""
        from engine.tmkfile import BatchBuffer

        ids, sources = [p.stem for p in paths], [str(p) for p in paths]
        with self._writing() as m:
            self._check_new_ids(ids, sources, self._locations())   # a dict: no O(N) copy per commit
            name = f"seg-{m.generation + 1:08d}-{uuid.uuid4().hex[:8]}"
            writers: dict[int, SegmentWriter] = {}
            store = m.store
            bufs = [BatchBuffer(self.params, min(chunk, len(paths)), "the index's") for _ in range(2)]
            nchunks = -(-len(paths) // chunk)

            def load(k: int) -> list[Prepared]:
                lo = k * chunk
                b = bufs[k % 2].fill(paths[lo:lo + chunk], workers=1)
                return [prepare(b[i], ids[lo + i], sources[lo + i], store) for i in range(len(b))]

            try:
                with ThreadPoolExecutor(max_workers=1) as ex:
                    ahead = ex.submit(load, 0)
                    for k in range(nchunks):
                        batch = ahead.result()
                        if k + 1 < nchunks:     # buffer (k+1) % 2 is free: chunk k-1 is written
                            ahead = ex.submit(load, k + 1)
                        for it in batch:
                            sid = shard_of(it.id, m.shards)
                            if sid not in writers:
                                writers[sid] = SegmentWriter(self.root, sid, name)
                            writers[sid].append([it])
                        if progress:
                            progress(len(batch))
                self._finish_add(m, writers)
            except BaseException:
                for w in writers.values():
                    w.abort()
                self._remove_orphans(m)
                raise
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

            try:
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
            except BaseException:
                for w in writers.values():
                    w.abort()
                self._remove_orphans(m)
                raise
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
        segments (`_tail_start`) are merged into one; the cheap form a long-running writer such
        as ``vmatch serve`` runs in the background (the border side table is left as it is).
        The replaced files are listed as retired and deleted by a writer `retire_after_s` later,
        since a reader holding an older manifest may still open them.
        """
        with self._writing() as m:
            shards = self._state()
            name = f"seg-{m.generation + 1:08d}-{uuid.uuid4().hex[:8]}"
            trained = read_checked(self.root, m.ivf_trained) if m.ivf_trained else None
            writers: dict[int, SegmentWriter] = {}
            keep: dict[int, int] = {}          # shard -> segments left as they are (a prefix)
            try:
                for sid, sh in enumerate(shards):
                    segs = m.segments[sid]
                    if tail > 0:
                        if len(segs) <= tail:
                            continue
                        keep[sid] = self._tail_start([s.count - len(s.deleted) for s in segs])
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
            except BaseException:
                for w in writers.values():
                    w.abort()
                self._remove_orphans(read_manifest(self.root))
                raise
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

    # ------------------------------------------------------------------------ querying
    def _needles(self, feats: Sequence[TmkFeatures]) -> _Needles:
        for f in feats:
            check_compatible(self.params, f.params, f.name or "<needle>", "the index's")
        d = self.params.dim
        unit = np.stack([unit_average(f.avg) for f in feats]) if feats else np.zeros((0, d), np.float32)
        cos = torch.from_numpy(np.stack([f.cos for f in feats])).to(self.device) if feats else torch.zeros(0)
        sin = torch.from_numpy(np.stack([f.sin for f in feats])).to(self.device) if feats else torch.zeros(0)
        return _Needles([f.name for f in feats], unit, cos, sin)

    def _level1(self, nd: _Needles, c1: float, chunk: int = 1 << 16) -> _Pairs:
        """Every (needle, live row) with exact level-1 >= c1, per shard."""
        parts = []
        for si, sh in enumerate(self._state()):
            if sh.n == 0:
                continue
            if c1 - coarse_mod.SLACK <= -1.0:     # everything passes: no search
                live = sh.live_rows()
                needle = np.repeat(np.arange(len(nd.names)), len(live))
                rows = np.tile(live, len(nd.names))
            else:
                lims, rows = sh.searcher.search(nd.unit, c1)
                needle = np.repeat(np.arange(len(nd.names)), np.diff(lims))
                keep = ~sh.deleted[rows]
                needle, rows = needle[keep], rows[keep]
            l1 = np.empty(len(rows), np.float32)
            for s in range(0, len(rows), chunk):
                a = torch.from_numpy(nd.unit[needle[s:s + chunk]])
                b = torch.from_numpy(sh.l1[rows[s:s + chunk]])
                l1[s:s + chunk] = level1(a, b).numpy()
            keep = l1 >= c1
            parts.append(_Pairs(needle[keep], np.full(int(keep.sum()), si, np.int64), rows[keep], l1[keep]))
        return _Pairs.concat(parts)

    def _level2(self, nd: _Needles, pairs: _Pairs, c2: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Level-2 of every pair, reading each distinct candidate row once, in bounded batches."""
        k = len(pairs.needle)
        l2 = np.full(k, np.nan, np.float32)
        offs = np.full((k, self.params.num_periods), -1, np.int64)
        if k == 0:
            return l2, offs
        key = pairs.shard * (1 << 40) + pairs.row
        uniq, slot = np.unique(key, return_inverse=True)
        ush, urow = uniq >> 40, uniq & ((1 << 40) - 1)
        shards = self._state()
        # Batches never cross a segment, so a run of consecutive rows is one view of one map.
        group = np.zeros(len(uniq), np.int64)
        for si in np.unique(ush):
            on = ush == si
            group[on] = si * (1 << 20) + np.searchsorted(shards[si].first, urow[on], side="right")
        edges = np.r_[0, np.nonzero(np.diff(group))[0] + 1, len(uniq)]
        firsts = [f for a, b in zip(edges[:-1], edges[1:]) for f in range(a, b, self.batch_rows)]
        bounds = np.r_[firsts, len(uniq)]
        order = np.argsort(slot, kind="stable")
        starts = np.searchsorted(slot[order], bounds)

        # Widening buffers, one per batch in flight (prefetch being read, one being scored).
        p = self.params
        shape = (min(self.batch_rows, len(uniq)), 2, p.num_periods, p.num_coeffs, p.dim)
        bufs = [torch.empty(shape, dtype=torch.float32, device=self.device) for _ in range(self.prefetch + 1)] \
            if self.manifest.store != "fp32" else [None] * (self.prefetch + 1)
        # CPU from fp16/int8: score the rows as read, widening one block at a time (never whole rows)
        raw = self.device.type == "cpu" and self.manifest.store != "fp32" and not self._memory

        def fetch(b: int) -> torch.Tensor | np.ndarray:
            lo, hi = bounds[b], bounds[b + 1]
            rows = shards[ush[lo]].rows(urow[lo:hi])
            return rows if raw else self._scorer.rows_to_device(rows, bufs[b % len(bufs)])

        # The next batches are read (checksums fault the mapped pages in, float16 is widened) while
        # this one is scored.
        if len(firsts) == 1:      # one batch (a typical lookup): nothing to overlap, no threads to start
            pos = order[starts[0]:starts[1]]
            with self._compute_threads():
                l2[pos], offs[pos] = self._scorer.score(nd.cos, nd.sin, pairs.needle[pos], slot[pos], fetch(0), c2)
            return l2, offs
        with ThreadPoolExecutor(max_workers=self.prefetch) as ex, self._compute_threads():
            ahead = [ex.submit(fetch, b) for b in range(min(self.prefetch, len(firsts)))]
            for b, s in enumerate(firsts):
                rows = ahead.pop(0).result()
                if b + self.prefetch < len(firsts):
                    ahead.append(ex.submit(fetch, b + self.prefetch))
                pos = order[starts[b]:starts[b + 1]]
                score = self._scorer.score_raw if raw else self._scorer.score
                l2[pos], offs[pos] = score(nd.cos, nd.sin, pairs.needle[pos], slot[pos] - s, rows, c2)
        return l2, offs

    @contextmanager
    def _compute_threads(self) -> Iterator[None]:
        """On CPU, leave the prefetch workers their cores: torch's intra-op threads spin-wait, and
        oversubscribing them made a 2-core scan 3-4x slower (docs/benchmarks.md)."""
        before = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, min(before, (os.cpu_count() or 1) - self.prefetch)))
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def query(self, needles: Sequence[TmkFeatures], c1: float = 0.7, c2: float = 0.7,
              top: int | None = None) -> list[list[Match]]:
        """Per needle, the items with level-1 >= c1 and level-2 >= c2 (inclusive), best first."""
        t0 = time.perf_counter()
        if not needles:
            return []
        nd = self._needles(needles)
        pairs = self._level1(nd, c1)
        l2, offs = self._level2(nd, pairs, c2)
        ok = l2 >= c2
        shards = self._state()
        out: list[list[Match]] = [[] for _ in needles]
        for i in np.nonzero(ok)[0]:
            n = int(pairs.needle[i])
            out[n].append(Match(nd.names[n], shards[pairs.shard[i]].ids[pairs.row[i]], float(pairs.l1[i]),
                                float(l2[i]), offs[i].tolist()))
        for lst in out:
            lst.sort(key=lambda mt: (-mt.level2, -mt.level1, mt.id))
            del lst[top if top is not None else len(lst):]
        self.last_stats = QueryStats(len(needles), len(pairs.needle), int(np.sum(~np.isnan(l2))),
                                     int(ok.sum()), time.perf_counter() - t0)
        return out

    # ------------------------------------------------------------------------ clusters
    def clusters(self, c1: float = 0.7, c2: float = 0.7, min_size: int = 2, batch: int = 128,
                 candidates: str = "auto", nlist: int = 0, nprobe: int = 128,
                 progress: ProgressFn | None = None) -> list[list[str]]:
        """Groups of items linked by chains of pairs passing both levels (connected components).

        Level-1 candidates come from one faiss range search per item over all level-1 vectors:
        ``candidates="exact"`` (flat: the components equal the all-pairs brute force) or
        ``"ivf"`` (IVF-Flat with `nlist` lists, `nprobe` probed: near-linear time, recall
        measured in docs/index.md); ``"auto"``: exact for a flat index of at most
        EXACT_CLUSTER_LIMIT items, else ivf.  Level-2 is scored (the smaller id as needle, like
        tmk-two-level-score) only for pairs that would join two components
        (engine/index/cluster.py), `batch` pairs at a time.  Clusters are ordered by size
        (largest first) then smallest id; members by id.  `last_cluster_stats` says what ran.
        """
        names = sorted(self._locations())
        where, shards = self._locations(), self._state()
        n, d = len(names), self.params.dim
        loc = np.array([where[i] for i in names], dtype=np.int64).reshape(-1, 2)
        shard_of, row_of = loc[:, 0], loc[:, 1]
        vecs = np.empty((n, d), np.float32)
        for si, sh in enumerate(shards):
            on = shard_of == si
            vecs[on] = sh.l1[row_of[on]]
        if candidates == "auto":
            candidates = "exact" if self.manifest.coarse == "flat" and n <= EXACT_CLUSTER_LIMIT else "ivf"
        if candidates not in ("exact", "ivf"):
            raise ValueError(f"unknown candidate search {candidates!r} (expected auto, exact or ivf)")

        def l1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            out = np.empty(len(a), np.float32)
            for s in range(0, len(a), 1 << 16):
                out[s:s + (1 << 16)] = level1(torch.from_numpy(vecs[a[s:s + (1 << 16)]]),
                                              torch.from_numpy(vecs[b[s:s + (1 << 16)]])).numpy()
            return out

        def l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return self._pairs_pass(shard_of, row_of, a, b, c2, max(batch, 256))

        try:
            uf, self.last_cluster_stats = cluster_pairs(vecs, l1, l2, c1, candidates, nlist, nprobe,
                                                        progress=progress)
        finally:
            self.__dict__.pop("_fetch_bufs", None)
        return [[names[i] for i in c] for c in uf.components() if len(c) >= min_size]

    def _fetch_ranks(self, shard_of: np.ndarray, row_of: np.ndarray, ranks: np.ndarray, slot: int = 0
                     ) -> torch.Tensor:
        """Store rows of items `ranks` as float32 [len, 2, P, m, d] on the device, in that order.

        Rows are gathered as stored (66 KB each for int8) into one buffer, then widened once into
        a second; both are reused across batches (`slot`), since fresh memory per batch costs a
        page fault per 4 KB, more than the copy itself."""
        shards = self._state()
        bufs = self.__dict__.setdefault("_fetch_bufs", {})
        raw = bufs.get(("raw", slot))
        first = shards[int(shard_of[ranks[0]])] if len(ranks) else None
        if isinstance(first, _MemoryShard) or not len(ranks):
            p = self.params
            out = torch.empty((len(ranks), 2, p.num_periods, p.num_coeffs, p.dim), device=self.device)
            for si in np.unique(shard_of[ranks]):
                sel = np.nonzero(shard_of[ranks] == si)[0]
                out[torch.from_numpy(sel).to(self.device)] = self._scorer.rows_to_device(
                    shards[si].rows(row_of[ranks[sel]]))
            return out
        reader = first.readers[0]
        if raw is None or raw.shape[0] < len(ranks):
            raw = bufs[("raw", slot)] = np.empty((len(ranks), *reader.row_shape), reader.store.dtype)
        raw = raw[:len(ranks)]
        for si in np.unique(shard_of[ranks]):
            sel = np.nonzero(shard_of[ranks] == si)[0]
            r = row_of[ranks[sel]]
            ur, inv = np.unique(r, return_inverse=True)       # each row read (and checked) once
            raw[sel] = shards[si].rows(ur)[inv.reshape(-1)]
        if raw.dtype == np.float32:
            return torch.from_numpy(raw).to(self.device)
        wide = bufs.get(("wide", slot))
        if wide is None or wide.shape[0] < len(ranks):
            p = self.params
            wide = bufs[("wide", slot)] = torch.empty((len(ranks), 2, p.num_periods, p.num_coeffs, p.dim),
                                                      device=self.device)
        return self._scorer.rows_to_device(raw, wide)

    def _pairs_pass(self, shard_of: np.ndarray, row_of: np.ndarray, a: np.ndarray, b: np.ndarray, c2: float,
                    chunk: int) -> np.ndarray:
        """Whether level-2 (needle a[k], candidate b[k]) >= c2, `chunk` pairs at a time."""
        ok = np.zeros(len(a), bool)
        for s in range(0, len(a), chunk):
            sl = slice(s, s + chunk)
            sc, _ = self._scorer.score_pairs(self._fetch_ranks(shard_of, row_of, a[sl], 0),
                                             self._fetch_ranks(shard_of, row_of, b[sl], 1), c2)
            ok[sl] = sc >= c2
        return ok
