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

from typing import Protocol, Sequence

import faiss
import numpy as np
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

    def __init__(self, vectors: np.ndarray, device: torch.device, chunk: int = 1 << 18) -> None:
        self.vectors = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(device)
        self.device, self.chunk = device, chunk
        self.ntotal = len(vectors)

    def search(self, q: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
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
    d = vectors.shape[1]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.train(np.ascontiguousarray(vectors, dtype=np.float32))
    return faiss.serialize_index(index).tobytes()


def ivf_lists(trained: bytes, vectors: np.ndarray) -> bytes:
    """One segment's IVF lists: the trained index with this segment's vectors added (ids 0..n-1)."""
    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return faiss.serialize_index(index).tobytes()


def build_searcher(kind: str, vectors: np.ndarray, device: torch.device, trained: bytes | None = None,
                   segment_ivfs: Sequence[tuple[bytes, int]] = (), nprobe: int = 16) -> Coarse:
    """The searcher of one shard. ``segment_ivfs``: (serialised lists, first shard row) per segment."""
    if kind == "flat" or trained is None:
        if device.type == "cuda":
            return TorchScan(vectors, device)
        index = faiss.IndexFlatIP(vectors.shape[1])
        if len(vectors):
            index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return FaissRange(index)
    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    for data, first in segment_ivfs:
        index.merge_from(faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)), first)
    index.nprobe = min(nprobe, index.nlist)
    cpu = FaissRange(index)
    if device.type == "cuda" and hasattr(faiss, "StandardGpuResources"):
        res = faiss.StandardGpuResources()
        gpu = faiss.index_cpu_to_gpu(res, device.index or 0, index)
        gpu.res_ref = res  # keep the resources alive with the index
        return GrowingKnn(gpu, cpu)
    return cpu
