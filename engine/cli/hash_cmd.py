"""`vmatch hash VIDEO... (-o OUT.tmk | -d OUTDIR)`."""
from __future__ import annotations

import argparse
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
                   help="videos hashed at once (default: one per CPU core on CPU, 1 on CUDA); on CPU each in "
                        "its own worker process; each streams in bounded chunks, so memory grows with N, not "
                        "with video length")
    p.add_argument("--borders", action="store_true",
                   help="also detect letterbox / pillarbox / window-box borders and, where found, write the "
                        "signature of the content inside them as STEM.borders.tmk beside STEM.tmk (the "
                        "main .tmk is unchanged); the detected borders are logged on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.hasher import VideoHasher

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
    overrides = dict(mode=args.mode, device=args.device, timeout_s=args.timeout or None, backend=args.backend)
    try:
        hasher = VideoHasher.from_config(cfg, config.tmk, **overrides)  # checks the settings once
    except (RuntimeError, ValueError) as e:
        raise CliError(str(e), 2) from None
    setup = _Setup(cfg, config.tmk, overrides, args.borders)
    jobs = args.jobs or (1 if hasher.device_type == "cuda" else min(_cores(), len(args.videos)))
    jobs = max(1, min(jobs, len(args.videos)))
    tasks = list(zip(args.videos, targets))
    # Videos overlap across cores.  The numpy kernels (exact on CPU) run in worker processes:
    # Python drives many small ops per frame, and threads would queue on one GIL; each worker
    # streams one video in bounded chunks, so memory grows with -j, not with video length.
    # torch kernels (fast mode, CUDA) stay in threads: one device, GIL-releasing kernels.
    use_processes = jobs > 1 and hasher.kernels == "numpy"
    frames_q: Any = None
    ex: ThreadPoolExecutor | None = None
    if use_processes:
        from engine.decode import preload
        from engine.procpool import mp_context, ordered_map

        if jobs >= _cores():        # the cores are busy with videos: no decoding threads on top
            setup.overrides["decode_threads"] = 1
        preload()                   # decoder libraries imported once, inherited by forked workers
        ctx = mp_context()          # before any thread (the bar's, the queue's) starts
        frames_q = ctx.SimpleQueue()
        results = ordered_map(_worker_hash, tasks, jobs, initializer=_worker_init,
                              initargs=(setup, frames_q), on_crash=_crashed, context=ctx, cost=_size)
    else:
        _worker_init(setup, None, hasher)
        if jobs > 1:
            ex = ThreadPoolExecutor(max_workers=jobs)
            results = ex.map(_worker_hash, tasks)
        else:
            results = map(_worker_hash, tasks)
    failures, frames = 0, 0
    bar = Progress(len(args.videos), "hash", "video")
    lock = threading.Lock()

    def on_frames(n: int) -> None:  # long videos show progress too, not only finished ones
        nonlocal frames
        with lock:
            frames += n
            bar.update(0, frames=frames)

    _SHARED["on_frames"] = on_frames
    drain = None
    if frames_q is not None:
        drain = threading.Thread(target=_drain, args=(frames_q, on_frames), name="hash-progress", daemon=True)
        drain.start()
    try:
        for err, notes in results:
            with lock:
                for line in notes:
                    bar.write(line)
                if err:
                    failures += 1
                    bar.write(err)
                bar.update(1)
    finally:
        if frames_q is not None:
            frames_q.put(None)
            if drain is not None:
                drain.join(timeout=5)
        if ex is not None:
            ex.shutdown()
    bar.close()
    if failures:
        return fail(f"{failures} of {len(args.videos)} inputs failed")
    return 0


def _size(task: tuple[str, Path]) -> float:
    """A video's expected hashing cost: its size (missing files fail at once: cost 0)."""
    try:
        return float(os.path.getsize(task[0]))
    except OSError:
        return 0.0


def _cores() -> int:
    """CPU cores this process may run on (the affinity mask, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass
class _Setup:
    """What a worker needs to build its hasher (picklable: sent to worker processes)."""

    cfg: Any
    params: Any
    overrides: dict
    borders: bool


class _State(threading.local):
    """Per worker (thread or process): its hasher, border hasher and progress callback."""

    hasher: Any = None
    border_hasher: Any = None
    on_frames: Callable[[int], None] | None = None


_STATE = _State()
_SHARED: dict[str, Any] = {}


def _worker_init(setup: _Setup, frames_q: Any, hasher: Any = None) -> None:
    """Runs once per worker process (or once in-process for threads)."""
    _SHARED["setup"], _SHARED["frames_q"], _SHARED["first"] = setup, frames_q, hasher
    if frames_q is not None:
        _STATE.on_frames = frames_q.put


def _worker_hash(task: tuple[str, Path]) -> tuple[str | None, list[str]]:
    """Hash one video and write its .tmk: (the one-line failure or None, notes to print)."""
    from engine.decode import DecodeError
    from engine.tmkfile import write_tmk

    video, target = task
    setup: _Setup = _SHARED["setup"]
    try:
        if _STATE.hasher is None:
            from engine.hasher import VideoHasher

            first = _SHARED.pop("first", None)   # the one built to check the settings, reused once
            _STATE.hasher = first or VideoHasher.from_config(setup.cfg, setup.params, **setup.overrides)
            if setup.borders:
                from engine.borders import BorderHasher
                _STATE.border_hasher = BorderHasher(_STATE.hasher)
        progress = _STATE.on_frames or _SHARED.get("on_frames")
        if setup.borders:
            return None, _hash_with_borders(_STATE.border_hasher, video, target, progress)
        write_tmk(target, _STATE.hasher.hash(video, progress=progress))
        return None, []
    except DecodeError as e:
        return f"vmatch: {e}", []
    except OSError as e:
        return f"vmatch: {target}: cannot write ({e.strerror or e})", []
    except Exception as e:  # noqa: BLE001 - one bad input must not stop the batch
        return f"vmatch: {video}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", []


def _crashed(task: tuple[str, Path], reason: str) -> tuple[str | None, list[str]]:
    return f"vmatch: {task[0]}: hashing crashed ({reason})", []


def _drain(q: Any, on_frames: Callable[[int], None]) -> None:
    """Frame counts sent by worker processes -> the progress display (until None)."""
    while True:
        n = q.get()
        if n is None:
            return
        on_frames(n)


def _hash_with_borders(bh, video: str, target: Path, on_frames) -> list[str]:
    """Write STEM.tmk and, when borders were found, STEM.borders.tmk (a stale one is removed);
    the line describing the borders found, if any."""
    from engine.index.borders import sidecar_path
    from engine.tmkfile import write_tmk

    sigs = bh.hash(video, progress=on_frames)
    write_tmk(target, sigs.main)
    side = sidecar_path(target)
    if sigs.borders is not None and bh.last_borders is not None:
        write_tmk(side, sigs.borders)
        b = bh.last_borders
        return [f"vmatch: {video}: {b.kind} (top {b.top:.3f}, bottom {b.bottom:.3f}, left {b.left:.3f}, "
                f"right {b.right:.3f}, colour {'#%02x%02x%02x' % b.colour}) -> {side.name}"]
    if side.exists():
        side.unlink()
    return []
