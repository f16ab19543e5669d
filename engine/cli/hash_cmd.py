"""`vmatch hash VIDEO... (-o OUT.tmk | -d OUTDIR)`."""
from __future__ import annotations

import argparse
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from engine.cli.common import CliError, Progress, config_from, fail


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hash", help="hash videos to reference-exact .tmk files",
                       description="Hash videos to .tmk files identical to the reference tmk-hash-video. "
                                   "Failures are reported one line each; the other inputs are still hashed.")
    p.add_argument("videos", nargs="+", metavar="VIDEO")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("-o", "--output", metavar="OUT.tmk", help="output file (one input only)")
    out.add_argument("-d", "--outdir", metavar="OUTDIR", help="output folder: <stem>.tmk per input")
    p.add_argument("--mode", choices=["exact", "fast", "auto"], help="exact (bit-identical) or fast (GPU matmul)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--timeout", type=float, metavar="S", help="per-video decode time limit in seconds")
    p.add_argument("--backend", choices=["auto", "decord", "pyav", "ffmpeg"],
                   help="decoder (auto: per input, see docs/compatibility.md)")
    p.add_argument("-j", "--jobs", type=int, default=0, metavar="N",
                   help="videos hashed at once (default: one per CPU core on CPU, 1 on CUDA); each streams "
                        "in bounded chunks, so memory grows with N, not with video length")
    p.add_argument("--borders", action="store_true",
                   help="also detect letterbox / pillarbox / window-box borders and, where found, write the "
                        "signature of the content inside them as STEM.borders.tmk beside STEM.tmk (the "
                        "main .tmk is unchanged); the detected borders are logged on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.decode import DecodeError
    from engine.hasher import VideoHasher
    from engine.tmkfile import write_tmk

    config = config_from(args)
    cfg = config.hash
    if args.output and len(args.videos) != 1:
        raise CliError("-o takes exactly one input video; use -d OUTDIR for several", 2)
    if args.outdir:
        os.makedirs(args.outdir, exist_ok=True)
        targets = [Path(args.outdir) / (Path(v).stem + ".tmk") for v in args.videos]
        seen: dict[Path, str] = {}
        for v, t in zip(args.videos, targets):
            if t in seen:
                raise CliError(f"{v}: output name {t.name} collides with {seen[t]}", 2)
            seen[t] = v
    else:
        targets = [Path(args.output)]
    def make_hasher() -> VideoHasher:  # the one way to build a hasher from the `hash:` section
        return VideoHasher.from_config(cfg, config.tmk, mode=args.mode, device=args.device,
                                       timeout_s=args.timeout or None, backend=args.backend)

    try:
        hasher = make_hasher()        # checks the settings once; each job thread gets its own hasher
    except (RuntimeError, ValueError) as e:
        raise CliError(str(e), 2) from None
    local = threading.local()
    failures, frames = 0, 0
    bar = Progress(len(args.videos), "hash", "video")
    lock = threading.Lock()

    def on_frames(n: int) -> None:  # long videos show progress too, not only finished ones
        nonlocal frames
        with lock:
            frames += n
            bar.update(0, frames=frames)

    def one(video: str, target: Path) -> str | None:
        """Hash one video and write its .tmk; the one-line failure, or None."""
        try:
            if not hasattr(local, "hasher"):
                local.hasher = make_hasher()
                if args.borders:
                    from engine.borders import BorderHasher
                    local.border_hasher = BorderHasher(local.hasher)
            if args.borders:
                _hash_with_borders(local.border_hasher, video, target, on_frames, bar, lock)
            else:
                write_tmk(target, local.hasher.hash(video, progress=on_frames))
            return None
        except DecodeError as e:
            return f"vmatch: {e}"
        except OSError as e:
            return f"vmatch: {target}: cannot write ({e.strerror or e})"
        except Exception as e:  # noqa: BLE001 - one bad input must not stop the batch
            return f"vmatch: {video}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"

    # Videos overlap across cores: each job decodes in its own thread and runs the (GIL-releasing)
    # kernels with one intra-op thread, so N jobs keep N cores busy where one video kept ~1.35.
    jobs = args.jobs or (1 if hasher.device.type == "cuda" else min(os.cpu_count() or 1, len(args.videos)))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
        for err in ex.map(one, args.videos, targets):
            with lock:
                if err:
                    failures += 1
                    bar.write(err)
                bar.update(1)
    bar.close()
    if failures:
        return fail(f"{failures} of {len(args.videos)} inputs failed")
    return 0


def _hash_with_borders(bh, video: str, target: Path, on_frames, bar: Progress, lock: threading.Lock) -> None:
    """Write STEM.tmk and, when borders were found, STEM.borders.tmk (a stale one is removed)."""
    from engine.index.borders import sidecar_path
    from engine.tmkfile import write_tmk

    sigs = bh.hash(video, progress=on_frames)
    write_tmk(target, sigs.main)
    side = sidecar_path(target)
    if sigs.borders is not None and bh.last_borders is not None:
        write_tmk(side, sigs.borders)
        b = bh.last_borders
        with lock:
            bar.write(f"vmatch: {video}: {b.kind} (top {b.top:.3f}, bottom {b.bottom:.3f}, left {b.left:.3f}, "
                      f"right {b.right:.3f}, colour {'#%02x%02x%02x' % b.colour}) -> {side.name}")
    elif side.exists():
        side.unlink()
