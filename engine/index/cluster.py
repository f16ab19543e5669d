"""Duplicate clusters: connected components of the match graph (a real transitive closure).

The reference's tmk-clusterize groups rows in one pass in hash-map order, which can split a
chain a-b-c depending on the order it meets them; components of the edge set do not depend
on any order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


def connected_components(n: int, edges: np.ndarray) -> list[list[int]]:
    """Components of an undirected graph on nodes 0..n-1 given as [E,2] edges.

    Deterministic: members ascending, components by size (largest first) then smallest member.
    """
    parent = np.arange(n, dtype=np.int64)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:          # path compression
            parent[x], x = root, parent[x]
        return int(root)

    for a, b in np.asarray(edges, dtype=np.int64).reshape(-1, 2):
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(n)], dtype=np.int64)
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(roots.tolist()):
        groups.setdefault(r, []).append(i)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))


class UnionFind:
    """Disjoint sets over 0..n-1 with vectorised root lookups (for skipping joined pairs)."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def roots(self, x: np.ndarray) -> np.ndarray:
        """Root of every element of x (and compress the paths walked)."""
        x = np.asarray(x, dtype=np.int64)
        r = self.parent[x]
        while True:
            up = self.parent[r]
            if np.array_equal(up, r):
                break
            r = up
        self.parent[x] = r
        return r

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = int(self.parent[root])
        while self.parent[x] != root:
            self.parent[x], x = root, int(self.parent[x])
        return root

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        self.parent[max(ra, rb)] = min(ra, rb)
        return True

    def components(self) -> list[list[int]]:
        """Members ascending, components by size (largest first) then smallest member."""
        n = len(self.parent)
        roots = self.roots(np.arange(n))
        order = np.argsort(roots, kind="stable")
        cuts = np.nonzero(np.diff(roots[order]))[0] + 1
        groups = [g.tolist() for g in np.split(order, cuts)] if n else []
        return sorted(groups, key=lambda g: (-len(g), g[0]))


@dataclass
class ClusterStats:
    """What a clustering run did: candidate pairs from level-1, pairs scored at level-2, time."""

    items: int = 0
    candidates: str = "exact"
    precision: str = "fp32"        # of the candidate scan's products (ListScan: fp32, bf16 or int8)
    level1_pairs: int = 0          # distinct pairs with level-1 >= c1 returned by the neighbour searches
    level2_pairs: int = 0          # pairs scored at level-2 (the rest were already joined)
    linked: int = 0                # pairs passing both levels that joined two components
    rounds: int = 0                # Borůvka rounds of level-2
    search_rounds: int = 0         # neighbour-search rounds (1 + the rounds re-asking saturated items)
    queries: int = 0               # neighbour searches issued, all rounds together
    level1_s: float = 0.0          # candidate index build (IVF training) + searches + exact level-1
    level2_s: float = 0.0
    index_s: float = 0.0           # of level1_s: building (and for IVF training) the candidate index


Level1Fn = Callable[[np.ndarray, np.ndarray], np.ndarray]
Level2Fn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def candidate_search(vectors: np.ndarray, kind: str, nlist: int = 0, nprobe: int = 32, seed: int = 1234,
                     precision: str = "auto"):
    """The neighbour searcher over the unit level-1 vectors: one list (exact) or k-means lists
    (approximate, `nprobe` probed), engine/index/neighbours.py; scores in `precision`
    (bf16 or int8: within `error` of exact, which callers rescore exactly; auto: bf16 where
    the CPU multiplies it natively, else int8 where its products are exact, else fp32)."""
    from engine.index.coarse import ivf_nlist
    from engine.index.neighbours import ListScan

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    nl = 1 if kind == "exact" else ivf_nlist(len(x), nlist)
    return ListScan(x, nl, nprobe if nl > 1 else 1, seed, precision=precision)


