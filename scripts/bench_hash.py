#!/usr/bin/env python3
"""Hashing speed, side by side with the reference `tmk-hash-video` run in the same benchmark.

Whole-process figures (what a user waits for; start-up and exit included), all timed as
subprocesses, alternating, `--repeat` runs each, median and range:

* per video: `tmk-hash-video -f FFMPEG -i VIDEO -o OUT` (reference, apt's ffmpeg 5.1) against
  `vmatch hash VIDEO -d OUT` (one command per video), and the reference's own decode step alone
  (its ffmpeg command, spec 2.1) for scale;
* many videos: one `vmatch hash V1 V2 ... -d OUT` command against one reference process per
  video (the reference takes one video per run), summed.

The `.tmk` outputs are checked byte-identical.  In-process figures (labelled "in_process"; never
divided by a whole-process one): decode-only, features-only and end-to-end time for the same
frames in one warm process (`engine.bench.bench_hash`), whose ratio is the hashing overhead.

    python scripts/bench_hash.py [VIDEO...] [--make-720p SECONDS] [--repeat 3] [--mode exact]

Without videos it uses three reference sample videos. Prints one JSON object.  Without the
reference tools (tests/oracle.py cannot build them) the ratios fall back to the constants of
../shared/reference/threatexchange/README.md and the output says so.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _oracle import (FALLBACK_NOTE, README_FALLBACK, REPO, machine, oracle, ratio, run_timed,  # noqa: E402
                     spread, vmatch_cmd)

from engine.bench import bench_hash  # noqa: E402
from engine.tmkfile import read_tmk  # noqa: E402

DEFAULT_VIDEOS = ("doorknob-hd-no-bar", "chair-19-sd-bar", "pattern-longer-no-bar")
REF_VIDEOS = REPO.parent / "shared/reference/threatexchange/videos"


def make_720p(path: Path, seconds: int) -> Path:
    """A 1280x720 30 fps H.264 clip at about 2.7 Mb/s (like the reference's 720p figure)."""
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=1280x720:rate=30:duration={seconds}", "-c:v", "libx264", "-b:v", "2700k",
                    "-pix_fmt", "yuv420p", "-preset", "veryfast", str(path)], check=True)
    return path


def pipe_cmd(ffmpeg: str, video: str) -> list[str]:
    """The reference's decode step alone (spec 2.1), output discarded."""
    return [ffmpeg, "-loglevel", "error", "-nostdin", "-i", video, "-s", "64:64", "-an", "-f", "rawvideo",
            "-c:v", "rawvideo", "-pix_fmt", "rgb24", "-r", "15", "-y", "/dev/null"]


def per_video(video: str, tmp: Path, args: argparse.Namespace, orc) -> dict:
    vdir, rdir = tmp / "vm", tmp / "ref"
    vdir.mkdir(exist_ok=True)
    rdir.mkdir(exist_ok=True)
    stem = Path(video).stem
    ours, ref, pipe = [], [], []
    for _ in range(args.repeat):                        # alternate, so load changes hit both
        ours.append(run_timed(vmatch_cmd("hash", video, "-d", vdir, "--mode", args.mode,
                                         "--device", args.device))[0])
        if orc is not None:
            ref.append(run_timed([orc.tool("tmk-hash-video"), "-f", orc.ffmpeg, "-i", video,
                                  "-o", rdir / f"{stem}.tmk"])[0])
            pipe.append(run_timed(pipe_cmd(orc.ffmpeg, video))[0])
    frames = read_tmk(vdir / f"{stem}.tmk").frame_count
    out: dict = {"video": video, "frames": frames,
                 "whole_process": {"vmatch_hash_s": spread(ours),
                                   "vmatch_hash_fps": round(frames / spread(ours)["median"], 1)}}
    w = out["whole_process"]
    if orc is not None:
        w.update({"reference_s": spread(ref), "reference_fps": round(frames / spread(ref)["median"], 1),
                  "reference_ffmpeg_decode_only_s": spread(pipe),
                  "speedup_vs_reference": ratio(spread(ref), spread(ours)),
                  "tmk_identical": (vdir / f"{stem}.tmk").read_bytes() == (rdir / f"{stem}.tmk").read_bytes()})
    else:
        lo, hi = README_FALLBACK["hash_fps_720p" if "hd" in stem or "720" in stem else "hash_fps_sd"]
        w["reference_fps_readme_fallback"] = [lo, hi]
        w["speedup_vs_reference_readme_fallback"] = [round(w["vmatch_hash_fps"] / hi, 2),
                                                     round(w["vmatch_hash_fps"] / lo, 2)]
    r = bench_hash(video, args.mode, args.device, args.repeat)
    out["in_process"] = {k: r[k] for k in ("decode_only_s", "decode_only_fps", "features_only_fps",
                                           "end_to_end_s", "end_to_end_fps", "overhead_over_decode",
                                           "torch_threads")}
    out["in_process"]["note"] = "best of runs in one warm process; not comparable with whole_process"
    return out


