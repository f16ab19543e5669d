#!/usr/bin/env python3
"""Index benchmarks on synthetic banks made by perturbing the 15 real reference hashes.

CPU, on disk (the default):

    python scripts/bench_index.py --items 20000 --store fp32 --workdir /tmp/vmatch-bench [--ivf-recall]

writes N perturbed `.tmk` files (kept in --workdir for reruns), then measures `index add`
(files/s), bytes on disk per hash, resident memory per hash, one needle at c1 = -1 in process
(every item scored at level-2; c2 = 0 and c2 = 0.7; labelled in_process), the whole
`vmatch query` command on the full index, a needle batch at c1 = c2 = 0.7, and optionally IVF
recall against flat.  Side by side with the reference tools (built by tests/oracle.py), both as
whole processes on the same first --compare-items files, outputs compared, several runs:
`tmk-query` against `vmatch query` (one needle, c1 = -1, c2 = 0) and `tmk-clusterize` against
`vmatch cluster` (c1 = c2 = 0.7).  Without the reference tools the README constants are
printed instead, labelled as a fallback.

GPU, in memory (the bank is generated on the device; 1M fp16 rows are 131 GB, more than the
GPU machine's disk):

    python scripts/bench_index.py --device cuda --items 1000000 --store fp16 --needles 1000

Its baseline runs in the same benchmark: the same queries on the first --baseline-items rows,
in memory on the CPU and on the device (both in process), and their ratio.

Bank: item i perturbs real hash i mod 15 (engine/synthetic.py); a fraction
--near-fraction are near copies (cosine ~0.96 to their base), the rest far (~0.3), so a
needle has a realistic handful of level-1 candidates.  Needles are near copies of bank items,
half of them near items.  Prints one JSON object on stdout; progress goes to stderr.

``--robust`` adds a side-by-side run of the needle batch (and of one needle) with and without
``--robust`` matching (8 mirror / rotation variants per needle, engine/index/robust.py), plain and
robust alternated ``--repeats`` times, and prints the best time of each and their ratio (and the
ratio of the medians, steadier on a busy machine):

    python scripts/bench_index.py --items 20000 --memory --store fp16 --robust
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from _oracle import FALLBACK_NOTE, machine, oracle, ratio, run_timed, spread, vmatch_cmd  # noqa: E402

from engine.features import Signatures, TmkFeatures  # noqa: E402
from engine.index import VideoIndex  # noqa: E402
from engine.index.segment import unit_average  # noqa: E402
from engine.synthetic import mixed_strengths, perturb_rows  # noqa: E402
from engine.tmkfile import iter_tmk_paths, read_many, to_bytes  # noqa: E402
from kernels.device import device_type, resolve_device  # noqa: E402

#: Reference tmk-query on the 2-core CI machine (shared/reference/threatexchange/README.md):
#: fallback only, when the reference tools cannot be run side by side.
REF_MS_PER_PAIR = 4.7
REF_LOAD_S_PER_10K = 2.55


def log(msg: str) -> None:
    print(f"[bench_index] {msg}", file=sys.stderr, flush=True)


def rss_anon() -> int:
    """Anonymous resident bytes (excludes file-backed pages such as the memory-mapped store)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def trim() -> None:
    """Return freed heap memory to the OS so resident-memory deltas show what is really held."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def load_bases(ref: str | None) -> list[TmkFeatures]:
    cands = [Path(ref)] if ref else [REPO.parent / "shared/reference/threatexchange/tmk",
                                      REPO / "shared/reference/threatexchange/tmk"]
    for c in cands:
        paths = [p for p in iter_tmk_paths([c]) if p.stem != "test-padded-dimensions"] if c.is_dir() else []
        if paths:
            return read_many(paths)
    raise SystemExit(f"bench_index: reference hashes not found in {', '.join(map(str, cands))} (use --ref DIR)")


def generate(bases: list[TmkFeatures], n: int, near_fraction: float, seed: int, device: torch.device,
             dtype: torch.dtype, chunk: int = 4096):
    """Yield (first item, unit averages [B,d] float32 numpy, rows [B,2,P,m,d] dtype on device)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    strengths = torch.from_numpy(mixed_strengths(n, near_fraction, seed))
    b_avg = [torch.from_numpy(f.avg).to(device) for f in bases]
    b_rows = [torch.from_numpy(np.stack([f.cos, f.sin])).to(device) for f in bases]
    for s in range(0, n, chunk):
        idx = torch.arange(s, min(s + chunk, n))
        avg = torch.empty((len(idx), bases[0].params.dim), device=device)
        rows = torch.empty((len(idx), *b_rows[0].shape), device=device, dtype=dtype)
        for b in range(len(bases)):
            sel = (idx % len(bases) == b).nonzero().flatten()
            if len(sel):
                a, r = perturb_rows(b_avg[b], b_rows[b], strengths[idx[sel]], gen)
                avg[sel.to(device)], rows[sel.to(device)] = a, r.to(dtype)
        yield s, avg.cpu().numpy(), rows