def candidate_recall(vectors: np.ndarray, c1: float, nlist: int = 0, nprobes: tuple[int, ...] = (128,), k: int = 16,
                     sample: int = 2000, seed: int = 0, precision: str = "auto") -> dict[int, dict[str, float | int]]:
    """IVF against exact (flat, float32) level-1 candidates, `sample` random items as queries, per nprobe.

    ``knn``: what round 1 of `cluster_pairs` links from.  A query needs min(k, its number of
    items with level-1 >= c1) such neighbours (any of them: a query with more than k is asked
    again anyway); the share of that need the k+1-nearest-neighbour search returns, checked
    with exact level-1.  ``knn_same_items``: stricter, the share of the exact k nearest
    neighbours themselves among those returned (near-ties reorder under bf16 scores, so it is
    below 1 even with every list probed).  ``range``: of all items with level-1 >= c1 (every
    level-1 pair of the sampled items), the share a range search returns."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    rng = np.random.default_rng(seed)
    q = np.sort(rng.choice(len(x), min(sample, len(x)), replace=False))

    def pairs(ix) -> tuple[np.ndarray, np.ndarray, set, set]:
        """(per query the kNN neighbours >= c1 returned, and its range pairs, kNN pairs, range
        pairs), with exact level-1 (the scan's own scores may be bf16 approximations: margin
        `error`, then rescored)."""
        d, i = ix.search(q, k + 1, c1 - ix.error)
        a = np.broadcast_to(q[:, None], i.shape)[i >= 0]
        qpos = np.broadcast_to(np.arange(len(q))[:, None], i.shape)[i >= 0]
        b = i[i >= 0]
        ok = (np.einsum("ij,ij->i", x[a], x[b]) >= c1) & (a != b)
        qi, rows = ix.range_search(q, c1 - ix.error)
        ok2 = (np.einsum("ij,ij->i", x[qi], x[rows]) >= c1) & (qi != rows)
        found = np.minimum(np.bincount(qpos[ok], minlength=len(q)), k)
        ranged = np.bincount(np.searchsorted(q, qi[ok2]), minlength=len(q))
        return (found, ranged, set(zip(a[ok].tolist(), b[ok].tolist())),
                set(zip(qi[ok2].tolist(), rows[ok2].tolist())))

    _, have, ek, er = pairs(candidate_search(x, "exact", precision="fp32"))
    need = np.minimum(have, k)
    ivf = candidate_search(x, "ivf", nlist, max(nprobes), precision=precision)
    out = {}
    for p in nprobes:
        ivf.nprobe = max(1, min(p, ivf.nlist))
        found, _, ik, ir = pairs(ivf)
        out[p] = {"queries": len(q), "knn_needed": int(need.sum()),
                  "knn": round(float(np.minimum(found, need).sum() / max(need.sum(), 1)), 5),
                  "knn_pairs": len(ek), "knn_same_items": round(len(ek & ik) / max(len(ek), 1), 5),
                  "range_pairs": len(er), "range": round(len(er & ir) / max(len(er), 1), 5)}
    return out


def cluster_pairs(vectors: np.ndarray, level1: Level1Fn, level2: Level2Fn, c1: float,
                  kind: str = "exact", nlist: int = 0, nprobe: int = 32, query_batch: int = 1 << 16,
                  slack: float = 1e-4, hold_pairs: int = 1 << 21, progress: Callable[[int], None] | None = None,
                  k: int = 16, heap_entries: int = 1 << 24, precision: str = "auto"
                  ) -> tuple[UnionFind, ClusterStats]:
    """Connected components of the graph of pairs passing level-1 >= c1 and level-2 >= c2.

    Candidates come from k-nearest-neighbour searches, not range searches: a range search
    returns every pair of a duplicate group (a video with 50,000 copies gives 1.25e9 pairs),
    while the components only need enough edges to join what can be joined.

    Round 1 asks every item for its k+1 nearest level-1 vectors.  An item whose last returned
    neighbour scores below c1 - slack has all its level-1 candidates in hand ("done"); the
    others are "saturated" and may hide more.  After linking (level-2 only on pairs joining two
    components, see `_link`), an edge still unseen has both ends saturated and matters only if
    it leaves a component, so each later round asks every saturated item again, among the
    saturated items outside its own component (per-query exclusions in the list scan,
    engine/index/neighbours.py).  Known non-edges (failed level-1 or level-2) are asked for on
    top, so every round either finishes an item or settles at least its `k` new pairs (k
    doubles for an item each round it stays saturated); rounds repeat until no item is
    saturated.  Why this is exact on a flat index: for an unseen edge (i, j)
    take the end finished first, say j in round r; its last search covered every saturated
    item outside its component, so i was finished before r (then the same argument applies
    to i, with the earlier round) or was in j's component (already joined).

    Cost: about two searches per item in a group of copies (one to link it, one to show
    nothing leaves its component) and at most k pairs per search: searches, pairs and level-2
    grow linearly with the items whatever the group sizes (1.2-1.4 searches per item measured,
    docs/benchmarks.md); each IVF search scans ~nprobe * N / nlist vectors, all the queries of
    a batch that probe a list in one matrix product.  ``level1(i, j)`` gives exact level-1
    scores (used for pairs within `slack` of c1, at least the scan's `error`: 0.012 for its
    bf16 products; the scan's inner products decide the rest), ``level2(i, j)`` which pairs
    i < j pass level-2 (>= c2).  Components do not depend on the order pairs are met.
    """
    import time

    n = len(vectors)
    uf, st = UnionFind(n), ClusterStats(items=n, candidates=kind)
    if n < 2:
        return uf, st
    t0 = time.perf_counter()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    nb = candidate_search(x, kind, nlist, nprobe, precision=precision)
    st.precision = nb.precision
    st.index_s = time.perf_counter() - t0
    st.level1_s += st.index_s
    slack = max(slack, nb.error)           # bf16/int8 scores: within nb.error of exact, rescored near c1
    lo = c1 - slack
    active = np.ones(n, bool)                # saturated (or not yet asked)
    want = np.full(n, k, np.int64)           # new neighbours to ask each item for
    known = np.zeros(0, np.int64)            # non-edges a*n+b (a < b): failed level-1 or level-2
    known_deg = np.zeros(n, np.int64)
    held: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def settle() -> None:
        """Link the held pairs (distinct, not yet joined, not known non-edges); remember failures."""
        nonlocal known
        if not held:
            return
        t0 = time.perf_counter()
        a, b, d = (np.concatenate(c) for c in zip(*held))
        held.clear()
        if not len(a):
            return
        key = a * n + b
        order = np.lexsort((-d, key))
        key, a, b, d = key[order], a[order], b[order], d[order]
        first = np.r_[True, key[1:] != key[:-1]]
        key, a, b, d = key[first], a[first], b[first], d[first]
        live = (uf.roots(a) != uf.roots(b)) & ~np.isin(key, known, assume_unique=True)
        key, a, b, d = key[live], a[live], b[live], d[live]
        near = np.abs(d - c1) <= slack         # too close to call on the scan's rounding: exact level-1
        if near.any():
            exact = np.asarray(level1(a[near], b[near]), np.float32)
            d[np.nonzero(near)[0]] = np.where(exact >= c1, np.maximum(exact, c1), -np.inf)
        ok = d >= c1
        st.level1_pairs += int(ok.sum())
        st.level1_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        fa, fb = _link(uf, a[ok], b[ok], d[ok], level2, st)
        st.level2_s += time.perf_counter() - t0
        bad = np.concatenate([key[~ok], fa * n + fb])
        if len(bad):
            known = np.union1d(known, bad)
            np.add.at(known_deg, np.concatenate([a[~ok], fa]), 1)
            np.add.at(known_deg, np.concatenate([b[~ok], fb]), 1)

    def ask(q: np.ndarray, extra: np.ndarray, allowed: np.ndarray | None, roots: np.ndarray | None,
            report: bool) -> None:
        """Search items q for want + extra neighbours (among `allowed` items outside their own
        component by `roots`); hold what passes c1 - slack, finish the done."""
        need = want[q] + extra
        bucket = np.ceil(np.log2(need)).astype(np.int64)
        order = np.lexsort((q, bucket))
        q, need, bucket = q[order], need[order], bucket[order]
        for bk in np.unique(bucket):
            on = np.nonzero(bucket == bk)[0]
            kk = int(need[on].max())
            step = max(1, min(query_batch, heap_entries // kk))
            for s in range(0, len(on), step):
                t0 = time.perf_counter()
                qq = q[on[s:s + step]]
                dist, ids = nb.search(qq, kk, lo, allowed, roots)
                st.queries += len(qq)
                done = (ids[:, -1] < 0) | (dist[:, -1] < lo) | (ids.shape[1] < kk)
                active[qq[done]] = False
                grow = qq[~done]
                want[grow] = np.minimum(2 * want[grow], 4096)
                m = (ids >= 0) & (dist >= lo) & (ids != qq[:, None])
                qi = np.broadcast_to(qq[:, None], ids.shape)[m]
                nj = ids[m].astype(np.int64)
                held.append((np.minimum(qi, nj), np.maximum(qi, nj), dist[m]))
                st.level1_s += time.perf_counter() - t0
                if sum(len(h[0]) for h in held) >= hold_pairs:
                    settle()
                if report and progress:
                    progress(len(qq))

    # round 1: every item, no exclusion (its own component is itself)
    st.search_rounds = 1
    ask(np.arange(n), np.ones(n, np.int64), None, None, True)
    settle()
    while active.any():
        before = (int(active.sum()), len(known), st.linked)
        st.search_rounds += 1
        q = np.nonzero(active)[0]
        ask(q, known_deg[q], active.copy(), uf.roots(np.arange(n)), False)
        settle()
        if (int(active.sum()), len(known), st.linked) == before:     # cannot happen (see above): never loop
            raise RuntimeError(f"cluster candidate search made no progress in round {st.search_rounds}")
    return uf, st


def _link(uf: UnionFind, a: np.ndarray, b: np.ndarray, l1: np.ndarray, level2: Level2Fn, st: ClusterStats
          ) -> tuple[np.ndarray, np.ndarray]:
    """Union the pairs passing level-2, scoring only pairs that join two components.

    Returns the pairs scored that failed level-2 (the known non-edges).

    Borůvka rounds: each component offers its `t` highest-level-1 pairs to other components;
    `t` doubles while most offers fail level-2 (candidates that are not copies) and falls back
    to 1 while they pass (a heavily copied video then costs about one level-2 per copy).
    """
    t = 1
    fails: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0, np.int64), np.zeros(0, np.int64))]
    while len(a):
        ra, rb = uf.roots(a), uf.roots(b)
        live = ra != rb
        a, b, l1, ra, rb = a[live], b[live], l1[live], ra[live], rb[live]
        if not len(a):
            break
        st.rounds += 1
        k = len(a)
        src = np.concatenate([ra, rb])
        idx = np.concatenate([np.arange(k), np.arange(k)])
        order = np.lexsort((idx, -np.concatenate([l1, l1]), src))
        s_src = src[order]
        start = np.r_[0, np.nonzero(s_src[1:] != s_src[:-1])[0] + 1]
        rank = np.arange(len(order)) - np.repeat(start, np.diff(np.r_[start, len(order)]))
        pick = np.unique(idx[order][rank < t])
        passes = np.asarray(level2(a[pick], b[pick]), dtype=bool)
        st.level2_pairs += len(pick)
        for i in pick[passes].tolist():
            if uf.union(int(a[i]), int(b[i])):
                st.linked += 1
        fails.append((a[pick[~passes]], b[pick[~passes]]))
        t = min(2 * t, 256) if passes.mean() < 0.5 else 1
        done = np.zeros(k, bool)
        done[pick] = True
        a, b, l1 = a[~done], b[~done], l1[~done]
    return np.concatenate([f[0] for f in fails]), np.concatenate([f[1] for f in fails])
