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
    level1_pairs: int = 0          # pairs with level-1 >= c1 found by the candidate search
    level2_pairs: int = 0          # pairs scored at level-2 (the rest were already joined)
    linked: int = 0                # pairs passing both levels that joined two components
    rounds: int = 0
    level1_s: float = 0.0
    level2_s: float = 0.0


Level1Fn = Callable[[np.ndarray, np.ndarray], np.ndarray]
Level2Fn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def candidate_search(vectors: np.ndarray, kind: str, nlist: int = 0, nprobe: int = 32, seed: int = 1234):
    """A faiss index over the unit level-1 vectors: flat (exact) or IVF-Flat (approximate)."""
    import faiss

    from engine.index.coarse import ivf_nlist

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    d = x.shape[1]
    if kind == "exact":
        index = faiss.IndexFlatIP(d)
    else:
        nl = ivf_nlist(len(x), nlist)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nl, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        rng = np.random.default_rng(seed)
        sample = x if len(x) <= 64 * nl else x[np.sort(rng.choice(len(x), 64 * nl, replace=False))]
        index.train(sample)
        index.nprobe = min(nprobe, nl)
    if len(x):
        index.add(x)
    return index


def cluster_pairs(vectors: np.ndarray, level1: Level1Fn, level2: Level2Fn, c1: float,
                  kind: str = "exact", nlist: int = 0, nprobe: int = 32, query_batch: int = 512,
                  slack: float = 1e-4, hold_pairs: int = 1 << 20, progress: Callable[[int], None] | None = None
                  ) -> tuple[UnionFind, ClusterStats]:
    """Connected components of the graph of pairs passing level-1 >= c1 and level-2 >= c2.

    Candidates: a faiss range search of every item's level-1 vector at c1 - slack, each pair
    kept from its smaller end (flat: exact, so the components equal the all-pairs brute
    force; IVF: approximate, recall measured in docs/index.md), then the exact
    `level1(i, j)` >= c1.  Pairs are held until `hold_pairs` accumulate, then linked.  Level-2 is spent only
    where it can change the answer: a pair whose ends are already in one component is
    skipped, and the remaining pairs are scored in Borůvka rounds, each component offering
    its highest-level-1 pair to another component (a heavily copied video costs about one
    level-2 per copy, not one per pair).  ``level2(i, j)`` says which pairs i < j pass level-2
    (>= c2).  Components do not depend on the order pairs are met.
    """
    import time

    n = len(vectors)
    uf, st = UnionFind(n), ClusterStats(items=n, candidates=kind)
    if n < 2:
        return uf, st
    t0 = time.perf_counter()
    index = candidate_search(vectors, kind, nlist, nprobe)
    st.level1_s += time.perf_counter() - t0
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    held: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def link() -> None:
        t0 = time.perf_counter()
        if held:
            _link(uf, *(np.concatenate(c) for c in zip(*held)), level2, st)
        held.clear()
        st.level2_s += time.perf_counter() - t0

    pending = 0
    for s in range(0, n, query_batch):
        t0 = time.perf_counter()
        q = np.arange(s, min(s + query_batch, n))
        lims, _, rows = index.range_search(x[q], c1 - slack)
        qi = np.repeat(q, np.diff(lims.astype(np.int64)))
        rows = rows.astype(np.int64)
        keep = qi < rows                  # each pair from its smaller end (the exact search is symmetric)
        a, b = qi[keep], rows[keep]
        l1 = level1(a, b) if len(a) else np.zeros(0, np.float32)
        ok = l1 >= c1
        st.level1_pairs += int(ok.sum())
        held.append((a[ok], b[ok], l1[ok]))
        pending += int(ok.sum())
        st.level1_s += time.perf_counter() - t0
        if pending >= hold_pairs:         # link in large sets: fewer, larger level-2 batches
            link()
            pending = 0
        if progress:
            progress(len(q))
    link()
    return uf, st


def _link(uf: UnionFind, a: np.ndarray, b: np.ndarray, l1: np.ndarray, level2: Level2Fn, st: ClusterStats) -> None:
    """Union the pairs passing level-2, scoring only pairs that join two components.

    Borůvka rounds: each component offers its `t` highest-level-1 pairs to other components;
    `t` doubles while most offers fail level-2 (candidates that are not copies) and falls back
    to 1 while they pass (a heavily copied video then costs about one level-2 per copy).
    """
    t = 1
    while len(a):
        ra, rb = uf.roots(a), uf.roots(b)
        live = ra != rb
        a, b, l1, ra, rb = a[live], b[live], l1[live], ra[live], rb[live]
        if not len(a):
            return
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
        t = min(2 * t, 256) if passes.mean() < 0.5 else 1
        done = np.zeros(k, bool)
        done[pick] = True
        a, b, l1 = a[~done], b[~done], l1[~done]
