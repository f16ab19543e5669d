"""``--robust`` query and clusters over a VideoIndex (variants and their naming: engine/robust.py).

Every needle is expanded to its variants (8 transforms of each of its signatures).  Level-1 of
all variants runs as one batched search per shard (the coarse searcher takes the whole variant
matrix), and against the border side table as one matrix product; level-2 runs only for the
variant pairs that pass level-1, with the index's usual batching and upper-bound pruning.  Per
(needle, item) the best passing variant is kept: the answer equals a brute-force scan of every
variant of every signature pair (tests/engine/index/test_robust.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from engine.features import Signatures, TmkFeatures
from engine.index import coarse as coarse_mod
from engine.index.cluster import connected_components
from engine.robust import BORDERS, MAIN, better, needle_variants, signature_pairs, variant_name
from kernels.score import level1

if TYPE_CHECKING:
    from engine.index.index import Match, VideoIndex, _Pairs


@dataclass
class _Variants:
    needle: np.ndarray        # int64 [V] needle of each variant
    kind: list[str]           # needle signature kind of each variant
    transform: list[str]
    has_borders: np.ndarray   # bool [Q] per needle


def _expand(sigs: Sequence[Signatures]) -> tuple[list[TmkFeatures], _Variants]:
    feats, needle, kind, tr = [], [], [], []
    for i, s in enumerate(sigs):
        for f, t, k in needle_variants(s):
            feats.append(f)
            needle.append(i)
            kind.append(k)
            tr.append(t)
    return feats, _Variants(np.asarray(needle, np.int64), kind, tr,
                            np.array([s.borders is not None for s in sigs], dtype=bool))


Best = dict[tuple[int, str], tuple[float, float, list[int], str]]


def _update(best: Best, vs: _Variants, var: np.ndarray, ids: Sequence[str], l1: np.ndarray, l2: np.ndarray,
            offs: np.ndarray, item_kind: str) -> None:
    for k in range(len(var)):
        v = int(var[k])
        key = (int(vs.needle[v]), ids[k])
        cur = best.get(key)
        if better((float(l1[k]), float(l2[k])), None if cur is None else cur[:2], "level2"):
            best[key] = (float(l1[k]), float(l2[k]), offs[k].tolist(), variant_name(vs.transform[v], vs.kind[v],
                                                                                     item_kind))


def _match_chunk(ix: "VideoIndex", sigs: Sequence[Signatures], c1: float, c2: float, best: Best,
                 needle_rank: np.ndarray | None = None, rank: dict[str, int] | None = None) -> tuple[int, int]:
    """Best passing variant of every (needle, item) into ``best``; with ranks, only items ranked
    above their needle (clusters).  Returns (level-1 candidates, level-2 pairs scored)."""
    from engine.index.index import _Pairs

    feats, vs = _expand(sigs)
    nd = ix._needles(feats)
    shards = ix._state()
    table = ix.border_table()
    bids = set(table.row_of)
    where = ix._locations()
    main_kind = np.array([k == MAIN for k in vs.kind])
    # --- the shards (items as hashed): one level-1 search for all variants
    pairs = ix._level1(nd, c1)
    keep = np.ones(len(pairs.needle), dtype=bool)
    if len(pairs.needle) and (vs.has_borders.any() and bids or rank is not None):
        item_ids = [shards[s].ids[r] for s, r in zip(pairs.shard, pairs.row)]
        if vs.has_borders.any() and bids:   # both with borders: their uncropped signatures are not compared
            item_b = np.array([i in bids for i in item_ids], dtype=bool)
            keep &= ~(main_kind[pairs.needle] & vs.has_borders[vs.needle[pairs.needle]] & item_b)
        if rank is not None and needle_rank is not None:
            keep &= np.array([rank.get(i, -1) for i in item_ids]) > needle_rank[vs.needle[pairs.needle]]
    pairs = pairs.take(keep)
    l2, offs = ix._level2(nd, pairs, c2)
    ok = l2 >= c2
    _update(best, vs, pairs.needle[ok], [shards[s].ids[r] for s, r in zip(pairs.shard[ok], pairs.row[ok])],
            pairs.l1[ok], l2[ok], offs[ok], MAIN)
    n_cand, n_scored = len(pairs.needle), int(np.sum(~np.isnan(l2)))
    # --- the border side table: one matrix product for level-1, exact level-1 on the candidates
    live = np.array(sorted(r for i, r in table.row_of.items() if i in where), dtype=np.int64)
    if len(live) and len(feats):
        sims = torch.from_numpy(nd.unit) @ torch.from_numpy(table.l1[live]).T
        v, j = (sims >= c1 - coarse_mod.SLACK).nonzero(as_tuple=True)
        v, rows = v.numpy(), live[j.numpy()]
        exact = level1(torch.from_numpy(nd.unit[v]), torch.from_numpy(table.l1[rows])).numpy()
        sel = exact >= c1
        v, rows, exact = v[sel], rows[sel], exact[sel]
        if rank is not None and needle_rank is not None:
            sel = np.array([rank.get(table.ids[r], -1) for r in rows]) > needle_rank[vs.needle[v]]
            v, rows, exact = v[sel], rows[sel], exact[sel]
        n_cand += len(v)
        if len(v):
            uniq, slot = np.unique(rows, return_inverse=True)
            l2b = np.full(len(v), np.nan, np.float32)
            offb = np.full((len(v), ix.params.num_periods), -1, np.int64)
            for s in range(0, len(uniq), ix.batch_rows):
                dev_rows = ix._scorer.rows_to_device(table.rows(uniq[s:s + ix.batch_rows]))
                pos = np.nonzero((slot >= s) & (slot < s + ix.batch_rows))[0]
                l2b[pos], offb[pos] = ix._scorer.score(nd.cos, nd.sin, v[pos], slot[pos] - s, dev_rows, c2)
            n_scored += int(np.sum(~np.isnan(l2b)))
            ok = l2b >= c2
            _update(best, vs, v[ok], [table.ids[r] for r in rows[ok]], exact[ok], l2b[ok], offb[ok], BORDERS)
    return n_cand, n_scored


def query(ix: "VideoIndex", needles: Sequence[Signatures], c1: float = 0.7, c2: float = 0.7,
          top: int | None = None, chunk: int = 32) -> list[list["Match"]]:
    """Per needle, the items whose best variant passes level-1 >= c1 and level-2 >= c2, best first."""
    from engine.index.index import Match, QueryStats

    t0 = time.perf_counter()
    out: list[list[Match]] = [[] for _ in needles]
    n_cand = n_scored = 0
    for s in range(0, len(needles), chunk):      # bounded memory: 8-16 variants per needle
        best: Best = {}
        nc, ns = _match_chunk(ix, needles[s:s + chunk], c1, c2, best)
        n_cand, n_scored = n_cand + nc, n_scored + ns
        for (n, item), (l1, l2, offs, var) in best.items():
            out[s + n].append(Match(needles[s + n].name, item, l1, l2, offs, var))
    for lst in out:
        lst.sort(key=lambda mt: (-mt.level2, -mt.level1, mt.id))
        del lst[top if top is not None else len(lst):]
    ix.last_stats = QueryStats(len(needles), n_cand, n_scored, sum(map(len, out)), time.perf_counter() - t0)
    return out


def stored_signatures(ix: "VideoIndex", ids: Sequence[str]) -> list[Signatures]:
    """The index's signatures of ``ids`` with their border signatures (for clusters, eval)."""
    table = ix.border_table()
    return [Signatures(f, table.features(f.name)) for f in ix.features(ids)]


def clusters(ix: "VideoIndex", c1: float = 0.7, c2: float = 0.7, min_size: int = 2,
             batch: int = 32) -> list[list[str]]:
    """Connected components of the pairs whose best variant passes both levels (each unordered
    pair scored once, from its smaller id, every variant; ordering as VideoIndex.clusters)."""
    names = sorted(ix._locations())
    rank = {n: i for i, n in enumerate(names)}
    edges: list[np.ndarray] = [np.zeros((0, 2), np.int64)]
    for s in range(0, len(names), batch):
        ids = names[s:s + batch]
        sigs = stored_signatures(ix, ids)
        best: Best = {}
        _match_chunk(ix, sigs, c1, c2, best, np.arange(s, s + len(ids), dtype=np.int64), rank)
        if best:
            edges.append(np.array([(s + n, rank[item]) for n, item in best], dtype=np.int64))
    comps = connected_components(len(names), np.concatenate(edges))
    return [[names[i] for i in c] for c in comps if len(c) >= min_size]


__all__ = ["query", "clusters", "stored_signatures", "signature_pairs"]
