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


def _grouped_bank(real_feats, n=240, seed=11):
    """Heavily copied videos: groups of near copies (some borderline), plus unrelated far copies."""
    from engine.synthetic import perturbed_features

    rng = np.random.default_rng(seed)
    s = np.where(rng.random(n) < 0.5, rng.choice([0.15, 0.4, 0.7, 0.9], n), 3.0).astype(np.float32)
    return perturbed_features(real_feats[:6], n, s, seed=seed)


def _brute_force_components(feats, c1, c2):
    from engine.scoring import Scorer
    from engine.features import FeatureBatch

    feats = sorted(feats, key=lambda f: f.name)
    bank = FeatureBatch.stack(feats)
    scorer = Scorer(feats[0].params, "cpu")
    edges = []
    for i in range(len(feats) - 1):
        r = scorer.one_to_many(feats[i], bank.view(i + 1), c1)
        for j in np.nonzero((r.level1 >= c1) & (r.level2 >= c2))[0]:
            edges.append((i, i + 1 + int(j)))
    comps = connected_components(len(feats), np.array(edges, dtype=np.int64).reshape(-1, 2))
    return [[feats[i].name for i in c] for c in comps if len(c) >= 2], len(edges)


def test_clusters_equal_brute_force_with_exact_and_ivf_candidates(tmp_path, real_feats):
    feats = _grouped_bank(real_feats)
    ix = VideoIndex.create(tmp_path / "g", shards=2, device="cpu")
    ix.add(feats)
    for c1, c2 in [(0.7, 0.7), (0.8, 0.95)]:
        want, n_edges = _brute_force_components(feats, c1, c2)
        assert want and max(len(g) for g in want) >= 10     # heavily copied videos present
        assert ix.clusters(c1, c2, candidates="exact", batch=64) == want
        st = ix.last_cluster_stats
        # every pair passing level-1 was found; level-2 was spent only where it could join components
        assert st.candidates == "exact" and st.level2_pairs < st.level1_pairs and st.linked <= st.level2_pairs
        assert ix.clusters(c1, c2, candidates="ivf", nlist=4, nprobe=4) == want   # all lists probed: exact
