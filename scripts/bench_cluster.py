#!/usr/bin/env python3
"""Duplicate clusters at scale: the candidate-graph clusters against the all-pairs baseline.

    python scripts/bench_cluster.py --items 20000 --store int8 --workdir /tmp/vmatch-cluster [--baseline]

Builds (once, kept in --workdir) an index of a synthetic bank with heavily copied videos:
`--dup-fraction` of the items fall in duplicate groups with Zipf-like sizes (the largest
holds ~5% of the bank), each group near copies (engine.synthetic, strength 0.3) of its own
base; the rest are unrelated (far perturbations of the 15 reference hashes).  Then times
`VideoIndex.clusters` with exact (flat) and IVF candidates (k-nearest-neighbour searches,
engine/index/cluster.py), measures the IVF candidate recall against exact on a sample of
queries (`candidate_recall`) and checks the components are equal, and with --baseline runs
the previous algorithm (all-pairs level-1 per needle batch, level-2 on every passing pair)
side by side and prints the ratio.  One JSON object on stdout; progress on stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bank import load_bases, log  # noqa: E402

from engine.features import TmkFeatures  # noqa: E402
from engine.index import VideoIndex, connected_components  # noqa: E402
from engine.index.cluster import candidate_recall  # noqa: E402
from engine.index.index import _Needles  # noqa: E402
from engine.index.neighbours import SCAN_PRECISIONS  # noqa: E402


def group_sizes(n_dup: int, largest: float, n: int) -> list[int]:
    sizes, r = [], 1
    while sum(sizes) < n_dup:
        sizes.append(max(2, int(largest * n / r)))
        r += 1
    sizes[-1] -= sum(sizes) - n_dup
    return [s for s in sizes if s >= 2]


def _copies(avg: np.ndarray, rows: np.ndarray, k: int, strength: float, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """k perturbed copies, as engine.synthetic.perturb_rows (pure average to normalise(u + s g),
    every non-zero d-block v to |v| normalise(v/|v| + s g)) but in numpy from random bytes: the
    noise is uniform on 256 levels scaled to the same variance as perturb_rows' Gaussian (in
    256-dim blocks the dot products that level-1 and level-2 see are sums of 256 such terms, so
    the two are indistinguishable to them) and costs a tenth of a Gaussian here, which matters
    for a bank of a million 64 K-float signatures."""
    d = avg.shape[-1]
    std = 73.9 * d ** 0.5              # a uniform byte's standard deviation, times sqrt(d)

    def noise(shape: tuple[int, ...]) -> np.ndarray:
        g = np.frombuffer(rng.bytes(int(np.prod(shape))), np.int8).reshape(shape).astype(np.float32)
        return g * np.float32(strength / std)

    def unit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = np.linalg.norm(x, axis=-1, keepdims=True)
        return x / np.where(n > 0, n, 1), n

    u, na = unit(avg.astype(np.float32))
    a = unit(u + noise((k, d)))[0] * na
    v, nv = unit(rows.astype(np.float32))
    r = unit(v[None] + noise((k, *rows.shape)))[0] * nv[None]
    return a.astype(np.float32), r.astype(np.float32)


def build(root: Path, n: int, store: str, dup_fraction: float, seed: int) -> VideoIndex:
    """The bank: duplicate groups (near copies, strength 0.3, of each group's own video, itself a
    far perturbation of a reference hash) and unrelated items (far perturbations), generated in
    two threads (numpy releases the GIL) while the index adds the previous batch."""
    from concurrent.futures import ThreadPoolExecutor

    tag = root / "BANK"
    want = f"{n} {store} {dup_fraction} {seed} bytes-noise"
    if tag.exists() and tag.read_text() == want:
        return VideoIndex(root, device="cpu")
    if root.exists():
        raise SystemExit(f"{root} holds another bank; remove it first")
    bases = load_bases()
    rng = np.random.default_rng(seed)
    sizes = group_sizes(int(n * dup_fraction), 0.05, n)
    log(f"bank: {n} items, {len(sizes)} duplicate groups (largest {sizes[0]}), {n - sum(sizes)} unrelated")
    ix = VideoIndex.create(root, shards=4, store=store, device="cpu")
    # the work list: (base, group's own video seed or None for unrelated, count, label, first number)
    jobs, count = [], 0
    for g, size in enumerate(sizes):
        bi = int(rng.integers(len(bases)))
        for s in range(0, size, 256):
            jobs.append((bi, int(rng.integers(1 << 62)), g, min(256, size - s), f"g{g:05d}", count))
            count += min(256, size - s)
    rest = n - sum(sizes)
    for s in range(0, rest, 256):
        jobs.append(((s // 256) % len(bases), None, -1, min(256, rest - s), "u", count))
        count += min(256, rest - s)
    own_seed = {g: int(rng.integers(1 << 62)) for g in range(len(sizes))}

    def make(job) -> list[TmkFeatures]:
        bi, job_seed, g, k, label, first = job
        b = bases[bi]
        brows = np.stack([b.cos, b.sin])
        if g < 0:
            avg, rows = _copies(b.avg, brows, k, 3.0, np.random.default_rng([seed, first]))
        else:
            oa, orows = _copies(b.avg, brows, 1, 3.0, np.random.default_rng([seed, own_seed[g]]))
            avg, rows = _copies(oa[0], orows[0], k, 0.3, np.random.default_rng([seed, job_seed]))
        return [TmkFeatures(avg[i], rows[i, 0], rows[i, 1], b.frame_count, b.params, f"{label}-{first + i:07d}")
                for i in range(k)]

    t0, added, pending, ahead = time.perf_counter(), 0, [], []
    with ThreadPoolExecutor(2) as ex:
        for job in jobs:                 # at most 6 jobs (1,536 items) generated ahead: memory bounded
            ahead.append(ex.submit(make, job))
            if len(ahead) < 6:
                continue
            pending += ahead.pop(0).result()
            if len(pending) >= 4096:
                ix.add(pending)
                added += len(pending)
                pending = []
                log(f"  {added}/{n} added ({added / (time.perf_counter() - t0):.0f}/s)")
        for f in ahead:
            pending += f.result()
    if pending:
        ix.add(pending)
    tag.write_text(want)
    return VideoIndex(root, device="cpu")


def level1_bank(n: int, dup_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The level-1 vectors of a bank like `build`'s (same group sizes and perturbation rule of the
    pure average, with Gaussian noise where `build` draws bytes; not the same draws) and each
    item's video (group id, or -1-i unrelated), without the level-2 rows: for a candidate-stage
    run where the store does not fit on disk."""
    from engine.index.segment import unit_average

    bases = load_bases()
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    sizes = group_sizes(int(n * dup_fraction), 0.05, n)
    vecs, video = [], []

    def perturb(avg: torch.Tensor, k: int, strength: float) -> torch.Tensor:
        u = avg / avg.norm()
        g = torch.randn((k, len(u)), generator=gen) / len(u) ** 0.5
        out = u + strength * g
        return out / out.norm(dim=1, keepdim=True) * avg.norm()

    for g, size in enumerate(sizes):
        b = torch.from_numpy(bases[int(rng.integers(len(bases)))].avg).float()
        own = perturb(b, 1, 3.0)[0]
        vecs.append(perturb(own, size, 0.3))
        video.append(np.full(size, g))
    rest = n - sum(sizes)
    for s in range(0, rest, 512):
        k = min(512, rest - s)
        vecs.append(perturb(torch.from_numpy(bases[(s // 512) % len(bases)].avg).float(), k, 3.0))
    video.append(-1 - np.arange(rest))
    x = np.stack([unit_average(v) for v in torch.cat(vecs).numpy()])
    return x.astype(np.float32), np.concatenate(video)


def vectors_only(args: argparse.Namespace) -> dict:
    """Candidate stage at a size whose store does not fit: real faiss searches and exact level-1
    on generated level-1 vectors; level-2 replaced by 'same video' (no store, no level-2 cost)."""
    from engine.index.cluster import cluster_pairs

    t0 = time.perf_counter()
    x, video = level1_bank(args.items, args.dup_fraction, args.seed)
    out: dict = {"mode": "vectors-only (level-2 replaced by the generator's video labels; no store)",
                 "items": len(x), "generate_s": round(time.perf_counter() - t0, 1), "c1": args.c1,
                 "load_avg_start": os.getloadavg()}

    def l1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", x[a], x[b])

    def l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return video[a] == video[b]

    comps = {}
    for kind in (["exact"] if not args.no_exact else []) + ["ivf"]:
        t0, c0 = time.perf_counter(), time.process_time()
        uf, st = cluster_pairs(x, l1, l2, args.c1, kind, nprobe=args.nprobe, precision=args.precision)
        comps[kind] = uf.components()
        out[kind] = {"seconds": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - c0, 1),
                     "clusters": sum(len(c) >= 2 for c in comps[kind]), "largest": len(comps[kind][0]),
                     "precision": st.precision, "level1_pairs": st.level1_pairs, "level2_pairs": st.level2_pairs, "linked": st.linked,
                     "search_rounds": st.search_rounds, "queries": st.queries, "level1_s": round(st.level1_s, 2),
                     "index_s": round(st.index_s, 2), "level2_s": round(st.level2_s, 2)}
        log(f"{kind}: {out[kind]}")
    if "exact" in comps:
        out["ivf"]["components_equal_exact"] = comps["ivf"] == comps["exact"]
    if not args.no_recall:
        probes = sorted({args.nprobe, *(int(p) for p in args.recall_nprobe.split(",") if p)})
        out["ivf"]["recall"] = {f"nprobe_{p}": r for p, r in candidate_recall(x, args.c1, nprobes=tuple(probes)).items()}
    out["load_avg_end"] = os.getloadavg()
    return out


def baseline_clusters(ix: VideoIndex, c1: float, c2: float, batch: int = 128) -> list[list[str]]:
    """The previous algorithm (before issue 13): every needle's exact level-1 range search, then
    level-2 on every pair passing level-1 (each unordered pair from its smaller id)."""
    names = sorted(ix._locations())
    rank = {n: i for i, n in enumerate(names)}
    shards = ix._state()
    shard_rank = [np.array([rank.get(i, -1) for i in sh.ids], dtype=np.int64) for sh in shards]
    edges = [np.zeros((0, 2), np.int64)]
    for sh, ranks in zip(shards, shard_rank):
        live = sh.live_rows()
        seg_of = np.searchsorted(sh.first, live, side="right")
        for seg in np.unique(seg_of):
            rows_in_seg = live[seg_of == seg]
            for s in range(0, len(rows_in_seg), batch):
                rows = rows_in_seg[s:s + batch]
                feats = ix._scorer.rows_to_device(sh.rows(rows))
                nd = _Needles([sh.ids[r] for r in rows], sh.l1[rows], feats[:, 0], feats[:, 1])
                pairs = ix._level1(nd, c1)
                cand = np.full(len(pairs.row), -1, np.int64)
                for si, rk in enumerate(shard_rank):
                    on = pairs.shard == si
                    cand[on] = rk[pairs.row[on]]
                keep = cand > ranks[rows][pairs.needle]
                pairs, cand = pairs.take(keep), cand[keep]
                l2, _ = ix._level2(nd, pairs, c2)
                ok = l2 >= c2
                edges.append(np.stack([ranks[rows][pairs.needle[ok]], cand[ok]], 1))
    comps = connected_components(len(names), np.concatenate(edges))
    return [[names[i] for i in c] for c in comps if len(c) >= 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--store", choices=["fp32", "fp16", "int8"], default="int8")
    ap.add_argument("--dup-fraction", type=float, default=0.4)
    ap.add_argument("--workdir", default="/tmp/vmatch-cluster")
    ap.add_argument("--c1", type=float, default=0.7)
    ap.add_argument("--c2", type=float, default=0.7)
    ap.add_argument("--nprobe", type=int, default=128)
    ap.add_argument("--precision", choices=SCAN_PRECISIONS, default="auto",
                    help="products of the candidate scan (engine/index/neighbours.py)")
    ap.add_argument("--baseline", action="store_true", help="also run the all-pairs algorithm (slow)")
    ap.add_argument("--no-exact", action="store_true", help="skip the exact candidates (and the recall)")
    ap.add_argument("--no-recall", action="store_true", help="skip the IVF recall on 2,000 sampled queries")
    ap.add_argument("--recall-nprobe", default="", help="also measure the recall at these nprobe (comma-separated)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--index", help="cluster this existing index instead of building a bank")
    ap.add_argument("--vectors-only", action="store_true",
                    help="candidate stage only, on generated level-1 vectors, level-2 replaced by the generator's "
                         "labels (for sizes whose store does not fit on disk; labelled as such in the output)")
    args = ap.parse_args()
    if args.vectors_only:
        print(json.dumps(vectors_only(args), indent=1))
        return
    root = Path(args.index) if args.index else Path(args.workdir) / f"bank-{args.items}-{args.store}"
    root.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ix = VideoIndex(root, device="cpu") if args.index else build(root, args.items, args.store, args.dup_fraction,
                                                                  args.seed)
    out: dict = {"index": str(root), "items": len(ix), "store": ix.manifest.store, "build_s": round(time.perf_counter() - t0, 1),
                 "c1": args.c1, "c2": args.c2, "torch_threads": torch.get_num_threads(),
                 "load_avg_start": os.getloadavg()}
    runs = {}
    for kind in (["exact"] if not args.no_exact else []) + ["ivf"]:
        ix = VideoIndex(root, device="cpu")
        t0, c0 = time.perf_counter(), time.process_time()
        groups = ix.clusters(args.c1, args.c2, candidates=kind, nprobe=args.nprobe, precision=args.precision)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        st = ix.last_cluster_stats
        runs[kind] = groups
        out[kind] = {"seconds": round(dt, 2), "cpu_s": round(cpu, 1), "clusters": len(groups), "largest": len(groups[0]) if groups else 0,
                     "precision": st.precision, "level1_pairs": st.level1_pairs, "level2_pairs": st.level2_pairs, "linked": st.linked,
                     "rounds": st.rounds, "search_rounds": st.search_rounds, "queries": st.queries,
                     "level1_s": round(st.level1_s, 2), "index_s": round(st.index_s, 2), "level2_s": round(st.level2_s, 2)}
        log(f"{kind}: {out[kind]}")
    if "exact" in runs:
        out["ivf"]["components_equal_exact"] = runs["ivf"] == runs["exact"]
    if not args.no_recall:
        t0 = time.perf_counter()
        ix = VideoIndex(root, device="cpu")
        where, shards = ix._locations(), ix._state()
        vecs = np.stack([shards[where[i][0]].l1[where[i][1]] for i in sorted(where)])
        probes = sorted({args.nprobe, *(int(p) for p in args.recall_nprobe.split(",") if p)})
        out["ivf"]["recall"] = {f"nprobe_{p}": r for p, r in candidate_recall(vecs, args.c1, nprobes=tuple(probes)).items()}
        log(f"recall ({time.perf_counter() - t0:.1f} s): {out['ivf']['recall']}")
    if args.baseline:
        ix = VideoIndex(root, device="cpu")
        t0, c0 = time.perf_counter(), time.process_time()
        base = baseline_clusters(ix, args.c1, args.c2)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        out["baseline_all_pairs"] = {"seconds": round(dt, 2), "cpu_s": round(cpu, 1), "equal_exact": base == runs.get("exact", base)}
        best = out["ivf"]["seconds"] if "ivf" in out else out["exact"]["seconds"]
        out["speedup_exact_vs_baseline"] = round(dt / out["exact"]["seconds"], 2) if "exact" in out else None
        out["speedup_ivf_vs_baseline"] = round(dt / best, 2)
    out["load_avg_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
