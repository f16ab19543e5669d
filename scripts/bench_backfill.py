#!/usr/bin/env python3
"""Backfill speed: `vmatch backfill` (Ray) against one `vmatch hash -d` process on the same videos.

Default mode: both commands run as a user runs them (fresh processes, a local Ray started by the
backfill, both writing .tmk files), alternating, `--repeat` times; prints each wall time, the
median ratio hash/backfill, and checks that the .tmk files are byte-identical.

    python scripts/bench_backfill.py --make 40                 # 40 x 5 s 640x360 clips in a temp dir
    python scripts/bench_backfill.py --videos DIR --repeat 3

`--actors 1,4,16` mode (GPU machine): one backfill per decode-worker count, printing one JSON
line each (frames/s over the whole run and over the hashing phase alone), with features on the
decode workers (`--gpus-per-worker 0`, exact) and, where a GPU exists, on GPU feature workers.

    python scripts/bench_backfill.py --make 320 --actors 1,4,16 --gpu-too
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("testsrc", "testsrc2", "smptebars", "rgbtestsrc", "life=mold=10:ratio=0.3", "cellauto=rule=110",
           "gradients=speed=0.05", "mandelbrot=maxiter=64")


def make_clips(folder: Path, n: int, seconds: float, size: str, jobs: int) -> list[Path]:
    """`n` distinct H.264 clips (lavfi patterns with shifted hues), made in parallel.

    Without imageio-ffmpeg (e.g. a bare GPU box), MPEG-4 clips are written with OpenCV instead.
    """
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import imageio_ffmpeg
    except ImportError:
        with ThreadPoolExecutor(max(1, jobs)) as ex:
            return list(ex.map(lambda i: _cv2_clip(folder / f"clip{i:04d}.mp4", i, seconds, size), range(n)))
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()

    def one(i: int) -> Path:
        out = folder / f"clip{i:04d}.mp4"
        if not out.exists():
            name, _, opts = SOURCES[i % len(SOURCES)].partition("=")
            src = f"{name}=size={size}:rate=25" + (f":{opts}" if opts else "")
            subprocess.run([ffmpeg, "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i", src, "-vf",
                            f"hue=h={(i * 9) % 360}", "-t", str(seconds), "-pix_fmt", "yuv420p", "-c:v",
                            "libx264", "-preset", "veryfast", "-threads", "1", str(out)], check=True)
        return out

    with ThreadPoolExecutor(max(1, jobs)) as ex:
        return list(ex.map(one, range(n)))


def _cv2_clip(out: Path, i: int, seconds: float, size: str, fps: int = 25) -> Path:
    """A moving pattern (different per clip) written with OpenCV's MPEG-4 encoder."""
    import cv2
    import numpy as np

    if out.exists():
        return out
    w, h = map(int, size.split("x"))
    rng = np.random.default_rng(i)
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    base = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:h, 0:w]
    wr = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for t in range(int(seconds * fps)):
        frame = np.roll(base, (t * (1 + i % 5), t * (2 + i % 3)), axis=(0, 1)).copy()
        r = int(20 + 10 * np.sin(t / 7 + i))
        cx, cy = (t * 9 + i * 37) % w, (t * 5 + i * 11) % h
        frame[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = (255 - 7 * i % 255, 40, 200)
        wr.write(frame)
    wr.release()
    return out


def vmatch(*args: object, prefix: tuple[str, ...] = ()) -> tuple[float, subprocess.CompletedProcess]:
    cmd = [*prefix, sys.executable, "-m", "engine.cli", *map(str, args)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return dt, r


def ratio_mode(videos: list[Path], folder: Path, args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    prefix = ("taskset", "-c", args.taskset) if args.taskset else ()
    cfg = work / "cfg.yaml"
    cfg.write_text(f"ray:\n  num_cpus: {args.cpus}\n" if args.cpus else "ray: {}\n")
    hash_t, fill_t = [], []
    try:
        for k in range(args.repeat):
            for which in ("hash", "backfill") if k % 2 == 0 else ("backfill", "hash"):
                out = work / f"{which}{k}"
                if which == "hash":
                    dt, _ = vmatch("hash", "--mode", "exact", "-d", out, *videos, prefix=prefix)
                    hash_t.append(dt)
                else:
                    join = ("--ray-address", args.address) if args.address else ()
                    dt, r = vmatch("--config", cfg, "backfill", "--mode", "exact", "-q", "-d", out, folder,
                                   "--summary-json", work / f"s{k}.json", *join, prefix=prefix)
                    fill_t.append(dt)
                print(f"{which:8s} run {k}: {dt:6.2f} s", file=sys.stderr, flush=True)
            a, b = work / f"hash{k}", work / f"backfill{k}"
            same = all((b / p.name).read_bytes() == p.read_bytes() for p in a.glob("*.tmk"))
            if not same or len(list(a.glob("*.tmk"))) != len(videos):
                raise SystemExit("backfill and hash outputs differ")
        s = json.loads((work / f"s{args.repeat - 1}.json").read_text())
        res = {"videos": len(videos), "ray_address": args.address, "frames": s["frames"], "cpus": os.cpu_count(), "taskset": args.taskset,
               "hash_s": [round(t, 2) for t in hash_t], "backfill_s": [round(t, 2) for t in fill_t],
               "hash_median_s": round(statistics.median(hash_t), 2),
               "backfill_median_s": round(statistics.median(fill_t), 2),
               "ratio": round(statistics.median(hash_t) / statistics.median(fill_t), 2),
               "backfill_hash_phase_s": s["hash_seconds"], "byte_identical": True,
               "kind": "whole process, both commands (ratio); hash phase: inside the backfill run, not comparable",
               "load_avg_after": [round(x, 2) for x in os.getloadavg()]}
        print(json.dumps(res))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def actors_mode(folder: Path, args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    variants = [("cpu-features", ["--gpus-per-worker", "0", "--mode", "exact"])]
    if args.gpu_too:
        variants.append(("gpu-features", ["--gpus-per-worker", str(args.gpus_per_worker), "--mode", args.gpu_mode]))
    try:
        for name, extra in variants:
            for n in [int(x) for x in args.actors.split(",")]:
                out = work / f"{name}-{n}"
                if args.inprocess:
                    dt, s = _inprocess(folder, out, n, extra)
                else:
                    dt, r = vmatch("backfill", "-q", "-d", out, folder, "--workers", n, *extra,
                                   "--summary-json", work / "s.json")
                    s = json.loads((work / "s.json").read_text())
                print(json.dumps({"variant": name, "decode_actors": n, "videos": s["done"], "frames": s["frames"],
                                  "wall_s": round(dt, 2), "run_s": s["seconds"], "hash_phase_s": s["hash_seconds"],
                                  "frames_per_s": s["frames_per_s"], "hash_phase_frames_per_s": s["hash_frames_per_s"],
                                  "feature_workers": s["feature_workers"], "mode": s["mode"],
                                  "kind": ("run: Python API, Ray start/stop included" if args.inprocess else
                                           "run: the whole backfill command") + "; hash phase: first worker "
                                          "ready to last result (not the whole run)",
                                  "load_avg": [round(x, 2) for x in os.getloadavg()]}), flush=True)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _inprocess(folder: Path, out: Path, n: int, extra: list[str]) -> tuple[float, dict]:
    """One backfill through the Python API (for machines where the full CLI cannot import)."""
    sys.path.insert(0, str(ROOT))
    from engine.ray.backfill import Backfill, BackfillOptions
    from engine.ray.manifest import iter_inputs

    gpw, mode = float(extra[extra.index("--gpus-per-worker") + 1]), extra[extra.index("--mode") + 1]
    t0 = time.perf_counter()
    s = Backfill(BackfillOptions(outdir=str(out), mode=mode, ray={"decode_actors": n, "gpus_per_worker": gpw}),
                 quiet=True).run(iter_inputs(None, [folder]))
    return time.perf_counter() - t0, s.as_dict()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", type=Path, help="folder of videos")
    src.add_argument("--make", type=int, metavar="N", help="make N clips in a temp folder (or --into)")
    ap.add_argument("--into", type=Path, help="with --make: keep the clips here")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cpus", type=int, help="CPUs given to the local Ray (default: all)")
    ap.add_argument("--address", help="backfill joins this Ray cluster (started beforehand) instead of a local start")
    ap.add_argument("--taskset", metavar="CPULIST", help="pin both commands to these CPUs (e.g. 0,1)")
    ap.add_argument("--actors", metavar="N,N,...", help="frames/s per decode-worker count (JSON lines)")
    ap.add_argument("--gpu-too", action="store_true", help="with --actors: also with GPU feature workers")
    ap.add_argument("--gpus-per-worker", type=float, default=0.25)
    ap.add_argument("--gpu-mode", default="fast", choices=["fast", "exact"])
    ap.add_argument("--inprocess", action="store_true", help="with --actors: run backfills via the Python API")
    args = ap.parse_args()
    tmp = None
    if args.make:
        folder = args.into or Path(tmp := tempfile.mkdtemp(prefix="bench-clips-"))
        t0 = time.perf_counter()
        videos = make_clips(folder, args.make, args.seconds, args.size, os.cpu_count() or 1)
        print(f"made {len(videos)} clips in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    else:
        folder = args.videos
        videos = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".mp4", ".mov", ".mkv", ".webm"))
    try:
        return actors_mode(folder, args) if args.actors else ratio_mode(videos, folder, args)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
