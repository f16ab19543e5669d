"""Many k-nearest-neighbour searches at once, list by list with matrix products.

Clustering asks every item of the bank for its neighbours: a million queries against a
million vectors.  faiss's IVF search scans each query's lists one query at a time, so every
list is read from memory once per query that probes it; faiss's contrib `big_batch_search`
turns that around (for each inverted list, the queries that probe it, one BLAS product), and
this module does the same with what clustering needs on top: per-query exclusions (an item
asked again is searched only among allowed items outside its own component) and a skip of
lists holding nothing a query may see.  The lists come from faiss k-means; one list is an
exact (flat) search with the same code.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

#: largest score block computed at once (queries x list items), in entries, and the most list
#: items in one block (a longer list, e.g. the single list of an exact search, is cut)
_BLOCK = 1 << 22
_COLS = 1 << 14


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX).  Elsewhere torch
    emulates it: on an AVX2-only 2-core machine a bf16 product ran at 0.5-2.4 GFLOP/s against
    42-81 for float32 (docs/benchmarks.md), so "auto" takes float32 there."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


class ListScan:
    """k-NN by inner product over unit vectors `x` [n, d]: `nlist` k-means lists (1: exact).

    ``precision="bf16"`` computes the scores from bfloat16 copies (about 2.8x the float32
    product rate on CPUs with bf16 instructions, and on GPUs; "auto": bf16 where the CPU has
    them, `cpu_has_bf16`, else fp32): each score is then within
    `error` of the exact inner product (bf16 keeps 8 significant bits, u = 2^-8: inputs
    rounded, |x~.y~ - x.y| <= (2u + u^2)|x||y|; fp32 accumulation; the output rounded again,
    u|s|), so a caller keeps candidates down to c1 - error and rescores them exactly.
    ``"fp32"``: error 1e-4 (float32 rounding)."""

    def __init__(self, x: np.ndarray, nlist: int = 1, nprobe: int = 1, seed: int = 1234,
                 train_per_list: int = 64, niter: int = 10, precision: str = "fp32") -> None:
        import torch

        if precision == "auto":
            precision = "bf16" if cpu_has_bf16() else "fp32"
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision {precision!r} (expected fp32, bf16 or auto)")
        self.precision = precision
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        u = 2.0 ** -8
        self.error = (2 * u + u * u) * (1 + u) + u * (1 + 2 * u) + 1e-4 if precision == "bf16" else 1e-4
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        n, d = self.x.shape
        self.nlist = max(1, min(int(nlist), n))
        self.nprobe = max(1, min(int(nprobe), self.nlist))
        if self.nlist == 1:
            self.centroids = None
            assign = np.zeros(n, np.int64)
        else:
            self.centroids = self._kmeans(train_per_list, niter, seed)
            assign = np.concatenate([self._nearest_lists(self.x[s:s + (1 << 16)], 1)[:, 0]
                                     for s in range(0, n, 1 << 16)])
        self.ids = np.argsort(assign, kind="stable").astype(np.int64)      # items, list by list
        self.lims = np.searchsorted(assign[self.ids], np.arange(self.nlist + 1))
        self.xs = torch.from_numpy(self.x[self.ids]).to(self.dtype)

    @property
    def ntotal(self) -> int:
        return len(self.x)

    def _kmeans(self, per_list: int, niter: int, seed: int):
        """Spherical k-means (faiss's Kmeans) on a sample of `per_list` points per list."""
        import faiss
        import torch

        n, d = self.x.shape
        rng = np.random.default_rng(seed)
        m = min(n, per_list * self.nlist)
        sample = self.x if m == n else self.x[np.sort(rng.choice(n, m, replace=False))]
        km = faiss.Kmeans(d, self.nlist, niter=niter, seed=seed, spherical=True,
                          max_points_per_centroid=max(per_list, 1), verbose=False)
        km.train(sample)
        return torch.from_numpy(np.ascontiguousarray(km.centroids, np.float32)).to(self.dtype)

    def _nearest_lists(self, v: np.ndarray, p: int) -> np.ndarray:
        """The p lists whose centroids score highest for each vector [len(v), p]."""
        import torch

        out = np.empty((len(v), p), np.int64)
        for s in range(0, len(v), 8192):
            sc = torch.from_numpy(v[s:s + 8192]).to(self.dtype) @ self.centroids.T
            out[s:s + 8192] = torch.topk(sc, p, dim=1).indices.numpy()
        return out

    def _buckets(self, xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query positions sorted by probed list, list boundaries into them)."""
        nq = len(xq)
        if self.centroids is None:
            return np.arange(nq), np.array([0, nq])
        flat = self._nearest_lists(xq, self.nprobe).ravel()
        order = np.argsort(flat, kind="stable")
        return order // self.nprobe, np.searchsorted(flat[order], np.arange(self.nlist + 1))

    def _plan(self, xq: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int]]]:
        """Query positions by probed list, their boundaries, and the work units (list, first
        and end item) with queries: a list longer than _COLS is cut into column blocks."""
        qpos, qlims = self._buckets(xq)
        units = []
        for li in np.nonzero(np.diff(qlims))[0].tolist():
            for a in range(int(self.lims[li]), int(self.lims[li + 1]), _COLS):
                units.append((li, a, min(a + _COLS, int(self.lims[li + 1]))))
        return qpos, qlims, units

    def _blocks(self, xq, qpos: np.ndarray, qlims: np.ndarray, units: list[tuple[int, int, int]],
                allowed: np.ndarray | None, qroot: np.ndarray | None, roots: np.ndarray | None):
        """Yield (query positions, item ids, scores) per block of `units`, exclusions set to -inf.

        Scores are one torch matrix product per block (about twice numpy's BLAS here in float32)."""
        import torch

        for li, a, b in units:
            sub, cols, xb = qpos[qlims[li]:qlims[li + 1]], self.ids[a:b], self.xs[a:b]
            if allowed is not None:
                keep = allowed[cols]
                if not keep.any():
                    continue
                if not keep.all():
                    cols, xb = cols[keep], xb[torch.from_numpy(keep)]
            croot = None
            if qroot is not None:
                croot = roots[cols]
                if croot.min() == croot.max():          # one component: its own members see nothing
                    sub = sub[qroot[sub] != croot[0]]
                    croot = None
                    if not len(sub):
                        continue
            step = max(1, _BLOCK // len(cols))
            for s in range(0, len(sub), step):
                ss = sub[s:s + step]
                d = torch.index_select(xq, 0, torch.from_numpy(ss)) @ xb.T
                if croot is not None:
                    d.masked_fill_(torch.from_numpy(qroot[ss][:, None] == croot[None, :]), -np.inf)
                yield ss, cols, d

    def _parallel(self, q: np.ndarray, allowed: np.ndarray | None, roots: np.ndarray | None, consume):
        """Run consume(blocks) over the work units in one thread per core, each single-threaded
        in torch, and return the results in a list: the blocks are too small for torch's own
        threads (2,843 against 2,397 queries/s measured at 1,000,000 items, bf16, nprobe 128)."""
        import torch

        xq_np = self.x[q]                     # gathered once: 64 MB for a batch of 65,536 queries
        qpos, qlims, units = self._plan(xq_np)
        xq = torch.from_numpy(xq_np).to(self.dtype)
        qroot = roots[q] if roots is not None else None
        threads = max(1, min(torch.get_num_threads(), len(units)))
        if threads == 1:
            return [consume(self._blocks(xq, qpos, qlims, units, allowed, qroot, roots))]
        # deal the units out by size, largest first, to the least loaded thread
        cost = [(qlims[li + 1] - qlims[li]) * (b - a) for li, a, b in units]
        share: list[list[tuple[int, int, int]]] = [[] for _ in range(threads)]
        load = [0] * threads
        for i in np.argsort(cost)[::-1].tolist():
            t = int(np.argmin(load))
            share[t].append(units[i])
            load[t] += cost[i]
        from concurrent.futures import ThreadPoolExecutor

        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(threads, thread_name_prefix="vmatch-scan") as ex:
                return list(ex.map(lambda u: consume(self._blocks(xq, qpos, qlims, u, allowed, qroot, roots)),
                                   share))
        finally:
            torch.set_num_threads(before)

    def search(self, q: np.ndarray, k: int, lo: float = -np.inf, allowed: np.ndarray | None = None,
               roots: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scores and ids [len(q), k] of the k best items scoring >= lo for items q (best first;
        -inf and -1 pad where fewer reach lo; ties in any order).

        `allowed` (bool [n]): only these items are candidates; `roots` (int [n]): an item is never
        returned for a query with the same root (its own component).  Rows of a block whose
        best score is below lo are dropped first (a bank is mostly unrelated items)."""
        import torch

        q = np.asarray(q, np.int64)
        k = max(1, min(int(k), self.ntotal))

        def consume(blocks):
            """Fold the blocks into one faiss ResultHeap per thread (k per query at most: a query
            in a 50,000-copy group meets thousands of candidates over its probed lists)."""
            import faiss

            heap = faiss.ResultHeap(len(q), k, keep_max=True)
            for ss, cols, d in blocks:
                hit = torch.nonzero(d.amax(1) >= lo, as_tuple=True)[0]     # most rows reach nothing
                if not len(hit):
                    continue
                v, j = torch.topk(d[hit], min(k, d.shape[1]), dim=1)
                v = v.float()
                v.masked_fill_(v < lo, -np.inf)
                heap.add_result_subset(ss[hit.numpy()].astype(np.int64), np.ascontiguousarray(v.numpy()),
                                       np.ascontiguousarray(cols[j.numpy()]))
            return heap

        heaps = self._parallel(q, allowed, roots, consume)
        if len(heaps) > 1:
            import faiss

            merged = faiss.ResultHeap(len(q), k, keep_max=True)
            for h in heaps:
                h.finalize()
                merged.add_result(h.D, h.I)
            heaps = [merged]
        heaps[0].finalize()
        out_d, out_i = heaps[0].D, heaps[0].I
        out_d[out_i < 0] = -np.inf
        return out_d, out_i

    def range_search(self, q: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Every (query item, item) pair with score >= threshold among the probed lists."""
        import torch

        q = np.asarray(q, np.int64)

        def consume(blocks) -> tuple[list, list]:
            out_q, out_i = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
            for ss, cols, d in blocks:
                r, c = (t.numpy() for t in torch.nonzero(d >= threshold, as_tuple=True))
                out_q.append(q[ss[r]])
                out_i.append(cols[c])
            return out_q, out_i

        parts = self._parallel(q, None, None, consume)
        return (np.concatenate([a for p in parts for a in p[0]]), np.concatenate([a for p in parts for a in p[1]]))
