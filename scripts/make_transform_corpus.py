#!/usr/bin/env python3
"""Build a labelled matching benchmark from source videos by common edits.

    python scripts/make_transform_corpus.py SRC_VIDEO... -o DIR [--transforms a,b] [--family-pattern RE]

Writes, for every source video S of content family F (default: each source is its own family):

* ``DIR/F/S.<ext>``: a copy of the source, and ``DIR/F/S__<transform>.mp4`` for each edit;
* ``DIR/pairs.csv`` (``a,b,label,transform``, paths relative to DIR), for ``vmatch eval --pairs``:
  each edit against its source (label 1, transform = the edit); each edit against the sources
  of every other family, and against the same edit of every other family (label 0, transform =
  the edit); sources of one family against each other (label 1, ``same-family``) and sources
  of different families (label 0, ``original``);
* ``DIR/corpus.json``: the sources, families, the exact ffmpeg arguments of each edit, encode times.

DIR itself is also a groups folder for ``vmatch eval --groups DIR`` (one sub-folder per family).
Sources that show the same content under different names (the reference samples ``chair-19-...``,
``chair-20-...``) must share a family: ``--family-pattern '^[a-z]+'`` takes the leading word.

Needs an ffmpeg executable: ``--ffmpeg PATH``, else ``ffmpeg`` on PATH, else the one bundled
with the imageio-ffmpeg package. Existing outputs are kept (the script resumes) unless --force.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

PROG = "make_transform_corpus"

#: name -> (description, ffmpeg output arguments); {trim_start} / {trim_len} derive from the source duration.
#: Filters keep frame sizes even (yuv420p); every output is H.264 without audio.
TRANSFORMS: dict[str, tuple[str, list[str]]] = {
    "reencode-lowbr": ("re-encoded at 100 kb/s", ["-b:v", "100k", "-maxrate", "100k", "-bufsize", "200k"]),
    "resize-half": ("half width and height", ["-vf", "scale=trunc(iw/4)*2:trunc(ih/4)*2"]),
    "crop-80": ("central 80% of width and height", ["-vf", "crop=trunc(iw*0.8/2)*2:trunc(ih*0.8/2)*2"]),
    "letterbox": ("black bars above and below (height x1.5)",
                  ["-vf", "pad=iw:trunc(ih*1.5/2)*2:0:(oh-ih)/2:black"]),
    "pillarbox": ("black bars left and right (width x1.5)",
                  ["-vf", "pad=trunc(iw*1.5/2)*2:ih:(ow-iw)/2:0:black"]),
    "logo": ("opaque logo box in the top-left corner (30% x 12% of the frame)",
             ["-vf", "drawbox=x=iw*0.04:y=ih*0.04:w=iw*0.30:h=ih*0.12:color=white@0.9:t=fill,"
                     "drawbox=x=iw*0.07:y=ih*0.06:w=iw*0.10:h=ih*0.08:color=red@0.9:t=fill"]),
    "greyscale": ("colour removed", ["-vf", "hue=s=0"]),
    "fps-24": ("frame rate changed to 24 fps", ["-vf", "fps=24"]),
    "trim-80": ("first and last 10% of the duration cut", ["-ss", "{trim_start}", "-t", "{trim_len}"]),
    "speed-1.25": ("played 1.25x faster", ["-vf", "setpts=PTS/1.25"]),
    "hflip": ("mirrored left-right", ["-vf", "hflip"]),
    "rotate-90": ("rotated 90 degrees clockwise", ["-vf", "transpose=clock"]),
    "rotate-5": ("rotated 5 degrees, black corners", ["-vf", "rotate=5*PI/180:fillcolor=black"]),
    # every mirror and quarter turn (the dihedral group; vmatch --robust matches them exactly)
    "vflip": ("mirrored top-bottom", ["-vf", "vflip"]),
    "rotate-180": ("rotated 180 degrees", ["-vf", "hflip,vflip"]),
    "rotate-270": ("rotated 90 degrees counter-clockwise", ["-vf", "transpose=cclock"]),
    "transpose": ("mirrored about the main diagonal", ["-vf", "transpose=cclock_flip"]),
    "antitranspose": ("mirrored about the anti-diagonal", ["-vf", "transpose=clock_flip"]),
    # borders at several ratios, on all four sides, and in colours other than black
    "letterbox-1.33": ("black bars above and below (height x1.33)",
                       ["-vf", "pad=iw:trunc(ih*4/3/2)*2:0:(oh-ih)/2:black"]),
    "letterbox-2": ("black bars above and below (height x2)", ["-vf", "pad=iw:ih*2:0:(oh-ih)/2:black"]),
    "pillarbox-1.33": ("black bars left and right (width x1.33)",
                       ["-vf", "pad=trunc(iw*4/3/2)*2:ih:(ow-iw)/2:0:black"]),
    "pillarbox-2": ("black bars left and right (width x2)", ["-vf", "pad=iw*2:ih:(ow-iw)/2:0:black"]),
    "windowbox": ("black border on all four sides (width and height x1.4)",
                  ["-vf", "pad=trunc(iw*1.4/2)*2:trunc(ih*1.4/2)*2:(ow-iw)/2:(oh-ih)/2:black"]),
    "letterbox-blue": ("dark blue bars above and below (height x1.5)",
                       ["-vf", "pad=iw:trunc(ih*1.5/2)*2:0:(oh-ih)/2:0x203070"]),
    "pillarbox-grey": ("light grey bars left and right (width x1.5)",
                       ["-vf", "pad=trunc(iw*1.5/2)*2:ih:(ow-iw)/2:0:0xc0c0c0"]),
}


class CorpusError(Exception):
    """Printed as one line `make_transform_corpus: <message>`."""


@dataclass
class Source:
    path: Path
    family: str
    duration: float

    @property
    def stem(self) -> str:
        return self.path.stem


def find_ffmpeg(explicit: str | None = None) -> str:
    """--ffmpeg, else `ffmpeg` on PATH, else imageio-ffmpeg's bundled binary; CorpusError if none."""
    if explicit:
        if shutil.which(explicit):
            return shutil.which(explicit)  # type: ignore[return-value]
        raise CorpusError(f"{explicit}: ffmpeg executable not found")
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        if exe and os.path.exists(exe):
            return exe
    except Exception:  # noqa: BLE001 - package missing or without a binary for this platform
        pass
    raise CorpusError("no ffmpeg executable found: install ffmpeg (e.g. apt-get install ffmpeg) or the "
                      "imageio-ffmpeg package (pip install imageio-ffmpeg), or pass --ffmpeg PATH")


