"""Duplicate clusters: connected components of the match graph (a real transitive closure).

The reference's tmk-clusterize groups rows in one pass in hash-map order, which can split a
chain a-b-c depending on the order it meets them; components of the edge set do not depend
on any order.
"""
from __future__ import annotations

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
