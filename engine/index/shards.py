"""The loaded form of one shard: segment readers, row offsets, tombstones, level-1 searcher.

`_Shard` is one shard of one committed manifest (files memory-mapped, level-1 vectors
resident); `extended` gives the same shard at a later manifest reading only the new segments,
which is how `IndexSnapshot.refresh` stays cheap.  `_MemoryShard` is a bank already in memory
(`IndexSnapshot.in_memory`).  Both are read-only once built, so snapshots can share them.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from engine.index import coarse as coarse_mod
from engine.index.manifest import Manifest
from engine.index.segment import SegmentReader, read_checked
from kernels.score_np import block_norms

if TYPE_CHECKING:
    import torch

__all__ = ["shard_of"]


def shard_of(item_id: str, shards: int) -> int:
    """Stable shard of an id (independent of Python's per-process hash seed)."""
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little") % shards


class _ShardBase:
    n: int
    first: np.ndarray        # first shard row of each segment, then n
    ids: list[str]
    l1: np.ndarray
    deleted: np.ndarray
    searcher: coarse_mod.Coarse

    def live_rows(self) -> np.ndarray:
        return np.nonzero(~self.deleted)[0]

    def rows(self, rows: np.ndarray) -> "np.ndarray | torch.Tensor":
        raise NotImplementedError


class _MemoryShard(_ShardBase):
    """A bank held in memory (e.g. GPU-resident float16 rows): same queries, no files."""

    def __init__(self, ids: Sequence[str], l1: np.ndarray, rows: "torch.Tensor", device: Any) -> None:
        self.ids, self.l1, self._rows = list(ids), np.ascontiguousarray(l1, dtype=np.float32), rows
        self.n = len(self.ids)
        self.first = np.array([0, self.n], dtype=np.int64)
        self.deleted = np.zeros(self.n, dtype=bool)
        self.searcher = coarse_mod.build_searcher("flat", self.l1, device)
        self._norms: np.ndarray | None = None

    def rows(self, rows: np.ndarray) -> "torch.Tensor":
        import torch

        if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
            return self._rows[int(rows[0]):int(rows[0]) + len(rows)]   # consecutive: a view, no copy
        return self._rows[torch.from_numpy(rows).to(self._rows.device)]

    def block_norms(self, rows: np.ndarray) -> np.ndarray | None:
        """Block norms of `rows` for head-first level-2 on CPU (engine/index/level2.py), computed
        once for the whole bank at first use."""
        if self._rows.device.type != "cpu":
            return None
        if self._norms is None:
            self._norms = block_norms(self._rows.numpy())
        return self._norms[rows]


class _Shard(_ShardBase):
    """Read-only view of one shard at one manifest: segments, row offsets, tombstones, searcher."""

    def __init__(self, root: Path, m: Manifest, sid: int, device: Any, verify_reads: bool,
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

    def extended(self, root: Path, m: Manifest, sid: int, device: Any, verify_reads: bool,
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