def probe(ffmpeg: str, path: Path) -> float:
    """Duration in seconds (from ffmpeg's input description); CorpusError for unreadable input."""
    r = subprocess.run([ffmpeg, "-hide_banner", "-i", str(path)], capture_output=True, text=True, errors="replace")
    m = re.search(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", r.stderr)
    if not m or "Video:" not in r.stderr:
        last = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        raise CorpusError(f"{path}: not a readable video ({last[-1].strip() if last else 'no output from ffmpeg'})")
    h, mi, s = m.groups()
    return int(h) * 3600 + int(mi) * 60 + float(s)


def pick_encoder(ffmpeg: str) -> list[str]:
    out = subprocess.run([ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    if re.search(r"^\s*V\S*\s+libx264\s", out, re.M):
        return ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p"]
    return ["-c:v", "mpeg4", "-q:v", "4", "-pix_fmt", "yuv420p"]


def family_of(stem: str, pattern: re.Pattern[str] | None) -> str:
    if pattern is None:
        return stem
    m = pattern.search(stem)
    if not m:
        return stem
    return (m.group(1) if m.groups() and m.group(1) else m.group(0)) or stem


def transform_args(name: str, src: Source) -> list[str]:
    trim_start, trim_len = f"{0.1 * src.duration:.3f}", f"{0.8 * src.duration:.3f}"
    return [a.format(trim_start=trim_start, trim_len=trim_len) for a in TRANSFORMS[name][1]]


def make_variant(ffmpeg: str, encoder: list[str], src: Source, name: str, out: Path) -> float:
    """Encode one edit of src to out (via a temporary file); returns seconds taken."""
    t0 = time.monotonic()
    args = transform_args(name, src)
    seek = []
    if args[:1] == ["-ss"]:  # input-side seek for the trim (accurate, and fast)
        seek, args = args[:2], args[2:]
    tmp = out.with_name(f".{out.stem}.part{out.suffix}")
    cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *seek, "-i", str(src.path),
           *args, "-an", *encoder, "-threads", "1", str(tmp)]
    r = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if r.returncode != 0 or not tmp.exists() or tmp.stat().st_size == 0:
        tmp.unlink(missing_ok=True)
        last = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        raise CorpusError(f"{out}: ffmpeg failed ({last[-1].strip() if last else f'exit {r.returncode}'})")
    os.replace(tmp, out)
    return time.monotonic() - t0


def pairs_rows(done: dict[tuple[str, str], Path], sources: list[Source], originals: dict[str, Path],
               transforms: list[str]) -> list[tuple[str, str, int, str]]:
    """Labelled pairs over what exists (relative paths); see the module docstring."""
    rows = []
    for i, s in enumerate(sources):
        for t in transforms:
            v = done.get((s.stem, t))
            if v is None:
                continue
            rows.append((originals[s.stem], v, 1, t))
            rows += [(v, originals[u.stem], 0, t) for u in sources if u.family != s.family]
            # the same edit on different content: shared bars, boxes or corners must not make a match
            rows += [(v, done[(u.stem, t)], 0, t) for u in sources[i + 1:]
                     if u.family != s.family and (u.stem, t) in done]
    for i, s in enumerate(sources):
        for u in sources[i + 1:]:
            same = s.family == u.family
            rows.append((originals[s.stem], originals[u.stem], int(same), "same-family" if same else "original"))
    return [(a.as_posix(), b.as_posix(), label, t) for a, b, label, t in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                 epilog="Transforms: " + "; ".join(f"{k}: {v[0]}" for k, v in TRANSFORMS.items()))
    ap.add_argument("sources", nargs="+", metavar="SRC_VIDEO")
    ap.add_argument("-o", "--output", required=True, metavar="DIR", help="corpus folder (created)")
    ap.add_argument("--transforms", metavar="T,T,...", help="subset of the edits (default: all)")
    ap.add_argument("--family-pattern", metavar="REGEX",
                    help="content family = first match in the file stem (group 1 if any); "
                         "sources of one family show the same content (default: one family per source)")
    ap.add_argument("--ffmpeg", metavar="PATH", help="ffmpeg executable (default: PATH, then imageio-ffmpeg)")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1, help="parallel ffmpeg runs")
    ap.add_argument("--force", action="store_true", help="re-encode outputs that already exist")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except CorpusError as e:
        print(f"{PROG}: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def run(args: argparse.Namespace) -> int:
    transforms = list(TRANSFORMS) if not args.transforms else [t.strip() for t in args.transforms.split(",") if t.strip()]
    unknown = [t for t in transforms if t not in TRANSFORMS]
    if unknown:
        raise CorpusError(f"unknown transform(s) {', '.join(unknown)} (known: {', '.join(TRANSFORMS)})")
    try:
        pattern = re.compile(args.family_pattern) if args.family_pattern else None
    except re.error as e:
        raise CorpusError(f"--family-pattern: {e}") from None
    ffmpeg = find_ffmpeg(args.ffmpeg)
    out = Path(args.output)
    stems: dict[str, Path] = {}
    for p in map(Path, args.sources):
        if not p.is_file():
            raise CorpusError(f"{p}: {'is a directory' if p.is_dir() else 'no such file'}")
        if p.stem in stems:
            raise CorpusError(f"{p}: same name as {stems[p.stem]} (sources need distinct file names)")
        stems[p.stem] = p
    sources = [Source(p, family_of(p.stem, pattern), probe(ffmpeg, p)) for p in stems.values()]
    if len({s.family for s in sources}) < 2:
        print(f"{PROG}: warning: all sources are one family: the corpus has no non-matching pairs",
              file=sys.stderr)
    encoder = pick_encoder(ffmpeg)
    originals: dict[str, Path] = {}
    jobs: list[tuple[Source, str, Path]] = []
    for s in sources:
        (out / s.family).mkdir(parents=True, exist_ok=True)
        originals[s.stem] = Path(s.family) / s.path.name
        dst = out / originals[s.stem]
        if args.force or not dst.exists():
            shutil.copyfile(s.path, dst)
        for t in transforms:
            jobs.append((s, t, out / s.family / f"{s.stem}__{t}.mp4"))
    done: dict[tuple[str, str], Path] = {}
    try:  # encode times of variants kept from an earlier run
        timings: dict[str, float] = json.loads((out / "corpus.json").read_text()).get("variants", {})
    except (OSError, ValueError, AttributeError):
        timings = {}
    todo = [(s, t, p) for s, t, p in jobs if args.force or not p.exists()]
    for s, t, p in jobs:
        if (s, t, p) not in todo:
            done[(s.stem, t)] = p.relative_to(out)
    print(f"{PROG}: {len(sources)} sources x {len(transforms)} transforms with {ffmpeg} "
          f"({len(jobs) - len(todo)} already there, {len(todo)} to encode, {args.jobs} jobs)", file=sys.stderr)
    failures = 0
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        futs = {ex.submit(make_variant, ffmpeg, encoder, s, t, p): (s, t, p) for s, t, p in todo}
        for k, f in enumerate(as_completed(futs), 1):
            s, t, p = futs[f]
            try:
                secs = f.result()
                timings[p.relative_to(out).as_posix()] = round(secs, 2)
                done[(s.stem, t)] = p.relative_to(out)
                print(f"[{k}/{len(todo)}] {p.relative_to(out)} ({secs:.1f} s)", file=sys.stderr, flush=True)
            except CorpusError as e:
                failures += 1
                print(f"{PROG}: {e}", file=sys.stderr, flush=True)
    rows = pairs_rows(done, sources, originals, transforms)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["a", "b", "label", "transform"])
    w.writerows(rows)
    (out / "pairs.csv").write_text(buf.getvalue())
    manifest = {
        "ffmpeg": ffmpeg, "encoder": encoder,
        "sources": [{"path": str(s.path), "family": s.family, "duration_s": s.duration,
                     "copy": originals[s.stem].as_posix()} for s in sources],
        "transforms": {t: {"description": TRANSFORMS[t][0], "ffmpeg_args": TRANSFORMS[t][1],
                           "encode_seconds": round(sum(timings.get(v.as_posix(), 0.0)
                                                       for (_, tt), v in done.items() if tt == t), 2)}
                       for t in transforms},
        "variants": {v.as_posix(): timings.get(v.as_posix()) for v in sorted(done.values())},
        "pairs": {"total": len(rows), "matches": sum(r[2] for r in rows)},
        "wall_seconds_this_run": round(time.monotonic() - t0, 2),
    }
    (out / "corpus.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{PROG}: {len(done)} variants, {len(rows)} pairs ({manifest['pairs']['matches']} matches) in "
          f"{out / 'pairs.csv'}; {time.monotonic() - t0:.1f} s", file=sys.stderr)
    if failures:
        print(f"{PROG}: {failures} of {len(todo)} encodes failed (left out of pairs.csv)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
