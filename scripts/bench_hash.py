#!/usr/bin/env python3
"""Hashing speed: end-to-end `vmatch` hashing against decode-only time for the same frames.

Decoding is the limit on CPU, so the figure that matters is how much PDQF+TMK add on top
of decord's decode time (goal: <= 10% for a 60 s 720p clip).  Prints one JSON line per
video plus the ratios against the reference figures of
../shared/reference/threatexchange/README.md.

    python scripts/bench_hash.py [VIDEO...] [--make-720p SECONDS] [--mode exact] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.bench import bench_hash  # noqa: E402

#: Reference tmk-hash-video end-to-end frames/s on the 2-core machine (reference README).
REFERENCE_FPS = {"sd": (167, 310), "720p": (93, 124), "720p-300s": (136, 136)}


def make_720p(path: Path, seconds: int) -> Path:
    """A 1280x720 30 fps H.264 clip at about 2.7 Mb/s (like the reference's 720p figure)."""
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=1280x720:rate=30:duration={seconds}", "-c:v", "libx264", "-b:v", "2700k",
                    "-pix_fmt", "yuv420p", "-preset", "veryfast", str(path)], check=True)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("videos", nargs="*")
    ap.add_argument("--make-720p", type=int, metavar="SECONDS", help="also generate and time a 720p clip")
    ap.add_argument("--mode", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (vmatch hash uses 1)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    videos = list(args.videos)
    tmp = tempfile.TemporaryDirectory()
    if args.make_720p:
        videos.append(str(make_720p(Path(tmp.name) / f"testsrc2-720p-{args.make_720p}s.mp4", args.make_720p)))
    if not videos:
        ap.error("give videos or --make-720p")
    for v in videos:
        r = bench_hash(v, args.mode, args.device, args.repeat)
        lo, hi = REFERENCE_FPS["720p"] if "720" in Path(v).name or "hd" in Path(v).name else REFERENCE_FPS["sd"]
        r["reference_end_to_end_fps"] = [lo, hi]
        r["ratio_vs_reference_fps"] = [round(r["end_to_end_fps"] / hi, 2), round(r["end_to_end_fps"] / lo, 2)]
        print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
