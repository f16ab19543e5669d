"""`vmatch eval (--pairs PAIRS.csv | --groups DIR) -o REPORT_DIR`: labelled threshold evaluation."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from engine.cli.common import CliError, Progress, config_from


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="ROC / precision-recall evaluation of the thresholds on labelled pairs",
        description="Score every labelled pair (level-1 and level-2), then write REPORT_DIR/summary.json "
                    "(operating point at c1/c2, ROC AUC, average precision, rates on a threshold grid, "
                    "thresholds for a target false-positive rate), scores.csv, PNG plots and a "
                    "self-contained report.html. Pairs are accepted when level-1 >= c1 and level-2 >= c2 "
                    "(inclusive, like the reference). Videos are hashed once each.",
        epilog="PAIRS.csv: header a,b,label[,transform]; paths (.tmk or video) relative to the CSV; "
               "label 1/0, true/false, yes/no or match/nonmatch. Groups DIR: one sub-folder per content; "
               "pairs inside a folder match, pairs across folders do not.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pairs", metavar="PAIRS.csv", help="labelled pairs")
    src.add_argument("--groups", metavar="DIR", help="folder whose sub-folders are groups of the same content")
    p.add_argument("-o", "--output", required=True, metavar="REPORT_DIR", help="report folder (created)")
    p.add_argument("--index", metavar="INDEX", help="take the signatures of indexed items (id = file stem) from this "
                                                     "vmatch index instead of reading or hashing them")
    p.add_argument("--c1", type=float, help="level-1 threshold of the operating point (default 0.7)")
    p.add_argument("--c2", type=float, help="level-2 threshold of the operating point (default 0.7)")
    p.add_argument("--target-fpr", type=float, metavar="F", help="report thresholds reaching this FPR (default 1e-3)")
    p.add_argument("--grid", metavar="T,T,...", help="thresholds to tabulate (default 0.50,0.55,...,0.95,0.97,0.99)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs (report.html then has tables only)")
    p.add_argument("--cache", metavar="DIR", help="keep video hashes here across runs (keyed by path, size, mtime)")
    p.add_argument("--mode", choices=["exact", "fast", "auto"], help="hashing mode for video inputs")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="device for hashing and scoring")
    p.add_argument("--timeout", type=float, metavar="S", help="per-video decode time limit in seconds")
    p.add_argument("--robust", action="store_true",
                   help="score each pair as its best variant: every mirror / quarter turn and the border-cropped "
                        "signatures (videos are hashed with border detection; X.borders.tmk beside X.tmk); "
                        "summary.json inputs.variants counts the variants of the accepted pairs")
    p.set_defaults(func=run)


def _settings(args: argparse.Namespace):
    cfg = config_from(args)
    ev = dataclasses.replace(cfg.eval, grid=list(cfg.eval.grid))  # validated by the loader; flags change this copy
    for name in ("c1", "c2", "target_fpr"):
        if getattr(args, name) is not None:
            setattr(ev, name, getattr(args, name))
    if not 0 < ev.target_fpr < 1:
        raise CliError(f"--target-fpr must be between 0 and 1 (got {ev.target_fpr:g})", 2)
    if args.grid:
        try:
            ev.grid = [float(t) for t in args.grid.split(",") if t.strip()]
        except ValueError:
            raise CliError(f"--grid: expected comma-separated numbers, got {args.grid!r}", 2) from None
    if args.no_plots:
        ev.plots = False
    if args.cache:
        ev.cache_dir = args.cache
    return cfg, ev


def run(args: argparse.Namespace) -> int:
    from engine.eval import labels, pipeline, plots, report
    from engine.scoring import IncompatibleError, Scorer

    cfg, ev = _settings(args)
    if ev.plots:
        try:
            plots.require()
        except plots.PlotsUnavailable as e:
            raise CliError(str(e), 2) from None
    t0 = time.monotonic()
    try:
        lset = labels.load_pairs_csv(args.pairs) if args.pairs else labels.load_groups(args.groups)
    except labels.LabelError as e:
        raise CliError(str(e), 2) from None
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise CliError(f"{out}: exists and is not a folder", 2)

    hc = cfg.hash
    mode, device = args.mode or hc.mode, args.device or hc.device

    nvid = len(lset.video_items())
    hasher = None
    if nvid:
        from engine.hasher import VideoHasher

        try:
            hasher = VideoHasher.from_config(hc, cfg.tmk, mode=mode, device=device, timeout_s=args.timeout or None)
        except (RuntimeError, ValueError) as e:
            raise CliError(str(e), 2) from None
    lookup = _index_lookup(args.index, args.device or cfg.score.device) if args.index else None
    store = pipeline.FeatureStore(hasher, ev.cache_dir, cache_tag=hasher.mode if hasher else "", lookup=lookup)
    if args.robust:
        if hasher is not None:
            from engine.borders import BorderHasher
            store.border_hasher = BorderHasher(hasher)
        if args.index:
            store.signature_lookup = _index_lookup(args.index, args.device or cfg.score.device, signatures=True)
    bar = Progress(len(lset.items), "signatures", "item")
    try:
        feats = pipeline.load_features(lset, store, bar, robust=args.robust)
    except pipeline.ItemError as e:
        raise CliError.of(e) from None
    finally:
        bar.close()
    t_feat = time.monotonic() - t0
    bar = Progress(len(lset.pairs), "score", "pair")
    try:
        params = feats[0].main.params if args.robust else feats[0].params
        scorer = Scorer.from_config(cfg.score, params, args.device)
        variants: list[str] = []
        if args.robust:
            scores, variants = pipeline.score_pairs_robust(lset, feats, scorer, bar)
        else:
            scores = pipeline.score_pairs(lset, feats, scorer, bar)
    except IncompatibleError as e:
        raise CliError.of(e) from None
    except (RuntimeError, ValueError) as e:
        raise CliError(str(e).splitlines()[0], 2) from None
    finally:
        bar.close()
    t_score = time.monotonic() - t0 - t_feat
    summary = report.build_summary(
        lset, scores, ev.c1, ev.c2, ev.target_fpr, ev.grid, ev.listed,
        inputs={"videos": nvid, "hashed": store.hashed, "hash_cache_hits": store.cached,
                "from_index": store.looked_up, "index": args.index,
                "hash_mode": hasher.mode if hasher else None, "seconds_signatures": round(t_feat, 3),
                "seconds_scoring": round(t_score, 3),
                **({"robust": True, "variants": _variant_counts(scores, variants, ev.c1, ev.c2),
                    "with_borders": sum(f.borders is not None for f in feats)} if args.robust else {})})
    try:
        page = report.write_report(out, lset, scores, summary, plots=ev.plots)
    except plots.PlotsUnavailable as e:
        raise CliError(str(e), 2) from None
    except OSError as e:
        raise CliError(f"{e.filename or out}: cannot write ({e.strerror or e})") from None
    _print_summary(summary, page)
    return 0


def _print_summary(s: dict, page: Path) -> None:
    op, th = s["operating_point"], s["thresholds"]
    w = sys.stdout.write
    w(f"pairs {s['inputs']['pairs']} (matches {s['inputs']['matches']}, non-matches {s['inputs']['nonmatches']})\n")
    w(f"c1={op['c1']:g} c2={op['c2']:g}: tp={op['tp']} fp={op['fp']} tn={op['tn']} fn={op['fn']} "
      f"tpr={_p(op['tpr'])} fpr={_p(op['fpr'])} precision={_p(op['precision'])}\n")
    for name, r in s["rules"].items():
        tf = r["target_fpr"]
        thr = f"c1={tf['c1']:.6f} c2={tf['c2']:.6f}" if name == "two_level" else f"t={tf['threshold']:.6f}"
        w(f"{name:9s} auc={r['auc']:.4f} ap={r['average_precision']:.4f} "
          f"fpr<={th['target_fpr']:g}: {thr} tpr={_p(tf['tpr'])}\n")
    w(f"report: {page}\n")


def _variant_counts(scores, variants: list[str], c1: float, c2: float) -> dict[str, dict[str, int]]:
    """How often each variant was the best one, for the matches and non-matches accepted at (c1, c2)."""
    out: dict[str, dict[str, int]] = {"matches": {}, "nonmatches": {}}
    for v, a, b, lab in zip(variants, scores.level1, scores.level2, scores.labels):
        if a >= c1 and b >= c2:
            d = out["matches" if lab else "nonmatches"]
            d[v] = d.get(v, 0) + 1
    return {k: dict(sorted(d.items(), key=lambda kv: -kv[1])) for k, d in out.items()}


def _p(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _index_lookup(index: str, device: str, signatures: bool = False):
    """Item path -> the index's stored signature of the id = file stem (None when not indexed).

    Uses ``VideoIndex.features``: the stored float16/float32 features and the unit pure average.
    """
    from engine.index import VideoIndex, VideoIndexError

    try:
        idx = VideoIndex(index, device=device)
    except VideoIndexError as e:
        raise CliError(str(e), 2) from None
    def lookup(path: Path):
        if path.stem not in idx:
            return None
        if signatures:   # --robust: with the border signature from the index's side table
            from engine.index.robust import stored_signatures
            return stored_signatures(idx, [path.stem])[0]
        return idx.features([path.stem])[0]

    return lookup
