"""`vmatch backfill (--manifest FILE | DIR...) [-d OUTDIR] [--index INDEX] [--ray-address ADDR] ...`."""
from __future__ import annotations

import argparse
import json
import os
import sys

from engine.cli.common import CliError, config_from


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backfill", help="hash many videos on Ray (local or cluster): resumable, fault-tolerant",
        description="Hash every video of a manifest and/or folders with Ray workers, writing .tmk files "
                    "(-d, same bytes as `vmatch hash` in exact mode) and/or adding them to an index "
                    "(--index). A ledger in the output records every video (path, size, mtime, status), "
                    "so a rerun skips what is done and finishes an interrupted run. Exit status: 0 if "
                    "nothing failed, 1 if some videos failed (listed on stderr and in the ledger), 2 for "
                    "usage errors.")
    p.add_argument("inputs", nargs="*", metavar="PATH", help="video files or folders (walked for videos)")
    p.add_argument("--manifest", metavar="FILE",
                   help="text file of paths (one per line), or .csv/.parquet with a 'path' column")
    p.add_argument("-d", "--outdir", metavar="OUTDIR", help="write <name>.tmk files here")
    p.add_argument("--index", metavar="INDEX", help="add the signatures to this index (created if missing)")
    p.add_argument("--ledger", metavar="FILE",
                   help="ledger database (default: OUTDIR/backfill.ledger.sqlite, else INDEX.ledger.sqlite)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="join a Ray cluster ('auto' or host:port); default: start a local Ray on this machine")
    p.add_argument("--workers", type=int, metavar="N", help="decode workers (default: one per CPU)")
    p.add_argument("--gpus-per-worker", type=float, metavar="F",
                   help="GPU share of each GPU feature worker (0: compute on the decode workers)")
    p.add_argument("--mode", choices=["exact", "fast", "auto"], help="exact (bit-identical) or fast (GPU matmul)")
    p.add_argument("--timeout", type=float, metavar="S", help="per-video limit; a worker past it is killed")
    p.add_argument("--backend", choices=["auto", "decord", "pyav", "ffmpeg"], help="decoder (auto: per input, see docs/compatibility.md)")
    p.add_argument("--summary-json", metavar="FILE", help="also write the run summary as JSON here")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or per-video failure lines")
    p.set_defaults(func=run)


def _ensure_index(path: str, cfg) -> None:  # type: ignore[no-untyped-def]
    """Create the index with the `index:` config section if it does not exist yet."""
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        return
    from engine.cli.index_cmd import index_config
    from engine.index import VideoIndex

    ic = index_config(cfg)
    VideoIndex.create(path, shards=ic["shards"], coarse=ic["coarse"], store=ic["store"], params=cfg.tmk,
                      ivf_nlist=ic["ivf_nlist"], ivf_nprobe=ic["ivf_nprobe"], device="cpu")


def run(args: argparse.Namespace) -> int:
    from engine.decode import DecodeError
    from engine.ray.backfill import BackfillError, BackfillOptions, Backfill
    from engine.ray.cluster import ClusterError, ray_config
    from engine.ray.ledger import LedgerError
    from engine.ray.manifest import ManifestError, iter_inputs

    cfg = config_from(args)
    if not args.manifest and not args.inputs:
        raise CliError("nothing to hash: give --manifest FILE and/or video files or folders", 2)
    if not args.outdir and not args.index:
        raise CliError("nothing to write: give an output folder (-d OUTDIR) and/or --index INDEX", 2)
    for p in args.inputs:
        if not os.path.exists(p):
            raise CliError(f"{p}: no such file or folder", 2)
    try:
        rc = ray_config(cfg.section("ray"))
    except ValueError as e:
        raise CliError(str(e), 2) from None
    if args.ray_address:
        rc["address"] = args.ray_address
    if args.workers is not None:
        if args.workers < 1:
            raise CliError("--workers must be at least 1", 2)
        rc["decode_actors"] = args.workers
    if args.gpus_per_worker is not None:
        if not 0 <= args.gpus_per_worker <= 1:
            raise CliError("--gpus-per-worker must be between 0 and 1", 2)
        rc["gpus_per_worker"] = args.gpus_per_worker
    h = cfg.hash
    opts = BackfillOptions(outdir=args.outdir, index=args.index, ledger=args.ledger, mode=args.mode or h.mode,
                           params=cfg.tmk, chunk_frames=h.chunk_frames, backend=args.backend or h.backend,
                           timeout_s=args.timeout if args.timeout is not None else h.timeout_s,
                           fast_exact_below=h.fast_exact_below, ray=rc)
    if args.timeout is not None:
        rc["timeout_s"] = args.timeout
    try:
        if args.index:
            _ensure_index(args.index, cfg)
        summary = Backfill(opts, quiet=args.quiet).run(iter_inputs(args.manifest, args.inputs))
    except (BackfillError, ClusterError, ManifestError, LedgerError) as e:
        raise CliError(str(e)) from None
    except DecodeError as e:  # not expected here (workers report them), but never a traceback
        raise CliError(str(e)) from None
    except Exception as e:  # index errors (VideoIndexError) and the like: one line
        from engine.index import VideoIndexError

        if isinstance(e, VideoIndexError):
            raise CliError(str(e)) from None
        raise
    for line in summary.lines():
        print(line, file=sys.stderr, flush=True)
    if args.summary_json:
        with open(args.summary_json, "w") as fh:
            json.dump(summary.as_dict(), fh, indent=1)
    return summary.exit_code
