"""IndexSnapshot: the read side of an index, one committed manifest, immutable.

What a query needs of one index state: the manifest, its shards (segment files memory-mapped,
level-1 vectors and the faiss searcher built once), the id -> (shard, row) locations and the
border side table, plus every read: `query`, `clusters`, `features`, `ids`, `info`, `verify`,
`item_info`.  Shards, locations and the border table are loaded on first use (or at once by
`open`) and never change afterwards, so any number of threads can query one snapshot while a
writer commits: a long-running service holds one and swaps in ``snap.refresh()`` after each
commit.  `refresh` returns a NEW snapshot (this one unchanged) that reuses every shard that
only gained segments or tombstones: only the new segment files are read and their level-1 rows
appended (engine/index/shards.py); a shard rewritten by `compact` (or an IVF shard) is loaded
afresh.

Constructors: `open` (a directory), `shard` (one shard's segments only: a Ray shard actor) and
`in_memory` (a bank already in memory, e.g. GPU-resident float16 rows).  Writes go through
`IndexWriter` (engine/index/writer.py); `VideoIndex` (engine/index/index.py) composes both.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from engine.errors import check_compatible
from engine.features import TmkFeatures
from engine.index import borders as borders_mod
from engine.index import coarse as coarse_mod
from engine.index import int8
from engine.index.cluster import ClusterStats, cluster_pairs
from engine.index.level2 import PairScorer
from engine.index.manifest import IndexCorruptError, IndexFormatError, Manifest, describe, read_manifest
from engine.index.segment import read_checked, unit_average
from engine.index.shards import _MemoryShard, _Shard, _ShardBase
from engine.progress import ProgressFn
from kernels.device import blas_threads, device_type, query_device, strict_float
from kernels.params import DEFAULT_PARAMS, TmkParams
from kernels.score_np import FP16_TORCH_ROWS, level1

if TYPE_CHECKING:
    import torch

__all__ = ["IndexSnapshot", "Match", "QueryStats", "EXACT_CLUSTER_LIMIT"]

#: Largest flat index whose clusters use the exact (all-pairs, in BLAS) candidate search by default.
EXACT_CLUSTER_LIMIT = 100_000

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
    cos: Any                  # [Q, P, m, d] float32: numpy on CPU, a torch tensor on the device elsewhere
    sin: Any


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


#: What a query may write on a snapshot: its own statistics (diagnostics, not index state).
_DIAGNOSTICS = frozenset({"last_stats", "last_cluster_stats"})


class IndexSnapshot:
    """An immutable read view of one committed index state (see the module docstring)."""

    def __init__(self, root: Path, manifest: Manifest, device: "str | torch.device", *, verify_reads: bool = True,
                 batch_rows: int = 0, nprobe: int | None = None, prefetch: int = 2, scorer: PairScorer | None = None,
                 grid: int | None = None, shard_index: int | None = None, memory: bool = False,
                 shards: list[_ShardBase] | None = None) -> None:
        """Use the constructors (`open`, `shard`, `in_memory`); this one takes parts already read."""
        self.root, self.manifest, self.params, self.device = root, manifest, manifest.params, device
        self.verify_reads, self._nprobe, self.prefetch = verify_reads, nprobe, max(1, prefetch)
        #: 'cpu' or 'cuda'; ``device`` is the string "cpu" on CPU (queries there run in numpy and
        #: never import torch), a torch device elsewhere.
        self.device_type = device_type(device)
        #: Candidate rows per level-2 batch (0: 512 on CPU, 4096 on CUDA).
        self.batch_rows = batch_rows or (4096 if self.device_type == "cuda" else 512)
        self._scorer = scorer or PairScorer(self.params, device, **({"grid": grid} if grid else {}))
        self._shard_index, self._memory = shard_index, memory
        self._loading = threading.Lock()
        # loaded on first use, then fixed (object.__setattr__: the only writes after construction)
        self._shards: list[_ShardBase] | None = shards
        self._where: dict[str, tuple[int, int]] | None = None
        self._border_table: borders_mod.BorderTable | None = None
        self.last_stats = QueryStats()
        self.last_cluster_stats = ClusterStats()
        self._sealed = True

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _DIAGNOSTICS and self.__dict__.get("_sealed"):
            raise AttributeError(f"IndexSnapshot is immutable (cannot set {name!r}): "
                                 "refresh() gives a new snapshot, IndexWriter writes")
        object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def open(cls, path: str | os.PathLike[str], device: str | torch.device = "auto", verify_reads: bool = True,
             batch_rows: int = 0, nprobe: int | None = None, grid: int | None = None, prefetch: int = 2,
             load: bool = True) -> "IndexSnapshot":
        """The state committed now.  ``load=False`` reads only the manifest (cheap: `len`, `info`);
        the shards are then mapped on the first query."""
        snap = cls(Path(path), read_manifest(Path(path)), cls._device(device), verify_reads=verify_reads,
                   batch_rows=batch_rows, nprobe=nprobe, prefetch=prefetch, grid=grid)
        return snap.loaded() if load else snap

    @classmethod
    def shard(cls, path: str | os.PathLike[str], shard: int, device: str | torch.device = "auto",
              verify_reads: bool = True, batch_rows: int = 0, nprobe: int | None = None, grid: int | None = None,
              prefetch: int = 2, load: bool = True) -> "IndexSnapshot":
        """One shard's items only, at the state committed now (a shard actor of `vmatch query --ray`)."""
        root = Path(path)
        snap = cls(root, _restrict(root, read_manifest(root), shard), cls._device(device), verify_reads=verify_reads,
                   batch_rows=batch_rows, nprobe=nprobe, prefetch=prefetch, grid=grid, shard_index=shard)
        return snap.loaded() if load else snap

    @classmethod
    def in_memory(cls, ids: Sequence[str], unit_averages: np.ndarray, rows: torch.Tensor,
                  params: TmkParams = DEFAULT_PARAMS, device: str | torch.device = "auto",
                  batch_rows: int = 4096) -> "IndexSnapshot":
        """A bank already in memory: unit averages [N,d], rows [N,2,P,m,d] (float32 or float16, on
        the query device to keep level-2 there).  Used for banks too large for the disk at hand,
        such as the 1M-item GPU benchmark, and the pytx index; it never changes (`refresh` is itself)."""
        dev = cls._device(device)
        return cls(Path("<memory>"), Manifest(params=params, shards=1), dev, verify_reads=False,
                   batch_rows=batch_rows, prefetch=1, memory=True,
                   shards=[_MemoryShard(ids, unit_averages, rows, dev)])

    @staticmethod
    def _device(device: "str | torch.device") -> "str | torch.device":
        dev = query_device(device)
        if device_type(dev) == "cuda":
            strict_float()
        return dev

    def _derive(self, m: Manifest, scorer: PairScorer | None = None) -> "IndexSnapshot":
        """A snapshot of manifest `m` with this one's options and scorer, nothing loaded."""
        return IndexSnapshot(self.root, m, self.device, verify_reads=self.verify_reads, batch_rows=self.batch_rows,
                             nprobe=self._nprobe, prefetch=self.prefetch, scorer=scorer or self._scorer,
                             shard_index=self._shard_index)

    def with_scorer(self, scorer: PairScorer) -> "IndexSnapshot":
        """This state scored by another `PairScorer` (sharing everything loaded)."""
        if self._memory:
            new = IndexSnapshot(self.root, self.manifest, self.device, verify_reads=False, batch_rows=self.batch_rows,
                                prefetch=self.prefetch, scorer=scorer, memory=True, shards=self._shards)
        else:
            new = self._derive(self.manifest, scorer)
        for k in ("_shards", "_where", "_border_table"):
            object.__setattr__(new, k, getattr(self, k))
        return new

    # ------------------------------------------------------------------ state
    @property
    def generation(self) -> int:
        """The manifest generation this snapshot shows (in-memory banks: 0)."""
        return int(self.manifest.generation)

    @property
    def shard_index(self) -> int | None:
        """The shard this snapshot shows (None: all of them)."""
        return self._shard_index

    @property
    def is_loaded(self) -> bool:
        """Whether the shards are mapped (else the first query maps them)."""
        return self._shards is not None

    def loaded(self) -> "IndexSnapshot":
        """This snapshot with its shards mapped; if their files were retired by a compaction since
        its manifest was read (a grace period of `IndexWriter.retire_after_s` has passed), the
        newest state instead."""
        try:
            self._state()
            return self
        except IndexCorruptError:
            if self._memory or read_manifest(self.root).generation == self.generation:
                raise
        new = self._derive(self._restricted(read_manifest(self.root)))
        new._state()
        return new

    def refresh(self) -> "IndexSnapshot":
        """This snapshot if nothing was committed since it was taken, else a new one at the committed
        state, reusing what this one loaded (this one is left as it was)."""
        return self._refreshed(own=False)

    def _refreshed(self, own: bool) -> "IndexSnapshot":
        """`refresh`; ``own``: the caller holds the only reference to this snapshot and drops it, so its
        location table may be updated in place instead of copied (VideoIndex, IndexWriter)."""
        if self._memory:
            return self
        m = read_manifest(self.root)
        if m.generation == self.generation:
            return self
        m = self._restricted(m)
        new = self._derive(m)
        if self._shards is None:
            return new
        nprobe = self._nprobe or m.ivf_nprobe
        shards: list[_ShardBase] = []
        where, copied = self._where, own
        for sid, old in enumerate(self._shards):
            sh = old.extended(self.root, m, sid, self.device, self.verify_reads, nprobe) \
                if isinstance(old, _Shard) else None
            if sh is None:
                sh, where = _Shard(self.root, m, sid, self.device, self.verify_reads, nprobe), None
            if sh is not old and where is not None:
                if not copied:
                    where, copied = dict(where), True
                _update_where(where, sid, old, sh)
            shards.append(sh)
        object.__setattr__(new, "_shards", shards)
        object.__setattr__(new, "_where", where)
        return new

    def _restricted(self, m: Manifest) -> Manifest:
        return m if self._shard_index is None else _restrict(self.root, m, self._shard_index)

    def border_table(self) -> borders_mod.BorderTable:
        """The border-cropped signatures of this manifest's items (engine/index/borders.py)."""
        if self._border_table is None:
            with self._loading:
                if self._border_table is None:
                    object.__setattr__(self, "_border_table", borders_mod.BorderTable(
                        self.root, self.manifest, self.params, self.verify_reads))
        assert self._border_table is not None
        return self._border_table

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
        """The shards of this manifest, mapped on first use and then fixed."""
        if self._shards is None:
            with self._loading:
                if self._shards is None:
                    object.__setattr__(self, "_shards", self._load())
        assert self._shards is not None
        return self._shards

    def _load(self) -> list[_ShardBase]:
        m = self.manifest
        nprobe = self._nprobe or m.ivf_nprobe
        return [_Shard(self.root, m, i, self.device, self.verify_reads, nprobe) for i in range(m.shards)]

    def _locations(self) -> dict[str, tuple[int, int]]:
        """id -> (shard, row) of every live item."""
        if self._where is None:
            shards = self._state()
            with self._loading:
                if self._where is None:
                    where: dict[str, tuple[int, int]] = {}
                    for si, sh in enumerate(shards):
                        for r in sh.live_rows():
                            where[sh.ids[r]] = (si, int(r))
                    object.__setattr__(self, "_where", where)
        assert self._where is not None
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
            if not isinstance(row, np.ndarray):            # torch rows of an in-memory bank
                row = self._scorer.rows_to_device(row).cpu().numpy()
            elif row.dtype == np.uint8:                    # int8 records
                row = int8.dequantize(row, (2, self.params.num_periods, self.params.num_coeffs, self.params.dim))
            row = row[0].astype(np.float32, copy=False)
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

    # ------------------------------------------------------------------------ querying
    def _needles(self, feats: Sequence[TmkFeatures]) -> _Needles:
        for f in feats:
            check_compatible(self.params, f.params, f.name or "<needle>", "the index's")
        d = self.params.dim
        unit = np.stack([unit_average(f.avg) for f in feats]) if feats else np.zeros((0, d), np.float32)
        shape = (0, self.params.num_periods, self.params.num_coeffs, d)
        cos = np.stack([f.cos for f in feats]).astype(np.float32, copy=False) if feats else np.zeros(shape, np.float32)
        sin = np.stack([f.sin for f in feats]).astype(np.float32, copy=False) if feats else np.zeros(shape, np.float32)
        if self.device_type != "cpu":
            import torch
            cos, sin = torch.from_numpy(cos).to(self.device), torch.from_numpy(sin).to(self.device)
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
                l1[s:s + chunk] = level1(nd.unit[needle[s:s + chunk]], sh.l1[rows[s:s + chunk]])
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
        # CPU from the store: score the rows as read, in numpy, one coefficient block at a time
        # (never widening whole rows; no torch)
        raw = self.device_type == "cpu" and not self._memory
        if raw and self.manifest.store == "fp16" and len(uniq) >= FP16_TORCH_ROWS:
            importlib.import_module("torch")   # widens float16 5x faster than numpy (kernels/score_np.py `_widener`)
        bufs: list[Any] = [None] * (self.prefetch + 1)
        if not raw and self.manifest.store != "fp32":
            import torch
            bufs = [torch.empty(shape, dtype=torch.float32, device=self.device) for _ in bufs]

        def fetch(b: int) -> Any:
            lo, hi = bounds[b], bounds[b + 1]
            rows = shards[ush[lo]].rows(urow[lo:hi])
            if raw:
                return rows
            if self.device_type == "cpu" and str(rows.dtype) == "torch.float16":
                return rows.numpy()      # an in-memory float16 bank on CPU: scored as read too
            return self._scorer.rows_to_device(rows, bufs[b % len(bufs)])

        def norms(b: int) -> np.ndarray | None:     # block norms where the shard keeps them: head first
            get = getattr(shards[ush[bounds[b]]], "block_norms", None)
            return None if get is None else get(urow[bounds[b]:bounds[b + 1]])

        def score(rows: Any, needle: np.ndarray, slot_: np.ndarray, nrm: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray]:
            return self._scorer.score(nd.cos, nd.sin, needle, slot_, rows, c2, nrm)   # numpy rows: as read

        # The next batches are read (checksums fault the mapped pages in, float16 is widened) while
        # this one is scored.
        if len(firsts) == 1:      # one batch (a typical lookup): nothing to overlap, no threads to start
            pos = order[starts[0]:starts[1]]
            with self._compute_threads():
                l2[pos], offs[pos] = score(fetch(0), pairs.needle[pos], slot[pos], norms(0))
            return l2, offs
        if raw:
            # CPU, rows scored where they lie (no widening buffers to share): each worker reads and
            # scores whole batches (one BLAS thread each), so every core scores (docs/benchmarks.md)
            def job(b: int) -> None:
                pos = order[starts[b]:starts[b + 1]]
                l2[pos], offs[pos] = score(fetch(b), pairs.needle[pos], slot[pos] - firsts[b], norms(b))

            workers = max(1, min(len(firsts), os.cpu_count() or 1))
            with ThreadPoolExecutor(max_workers=workers) as ex, self._compute_threads(workers):
                list(ex.map(job, range(len(firsts))))
            return l2, offs
        # The next batches are read (checksums fault the mapped pages in, float16 is widened) while
        # this one is scored.
        with ThreadPoolExecutor(max_workers=self.prefetch) as ex, self._compute_threads():
            ahead = [ex.submit(fetch, b) for b in range(min(self.prefetch, len(firsts)))]
            for b, s in enumerate(firsts):
                rows = ahead.pop(0).result()
                if b + self.prefetch < len(firsts):
                    ahead.append(ex.submit(fetch, b + self.prefetch))
                pos = order[starts[b]:starts[b + 1]]
                l2[pos], offs[pos] = score(rows, pairs.needle[pos], slot[pos] - s, norms(b))
        return l2, offs

    @contextmanager
    def _compute_threads(self, workers: int = 0) -> Iterator[None]:
        """On CPU, leave the workers their cores: BLAS and torch intra-op threads spin-wait, and
        oversubscribing them made a 2-core scan 1.5-4x slower (docs/benchmarks.md).  ``workers``:
        that many threads score at once (numpy, one BLAS thread each); otherwise torch keeps
        the cores the prefetch threads leave."""
        if workers and self.device_type == "cpu":
            with blas_threads(1):            # one BLAS thread per worker (kernels/device.py)
                yield
            return
        torch = sys.modules.get("torch")      # numpy scoring (CPU) imports no torch: nothing to set
        if torch is None:
            yield
            return
        before = torch.get_num_threads()
        if self.device_type == "cpu":
            torch.set_num_threads(1 if workers else max(1, min(before, (os.cpu_count() or 1) - self.prefetch)))
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
        hit = np.nonzero(ok)[0]            # one tolist per column: a c1 = -1 query matches every row
        ids = [sh.ids for sh in shards]
        for n, si, r, a, b, o in zip(pairs.needle[hit].tolist(), pairs.shard[hit].tolist(), pairs.row[hit].tolist(),
                                     pairs.l1[hit].tolist(), l2[hit].tolist(), offs[hit].tolist()):
            out[n].append(Match(nd.names[n], ids[si][r], a, b, o))
        for lst in out:
            lst.sort(key=lambda mt: (-mt.level2, -mt.level1, mt.id))
            del lst[top if top is not None else len(lst):]
        self.last_stats = QueryStats(len(needles), len(pairs.needle), int(np.sum(~np.isnan(l2))),
                                     int(ok.sum()), time.perf_counter() - t0)
        return out

    # ------------------------------------------------------------------------ clusters
    def clusters(self, c1: float = 0.7, c2: float = 0.7, min_size: int = 2, batch: int = 128,
                 candidates: str = "auto", nlist: int = 0, nprobe: int = 128,
                 progress: ProgressFn | None = None, precision: str = "auto") -> list[list[str]]:
        """Groups of items linked by chains of pairs passing both levels (connected components).

        Level-1 candidates come from faiss k-nearest-neighbour searches over all level-1
        vectors, items whose neighbours all pass c1 asked again outside their component
        (engine/index/cluster.py; no all-pairs range search, so huge duplicate groups stay
        near-linear): ``candidates="exact"`` (flat: the components equal the all-pairs brute
        force) or ``"ivf"`` (IVF-Flat with `nlist` lists, `nprobe` probed; recall measured in
        docs/benchmarks.md); ``"auto"``: exact for a flat index of at most
        EXACT_CLUSTER_LIMIT items, else ivf.  Level-2 is scored (the smaller id as needle, like
        tmk-two-level-score) only for pairs that would join two components
        (engine/index/cluster.py), `batch` pairs at a time.  `precision`: of the candidate
        scan's products (engine/index/neighbours.py `ListScan`; exact components whatever it is,
        since scores within its error of c1 are rescored).  Clusters are ordered by size
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
                out[s:s + (1 << 16)] = level1(vecs[a[s:s + (1 << 16)]], vecs[b[s:s + (1 << 16)]])
            return out

        def l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return self._pairs_pass(shard_of, row_of, a, b, c2, max(batch, 256))

        try:
            uf, self.last_cluster_stats = cluster_pairs(vecs, l1, l2, c1, candidates, nlist, nprobe,
                                                        progress=progress, precision=precision)
        finally:
            self.__dict__.pop("_fetch_bufs", None)
        return [[names[i] for i in c] for c in uf.components() if len(c) >= min_size]

    def _fetch_ranks(self, shard_of: np.ndarray, row_of: np.ndarray, ranks: np.ndarray, slot: int = 0
                     ) -> torch.Tensor:
        """Store rows of items `ranks`, block-major float32 [len, P, m, 2, d] on the device, in
        that order (`PairScorer.blocks_to_device`).

        Rows are gathered as stored (66 KB each for int8) into one buffer, then widened once into
        a second; both are reused across batches (`slot`), since fresh memory per batch costs a
        page fault per 4 KB, more than the copy itself."""
        import torch

        shards = self._state()
        bufs = self.__dict__.setdefault("_fetch_bufs", {})
        p = self.params
        wide = bufs.get(("wide", slot))
        if wide is None or wide.shape[0] < len(ranks):
            wide = bufs[("wide", slot)] = torch.empty((max(len(ranks), 1), p.num_periods, p.num_coeffs, 2, p.dim),
                                                      device=self.device)
        first = shards[int(shard_of[ranks[0]])] if len(ranks) else None
        if isinstance(first, _MemoryShard) or not len(ranks):
            out = wide[:len(ranks)]
            for si in np.unique(shard_of[ranks]):
                sel = np.nonzero(shard_of[ranks] == si)[0]
                out[torch.from_numpy(sel).to(self.device)] = self._scorer.blocks_to_device(
                    shards[si].rows(row_of[ranks[sel]]))
            return out
        reader = first.readers[0]
        raw = bufs.get(("raw", slot))
        if raw is None or raw.shape[0] < len(ranks):
            raw = bufs[("raw", slot)] = np.empty((len(ranks), *reader.row_shape), reader.store.dtype)
        raw = raw[:len(ranks)]
        for si in np.unique(shard_of[ranks]):
            sel = np.nonzero(shard_of[ranks] == si)[0]
            r = row_of[ranks[sel]]
            ur, inv = np.unique(r, return_inverse=True)       # each row read (and checked) once
            raw[sel] = shards[si].rows(ur)[inv.reshape(-1)]
        return self._scorer.blocks_to_device(raw, wide)

    def _pairs_pass(self, shard_of: np.ndarray, row_of: np.ndarray, a: np.ndarray, b: np.ndarray, c2: float,
                    chunk: int) -> np.ndarray:
        """Whether level-2 (needle a[k], candidate b[k]) >= c2, `chunk` pairs at a time.

        Pairs are scored in storage order of their needles (then candidates), so a store larger
        than memory is read in one forward sweep per call rather than at random."""
        ok = np.zeros(len(a), bool)
        order = np.lexsort((row_of[b], shard_of[b], row_of[a], shard_of[a]))
        for s in range(0, len(a), chunk):
            sl = order[s:s + chunk]
            sc, _ = self._scorer.score_pairs(self._fetch_ranks(shard_of, row_of, a[sl], 0),
                                             self._fetch_ranks(shard_of, row_of, b[sl], 1), c2)
            ok[sl] = sc >= c2
        return ok


def _restrict(root: Path, m: Manifest, shard: int) -> Manifest:
    """`m` with the segments of every shard but `shard` left out (a shard snapshot's manifest)."""
    if not 0 <= shard < m.shards:
        raise IndexFormatError(root, f"no shard {shard} (the index has {m.shards})")
    return dataclasses.replace(m, segments=[list(s) if i == shard else [] for i, s in enumerate(m.segments)])


def _update_where(where: dict[str, tuple[int, int]], sid: int, old: _ShardBase, new: _ShardBase) -> None:
    """Locations after shard `sid` went from `old` to `new` (new rows, new tombstones)."""
    for r in np.nonzero(new.deleted[:old.n] & ~old.deleted)[0]:
        if where.get(new.ids[r]) == (sid, int(r)):
            del where[new.ids[r]]
    for r in range(old.n, new.n):
        if not new.deleted[r]:
            where[new.ids[r]] = (sid, r)
