"""`vmatch query INDEX NEEDLE...` and `vmatch cluster INDEX`: matching against an index."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.cli.common import CliError, Progress, config_from, importing
from engine.cli.index_cmd import cli_errors, index_config, make_hasher, open_index

if TYPE_CHECKING:
    from engine.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("query", help="match needles against an index (faiss level-1, then level-2)",
                       description="Print the index items whose level-1 >= c1 and level-2 >= c2 for each needle, "
                                   "best first: TSV 'L1<TAB>L2<TAB>needle<TAB>match' with 6 decimals (the "
                                   "reference tmk-query's columns), or JSONL with the best offsets.")
    q.add_argument("index", metavar="INDEX")
    q.add_argument("needles", nargs="+", metavar="NEEDLE", help=".tmk file, folder of them, or video")
    _thresholds(q)
    q.add_argument("--top", type=int, metavar="K", help="at most K matches per needle (default: all)")
    _robust(q)
    _ray_arguments(q)
    q.set_defaults(func=run_query)
    c = sub.add_parser("cluster", help="groups of copies within an index (connected components)",
                       description="Link items whose pair passes both levels, then print the connected "
                                   "components: TSV 'cluster_id<TAB>size<TAB>id', largest cluster first.")
    c.add_argument("index", metavar="INDEX")
    _thresholds(c)
    c.add_argument("--min-size", type=int, default=2, help="smallest cluster printed (default 2)")
    c.add_argument("--candidates", choices=["auto", "exact", "ivf"], default="auto",
                   help="level-1 candidate search: exact (every item scanned: the all-pairs components), ivf "
                        "(k-means lists, approximate; recall in docs/benchmarks.md), auto (exact for flat indexes "
                        "up to 100,000 items)")
    c.add_argument("--nprobe", type=int, default=128, help="ivf candidates: lists probed per item (default 128)")
    c.add_argument("--nlist", type=int, default=0, help="ivf candidates: lists (default about 4 sqrt(N))")
    c.add_argument("--scan-precision", choices=["auto", "fp32", "bf16", "int8"], default="auto",
                   help="products of the candidate scan (the components are exact whatever it is: scores near "
                        "c1 are rescored); auto: bf16 where the CPU has it natively, else int8 where exact, else fp32")
    c.add_argument("--summary", type=int, nargs="?", const=10, metavar="K",
                   help="jsonl: end with one {\"summary\": ...} line (the K largest clusters, default 10, and "
                        "the share of items they hold); a one-line summary always goes to stderr")
    _robust(c)
    c.set_defaults(func=run_cluster)


def _ray_arguments(parser: argparse.ArgumentParser) -> None:
    """`--ray` and `--ray-address` (the Ray code takes plain options: engine/ray/shard_query.py)."""
    parser.add_argument("--ray", action="store_true",
                        help="serve each shard from its own Ray actor (one GPU each where present) and merge")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="with --ray: join this Ray cluster ('auto' or host:port); default: local Ray")


def _query_on_ray(args: argparse.Namespace, ic: dict[str, Any], needles, c1: float, c2: float):
    """What `vmatch query --ray` runs in place of the local `ix.query(...)`; errors map in engine.cli.errors."""
    from engine.ray.shard_query import query_on_ray

    rc = config_from(args).section("ray")
    if getattr(args, "ray_address", None):
        rc["address"] = args.ray_address
    return query_on_ray(args.index, needles, c1, c2, args.top, rc, device=getattr(args, "device", None) or ic["device"],
                        verify_reads=ic["verify_reads"], batch_rows=ic["batch_rows"])


def _thresholds(p: argparse.ArgumentParser) -> None:
    p.add_argument("--c1", type=float, help="level-1 threshold, inclusive (default 0.7)")
    p.add_argument("--c2", type=float, help="level-2 threshold, inclusive (default 0.7)")
    p.add_argument("--format", choices=["tsv", "jsonl"], default="tsv")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])


def _robust(p: argparse.ArgumentParser) -> None:
    p.add_argument("--robust", action="store_true",
                   help="also match mirrored / rotated copies (8 variants of each needle) and border-cropped "
                        "signatures; a pair's result is its best variant, named in a 5th TSV column / the "
                        "JSONL 'variant' field (engine/robust.py)")


def _settings(args: argparse.Namespace) -> tuple["Config", dict[str, Any], float, float]:
    cfg = config_from(args)
    ic = index_config(cfg)
    return cfg, ic, ic["c1"] if args.c1 is None else args.c1, ic["c2"] if args.c2 is None else args.c2


#: c1 at or below which every row passes level-1 (engine/index/coarse.py SLACK below -1; the
#: index then searches nothing and scores every live row).
_C1_ALL = -1.0 + 1e-4


def _read_ahead(args: argparse.Namespace, ic: dict[str, Any], c1: float) -> None:
    """Read the index while the index module imports in a thread: this thread opens every
    segment and reads its ids and level-1 vectors (engine/index/segment.py `open_ahead`).  Where
    the query will need torch (a GPU; a CPU scan of many float16 rows, which torch widens 5x
    faster than numpy: kernels/score_np.py FP16_TORCH_ROWS), torch imports in that thread
    too, taking seconds of one core (mostly holding the GIL; reading, checksums and page faults
    do not), so this thread also verifies every live row when c1 lets every row through (so
    every row will be scored), faulting its pages in.  Otherwise the query imports no torch and
    its level-2 workers verify the rows they read on every core, so that is left to them.  The
    index adopts that work; anything that failed is met again and reported in its usual place."""
    from engine.errors import VmatchError
    from engine.index.manifest import read_manifest
    from engine.index.segment import open_ahead
    from kernels.device import device_kind
    from kernels.score_np import FP16_TORCH_ROWS

    root = Path(args.index)
    try:
        m = read_manifest(root)
    except (VmatchError, OSError, ValueError):
        return                                    # met again, and reported, by the index
    scan = c1 <= _C1_ALL
    gpu = device_kind(args.device or ic["device"]) != "cpu"
    needs_torch = gpu or (scan and m.store == "fp16" and m.count >= FP16_TORCH_ROWS)
    with importing("engine.index.index", *(["torch"] if needs_torch else [])):
        try:
            open_ahead(root, [s for shard in m.segments for s in shard], m.params, m.store, ic["verify_reads"],
                       precheck_all=scan and needs_torch)
        except (VmatchError, OSError, ValueError):
            pass


def run_query(args: argparse.Namespace) -> int:
    cfg, ic, c1, c2 = _settings(args)
    if args.robust or args.ray:
        return _run_query(args, cfg, ic, c1, c2)
    from engine.index.segment import discard_ahead

    _read_ahead(args, ic, c1)
    try:
        return _run_query(args, cfg, ic, c1, c2)
    finally:
        discard_ahead(Path(args.index))     # what the query did not adopt (it failed first)


def _run_query(args: argparse.Namespace, cfg: "Config", ic: dict[str, Any], c1: float, c2: float) -> int:
    from engine.index.needles import load_needles

    with cli_errors():
        ix = open_index(args, ic)
        hasher = None

        def hash_video(path: Path):
            nonlocal hasher
            hasher = hasher or make_hasher(cfg, ix.params, args.device)
            if args.robust and not hasattr(hasher, "last_borders"):
                from engine.borders import BorderHasher
                hasher = BorderHasher(hasher)
            return hasher.hash(path)

        if args.robust:
            if args.ray:
                raise CliError("--robust does not run with --ray yet; query without --ray", 2)
            from engine.index import robust
            from engine.index.needles import load_signatures
            results = robust.query(ix, load_signatures(args.needles, hash_video), c1, c2, args.top)
            _print_matches(results, args.format, True)
            return 0
        needles = load_needles(args.needles, hash_video, ix.params)
        if args.ray:  # one Ray actor per shard, results merged (engine/ray/shard_query.py)
            results = _query_on_ray(args, ic, needles, c1, c2)
        else:
            results = ix.query(needles, c1, c2, args.top)
    _print_matches(results, args.format, False)
    return 0


def _print_matches(results: list, fmt: str, robust: bool) -> None:
    out = sys.stdout
    for matches in results:
        for m in matches:
            if fmt == "tsv":
                extra = f"\t{m.variant}" if robust else ""
                out.write(f"{m.level1:.6f}\t{m.level2:.6f}\t{m.needle}\t{m.id}{extra}\n")
            else:
                rec = {"needle": m.needle, "id": m.id, "level1": round(m.level1, 6),
                       "level2": round(m.level2, 6), "offsets": m.offsets}
                if robust:
                    rec["variant"] = m.variant
                out.write(json.dumps(rec) + "\n")


def run_cluster(args: argparse.Namespace) -> int:
    import time

    _, ic, c1, c2 = _settings(args)
    t0 = time.perf_counter()
    with cli_errors():
        ix = open_index(args, ic)
        if args.robust:
            from engine.index import robust
            groups = robust.clusters(ix, c1, c2, args.min_size)
        else:
            bar = Progress(len(ix), "cluster: neighbour searches", "item")    # round 1, every item once
            try:
                groups = ix.clusters(c1, c2, args.min_size, ic["cluster_batch"], candidates=args.candidates,
                                     nlist=args.nlist, nprobe=args.nprobe, progress=bar.update,
                                     precision=args.scan_precision)
            finally:
                bar.close()
        items = len(ix)
    out = sys.stdout
    for cid, members in enumerate(groups):
        if args.format == "tsv":
            out.writelines(f"{cid}\t{len(members)}\t{m}\n" for m in members)
        else:
            out.write(json.dumps({"cluster": cid, "size": len(members), "ids": members}) + "\n")
    summary = cluster_summary(groups, items, args.summary or 10)
    st = None if args.robust else ix.last_cluster_stats  # the robust path keeps no candidate stats
    if st is not None:
        summary.update({"candidates": st.candidates, "scan_precision": st.precision, "level1_pairs": st.level1_pairs,
                        "level2_pairs": st.level2_pairs})
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    if args.format == "jsonl" and args.summary is not None:
        out.write(json.dumps({"summary": summary}) + "\n")
    top = summary["largest"]
    print(f"vmatch: {items} items, {len(groups)} clusters of >= {args.min_size} holding "
          f"{summary['items_in_clusters']} items; the {len(top)} largest hold {summary['largest_share']:.1%} of all "
          f"items" + (f" ({st.candidates} candidates: {st.level1_pairs} level-1 pairs, {st.level2_pairs} scored at "
                      f"level-2)" if st is not None else ""), file=sys.stderr)
    return 0


def cluster_summary(groups: list[list[str]], items: int, k: int = 10) -> dict[str, Any]:
    """The K largest clusters (id, size, share of all items) and the share of items they hold."""
    top = [{"cluster": i, "size": len(g), "share": round(len(g) / items, 6) if items else 0.0}
           for i, g in enumerate(groups[:k])]
    held = sum(t["size"] for t in top)
    return {"items": items, "clusters": len(groups), "items_in_clusters": sum(len(g) for g in groups),
            "largest": top, "largest_share": round(held / items, 6) if items else 0.0}
