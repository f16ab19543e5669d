"""Level-1 candidate search: every row whose inner product with a needle may reach c1.

The searchers return candidates with a small slack below the threshold; the index then
recomputes level-1 exactly (the reference formula) and applies `>= c1` itself, so the
answer never depends on how faiss rounds or on its strict `>` in range search.

* flat, CPU: faiss IndexFlatIP range search (exact inner products).
* flat, CUDA: a chunked torch matrix product on the device (faiss-gpu has no range search).
* ivf: faiss IVF-Flat (inner product); range search on CPU, and k-NN with a growing k on
  GPU, falling back to the CPU index for a needle whose k reaches faiss-gpu's limit.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from kernels.device import device_type

if TYPE_CHECKING:   # faiss is imported where an index is built: a query at --c1 -1 never needs it
    import faiss
    import torch

#: Candidates are searched down to threshold - SLACK, then filtered exactly.
SLACK = 1e-4
#: faiss-gpu's largest k.
GPU_MAX_K = 2048


class Coarse(Protocol):
    ntotal: int

    def search(self, q: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """CSR result: lims [Q+1] int64, rows [lims[-1]] int64 (rows of this shard)."""


class FaissRange:
    """faiss range search (CPU flat or IVF)."""

    def __init__(self, index: faiss.Index) -> None:
        self.index = index
        self.ntotal = int(index.ntotal)

    def search(self, q: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        if self.ntotal == 0:
            return np.zeros(len(q) + 1, np.int64), np.zeros(0, np.int64)
        lims, _, rows = self.index.range_search(np.ascontiguousarray(q, dtype=np.float32), threshold - SLACK)
        return lims.astype(np.int64), rows.astype(np.int64)


def _flat_index(vectors: np.ndarray) -> "faiss.Index":
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


class LazyFlat(FaissRange):
    """The flat CPU searcher, its faiss index built (faiss imported, the vectors copied in) when
    first used: a query whose c1 lets every row through never searches, so never pays for it."""

    def __init__(self, vectors: np.ndarray) -> None:  # noqa: super().__init__ would build it
        self.vectors, self.ntotal = vectors, len(vectors)
        self._index: faiss.Index | None = None

    @property
    def index(self) -> "faiss.Index":  # type: ignore[override]
        if self._index is None:
            self._index = _flat_index(self.vectors)
        return self._index


class GrowingKnn:
    """Threshold search by k-NN with a doubling k (for faiss-gpu indexes, which lack range search)."""

    def __init__(self, index: faiss.Index, fallback: FaissRange, k0: int = 64, max_k: int = GPU_MAX_K) -> None:
        self.index, self.fallback, self.k0, self.max_k = index, fallback, k0, max_k
        self.ntotal = int(index.ntotal)

    def search(self, q: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        thr = threshold - SLACK
        nq = len(q)
        found: list[np.ndarray] = [np.zeros(0, np.int64)] * nq
        todo, k = np.arange(nq), self.k0
        while len(todo) and self.ntotal:
            kk = min(k, self.ntotal)
            dist, ids = self.index.search(np.ascontiguousarray(q[todo], dtype=np.float32), kk)
            full = (dist[:, -1] >= thr) & (ids[:, -1] >= 0) & (kk < self.ntotal)
            for r, qi in enumerate(todo):
                keep = (dist[r] >= thr) & (ids[r] >= 0)
                found[qi] = ids[r][keep].astype(np.int64)
            todo = todo[full]
            if len(todo) and kk >= self.max_k:   # saturated: answer these on the CPU index
                lims, rows = self.fallback.search(q[todo], threshold)
                for r, qi in enumerate(todo):
                    found[qi] = rows[lims[r]:lims[r + 1]]
                break
            k *= 2
        return _csr(found)


class TorchScan:
    """Exact threshold scan on a torch device: unit vectors resident, products in chunks."""

    def __init__(self, vectors: np.ndarray, device: "torch.device", chunk: int = 1 << 18) -> None:
        import torch

        self.vectors = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(device)
        self.device, self.chunk = device, chunk
        self.ntotal = len(vectors)

    def search(self, q: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        import torch

        qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32)).to(self.device)
        pairs = []
        for s in range(0, self.ntotal, self.chunk):
            hit = ((qt @ self.vectors[s:s + self.chunk].T) >= threshold - SLACK).nonzero()
            hit[:, 1] += s
            pairs.append(hit.cpu())
        allp = torch.cat(pairs) if pairs else torch.zeros((0, 2), dtype=torch.int64)
        order = torch.argsort(allp[:, 0] * max(self.ntotal, 1) + allp[:, 1])
        allp = allp[order].numpy()
        lims = np.searchsorted(allp[:, 0], np.arange(len(q) + 1)).astype(np.int64)
        return lims, allp[:, 1].astype(np.int64)


def _csr(lists: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lims = np.zeros(len(lists) + 1, np.int64)
    lims[1:] = np.cumsum([len(x) for x in lists])
    rows = np.concatenate(lists).astype(np.int64) if lists else np.zeros(0, np.int64)
    return lims, rows


def ivf_nlist(n: int, requested: int) -> int:
    """Lists for an IVF trained on n vectors: the requested number (or ~4 sqrt(n)), at most n/39."""
    want = requested if requested > 0 else int(4 * np.sqrt(max(n, 1)))
    return int(max(1, min(want, n // 39 if n >= 39 else 1)))


def train_ivf(vectors: np.ndarray, nlist: int, seed: int = 1234) -> bytes:
    """Train an empty IVF-Flat (inner product) on unit vectors; returns its serialised form."""
    import faiss

    d = vectors.shape[1]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.train(np.ascontiguousarray(vectors, dtype=np.float32))
    return faiss.serialize_index(index).tobytes()


def ivf_lists(trained: bytes, vectors: np.ndarray) -> bytes:
    """One segment's IVF lists: the trained index with this segment's vectors added (ids 0..n-1)."""
    import faiss

    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return faiss.serialize_index(index).tobytes()


def build_searcher(kind: str, vectors: np.ndarray, device: "str | torch.device", trained: bytes | None = None,
                   segment_ivfs: Sequence[tuple[bytes, int]] = (), nprobe: int = 16) -> Coarse:
    """The searcher of one shard. ``segment_ivfs``: (serialised lists, first shard row) per segment."""
    if kind == "flat" or trained is None:
        if device_type(device) == "cuda":
            return TorchScan(vectors, device)
        return LazyFlat(vectors)
    import faiss

    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    for data, first in segment_ivfs:
        index.merge_from(faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)), first)
    index.nprobe = min(nprobe, index.nlist)
    cpu = FaissRange(index)
    if device_type(device) == "cuda" and hasattr(faiss, "StandardGpuResources"):
        res = faiss.StandardGpuResources()
        gpu = faiss.index_cpu_to_gpu(res, device.index or 0, index)
        gpu.res_ref = res  # keep the resources alive with the index
        return GrowingKnn(gpu, cpu)
    return cpu


class GrowingRows:
    """A float32 [capacity, d] buffer whose first rows are shared by successive shard views.

    A view of n rows never reads past row n, so appending after the last row written is invisible
    to existing views; only the newest view may append (an older one copies), and capacity
    doubles, so appending N rows one commit at a time copies O(N) rows in all.
    """

    def __init__(self, buf: np.ndarray, filled: int) -> None:
        self.buf, self.filled = buf, filled

    @classmethod
    def wrap(cls, rows: np.ndarray) -> "GrowingRows":
        return cls(rows, len(rows))

    def view(self, n: int) -> np.ndarray:
        return self.buf[:n]

    def extend(self, n: int, parts: Sequence[np.ndarray]) -> "GrowingRows":
        """The buffer holding these n rows then `parts` (this one when it can grow in place)."""
        add = sum(len(p) for p in parts)
        target = self
        if n != self.filled or n + add > len(self.buf) or not self.buf.flags.writeable:
            cap = max(n + add, 2 * n, 1024)
            buf = np.empty((cap, self.buf.shape[1]), np.float32)
            buf[:n] = self.buf[:n]
            target = GrowingRows(buf, n)
        at = n
        for p in parts:
            target.buf[at:at + len(p)] = p
            at += len(p)
        target.filled = at
        return target


class Appended:
    """A searcher over rows [0, n): `base` answers its first rows, the rest are scanned exactly."""

    def __init__(self, base: Coarse, rows: np.ndarray, chunk: int = 1 << 16) -> None:
        self.base, self.rows, self.chunk = base, rows, chunk
        self.ntotal = len(rows)

    def search(self, q: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        lims, rows = self.base.search(q, threshold)
        q = np.ascontiguousarray(q, dtype=np.float32)
        found = [[rows[lims[i]:lims[i + 1]]] for i in range(len(q))]
        for s in range(self.base.ntotal, self.ntotal, self.chunk):
            hit = np.nonzero(q @ self.rows[s:min(s + self.chunk, self.ntotal)].T >= threshold - SLACK)
            for i in range(len(q)):
                found[i].append(hit[1][hit[0] == i].astype(np.int64) + s)
        return _csr([np.concatenate(f) for f in found])


def appended(searcher: Coarse, rows: np.ndarray, device: "str | torch.device") -> Coarse:
    """A flat searcher over `rows` (the old searcher's rows plus new ones after them) without
    rebuilding: new rows are scanned exactly until they are a quarter of the base, then the
    base is rebuilt over all rows (amortised O(1) copies per row)."""
    base = searcher.base if isinstance(searcher, Appended) else searcher
    if len(rows) - base.ntotal > max(4096, base.ntotal // 4):
        return build_searcher("flat", rows, device)
    return Appended(base, rows)
