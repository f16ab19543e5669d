"""Many k-nearest-neighbour searches at once, list by list with matrix products.

Clustering asks every item of the bank for its neighbours: a million queries against a
million vectors.  faiss's IVF search scans each query's lists one query at a time, so every
list is read from memory once per query that probes it; faiss's contrib `big_batch_search`
turns that around (for each inverted list, the queries that probe it, one BLAS product), and
this module does the same with what clustering needs on top: per-query exclusions (an item
asked again is searched only among allowed items outside its own component) and a skip of
lists holding nothing a query may see.  The lists come from faiss k-means; one list is an
exact (flat) search with the same code.  Every item's probed lists are computed once (its first
is the list it lives in) and reused by later rounds.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from engine.errors import ConfigError

#: largest score block computed at once (queries x list items), in entries, and the most list
#: items in one block (a longer list, e.g. the single list of an exact search, is cut)
_BLOCK = 1 << 22
_COLS = 1 << 14
#: int8 scores: queries (the product's first operand) in [-127, 127], items in [-_Q, _Q].  CPUs
#: without VNNI multiply int8 with vpmaddubsw, which shifts the first operand to uint8 and
#: saturates int16 sums of two products: oneDNN under torch._int_mm was off by up to 1.6e7 with
#: both at +-127 and exact with the second at +-63 (2 * 255 * 63 < 2^15), measured
_QA, _Q = 127, 63
_IMIN = -(1 << 31)                    # an excluded int8 score (the int32 minimum)
#: the most probe-list entries cached for all items at once (int16/int32 each)
_PROBE_CACHE = 1 << 28
#: what `ListScan(precision=)` takes ("auto" first)
SCAN_PRECISIONS = ("auto", "fp32", "bf16", "int8")


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


@lru_cache(maxsize=1)
def int8_products_exact() -> bool:
    """Whether torch._int_mm multiplies int8 queries in [-_QA, _QA] by items in [-_Q, _Q]
    exactly into int32 here: a probe with the extreme values (the largest sums of two
    products, where saturation would show), not an assumption about the CPU's instructions."""
    try:
        import torch

        g = torch.Generator().manual_seed(0)
        a = torch.randint(-_QA, _QA + 1, (40, 256), dtype=torch.int8, generator=g)
        b = torch.randint(-_Q, _Q + 1, (24, 256), dtype=torch.int8, generator=g)
        a[0], a[1], b[0], b[1] = _QA, -_QA, _Q, -_Q
        return bool(torch.equal(torch._int_mm(a, b.T), a.int() @ b.int().T))
    except Exception:                  # no int8 product in this build: float32
        return False


_CHUNK = 1 << 16                      # rows per step of the int8 copies (64K x 256 float32: 64 MB)


def _row_stats(x: np.ndarray) -> tuple[np.ndarray, float]:
    """max|x| of every row [n] and the largest row norm, in torch chunks (every core, no
    full-size temporaries: a million rows is 1 GB of float32)."""
    import torch

    peak = np.empty(len(x), np.float32)
    norm = 0.0
    for s in range(0, len(x), _CHUNK):
        v = torch.from_numpy(x[s:s + _CHUNK])
        peak[s:s + len(v)] = v.abs().amax(1).numpy() if v.shape[1] else 0.0
        if len(v):
            norm = max(norm, float(torch.linalg.vector_norm(v, dim=1).max()))
    return peak, norm


def _scale(peak: np.ndarray, top: int) -> np.ndarray:
    """int8 scale peak / top of each row (1 for an all-zero row)."""
    return np.where(peak > 0, peak / top, 1.0).astype(np.float32)


def _quantize(x: np.ndarray, scale: np.ndarray, top: int, rows: np.ndarray | None = None
              ) -> tuple[np.ndarray, float]:
    """int8 copy of rows x[rows] (default all) at per-row `scale` (values in [-top, top]) and
    the largest Euclidean rounding error of a row, in torch chunks (on every core: numpy's took
    15 s of a million-item scan on 2 cores; rows gathered per chunk, not copied whole)."""
    import torch

    n = len(x) if rows is None else len(rows)
    out = np.empty((n, x.shape[1]), np.int8)
    worst = 0.0
    for s in range(0, n, _CHUNK):
        v = torch.from_numpy(x[s:s + _CHUNK] if rows is None else x[rows[s:s + _CHUNK]])
        sc = torch.from_numpy(scale[s:s + _CHUNK])[:, None]
        q = torch.round(v / sc).clamp_(-top, top)              # round half to even, as np.rint
        out[s:s + len(v)] = q.to(torch.int8).numpy()
        if len(v):
            worst = max(worst, float(torch.linalg.vector_norm(v - q * sc, dim=1).max()))
    return out, worst


