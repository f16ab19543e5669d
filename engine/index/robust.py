"""``--robust`` query and clusters over a VideoIndex (variants and their naming: engine/robust.py).

Every needle is expanded to its variants (8 transforms of each of its signatures).  Level-1 of
all variants runs as one batched search per shard: on flat shards (and the border side table)
the 8 transforms' inner products come from two block matrix products (kernels/dihedral.all_dots,
candidates then re-scored exactly), on IVF shards the searcher takes the whole variant matrix.
Level-2 needles are built only for variants with candidates, and level-2 runs only for the
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
from engine.index.segment import unit_average
from engine.robust import BORDERS, MAIN, better, kinds_of, signature_pairs, transformed, variant_name
from kernels import dihedral
from kernels.score import level1

if TYPE_CHECKING:
    from engine.index.index import Match, VideoIndex, _Pairs


@dataclass
class _Bases:
    """The signatures of a needle chunk: variant v = 8 * base + transform (dihedral.NAMES order)."""

    feats: list[TmkFeatures]
    needle: np.ndarray        # int64 [B] needle of each base
    kind: list[str]           # signature kind of each base
    has_borders: np.ndarray   # bool [Q] per needle
    unit: np.ndarray          # float32 [B, d] unit pure averages
    var_unit: np.ndarray      # float32 [8B, d] unit averages of the variants (as the index computes them)

    @classmethod
    def of(cls, sigs: Sequence[Signatures]) -> "_Bases":
        feats, needle, kind = [], [], []
        for i, s in enumerate(sigs):
            for k, f in kinds_of(s).items():
                feats.append(f)
                needle.append(i)
                kind.append(k)
        d = sigs[0].main.params.dim if sigs else 256
        unit = np.stack([unit_average(f.avg) for f in feats]) if feats else np.zeros((0, d), np.float32)
        var_unit = np.stack([unit_average(dihedral.apply(f.avg, t)) for f in feats for t in NAMES]) \
            if feats else np.zeros((0, d), np.float32)
        return cls(feats, np.asarray(needle, np.int64), kind, np.array([s.borders is not None for s in sigs], bool),
                   unit, var_unit)

    def needle_of(self, v: np.ndarray) -> np.ndarray:
        return self.needle[v // NT]

    def is_main(self, v: np.ndarray) -> np.ndarray:
        return np.array([k == MAIN for k in self.kind], dtype=bool)[v // NT]

    def name(self, v: int, item_kind: str) -> str:
        return variant_name(NAMES[v % NT], self.kind[v // NT], item_kind)

    def features(self, v: int) -> TmkFeatures:
        return transformed(self.feats[v // NT], NAMES[v % NT])


NAMES = dihedral.NAMES
NT = len(NAMES)
#: Flat shards: the 8 transforms' level-1 from block products (False: the searcher on all
#: variant vectors, as for IVF; the tests check that both give the same answers).
BLOCK_LEVEL1 = True
Best = dict[tuple[int, str], tuple[float, float, list[int], str]]


def _update(best: Best, bs: _Bases, var: np.ndarray, ids: Sequence[str], l1: np.ndarray, l2: np.ndarray,
            offs: np.ndarray, item_kind: str) -> None:
    for k in range(len(var)):
        v = int(var[k])
        key = (int(bs.needle_of(np.array(v))), ids[k])
        cur = best.get(key)
        if better((float(l1[k]), float(l2[k])), None if cur is None else cur[:2], "level2"):
            best[key] = (float(l1[k]), float(l2[k]), offs[k].tolist(), bs.name(v, item_kind))


def _blocked_bank(holder: object, l1: np.ndarray, device: torch.device) -> torch.Tensor:
    """The level-1 matrix in parity-block order on the device, cached on its shard / table."""
    t = getattr(holder, "_robust_blocked", None)
    if t is None or t.shape[1] != len(l1):
        t = torch.from_numpy(dihedral.blocked(l1)).to(device)
        setattr(holder, "_robust_blocked", t)
    return t


def _variant_candidates(bs: _Bases, bank: torch.Tensor, c1: float, cells: int = 1 << 21
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(variant, bank row) of every variant dot product >= c1 - SLACK (all 8 transforms at once)."""
    vs, rs = [], []
    base = torch.from_numpy(bs.unit)
    rows_chunk = max(256, cells // max(1, len(bs.unit)))      # bounded [8, B, rows] similarity blocks
    for s in range(0, bank.shape[1], rows_chunk):
        sims = dihedral.all_dots(bank[:, s:s + rows_chunk], base)              # [8, B, n]
        t, b, r = (sims >= c1 - coarse_mod.SLACK).nonzero(as_tuple=True)
        vs.append((b * NT + t).cpu().numpy())
        rs.append(r.cpu().numpy() + s)
    return (np.concatenate(vs), np.concatenate(rs)) if vs else (np.zeros(0, np.int64), np.zeros(0, np.int64))


def _exact(bs: _Bases, v: np.ndarray, l1_rows: np.ndarray, c1: float) -> tuple[np.ndarray, np.ndarray]:
    l1 = level1(torch.from_numpy(bs.var_unit[v]), torch.from_numpy(l1_rows)).numpy() if len(v) \
        else np.zeros(0, np.float32)
    return l1, l1 >= c1


def _level1(ix: "VideoIndex", bs: _Bases, c1: float) -> "_Pairs":
    """Every (variant, live row) with exact level-1 >= c1.  Flat shards: all 8 transforms from
    two block products (kernels/dihedral.all_dots); IVF: the searcher on all variant vectors."""
    from engine.index.index import _Pairs

    flat = BLOCK_LEVEL1 and (ix._memory or ix.manifest.coarse == "flat" or ix.manifest.ivf_trained is None)
    parts = []
    for si, sh in enumerate(ix._state()):
        if sh.n == 0 or not len(bs.feats):
            continue
        if c1 - coarse_mod.SLACK <= -1.0:
            live = sh.live_rows()
            v, rows = np.repeat(np.arange(len(bs.var_unit)), len(live)), np.tile(live, len(bs.var_unit))
        elif flat:
            v, rows = _variant_candidates(bs, _blocked_bank(sh, sh.l1, ix.device), c1)
        else:
            lims, rows = sh.searcher.search(bs.var_unit, c1)
            v = np.repeat(np.arange(len(bs.var_unit)), np.diff(lims))
        keep = ~sh.deleted[rows]
        v, rows = v[keep], rows[keep]
        l1, ok = _exact(bs, v, sh.l1[rows], c1)
        parts.append(_Pairs(v[ok], np.full(int(ok.sum()), si, np.int64), rows[ok], l1[ok]))
    return _Pairs.concat(parts)


def _used_needles(ix: "VideoIndex", bs: _Bases, v: np.ndarray):
    """Level-2 needles for the variants that have candidates only; v remapped to them."""
    used, local = np.unique(v, return_inverse=True)
    return ix._needles([bs.features(int(u)) for u in used]), used, local.astype(np.int64)


def _match_chunk(ix: "VideoIndex", sigs: Sequence[Signatures], c1: float, c2: float, best: Best,
                 needle_rank: np.ndarray | None = None, rank: dict[str, int] | None = None) -> tuple[int, int]:
    """Best passing variant of every (needle, item) into ``best``; with ranks, only items ranked
    above their needle (clusters).  Returns (level-1 candidates, level-2 pairs scored)."""
    bs = _Bases.of(sigs)
    shards = ix._state()
    table = ix.border_table()
    bids = set(table.row_of)
    where = ix._locations()
    # --- the shards (items as hashed); torch threads as for level-2 (spinning threads next to
    # faiss's stall small products on few cores: docs/benchmarks.md)
    with ix._compute_threads():
        pairs = _level1(ix, bs, c1)
    keep = np.ones(len(pairs.needle), dtype=bool)
    if len(pairs.needle) and (bs.has_borders.any() and bids or rank is not None):
        item_ids = [shards[s].ids[r] for s, r in zip(pairs.shard, pairs.row)]
        if bs.has_borders.any() and bids:   # both with borders: their uncropped signatures are not compared
            item_b = np.array([i in bids for i in item_ids], dtype=bool)
            keep &= ~(bs.is_main(pairs.needle) & bs.has_borders[bs.needle_of(pairs.needle)] & item_b)
        if rank is not None and needle_rank is not None:
            keep &= np.array([rank.get(i, -1) for i in item_ids]) > needle_rank[bs.needle_of(pairs.needle)]
    pairs = pairs.take(keep)
    n_cand, n_scored = len(pairs.needle), 0
    if len(pairs.needle):
        nd, used, local = _used_needles(ix, bs, pairs.needle)
        var = pairs.needle
        pairs.needle = local
        l2, offs = ix._level2(nd, pairs, c2)
        n_scored = int(np.sum(~np.isnan(l2)))
        ok = l2 >= c2
        _update(best, bs, var[ok], [shards[s].ids[r] for s, r in zip(pairs.shard[ok], pairs.row[ok])],
                pairs.l1[ok], l2[ok], offs[ok], MAIN)
    # --- the border side table
    live = np.array(sorted(r for i, r in table.row_of.items() if i in where), dtype=np.int64)
    if len(live) and len(bs.feats):
        if c1 - coarse_mod.SLACK <= -1.0:
            v, rows = np.repeat(np.arange(len(bs.var_unit)), len(live)), np.tile(live, len(bs.var_unit))
        else:
            with ix._compute_threads():
                v, j = _variant_candidates(bs, torch.from_numpy(dihedral.blocked(table.l1[live])), c1)
            rows = live[j]
        exact, sel = _exact(bs, v, table.l1[rows], c1)
        v, rows, exact = v[sel], rows[sel], exact[sel]
        if rank is not None and needle_rank is not None:
            sel = np.array([rank.get(table.ids[r], -1) for r in rows]) > needle_rank[bs.needle_of(v)]
            v, rows, exact = v[sel], rows[sel], exact[sel]
        n_cand += len(v)
        if len(v):
            nd, used, local = _used_needles(ix, bs, v)
            uniq, slot = np.unique(rows, return_inverse=True)
            l2b = np.full(len(v), np.nan, np.float32)
            offb = np.full((len(v), ix.params.num_periods), -1, np.int64)
            for s in range(0, len(uniq), ix.batch_rows):
                dev_rows = ix._scorer.rows_to_device(table.rows(uniq[s:s + ix.batch_rows]))
                pos = np.nonzero((slot >= s) & (slot < s + ix.batch_rows))[0]
                l2b[pos], offb[pos] = ix._scorer.score(nd.cos, nd.sin, local[pos], slot[pos] - s, dev_rows, c2)
            n_scored += int(np.sum(~np.isnan(l2b)))
            ok = l2b >= c2
            _update(best, bs, v[ok], [table.ids[r] for r in rows[ok]], exact[ok], l2b[ok], offb[ok], BORDERS)
    return n_cand, n_scored


def query(ix: "VideoIndex", needles: Sequence[Signatures], c1: float = 0.7, c2: float = 0.7,
          top: int | None = None, chunk: int = 128) -> list[list["Match"]]:
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
