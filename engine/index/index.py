"""VideoIndex: a sharded, append-only bank of TMK signatures with two-stage matching.

Layout: ``MANIFEST.json`` (the committed state) plus immutable segment files under
``shard-NNN/`` (see segment.py).  Writers hold an exclusive lock (``LOCK``), write new segment
files, fsync them and atomically replace the manifest; readers never lock: they read the
manifest once and map the files it lists, so a writer can add while readers query, and a
writer killed at any point leaves the previous manifest, i.e. the previous index, in force.

The work is done by two classes: `IndexSnapshot` (engine/index/snapshot.py: one committed
state, immutable, every read and query) and `IndexWriter` (engine/index/writer.py: the lock,
add, remove, compact).  `VideoIndex` is the one-object form the README documents: a writer and
its current snapshot, which each write (and `refresh`) replaces by the state after it.  Every
method here delegates; new code that serves queries while another thread writes should hold
snapshots (`snapshot()`), which never change under it.
"""
from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from engine.features import Signatures, TmkFeatures
from engine.index import borders as borders_mod
from engine.index.cluster import ClusterStats
from engine.index.level2 import PairScorer
from engine.index.manifest import IndexFormatError, Manifest
from engine.index.shards import _MemoryShard, _Shard, _ShardBase, shard_of
from engine.index.snapshot import EXACT_CLUSTER_LIMIT, IndexSnapshot, Match, QueryStats, _Needles, _Pairs
from engine.index.writer import LOCK_NAME, IndexWriter, create_index
from engine.progress import ProgressFn
from kernels.params import DEFAULT_PARAMS, TmkParams

if TYPE_CHECKING:
    import torch

__all__ = ["VideoIndex", "Match", "QueryStats", "shard_of", "LOCK_NAME", "EXACT_CLUSTER_LIMIT"]
# the classes that used to live here, for code importing them from this module
_MOVED = (_MemoryShard, _Shard, _ShardBase, _Needles, _Pairs)


