"""Duplicate clusters: connected components (order-independent) and the index's clusters."""
from __future__ import annotations

import numpy as np
import pytest

from engine.index import VideoIndex, connected_components
from engine.index.neighbours import int8_products_exact


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
        for precision in ("fp32", "int8") if int8_products_exact() else ("fp32",):   # rescored near c1: exact
            assert ix.clusters(c1, c2, candidates="exact", batch=64, precision=precision) == want
            assert ix.last_cluster_stats.precision == precision


def _labels_of(n, edges):
    """Components of a graph by label propagation (numpy; independent of the union-find under test)."""
    lab = np.arange(n)
    while True:
        new = lab.copy()
        np.minimum.at(new, edges[:, 0], lab[edges[:, 1]])
        np.minimum.at(new, edges[:, 1], lab[edges[:, 0]])
        new = new[new]
        if np.array_equal(new, lab):
            break
        lab = new
    groups = {}
    for i, r in enumerate(lab.tolist()):
        groups.setdefault(r, []).append(i)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))


def _huge_group_bank(seed=3):
    """1,200 copies of one video, 2 video groups whose level-1 vectors overlap but whose level-2
    mostly fails across (so known non-edges pile up), small groups, and unrelated items."""
    rng = np.random.default_rng(seed)
    d = 32
    base = rng.normal(size=(6, d))
    base[2] = base[1] + 0.35 * rng.normal(size=d)            # level-1 neighbours of group 1
    sizes = [1200, 150, 150, 40, 9, 3]
    label = np.concatenate([np.full(s, g) for g, s in enumerate(sizes)] + [np.arange(6, 6 + 600)])
    centres = np.concatenate([base, rng.normal(size=(600, d))])
    spread = np.where(label < 6, 0.3, 0.0)[:, None]
    x = centres[label] + spread * rng.normal(size=(len(label), d)) * np.linalg.norm(centres[label], axis=1,
                                                                                     keepdims=True) / np.sqrt(d)
    perm = rng.permutation(len(x))
    x, label = x[perm], label[perm]
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    x[7] = x[8]                                               # an exact duplicate (ties in the search)
    return x, label


def _pair_rule(label):
    """A stand-in level-2: copies of one video pass 85% of the time, groups 1 and 2 never, other pairs 0.5%."""
    def level2(a, b):
        h = (a * 1_000_003 + b * 7_919) % 1000
        across = np.where(np.minimum(label[a], label[b]) == 1, 0, 5)
        return np.where(label[a] == label[b], h < 850, h < across)
    return level2


@pytest.mark.parametrize("precision", ["fp32", "bf16", pytest.param("int8", marks=pytest.mark.skipif(
    not int8_products_exact(), reason="torch._int_mm is not exact on this CPU"))])
def test_knn_candidates_equal_brute_force_with_a_huge_group_and_saturated_rounds(precision):
    from engine.index.cluster import cluster_pairs

    x, label = _huge_group_bank()
    n = len(x)
    level2 = _pair_rule(label)
    sims = x @ x.T
    for c1 in (0.8, 0.92):
        ia, ib = np.nonzero(np.triu(sims >= c1, 1))
        e = np.stack([ia, ib], 1)[level2(ia, ib)]
        want = _labels_of(n, e)
        assert len(want[0]) > 1000 and len(ia) > 300_000          # one huge group: a quadratic range search
        for kind, k, heap in [("exact", 16, 1 << 24), ("exact", 2, 50), ("exact", 1, 7), ("ivf", 4, 1 << 24)]:
            scored = []

            def l2(a, b):
                assert np.all(a < b)
                scored.append(len(a))
                return level2(a, b)

            uf, st = cluster_pairs(x, lambda a, b: np.einsum("ij,ij->i", x[a], x[b]), l2, c1, kind,
                                   nlist=8, nprobe=8, query_batch=300, k=k, heap_entries=heap, precision=precision)
            assert uf.components() == want, (c1, kind, k, heap)
            assert st.precision == precision
            assert st.search_rounds >= 2 and st.queries < 6 * n           # saturated items asked again
            assert st.level1_pairs < len(ia) // 10 and sum(scored) == st.level2_pairs


def test_candidate_recall_is_one_when_every_list_is_probed_and_drops_with_one():
    from engine.index.cluster import candidate_recall

    rng = np.random.default_rng(0)
    c = rng.normal(size=(40, 16))
    x = c[rng.integers(40, size=2000)] + 0.25 * rng.normal(size=(2000, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    r = candidate_recall(x, 0.85, nlist=64, nprobes=(1, 64), sample=200)
    assert r[64]["knn"] == r[64]["range"] == 1.0 and r[64]["knn_pairs"] > 1000 and r[64]["knn_needed"] > 1000
    assert r[1]["knn"] < 1.0 and r[1]["range"] < 1.0 and r[1]["knn_same_items"] < 1.0
    f = candidate_recall(x, 0.85, nlist=64, nprobes=(64,), sample=200, precision="fp32")
    assert f[64]["knn"] == f[64]["knn_same_items"] == f[64]["range"] == 1.0