def many_videos(videos: list[str], tmp: Path, args: argparse.Namespace, orc) -> dict:
    """One vmatch command for all videos against one reference process per video."""
    vdir, rdir = tmp / "many-vm", tmp / "many-ref"
    vdir.mkdir(exist_ok=True)
    rdir.mkdir(exist_ok=True)
    ours, ref = [], []
    for _ in range(args.repeat):
        ours.append(run_timed(vmatch_cmd("hash", *videos, "-d", vdir, "--mode", args.mode,
                                         "--device", args.device))[0])
        if orc is not None:
            ref.append(sum(run_timed([orc.tool("tmk-hash-video"), "-f", orc.ffmpeg, "-i", v,
                                      "-o", rdir / f"{Path(v).stem}.tmk"])[0] for v in videos))
    frames = sum(read_tmk(vdir / f"{Path(v).stem}.tmk").frame_count for v in videos)
    out: dict = {"videos": len(videos), "frames": frames, "vmatch_one_command_s": spread(ours),
                 "vmatch_fps": round(frames / spread(ours)["median"], 1)}
    if orc is not None:
        out.update({"reference_one_process_per_video_s": spread(ref),
                    "reference_fps": round(frames / spread(ref)["median"], 1),
                    "speedup_vs_reference": ratio(spread(ref), spread(ours)),
                    "tmk_identical": all((vdir / f"{Path(v).stem}.tmk").read_bytes()
                                         == (rdir / f"{Path(v).stem}.tmk").read_bytes() for v in videos)})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("videos", nargs="*")
    ap.add_argument("--make-720p", type=int, metavar="SECONDS", help="also generate and time a 720p clip")
    ap.add_argument("--mode", default="exact", help="vmatch hash --mode (exact: the reference's bytes)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the in-process figure "
                    "(vmatch hash uses 1)")
    ap.add_argument("--no-many", action="store_true", help="skip the many-videos-in-one-command figure")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    videos = list(args.videos) or [str(REF_VIDEOS / f"{s}.mp4") for s in DEFAULT_VIDEOS
                                   if (REF_VIDEOS / f"{s}.mp4").exists()]
    tmpd = tempfile.TemporaryDirectory()
    tmp = Path(tmpd.name)
    if args.make_720p:
        videos.append(str(make_720p(tmp / f"testsrc2-720p-{args.make_720p}s.mp4", args.make_720p)))
    if not videos:
        ap.error("give videos or --make-720p")
    orc, why = oracle()
    out: dict = {"benchmark": "hash", "machine_before": machine(), "mode": args.mode, "device": args.device,
                 "reference": ({"source": "side by side", "tool": str(orc.tool("tmk-hash-video")),
                                "ffmpeg": f"{orc.ffmpeg} {orc.ffmpeg_version}"} if orc is not None
                               else {"source": "README fallback", "note": FALLBACK_NOTE.format(why=why)}),
                 "per_video": []}
    for v in videos:
        out["per_video"].append(per_video(v, tmp, args, orc))
        print(json.dumps(out["per_video"][-1]), file=sys.stderr, flush=True)
    if len(videos) > 1 and not args.no_many:
        out["many_videos"] = many_videos(videos, tmp, args, orc)
    out["machine_after"] = machine()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