def _int8_unusable(d: int) -> str | None:
    """Why int8 scores cannot run here for d-dimensional vectors, or None."""
    if d * _QA * _Q >= (1 << 24):                              # int32 sums must convert to float exactly
        return f"int8 scores need fewer than {(1 << 24) // (_QA * _Q)} dimensions"
    if not int8_products_exact():
        return "int8 products are not exact on this machine (torch._int_mm probe failed); use fp32"
    return None


class ListScan:
    """k-NN by inner product over unit vectors `x` [n, d]: `nlist` k-means lists (1: exact).

    ``precision="bf16"`` computes the scores from bfloat16 copies (about 2.8x the float32
    product rate on CPUs with bf16 instructions, and on GPUs): each score is then within
    `error` of the exact inner product (bf16 keeps 8 significant bits, u = 2^-8: inputs
    rounded, |x~.y~ - x.y| <= (2u + u^2)|x||y|; fp32 accumulation; the output rounded again,
    u|s|), so a caller keeps candidates down to c1 - error and rescores them exactly.
    ``"int8"``: integer products (torch._int_mm, 1.8x float32 with AVX2, 3.6x with VNNI,
    measured): a query row q at its own scale, list items x at their list's scale (one per
    column block, so a row's top k is the integer top k), within [-_QA, _QA] and [-_Q, _Q];
    the int32 sums are exact, so |q.x - q~.x~| <= |q - q~||x| + |q~||x - x~| <= `error`, the
    largest of each measured when the copies are made (0.034 for 3,000 and 0.06 for 1,000,000
    unit vectors in 256 dimensions).  ``"fp32"``: error 1e-4 (float32 rounding).  ``"auto"``:
    bf16 where the CPU has native bf16 (`cpu_has_bf16`), else int8 where its products are exact
    (`int8_products_exact`), else fp32."""

    def __init__(self, x: np.ndarray, nlist: int = 1, nprobe: int = 1, seed: int = 1234,
                 train_per_list: int = 64, niter: int = 10, precision: str = "fp32") -> None:
        import torch

        if precision == "auto":
            precision = ("bf16" if cpu_has_bf16() else
                         "int8" if _int8_unusable(np.shape(x)[1]) is None else "fp32")
        if precision not in SCAN_PRECISIONS[1:]:
            raise ConfigError(None, f"unknown precision {precision!r} (expected fp32, bf16, int8 or auto)")
        why = _int8_unusable(np.shape(x)[1]) if precision == "int8" else None
        if why:
            raise ConfigError(None, why)
        self.precision = precision
        self.dtype = {"bf16": torch.bfloat16, "int8": torch.int8}.get(precision, torch.float32)
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        n, d = self.x.shape
        self.nlist = max(1, min(int(nlist), n))
        self.nprobe = max(1, min(int(nprobe), self.nlist))
        self._probes: np.ndarray | None = None
        if self.nlist == 1:
            self.centroids = None
            assign = np.zeros(n, np.int64)
        else:
            self.centroids = self._kmeans(train_per_list, niter, seed)
            if n * self.nprobe <= _PROBE_CACHE:              # every item's probes, best first
                self._probes = self._nearest_lists(self.x, self.nprobe)
                assign = self._probes[:, 0].astype(np.int64)
            else:
                assign = np.concatenate([self._nearest_lists(self.x[s:s + (1 << 16)], 1)[:, 0]
                                         for s in range(0, n, 1 << 16)]).astype(np.int64)
        self.ids = np.argsort(assign, kind="stable").astype(np.int64)      # items, list by list
        self.lims = np.searchsorted(assign[self.ids], np.arange(self.nlist + 1))
        if precision == "int8":
            self._int8_copies()
        else:
            self.xs = torch.from_numpy(self.x[self.ids]).to(self.dtype)
            u = 2.0 ** -8
            self.error = (2 * u + u * u) * (1 + u) + u * (1 + 2 * u) + 1e-4 if precision == "bf16" else 1e-4

    def _int8_copies(self) -> None:
        """The int8 items (list order, one scale per list), the int8 queries (item order, one
        scale per row) and the error bound of their products (class docstring)."""
        import torch

        peak, norm = _row_stats(self.x)                          # item order
        sizes = np.diff(self.lims)
        self.list_scale = np.ones(self.nlist, np.float32)
        full = np.nonzero(sizes)[0]
        self.list_scale[full] = _scale(np.maximum.reduceat(peak[self.ids], self.lims[full]), _Q)
        xs8, ex = _quantize(self.x, np.repeat(self.list_scale, sizes), _Q, self.ids)
        self.xs = torch.from_numpy(xs8)
        self.query_scale = _scale(peak, _QA)
        self.xq8, eq = _quantize(self.x, self.query_scale, _QA)
        self.error = eq * norm + (norm + eq) * ex + 1e-4       # |q~| <= |q| + |q - q~|

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
        dt = torch.bfloat16 if self.precision == "bf16" else torch.float32     # int8: float centroids
        return torch.from_numpy(np.ascontiguousarray(km.centroids, np.float32)).to(dt)

    def _nearest_lists(self, v: np.ndarray, p: int) -> np.ndarray:
        """The p lists whose centroids score highest for each vector [len(v), p], best first."""
        import torch

        out = np.empty((len(v), p), np.int16 if self.nlist < (1 << 15) else np.int32)
        for s in range(0, len(v), 8192):
            sc = torch.from_numpy(v[s:s + 8192]).to(self.centroids.dtype) @ self.centroids.T
            out[s:s + 8192] = torch.topk(sc, p, dim=1).indices.numpy()
        return out

    def _buckets(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in q sorted by probed list, list boundaries into them) for items q."""
        nq = len(q)
        if self.centroids is None:
            return np.arange(nq), np.array([0, nq])
        if self._probes is not None and self._probes.shape[1] >= self.nprobe:
            flat = self._probes[q, :self.nprobe].ravel()
        else:
            flat = self._nearest_lists(self.x[q], self.nprobe).ravel()
        order = np.argsort(flat, kind="stable")
        return order // self.nprobe, np.searchsorted(flat[order], np.arange(self.nlist + 1))

    def _plan(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int]]]:
        """Positions in q by probed list, their boundaries, and the work units (list, first
        and end item) with queries: a list longer than _COLS is cut into column blocks."""
        qpos, qlims = self._buckets(q)
        units = []
        for li in np.nonzero(np.diff(qlims))[0].tolist():
            for a in range(int(self.lims[li]), int(self.lims[li + 1]), _COLS):
                units.append((li, a, min(a + _COLS, int(self.lims[li + 1]))))
        return qpos, qlims, units

    def _blocks(self, xq, qscale, qpos: np.ndarray, qlims: np.ndarray, units: list[tuple[int, int, int]],
                allowed: np.ndarray | None, qroot: np.ndarray | None, roots: np.ndarray | None):
        """Yield (query positions, item ids, scores, row scales) per block of `units`, exclusions
        set to -inf (int8: to the int32 minimum; a score is then the integer times its row's
        scale, None for the float precisions).

        Scores are one torch matrix product per block (about twice numpy's BLAS here in float32)."""
        import torch

        int8 = self.precision == "int8"
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
                rows = torch.index_select(xq, 0, torch.from_numpy(ss))
                d = torch._int_mm(rows, xb.T) if int8 else rows @ xb.T
                if croot is not None:
                    d.masked_fill_(torch.from_numpy(qroot[ss][:, None] == croot[None, :]),
                                   _IMIN if int8 else -np.inf)
                yield ss, cols, d, (qscale[ss] * self.list_scale[li] if int8 else None)

    def _parallel(self, q: np.ndarray, allowed: np.ndarray | None, roots: np.ndarray | None, consume):
        """Run consume(blocks) over the work units in one thread per core, each single-threaded
        in torch, and return the results in a list: the blocks are too small for torch's own
        threads (2,843 against 2,397 queries/s measured at 1,000,000 items, bf16, nprobe 128)."""
        import torch

        qpos, qlims, units = self._plan(q)
        if self.precision == "int8":          # gathered once: 16 MB for a batch of 65,536 queries
            xq, qscale = torch.from_numpy(self.xq8[q]), torch.from_numpy(self.query_scale[q])
        else:                                 # 64 MB in float32
            xq, qscale = torch.from_numpy(self.x[q]).to(self.dtype), None
        qroot = roots[q] if roots is not None else None
        threads = max(1, min(torch.get_num_threads(), len(units)))
        if threads == 1:
            return [consume(self._blocks(xq, qscale, qpos, qlims, units, allowed, qroot, roots))]
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
                return list(ex.map(lambda u: consume(self._blocks(xq, qscale, qpos, qlims, u, allowed, qroot,
                                                                  roots)), share))
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
            for ss, cols, d, rs in blocks:
                best = d.amax(1) if rs is None else d.amax(1).float() * rs
                hit = torch.nonzero(best >= lo, as_tuple=True)[0]          # most rows reach nothing
                if not len(hit):
                    continue
                v, j = torch.topk(d[hit], min(k, d.shape[1]), dim=1)
                if rs is None:
                    v = v.float()
                else:                                                       # excluded stay -inf
                    v = torch.where(v == _IMIN, -np.inf, v.float() * rs[hit][:, None])
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
            for ss, cols, d, rs in blocks:
                score = d if rs is None else d.float() * rs[:, None]
                r, c = (t.numpy() for t in torch.nonzero(score >= threshold, as_tuple=True))
                out_q.append(q[ss[r]])
                out_i.append(cols[c])
            return out_q, out_i

        parts = self._parallel(q, None, None, consume)
        return (np.concatenate([a for p in parts for a in p[0]]), np.concatenate([a for p in parts for a in p[1]]))