def make_bank_files(bases: list[TmkFeatures], folder: Path, n: int, near_fraction: float, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "COMPLETE"
    names = [folder / f"syn-{i:07d}.tmk" for i in range(n)]
    if done.exists() and done.read_text() == f"{n} {near_fraction} {seed}":
        return names
    log(f"writing {n} perturbed .tmk files to {folder}")
    t0 = time.perf_counter()
    p = bases[0].params
    for s, avg, rows in generate(bases, n, near_fraction, seed, torch.device("cpu"), torch.float32, 512):
        r = rows.numpy()
        for k in range(len(avg)):
            base = bases[(s + k) % len(bases)]
            f = TmkFeatures(avg[k], r[k, 0], r[k, 1], base.frame_count, p)
            names[s + k].write_bytes(to_bytes(f))
    done.write_text(f"{n} {near_fraction} {seed}")
    log(f"  {n / (time.perf_counter() - t0):.0f} files/s")
    return names


def needles_from(ix: VideoIndex, rows_of, near_ids: np.ndarray, far_ids: np.ndarray, q: int, seed: int,
                 names: list[str], picked: list[int] | None = None) -> list[TmkFeatures]:
    """q near copies (strength 0.3) of bank items, half near items, half far ones."""
    rng = np.random.default_rng(seed + 1)
    pick = np.concatenate([rng.choice(near_ids, q // 2) if len(near_ids) else rng.choice(far_ids, q // 2),
                           rng.choice(far_ids, q - q // 2)])
    if picked is not None:
        picked.extend(int(i) for i in pick)
    gen = torch.Generator().manual_seed(seed + 2)
    out = []
    for k, i in enumerate(pick):
        avg, row = rows_of(int(i))
        a, r = perturb_rows(torch.from_numpy(avg), row.float().cpu(), torch.tensor([0.3]), gen)
        out.append(TmkFeatures(a[0].numpy(), r[0, 0].numpy(), r[0, 1].numpy(), 300, ix.params,
                               f"needle-{k:05d}-of-{names[i]}"))
    return out


def timed_query(ix: VideoIndex, needles: list[TmkFeatures], c1: float, c2: float) -> dict[str, float]:
    if device_type(ix.device) == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = ix.query(needles, c1, c2)
    if device_type(ix.device) == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    st = ix.last_stats
    return {"needles": len(needles), "c1": c1, "c2": c2, "seconds": round(dt, 4),
            "needles_per_s": round(len(needles) / dt, 2), "candidates": st.candidates, "level2_scored": st.scored,
            "matches": sum(map(len, res)), "needles_with_a_match": sum(1 for r in res if r)}


def robust_vs_plain(ix: VideoIndex, needles: list[TmkFeatures], c1: float, c2: float, repeats: int) -> dict:
    """Best-of-`repeats` seconds of the same needles with and without --robust, alternated."""
    from engine.index import robust

    sigs = [Signatures(n) for n in needles]
    sync = torch.cuda.synchronize if ix.device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {"plain": [], "robust": []}
    stats = {}
    robust.query(ix, sigs[:2], c1, c2)       # warm-up
    for _ in range(repeats):
        for kind in ("plain", "robust"):
            sync()
            t0 = time.perf_counter()
            res = ix.query(needles, c1, c2) if kind == "plain" else robust.query(ix, sigs, c1, c2)
            sync()
            times[kind].append(time.perf_counter() - t0)
            st = ix.last_stats
            stats[kind] = {"candidates": st.candidates, "level2_scored": st.scored,
                           "matches": sum(map(len, res))}
    best = {k: min(v) for k, v in times.items()}
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"needles": len(needles), "c1": c1, "c2": c2, "repeats": repeats,
            "plain_seconds": round(best["plain"], 4), "robust_seconds": round(best["robust"], 4),
            "robust_over_plain": round(best["robust"] / best["plain"], 2),
            "median_robust_over_plain": round(med["robust"] / med["plain"], 2),
            "all_seconds": {k: [round(x, 4) for x in v] for k, v in times.items()}, **{k: stats[k] for k in stats}}


def bench_memory(args: argparse.Namespace, bases: list[TmkFeatures], device: torch.device) -> dict:
    """The bank generated straight into (GPU) memory; level-1 and level-2 on the device."""
    dtype = torch.float16 if args.store == "fp16" else torch.float32
    row_bytes = 2 * bases[0].cos.size * (2 if args.store == "fp16" else 4)
    need = args.items * row_bytes
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        if need + (8 << 30) > free:
            raise SystemExit(f"bench_index: {args.items} {args.store} rows need {need / 2**30:.1f} GiB, "
                             f"only {free / 2**30:.1f} GiB free on {torch.cuda.get_device_name(device)}")
    t0 = time.perf_counter()
    rows = torch.empty((args.items, 2, *bases[0].cos.shape), dtype=dtype, device=device)
    unit = np.empty((args.items, bases[0].params.dim), np.float32)
    for s, avg, r in generate(bases, args.items, args.near_fraction, args.seed, device, dtype):
        rows[s:s + len(r)] = r
        unit[s:s + len(r)] = avg / np.linalg.norm(avg, axis=1, keepdims=True)
        if s % (args.items // 10 or 1) < 4096:
            log(f"generated {s + len(r)}/{args.items}")
    if device.type == "cuda":
        torch.cuda.synchronize()
    gen_s = time.perf_counter() - t0
    names = [f"syn-{i:07d}" for i in range(args.items)]
    ix = VideoIndex.in_memory(names, unit, rows, bases[0].params, device, batch_rows=args.batch_rows)
    strengths = mixed_strengths(args.items, args.near_fraction, args.seed)
    near, far = np.nonzero(strengths < 1)[0], np.nonzero(strengths >= 1)[0]
    needle_rows: list[int] = []
    needles = needles_from(ix, lambda i: (unit[i], rows[i]), near, far, args.needles, args.seed, names,
                           picked=needle_rows)
    t0 = time.perf_counter()
    ix.query(needles[:8], args.c1, args.c2)           # warm-up: CUDA context, kernels, search structures
    warm = time.perf_counter() - t0
    out = {"mode": "in-memory", "device": str(device), "items": args.items, "store": args.store,
           "generate_seconds": round(gen_s, 2), "warmup_seconds": round(warm, 2),
           "one_needle": timed_query(ix, needles[:1], args.c1, args.c2),
           "batch": timed_query(ix, needles, args.c1, args.c2)}
    if args.robust:
        out["robust_one_needle"] = robust_vs_plain(ix, needles[:1], args.c1, args.c2, args.repeats)
        out["robust_batch"] = robust_vs_plain(ix, needles, args.c1, args.c2, args.repeats)
    k = min(args.baseline_items, args.items)
    if k > 0:   # baseline: the same queries on the first k rows, in memory on the CPU and on the device
        sub_needles = [n for n, i in zip(needles, needle_rows) if i < k] or needles[:1]
        res = {}
        for name, dev in (("cpu", torch.device("cpu")), ("device", device)):
            sub = VideoIndex.in_memory(names[:k], unit[:k], rows[:k].to(dev), bases[0].params, dev,
                                       batch_rows=512 if dev.type == "cpu" else args.batch_rows)
            sub.query(sub_needles[:2], args.c1, args.c2)
            res[name] = min((timed_query(sub, sub_needles, args.c1, args.c2) for _ in range(max(1, args.repeat))),
                            key=lambda r: r["seconds"])      # best of --repeat runs
            del sub
        out["baseline_same_queries_first_rows"] = {
            "items": k, "needles": len(sub_needles), "cpu_in_memory": res["cpu"], "device_in_memory": res["device"],
            "matches_equal": res["cpu"]["matches"] == res["device"]["matches"],
            "speedup_device_vs_cpu": round(res["cpu"]["seconds"] / res["device"]["seconds"], 2),
            "note": "in-process, same bank rows and needles on both"}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
        out["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def bench_disk(args: argparse.Namespace, bases: list[TmkFeatures], device: torch.device) -> dict:
    work = Path(args.workdir)
    files = make_bank_files(bases, work / f"bank-{args.items}-{args.seed}", args.items, args.near_fraction,
                            args.seed)
    out: dict = {"mode": "disk", "device": str(device), "items": args.items, "store": args.store,
                 "coarse": args.coarse, "shards": args.shards, "torch_threads": torch.get_num_threads()}
    ix_path = work / f"index-{args.items}-{args.store}-{args.coarse}"
    if not (args.reuse and (ix_path / "MANIFEST.json").exists()):
        shutil.rmtree(ix_path, ignore_errors=True)
        ix = VideoIndex.create(ix_path, shards=args.shards, coarse=args.coarse, store=args.store, device="cpu")
        log(f"adding {len(files)} files")
        t0 = time.perf_counter()
        ix.add_paths(files)
        dt = time.perf_counter() - t0
        out["add"] = {"files": len(files), "seconds": round(dt, 2), "files_per_s": round(len(files) / dt, 1)}
    info = VideoIndex(ix_path, device="cpu").info()
    out["bytes_per_hash"] = info["bytes_per_item"]
    needle = bases[0]
    del info
    warm = VideoIndex(ix_path, device=device, batch_rows=args.batch_rows)   # library and kernel warm-up
    warm.query([needle], 0.99, 0.99)
    del warm
    for c2 in (0.0, 0.7):                               # one needle, every item scored at level-2
        for verify in (True, False):
            trim()
            rss0 = rss_anon()
            t0 = time.perf_counter()
            ix = VideoIndex(ix_path, device=device, batch_rows=args.batch_rows, verify_reads=verify)
            ix._state()                                 # open: manifest, l1 vectors, ids, faiss
            rss_open = rss_anon()
            res = ix.query([needle], -1.0, c2)
            dt = time.perf_counter() - t0
            trim()
            out[f"in_process_one_needle_c1=-1_c2={c2}_verify={verify}"] = {
                "seconds_open_and_query": round(dt, 3), "us_per_pair": round(dt / args.items * 1e6, 1),
                "level2_scored": ix.last_stats.scored, "matches": len(res[0]),
                "rss_anon_bytes_per_hash_open": round((rss_open - rss0) / args.items),
                "rss_anon_bytes_per_hash_after_query": round((rss_anon() - rss0) / args.items)}
            del ix
    times = []
    for _ in range(args.repeat):
        dt, stdout = run_timed(vmatch_cmd("query", ix_path, files[0], "--c1", "-1", "--c2", "0",
                                          "--device", device.type))
        times.append(dt)
    out["whole_process_vmatch_query_one_needle_c1=-1_c2=0"] = {"seconds": spread(times, 3),
                                                               "lines": len(stdout.splitlines())}
    out["side_by_side"] = side_by_side(args, files, work, device)
    ix = VideoIndex(ix_path, device=device, batch_rows=args.batch_rows)
    strengths = mixed_strengths(args.items, args.near_fraction, args.seed)
    near, far = np.nonzero(strengths < 1)[0], np.nonzero(strengths >= 1)[0]
    bank = {}

    def rows_of(i: int):
        if i not in bank:
            bank[i] = read_many([files[i]])[0]
        f = bank[i]
        return unit_average(f.avg), torch.from_numpy(np.stack([f.cos, f.sin]))

    needles = needles_from(ix, rows_of, near, far, args.needles, args.seed, [p.stem for p in files])
    out["batch"] = timed_query(ix, needles, args.c1, args.c2)
    if args.robust:
        out["robust_one_needle"] = robust_vs_plain(ix, needles[:1], args.c1, args.c2, args.repeats)
        out["robust_batch"] = robust_vs_plain(ix, needles, args.c1, args.c2, args.repeats)
    if args.ivf_recall:
        out["ivf"] = ivf_recall(args, files, ix, needles, work)
    return out


def _query_table(text: bytes) -> dict[str, tuple[float, float]]:
    """match stem -> (level-1, level-2) from `tmk-query` or `vmatch query` output (one needle)."""
    out = {}
    for line in text.decode().splitlines():
        l1, l2, _, match = line.split()
        out[Path(match).stem] = (float(l1), float(l2))
    return out


def _clusters(text: bytes, reference: bool) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for line in text.decode().splitlines():
        if not line.strip():
            continue
        if reference:               # clidx=1,clusz=6,filename=PATH
            f = dict(kv.split("=", 1) for kv in line.split(","))
            groups.setdefault(f["clidx"], set()).add(Path(f["filename"]).stem)
        else:                       # cluster_id<TAB>size<TAB>id
            cid, _, item = line.split("\t")
            groups.setdefault(cid, set()).add(item)
    return {frozenset(g) for g in groups.values()}


def side_by_side(args: argparse.Namespace, files: list[Path], work: Path, device: torch.device) -> dict:
    """Whole processes on the same first K files: reference tmk-query / tmk-clusterize against
    vmatch query / vmatch cluster, alternating, outputs compared."""
    k = min(args.compare_items, len(files))
    orc, why = oracle()
    if orc is None or k == 0:
        ref = k * REF_MS_PER_PAIR / 1000 + k / 10000 * REF_LOAD_S_PER_10K
        return {"reference": "README fallback", "note": FALLBACK_NOTE.format(why=why or "--compare-items 0"),
                "readme_tmk_query_seconds_one_needle_c1=-1": round(ref, 1), "items": k}
    sub = files[:k]
    ix_path = work / f"index-{args.items}-{args.store}-{args.coarse}-first{k}"
    if not (args.reuse and (ix_path / "MANIFEST.json").exists()):
        shutil.rmtree(ix_path, ignore_errors=True)
        VideoIndex.create(ix_path, shards=args.shards, coarse=args.coarse, store=args.store,
                          device="cpu").add_paths(sub)
    hay, nee = work / f"haystack-{k}.txt", work / "needle.txt"
    hay.write_text("".join(f"{p}\n" for p in sub))
    nee.write_text(f"{sub[0]}\n")
    q_ref, q_ours, c_ref, c_ours = [], [], [], []
    for _ in range(args.repeat):
        t, ref_out = run_timed([orc.tool("tmk-query"), "--c1", "-1", "--c2", "0", nee, hay])
        q_ref.append(t)
        t, our_out = run_timed(vmatch_cmd("query", ix_path, sub[0], "--c1", "-1", "--c2", "0",
                                          "--device", device.type))
        q_ours.append(t)
        t, ref_cl = run_timed([orc.tool("tmk-clusterize"), "-s", "--c1", "0.7", "--c2", "0.7", "--min", "2", "-i"],
                              stdin=hay.read_bytes())
        c_ref.append(t)
        t, our_cl = run_timed(vmatch_cmd("cluster", ix_path, "--c1", "0.7", "--c2", "0.7", "--min-size", "2",
                                         "--device", device.type))
        c_ours.append(t)
    a, b = _query_table(our_out), _query_table(ref_out)
    diff = max(max(abs(a[m][0] - b[m][0]), abs(a[m][1] - b[m][1])) for m in b) if set(a) == set(b) else None
    ca, cb = _clusters(our_cl, False), _clusters(ref_cl, True)
    return {"items": k, "reference": "side by side", "machine": machine(),
            "query_one_needle_c1=-1_c2=0": {
                "reference_tmk_query_s": spread(q_ref, 3), "vmatch_query_s": spread(q_ours, 3),
                "speedup_vs_reference": ratio(spread(q_ref), spread(q_ours)),
                "same_matches": set(a) == set(b), "matches": len(b), "max_abs_score_difference": diff},
            "cluster_c1=c2=0.7": {
                "reference_tmk_clusterize_s": spread(c_ref, 3), "vmatch_cluster_s": spread(c_ours, 3),
                "speedup_vs_reference": ratio(spread(c_ref), spread(c_ours)),
                "reference_clusters": len(cb), "vmatch_clusters": len(ca), "same_clusters": ca == cb}}


def ivf_recall(args: argparse.Namespace, files: list[Path], flat: VideoIndex, needles: list[TmkFeatures],
               work: Path) -> dict:
    """Share of the flat index's matches that IVF-Flat finds, per nprobe (level-1 is the only difference)."""
    path = work / f"index-{args.items}-fp16-ivf"
    if not (args.reuse and (path / "MANIFEST.json").exists()):
        shutil.rmtree(path, ignore_errors=True)
        VideoIndex.create(path, shards=args.shards, coarse="ivf", store="fp16", device="cpu").add_paths(files)
    want = {(m.needle, m.id) for ms in flat.query(needles, args.c1, args.c2) for m in ms}
    nlist = VideoIndex(path, device="cpu").manifest.ivf_nlist
    out: dict = {"nlist": nlist, "flat_matches": len(want), "by_nprobe": {}}
    for nprobe in (1, 2, 4, 8, 16, 32):
        ix = VideoIndex(path, device="cpu", nprobe=nprobe)
        t0 = time.perf_counter()
        got = {(m.needle, m.id) for ms in ix.query(needles, args.c1, args.c2) for m in ms}
        out["by_nprobe"][nprobe] = {"recall": round(len(got & want) / max(len(want), 1), 4),
                                    "seconds": round(time.perf_counter() - t0, 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto (cuda: in-memory bank on the GPU)")
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--store", choices=["fp32", "fp16"], default="fp32")
    ap.add_argument("--coarse", choices=["flat", "ivf"], default="flat")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--needles", type=int, default=100, help="needles in the batch query")
    ap.add_argument("--c1", type=float, default=0.7)
    ap.add_argument("--c2", type=float, default=0.7)
    ap.add_argument("--near-fraction", type=float, default=0.002)
    ap.add_argument("--batch-rows", type=int, default=None, help="level-2 rows per batch (512 CPU, 4096 GPU)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads")
    ap.add_argument("--memory", action="store_true", help="in-memory bank also on CPU")
    ap.add_argument("--ivf-recall", action="store_true", help="also build an ivf index and measure recall")
    ap.add_argument("--reuse", action="store_true", help="reuse indexes already built in --workdir")
    ap.add_argument("--workdir", default="/tmp/vmatch-bench")
    ap.add_argument("--ref", help="folder of real .tmk hashes to perturb")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--robust", action="store_true", help="also time --robust matching side by side with plain")
    ap.add_argument("--repeats", type=int, default=3, help="--robust: alternated runs of each (best is kept)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each whole-process figure")
    ap.add_argument("--compare-items", type=int, default=1000,
                    help="files of the side-by-side comparison with the reference tools (0: skip)")
    ap.add_argument("--baseline-items", type=int, default=20000,
                    help="in-memory mode: rows of the CPU-vs-device baseline (0: skip)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.batch_rows = args.batch_rows or (4096 if device.type == "cuda" else 512)
    bases = load_bases(args.ref)
    t0 = time.perf_counter()
    before = machine()
    out = bench_memory(args, bases, device) if (device.type == "cuda" or args.memory) else \
        bench_disk(args, bases, device)
    out.update({"near_fraction": args.near_fraction, "seed": args.seed, "total_seconds":
                round(time.perf_counter() - t0, 1), "cpu_count": os.cpu_count(), "machine_before": before,
                "machine_after": machine()})
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
