"""Duplicate clusters: connected components (order-independent) and the index's clusters."""
from __future__ import annotations

import numpy as np

from engine.index import VideoIndex, connected_components


def test_components_of_a_hand_built_graph_in_any_edge_order():
    # 0-1-2 is a chain (not a clique), 4-5 a pair, 3 and 6 alone; 7-8-9-7 a triangle
    edges = np.array([[2, 1], [0, 1], [4, 5], [8, 9], [9, 7], [7, 8]])
    want = [[0, 1, 2], [7, 8, 9], [4, 5], [3], [6]]
    rng = np.random.default_rng(0)
    for _ in range(20):
        e = edges[rng.permutation(len(edges))]
        e = np.where(rng.random((len(e), 1)) < 0.5, e, e[:, ::-1])
        assert connected_components(10, e) == want
    assert connected_components(3, np.zeros((0, 2))) == [[0], [1], [2]]


def test_a_chain_is_one_cluster_even_when_its_ends_do_not_match():
    # a-b and b-c pass, a-c does not: the reference's single pass can split this, components cannot
    assert connected_components(3, np.array([[0, 1], [1, 2]])) == [[0, 1, 2]]


def test_index_clusters_equal_components_of_brute_force_edges(tmp_path, real_feats, real_full):
    ix = VideoIndex.create(tmp_path / "c", shards=3, device="cpu")
    ix.add(real_feats)
    names = sorted(f.name for f in real_feats)
    for c1, c2, min_size in [(0.7, 0.7, 2), (0.95, 0.95, 1), (0.8, 0.9, 2)]:
        edges = [(names.index(a), names.index(b)) for a in names for b, (l1, l2) in real_full[a].items()
                 if a < b and l1 >= c1 and l2 >= c2]
        want = [[names[i] for i in c] for c in connected_components(len(names), np.array(edges).reshape(-1, 2))
                if len(c) >= min_size]
        assert ix.clusters(c1, c2, min_size, batch=5) == want
    groups = ix.clusters(0.7, 0.7)
    assert [len(g) for g in groups] == [8, 4]
    assert groups[1][0] == "pattern-hd-no-bar"