class VideoIndex:
    """Create with `VideoIndex.create`, open with `VideoIndex(path)`; see module docstring."""

    def __init__(self, path: str | os.PathLike[str], device: "str | torch.device" = "auto",
                 verify_reads: bool = True, batch_rows: int = 0, nprobe: int | None = None,
                 grid: int | None = None, prefetch: int = 2) -> None:
        view = IndexSnapshot.open(path, device, verify_reads, batch_rows, nprobe, grid, prefetch, load=False)
        self._writer: IndexWriter | None = IndexWriter(view.root, view=view)
        self._fixed: IndexSnapshot | None = None      # in-memory banks: no writer, one snapshot
        self.last_stats = QueryStats()
        self.last_cluster_stats = ClusterStats()

    @classmethod
    def create(cls, path: str | os.PathLike[str], shards: int = 4, coarse: str = "flat", store: str = "fp32",
               params: TmkParams = DEFAULT_PARAMS, ivf_nlist: int = 0, ivf_nprobe: int = 16,
               **open_kw: Any) -> "VideoIndex":
        """Make an empty index directory (refused if `path` already holds anything)."""
        return cls(create_index(path, shards, coarse, store, params, ivf_nlist, ivf_nprobe), **open_kw)

    @classmethod
    def in_memory(cls, ids: Sequence[str], unit_averages: np.ndarray, rows: "torch.Tensor",
                  params: TmkParams = DEFAULT_PARAMS, device: "str | torch.device" = "auto",
                  batch_rows: int = 4096) -> "VideoIndex":
        """A read-only index over a bank already in memory (`IndexSnapshot.in_memory`)."""
        self = cls.__new__(cls)
        self._writer, self._fixed = None, IndexSnapshot.in_memory(ids, unit_averages, rows, params, device, batch_rows)
        self.last_stats, self.last_cluster_stats = QueryStats(), ClusterStats()
        return self

    # ------------------------------------------------------------------ the parts
    @property
    def _view(self) -> IndexSnapshot:
        """The current snapshot (its shards possibly not mapped yet)."""
        return self._writer.view if self._writer is not None else self._fixed  # type: ignore[return-value]

    def _read(self) -> IndexSnapshot:
        """The current snapshot, mapped (the newest state if a compaction retired its files)."""
        if self._writer is not None:
            self._writer._state()
            return self._writer.view
        assert self._fixed is not None
        return self._fixed

    def _w(self) -> IndexWriter:
        if self._writer is None:
            raise IndexFormatError(self._view.root, "an in-memory index is read-only")
        return self._writer

    @property
    def root(self) -> Any:
        return self._view.root

    @property
    def device(self) -> "str | torch.device":
        """"cpu" (CPU queries run in numpy, without torch) or the torch device queries run on."""
        return self._view.device

    @property
    def verify_reads(self) -> bool:
        return self._view.verify_reads

    @property
    def batch_rows(self) -> int:
        """Candidate rows per level-2 batch (0 given: 512 on CPU, 4096 on CUDA)."""
        return self._view.batch_rows

    @property
    def prefetch(self) -> int:
        return self._view.prefetch

    @property
    def manifest(self) -> Manifest:
        return self._view.manifest

    @property
    def params(self) -> TmkParams:
        return self._view.params

    @property
    def _memory(self) -> bool:
        return self._writer is None

    @property
    def _shards(self) -> list[_ShardBase] | None:
        return self._view._shards

    @property
    def _scorer(self) -> PairScorer:
        return self._view._scorer

    @_scorer.setter
    def _scorer(self, scorer: PairScorer) -> None:   # tests swap in a scorer with other batching
        new = self._view.with_scorer(scorer)
        if self._writer is not None:
            self._writer.view = new
        else:
            self._fixed = new

    @property
    def lock_timeout_s(self) -> float:
        """How long a writer waits for another process's add or remove to commit."""
        return self._w().lock_timeout_s if self._writer is not None else 0.0

    @lock_timeout_s.setter
    def lock_timeout_s(self, v: float) -> None:
        self._w().lock_timeout_s = v

    @property
    def retire_after_s(self) -> float:
        """How long files replaced by `compact` stay for readers of older manifests."""
        return self._w().retire_after_s if self._writer is not None else 0.0

    @retire_after_s.setter
    def retire_after_s(self, v: float) -> None:
        self._w().retire_after_s = v

    # ----------------------------------------------------------------- state
    def reload(self) -> None:
        """Pick up what other writers committed since this object read the manifest."""
        if self._writer is not None:
            self._writer.reload()

    def refresh(self) -> bool:
        """Pick up new commits incrementally (the cheap form of `reload` for long-lived readers):
        shards that only gained segments or tombstones read just the new segment files; a shard
        rewritten by `compact` (or any IVF shard) is loaded afresh.  Always re-reads the manifest;
        returns whether the loaded view changed.  Objects returned by `snapshot` are unaffected.
        """
        return self._writer.refresh() if self._writer is not None else False

    def snapshot(self) -> IndexSnapshot:
        """The state loaded now as an immutable `IndexSnapshot`, sharing its memory; later `refresh`
        calls and writes on this object do not change it (a server swaps snapshots in while lookups run)."""
        return self._writer.snapshot() if self._writer is not None else self._read()

    def border_table(self) -> borders_mod.BorderTable:
        """The border-cropped signatures of this manifest's items (engine/index/borders.py)."""
        return self._view.border_table()

    def item_info(self, item_id: str) -> dict[str, object]:
        """The stored columns of one live item: id, source, frame_count, content_hash, time_added."""
        return self._read().item_info(item_id)

    def __len__(self) -> int:
        return len(self._view)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._read()

    def ids(self) -> list[str]:
        return self._read().ids()

    def features(self, ids: Sequence[str]) -> list[TmkFeatures]:
        """The stored signatures of `ids`, in that order (`IndexSnapshot.features`)."""
        return self._read().features(ids)

    def info(self) -> dict[str, object]:
        return self._view.info()

    def verify(self) -> None:
        """Check every file and every store row against the manifest's checksums."""
        self._read().verify()

    # ------------------------------------------------------------------------ writing
    def add(self, items: Iterable[TmkFeatures | Signatures], ids: Sequence[str] | None = None,
            sources: Sequence[str] | None = None, progress: ProgressFn | None = None) -> int:
        """Add in-memory signatures in one transaction (`IndexWriter.add`)."""
        return self._w().add(items, ids, sources, progress)

    def add_paths(self, paths: Sequence[str | os.PathLike[str]], hasher: object | None = None,
                  progress: ProgressFn | None = None, workers: int = 8) -> int:
        """Add `.tmk` files or videos; id = file stem (`IndexWriter.add_paths`)."""
        return self._w().add_paths(paths, hasher, progress, workers)

    def add_signal_list(self, path: str | os.PathLike[str], progress: ProgressFn | None = None,
                        workers: int = 8) -> int:
        """Add the signals of a list file in one transaction (`IndexWriter.add_signal_list`)."""
        return self._w().add_signal_list(path, progress, workers)

    def remove(self, ids: Sequence[str]) -> int:
        """Tombstone items by id (all or nothing: an unknown id is an error)."""
        return self._w().remove(ids)

    def compact(self, tail: int = 0) -> int:
        """Rewrite shards with tombstones or several segments as one segment; ``tail``: only the
        small trailing segments of shards with more than that many (`IndexWriter.compact`)."""
        return self._w().compact(tail)

    # ------------------------------------------------------------------------ querying
    def query(self, needles: Sequence[TmkFeatures], c1: float = 0.7, c2: float = 0.7,
              top: int | None = None) -> list[list[Match]]:
        """Per needle, the items with level-1 >= c1 and level-2 >= c2 (inclusive), best first."""
        snap = self._read()
        out = snap.query(needles, c1, c2, top)
        self.last_stats = snap.last_stats
        return out

    def clusters(self, c1: float = 0.7, c2: float = 0.7, min_size: int = 2, batch: int = 128,
                 candidates: str = "auto", nlist: int = 0, nprobe: int = 128,
                 progress: ProgressFn | None = None, precision: str = "auto") -> list[list[str]]:
        """Groups of items linked by chains of passing pairs (`IndexSnapshot.clusters`)."""
        snap = self._read()
        out = snap.clusters(c1, c2, min_size, batch, candidates, nlist, nprobe, progress, precision)
        self.last_cluster_stats = snap.last_cluster_stats
        return out

    # the query stages, for engine/index/robust.py and the benchmarks (they run on the current snapshot)
    def _state(self) -> list[_ShardBase]:
        return self._read()._state()

    def _locations(self) -> dict[str, tuple[int, int]]:
        return self._read()._locations()

    def _needles(self, feats: Sequence[TmkFeatures]) -> _Needles:
        return self._read()._needles(feats)

    def _level1(self, nd: _Needles, c1: float, chunk: int = 1 << 16) -> _Pairs:
        return self._read()._level1(nd, c1, chunk)

    def _level2(self, nd: _Needles, pairs: _Pairs, c2: float | None) -> tuple[np.ndarray, np.ndarray]:
        return self._read()._level2(nd, pairs, c2)

    def _compute_threads(self) -> AbstractContextManager[None]:
        return self._read()._compute_threads()
