"""The index as an immutable read snapshot plus a writer.

* `IndexSnapshot`: what one committed manifest holds, for queries. It never changes: a
  long-running service holds one, answers from it, and swaps in ``snap.refresh()`` (a new
  snapshot, cheap when nothing or little was committed) after each writer's commit; requests
  running on the old one are not disturbed. Constructors: `IndexSnapshot.open` (a directory),
  `IndexSnapshot.shard` (one shard's segments only, what a Ray shard actor serves) and
  `IndexSnapshot.in_memory` (a bank already in memory).
* `IndexWriter`: owns the lock and the writes (`add`, `add_paths`, `add_signal_list`,
  `remove`, `compact`); each commits one new manifest, and `snapshot()` is the state after it.

`VideoIndex` (engine/index/index.py) remains the one-object form of both, for existing callers;
these classes are the interface new code should hold.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from engine.features import TmkFeatures
from engine.index.index import Match, VideoIndex
from engine.index.manifest import IndexFormatError, read_manifest
from kernels.params import DEFAULT_PARAMS, TmkParams

__all__ = ["IndexSnapshot", "IndexWriter"]


class _Frozen(VideoIndex):
    """A VideoIndex whose view never moves: reload() is refused (writes go through IndexWriter)."""

    _frozen = True

    def reload(self) -> None:  # the snapshot is immutable: refresh() makes a new one
        pass

    def _writing(self):  # type: ignore[override]
        raise IndexFormatError(self.root, "a snapshot is read-only (write with IndexWriter)")


def _shard_only(view: VideoIndex, shard: int) -> None:
    m = view.manifest
    if not 0 <= shard < m.shards:
        raise IndexFormatError(view.root, f"no shard {shard} (the index has {m.shards})")
    view.manifest = dataclasses.replace(
        m, segments=[list(s) if i == shard else [] for i, s in enumerate(m.segments)])


class IndexSnapshot:
    """An immutable read view of one index state (see the module docstring)."""

    def __init__(self, view: VideoIndex, shard: int | None = None, options: dict[str, Any] | None = None) -> None:
        self._view, self._shard, self._options = view, shard, dict(options or {})

    # ------------------------------------------------------------------ constructors
    @classmethod
    def open(cls, path: str | os.PathLike[str], **options: Any) -> "IndexSnapshot":
        """The state committed now (options: device, verify_reads, batch_rows, nprobe, ...)."""
        view = _Frozen(path, **options)
        view._state()  # map the files and build the searcher now, not on the first query
        return cls(view, None, options)

    @classmethod
    def shard(cls, path: str | os.PathLike[str], shard: int, **options: Any) -> "IndexSnapshot":
        """One shard's items only (a shard actor of `vmatch query --ray`)."""
        view = _Frozen(path, **options)
        _shard_only(view, shard)
        view._state()
        return cls(view, shard, options)

    @classmethod
    def in_memory(cls, ids: Sequence[str], unit_averages: np.ndarray, rows: Any,
                  params: TmkParams = DEFAULT_PARAMS, device: str = "auto", batch_rows: int = 4096) -> "IndexSnapshot":
        """A bank already in memory: unit averages [N,d], rows [N,2,P,m,d] (float32 or float16)."""
        return cls(VideoIndex.in_memory(ids, unit_averages, rows, params, device, batch_rows))

    # ------------------------------------------------------------------ state
    @property
    def root(self) -> Path:
        return self._view.root

    @property
    def params(self) -> TmkParams:
        return self._view.params

    @property
    def device(self) -> Any:
        return self._view.device

    @property
    def shard_index(self) -> int | None:
        """The shard this snapshot shows (None: all of them)."""
        return self._shard

    @property
    def generation(self) -> int:
        """The manifest generation this snapshot shows (in-memory banks: 0)."""
        return int(self._view.manifest.generation)

    def __len__(self) -> int:
        return len(self._view)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._view

    def ids(self) -> list[str]:
        return self._view.ids()

    def features(self, ids: Sequence[str]) -> list[TmkFeatures]:
        return self._view.features(ids)

    def info(self) -> dict[str, object]:
        return self._view.info()

    def verify(self) -> None:
        self._view.verify()

    # ------------------------------------------------------------------ queries
    def query(self, needles: Sequence[TmkFeatures], c1: float = 0.7, c2: float = 0.7,
              top: int | None = None) -> list[list[Match]]:
        return self._view.query(needles, c1, c2, top)

    def clusters(self, c1: float = 0.7, c2: float = 0.7, min_size: int = 2, batch: int = 128) -> list[list[str]]:
        return self._view.clusters(c1, c2, min_size, batch)

    # ------------------------------------------------------------------ refresh
    def refresh(self) -> "IndexSnapshot":
        """This snapshot if nothing was committed since it was taken, else a new one (this one is
        left as it was). Uses the index's incremental refresh where it has one."""
        if self._view._memory:
            return self
        if read_manifest(self._view.root).generation == self.generation:
            return self
        if self._shard is not None:
            return IndexSnapshot.shard(self._view.root, self._shard, **self._options)
        return IndexSnapshot.open(self._view.root, **self._options)


class IndexWriter:
    """The writer of one index: the lock, add, remove and compact (each one atomic commit)."""

    def __init__(self, path: str | os.PathLike[str], lock_timeout_s: float | None = None, **options: Any) -> None:
        self._ix = VideoIndex(path, **{"device": "cpu", **options})
        if lock_timeout_s is not None:
            self._ix.lock_timeout_s = lock_timeout_s
        self._options = options

    @classmethod
    def create(cls, path: str | os.PathLike[str], **kw: Any) -> "IndexWriter":
        VideoIndex.create(path, **kw)
        return cls(path)

    @property
    def root(self) -> Path:
        return self._ix.root

    @property
    def params(self) -> TmkParams:
        return self._ix.params

    def add(self, items: Iterable[TmkFeatures], ids: Sequence[str] | None = None,
            sources: Sequence[str] | None = None, progress: Any = None) -> int:
        return self._ix.add(items, ids, sources, progress)

    def add_paths(self, paths: Sequence[str | os.PathLike[str]], hasher: object | None = None,
                  progress: Any = None, workers: int = 8) -> int:
        return self._ix.add_paths(paths, hasher=hasher, progress=progress, workers=workers)

    def add_signal_list(self, path: str | os.PathLike[str], progress: Any = None, workers: int = 8) -> int:
        return self._ix.add_signal_list(path, progress=progress, workers=workers)

    def remove(self, ids: Sequence[str]) -> int:
        return self._ix.remove(ids)

    def compact(self) -> int:
        return self._ix.compact()

    def snapshot(self, **options: Any) -> IndexSnapshot:
        """A snapshot of the state after this writer's last commit."""
        return IndexSnapshot.open(self._ix.root, **{**self._options, **options})
