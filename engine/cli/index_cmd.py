"""`vmatch index create|add|remove|info|verify`: build and maintain a persistent index."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from engine.cli.common import CliError, Progress, config_from, import_heavy, importing
from engine.errors import VmatchError

if TYPE_CHECKING:   # the implementations (torch, faiss) are imported when a command runs
    from engine.config import Config
    from engine.index import VideoIndex
    from kernels.params import TmkParams


def __getattr__(name: str) -> Any:
    if name == "INDEX_DEFAULTS":  # defaults of the `index:` section, typed in engine.config.IndexConfig
        from engine.config import IndexConfig
        return dataclasses.asdict(IndexConfig())
    raise AttributeError(name)


def index_config(cfg: "Config") -> dict[str, Any]:
    """The `index:` section as a mapping (validated when the configuration was loaded)."""
    return cfg.section("index")


@contextmanager
def cli_errors() -> Iterator[None]:
    """Expected failures of index work become one-line CLI errors."""
    try:
        yield
    except VmatchError as e:  # every expected failure: one line, its own exit code (engine/cli/errors.py)
        raise CliError.of(e) from None
    except RuntimeError as e:  # e.g. CUDA requested without a device
        raise CliError(str(e), 2) from None


def make_hasher(cfg: "Config", params: "TmkParams", device: str | None):
    """A VideoHasher configured from the `hash:` section (for videos given instead of .tmk files)."""
    from engine.hasher import VideoHasher
    return VideoHasher.from_config(cfg.hash, params, device=device)


def open_index(args: argparse.Namespace, ic: dict[str, Any]) -> "VideoIndex":
    from engine.index import VideoIndex

    return VideoIndex(args.index, device=getattr(args, "device", None) or ic["device"],
                      verify_reads=ic["verify_reads"], batch_rows=ic["batch_rows"])


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="create and maintain a persistent index of .tmk signatures",
                       description="A sharded on-disk index: faiss level-1 vectors, memory-mapped level-2 "
                                   "features, atomic append-only commits.")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    c = isub.add_parser("create", help="make an empty index")
    c.add_argument("index", metavar="INDEX")
    c.add_argument("--shards", type=int, help="number of shards (fixed at creation)")
    c.add_argument("--coarse", choices=["flat", "ivf"], help="level-1 index: flat (exact) or ivf (IVF-Flat)")
    c.add_argument("--store", choices=["fp32", "fp16", "int8"],
                   help="level-2 feature precision on disk (int8: 66 KB per hash, error bound in docs/index.md)")
    c.add_argument("--nlist", type=int, help="ivf: inverted lists (0: about 4*sqrt(N) of the first add)")
    c.add_argument("--nprobe", type=int, help="ivf: lists probed per query")
    c.set_defaults(func=run_create)
    a = isub.add_parser("add", help="add .tmk files, folders of them, or videos (id = file stem)",
                        description="Add signatures in one transaction (a bad input adds nothing): .tmk files, "
                                    "folders of them or videos (id = file stem), or a list of hash strings "
                                    "(--signals: '[tmk_pdqf ]SIGNAL[<TAB>ID]' per line; id = the ID column, "
                                    "else the first 16 hex digits of the SHA-256 of the .tmk bytes).")
    a.add_argument("index", metavar="INDEX")
    a.add_argument("paths", nargs="*", metavar="PATH")
    a.add_argument("--signals", metavar="LIST", help="add the hash strings of a signal list file")
    a.add_argument("--device", choices=["auto", "cpu", "cuda"], help="device for hashing videos")
    a.add_argument("--no-borders", action="store_true",
                   help="videos: do not detect borders (by default a video with letterbox / pillarbox / "
                        "window-box borders also stores the signature of the content inside them, used by "
                        "--robust matching; X.borders.tmk beside X.tmk is stored the same way)")
    a.set_defaults(func=run_add)
    r = isub.add_parser("remove", help="remove items by id")
    r.add_argument("index", metavar="INDEX")
    r.add_argument("ids", nargs="+", metavar="ID")
    r.set_defaults(func=run_remove)
    i = isub.add_parser("info", help="summary of an index as JSON")
    i.add_argument("index", metavar="INDEX")
    i.set_defaults(func=run_info)
    k = isub.add_parser("compact", help="rewrite shards with removed items or many segments as one segment each")
    k.add_argument("index", metavar="INDEX")
    k.set_defaults(func=run_compact)
    v = isub.add_parser("verify", help="check every file and row of an index against its checksums")
    v.add_argument("index", metavar="INDEX")
    v.set_defaults(func=run_verify)


def run_create(args: argparse.Namespace) -> int:
    from engine.index import VideoIndex
    cfg = config_from(args)
    ic = index_config(cfg)
    with cli_errors():
        VideoIndex.create(args.index, shards=args.shards or ic["shards"], coarse=args.coarse or ic["coarse"],
                          store=args.store or ic["store"], params=cfg.tmk,
                          ivf_nlist=ic["ivf_nlist"] if args.nlist is None else args.nlist,
                          ivf_nprobe=args.nprobe or ic["ivf_nprobe"], device="cpu")
    return 0


def run_add(args: argparse.Namespace) -> int:
    from engine.tmkfile import iter_tmk_paths

    with importing("engine.index.index"):    # listing and checking 20,000 paths overlaps torch's import
        cfg = config_from(args)
        ic = index_config(cfg)
        if bool(args.paths) == bool(args.signals):
            raise CliError("index add: give either PATH... or --signals LIST", 2)
        if not args.signals:
            paths = iter_tmk_paths(args.paths)
            for p in paths:
                if not p.exists():
                    raise CliError(f"{p}: no such file")
    VideoIndex = import_heavy("engine.index.index").VideoIndex
    if args.signals:
        return _add_signals(args, ic)
    with cli_errors():
        ix = VideoIndex(args.index, device="cpu")
        hasher = make_hasher(cfg, ix.params, args.device) if any(p.suffix.lower() != ".tmk" for p in paths) else None
        if hasher is not None and not args.no_borders:
            from engine.borders import BorderHasher
            hasher = BorderHasher(hasher)
        bar = Progress(len(paths), "index add", "file")
        try:
            n = ix.add_paths(paths, hasher=hasher, progress=bar.update, workers=ic["add_workers"])
        finally:
            bar.close()
        bar.write(f"vmatch: added {n} items to {args.index} (now {len(ix)})")
    return 0


def _add_signals(args: argparse.Namespace, ic: dict[str, Any]) -> int:
    if not Path(args.signals).is_file():
        raise CliError(f"{args.signals}: {'is a directory' if Path(args.signals).is_dir() else 'no such file'}")
    from engine.index import VideoIndex

    with cli_errors():
        ix = VideoIndex(args.index, device="cpu")
        bar = Progress(None, "index add", "signal")
        try:
            n = ix.add_signal_list(args.signals, progress=bar.update, workers=ic["add_workers"])
        finally:
            bar.close()
        bar.write(f"vmatch: added {n} items to {args.index} (now {len(ix)})")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from engine.index import VideoIndex
    with cli_errors():
        ix = VideoIndex(args.index, device="cpu")
        n = ix.remove(args.ids)
        Progress(None, "index remove").write(f"vmatch: removed {n} items from {args.index} (now {len(ix)})")
    return 0


def run_compact(args: argparse.Namespace) -> int:
    from engine.index import VideoIndex
    with cli_errors():
        ix = VideoIndex(args.index, device="cpu")
        n = ix.compact()
        Progress(None, "index compact").write(f"vmatch: compacted {n} shards of {args.index} ({len(ix)} items)")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from pathlib import Path

    from engine.index.manifest import describe, read_manifest   # the manifest only: no torch, no faiss

    with cli_errors():
        root = Path(args.index)
        print(json.dumps(describe(root, read_manifest(root)), indent=1))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from engine.index import VideoIndex
    with cli_errors():
        ix = VideoIndex(args.index, device="cpu")
        ix.verify()
        print(json.dumps({"ok": True, "count": len(ix)}))
    return 0
