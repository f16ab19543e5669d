"""Differential test against the reference: a matrix of generated clips, hashed by the oracle
(``tmk-hash-video`` with the system ffmpeg 5.1) and by ``vmatch hash``.

Every clip the reference can hash must come out byte-identical in ``--mode exact`` and within
the README's fast-mode bounds in ``--mode fast``; where the reference fails, vmatch must fail
too, with one line naming the file. Clips are made with the same system ffmpeg, small and
short (the whole module takes a couple of minutes on 2 cores).

``VMATCH_MATRIX_REPORT=FILE`` writes the result table (docs/compatibility.md) to FILE.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from engine.scoring import Scorer
from engine.tmkfile import read_tmk
from tests.oracle import Oracle

REPO = Path(__file__).resolve().parents[2]
X264 = ("-c:v", "libx264", "-preset", "ultrafast")
VP9 = ("-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "200k")


def src(size: str = "96x72", rate: str = "30", dur: float = 2.0, kind: str = "testsrc2") -> list[str]:
    """A lavfi test pattern input (moving content, so consecutive frames differ)."""
    return ["-f", "lavfi", "-i", f"{kind}=size={size}:rate={rate}:duration={dur}"]


def tone(dur: float = 2.0) -> list[str]:
    return ["-f", "lavfi", "-i", f"sine=frequency=440:duration={dur}"]


@dataclass(frozen=True)
class Clip:
    """One matrix input: ``steps`` are ffmpeg argument lists run in order; ``{out}`` is the clip,
    ``{tmp}`` a scratch file; ``post`` edits the finished file (e.g. truncation)."""

    name: str
    what: str
    steps: tuple[tuple[str, ...], ...]
    post: Callable[[Path], None] | None = field(default=None, compare=False)


def clip(name: str, what: str, *steps: list[str] | tuple[str, ...], post: Callable[[Path], None] | None = None) -> Clip:
    return Clip(name, what, tuple(tuple(s) for s in steps), post)


def _truncate_half(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _vfr_gaps() -> str:
    return "setpts='if(gte(N,20),PTS+round(0.9/TB),PTS)+if(gte(N,40),round(0.37/TB),0)'"


MATRIX: list[Clip] = [
    # --- codecs
    clip("h264-baseline.mp4", "H.264 baseline", [*src(), *X264, "-profile:v", "baseline", "-pix_fmt", "yuv420p", "{out}"]),
    clip("h264-high-bframes.mp4", "H.264 high, 3 B-frames (reordering)",
         [*src(), "-c:v", "libx264", "-preset", "medium", "-profile:v", "high", "-bf", "3", "-pix_fmt", "yuv420p", "{out}"]),
    clip("h264-10bit.mkv", "H.264 high10 (yuv420p10le)", [*src(), *X264, "-pix_fmt", "yuv420p10le", "{out}"]),
    clip("h264-444.mp4", "H.264 high444 (yuv444p)", [*src(), *X264, "-pix_fmt", "yuv444p", "{out}"]),
    clip("h264-interlaced.mp4", "H.264 interlaced (tff, MBAFF)",
         [*src("96x72", "60"), "-vf", "tinterlace=mode=interleave_top", *X264, "-flags", "+ildct+ilme",
          "-x264opts", "interlaced=1:tff=1", "-pix_fmt", "yuv420p", "{out}"]),
    clip("hevc.mp4", "HEVC (libx265)",
         [*src(), "-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=none", "-pix_fmt", "yuv420p", "{out}"]),
    clip("vp8.webm", "VP8 in WebM", [*src(), "-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "200k", "{out}"]),
    clip("vp9-426x240.webm", "VP9 426x240 29.97 fps (decord: Error sending packet)",
         [*src("426x240", "30000/1001"), *VP9, "-pix_fmt", "yuv420p", "{out}"]),
    clip("vp9-352x288.webm", "VP9 352x288", [*src("352x288", "30", 1.5), *VP9, "-pix_fmt", "yuv420p", "{out}"]),
    clip("vp9-97x71.webm", "VP9 odd size 97x71", [*src("97x71"), *VP9, "-pix_fmt", "yuv420p", "{out}"]),
    clip("vp9-64x48.mkv", "VP9 in Matroska", [*src("64x48"), *VP9, "-pix_fmt", "yuv420p", "{out}"]),
    clip("av1.mkv", "AV1 (libaom)", [*src("96x72", "30", 1.5), "-c:v", "libaom-av1", "-cpu-used", "8", "-row-mt", "1", "{out}"]),
    clip("mpeg1.mpg", "MPEG-1 in MPEG-PS", [*src(), "-c:v", "mpeg1video", "-q:v", "4", "{out}"]),
    clip("mpeg2.mpg", "MPEG-2 in MPEG-PS", [*src(), "-c:v", "mpeg2video", "-q:v", "4", "{out}"]),
    clip("mpeg2.ts", "MPEG-2 in MPEG-TS (starts at 1.4 s)", [*src(), "-c:v", "mpeg2video", "-q:v", "4", "{out}"]),
    clip("mpeg2.m2ts", "MPEG-2 in M2TS (192-byte packets)",
         [*src(), "-c:v", "mpeg2video", "-q:v", "4", "-f", "mpegts", "-mpegts_m2ts_mode", "1", "{out}"]),
    clip("h264.ts", "H.264 in MPEG-TS", [*src(), *X264, "-pix_fmt", "yuv420p", "{out}"]),
    clip("mpeg4.avi", "MPEG-4 Part 2 in AVI", [*src(), "-c:v", "mpeg4", "-q:v", "4", "{out}"]),
    clip("xvid-bframes.avi", "MPEG-4 Part 2 with B-frames (packed) in AVI",
         [*src(), "-c:v", "mpeg4", "-q:v", "4", "-bf", "2", "{out}"]),
    clip("flv1.flv", "FLV1 (Sorenson H.263) in FLV", [*src(), "-c:v", "flv", "-q:v", "4", "{out}"]),
    clip("h264.flv", "H.264 in FLV", [*src(), *X264, "-pix_fmt", "yuv420p", "{out}"]),
    clip("h263.3gp", "H.263 176x144 in 3GP", [*src("176x144"), "-c:v", "h263", "-q:v", "4", "{out}"]),
    clip("mjpeg.avi", "MJPEG in AVI", [*src(), "-c:v", "mjpeg", "-q:v", "4", "-pix_fmt", "yuvj420p", "{out}"]),
    clip("prores.mov", "ProRes 422 (prores_ks)", [*src(), "-c:v", "prores_ks", "-profile:v", "0", "{out}"]),
    clip("ffv1.mkv", "FFV1 lossless", [*src(), "-c:v", "ffv1", "{out}"]),
    clip("theora.ogv", "Theora in Ogg", [*src(), "-c:v", "libtheora", "-q:v", "6", "{out}"]),
    clip("dnxhr.mov", "DNxHR LB 256x144", [*src("256x144", "30", 1.0), "-c:v", "dnxhd", "-profile:v", "dnxhr_lb",
                                           "-pix_fmt", "yuv422p", "{out}"]),
    clip("wmv2.wmv", "WMV2 in ASF", [*src(), "-c:v", "wmv2", "-q:v", "4", "{out}"]),
    clip("h264.mov", "H.264 in QuickTime", [*src(), *X264, "-pix_fmt", "yuv420p", "{out}"]),
    # --- frame rates (H.264 in MP4, 64x48)
    *[clip(f"fps-{label}.mp4", f"{label} fps", [*src("64x48", rate, 2.0), *X264, "-pix_fmt", "yuv420p", "{out}"])
      for label, rate in [("23.976", "24000/1001"), ("24", "24"), ("25", "25"), ("29.97", "30000/1001"),
                          ("30", "30"), ("50", "50"), ("59.94", "60000/1001"), ("60", "60"), ("120", "120"),
                          ("10", "10")]],
    clip("fps-25.mkv", "25 fps in Matroska (1 ms time base)", [*src("64x48", "25"), *X264, "-pix_fmt", "yuv420p", "{out}"]),
    clip("fps-29.97.mkv", "29.97 fps in Matroska (33 ms packets: 0 ticks by ffmpeg's rounding)",
         [*src("64x48", "30000/1001"), *X264, "-pix_fmt", "yuv420p", "{out}"]),
    clip("fps-25.ts", "25 fps H.264 in MPEG-TS", [*src("64x48", "25"), *X264, "-pix_fmt", "yuv420p", "{out}"]),
    # --- timing
    clip("vfr.mp4", "variable frame rate (0.9 s and 0.37 s gaps)",
         [*src("64x48", "30", 3.0), "-vf", _vfr_gaps(), "-fps_mode", "passthrough", *X264, "-pix_fmt", "yuv420p", "{out}"]),
    clip("vfr.mkv", "variable frame rate in Matroska",
         [*src("64x48", "30", 3.0), "-vf", _vfr_gaps(), "-fps_mode", "passthrough", *X264, "-pix_fmt", "yuv420p", "{out}"]),
    clip("offset-3s.mkv", "start time offset 3 s (Matroska)",
         [*src("64x48"), *X264, "-pix_fmt", "yuv420p", "-output_ts_offset", "3", "{out}"]),
    clip("offset-3s.mp4", "start time offset 3 s (MP4 edit list)",
         [*src("64x48"), *X264, "-pix_fmt", "yuv420p", "-output_ts_offset", "3", "{out}"]),
    clip("editlist-trim.mp4", "edit list: stream copy from 0.5 s (pre-roll frames dropped)",
         [*src("64x48", "30", 3.0), "-c:v", "libx264", "-preset", "medium", "-bf", "2", "-g", "30", "-pix_fmt", "yuv420p", "{tmp}.mp4"],
         ["-ss", "0.5", "-i", "{tmp}.mp4", "-c", "copy", "{out}"]),
    clip("audio-first.mp4", "audio stream first; video starts 0.5 s after the audio",
         [*tone(2.5), "-itsoffset", "0.5", *src("64x48"), "-map", "0:a", "-map", "1:v", "-c:a", "aac", *X264,
          "-pix_fmt", "yuv420p", "{out}"]),
    clip("audio-first.mkv", "audio-first Matroska", [*tone(), *src("64x48"), "-map", "0:a", "-map", "1:v", "-c:a", "libvorbis",
                                                    *X264, "-pix_fmt", "yuv420p", "{out}"]),
    clip("overreport.mp4", "truncated MP4 whose index lists twice the frames present",
         [*src("160x120", "30", 3.0), *X264, "-pix_fmt", "yuv420p", "-movflags", "+faststart", "{out}"], post=_truncate_half),
    clip("overreport.avi", "truncated AVI (header counts frames that are missing)",
         [*src("96x72", "30", 3.0), "-c:v", "mpeg4", "-q:v", "4", "{out}"], post=_truncate_half),
    # --- geometry
    *[clip(f"rotate-{deg}.mp4", f"display matrix rotation {deg}",
           [*src("96x72"), *X264, "-pix_fmt", "yuv420p", "{tmp}.mp4"],
           ["-i", "{tmp}.mp4", "-c", "copy", "-metadata:s:v:0", f"rotate={deg}", "{out}"]) for deg in (90, 180, 270)],
    clip("sar-4-3.mp4", "non-square SAR 4:3", [*src("96x72"), "-vf", "setsar=4/3", *X264, "-pix_fmt", "yuv420p", "{out}"]),
    clip("odd-97x71.mp4", "odd size 97x71 (yuv444p)", [*src("97x71"), *X264, "-pix_fmt", "yuv444p", "{out}"]),
    clip("tiny-16x16.mp4", "16x16", [*src("16x16"), *X264, "-pix_fmt", "yuv420p", "{out}"]),
    clip("tiny-8x6.mkv", "8x6 (FFV1)", [*src("8x6"), "-c:v", "ffv1", "{out}"]),
    clip("tiny-2x2.mkv", "2x2 (FFV1)", [*src("2x2"), "-c:v", "ffv1", "{out}"]),
    clip("4k.mp4", "3840x2160, 0.3 s", [*src("3840x2160", "30", 0.3), *X264, "-pix_fmt", "yuv420p", "{out}"]),
    # --- edge lengths
    clip("one-frame.mp4", "a single frame", [*src("96x72"), "-frames:v", "1", *X264, "-pix_fmt", "yuv420p", "{out}"]),
    clip("two-frames-60fps.mp4", "1/30 s (2 frames at 60 fps): less than one 15 fps interval",
         [*src("96x72", "60"), "-frames:v", "2", *X264, "-pix_fmt", "yuv420p", "{out}"]),
    clip("one-frame.png", "a still image (PNG)", [*src("96x72"), "-frames:v", "1", "{out}"]),
    # --- inputs the reference cannot hash
    clip("audio-only.m4a", "audio only (no video stream)", [*tone(1.0), "-c:a", "aac", "{out}"]),
    clip("not-a-video.mp4", "text file named .mp4", ["__text__"]),
]


@dataclass
class Outcome:
    """What the oracle and vmatch did with one clip."""

    clip: Clip
    path: Path
    ref_ok: bool
    ref_err: str
    ref_tmk: Path
    exact_tmk: Path
    fast_tmk: Path


def _make(ffmpeg: str, d: Path, c: Clip) -> Path:
    out = d / c.name
    tmp = d / ("tmp-" + c.name.replace(".", "-"))
    if c.steps == (("__text__",),):
        out.write_text("this is not a video\n")
        return out
    for step in c.steps:
        args = [a.replace("{out}", str(out)).replace("{tmp}", str(tmp)) for a in step]
        r = subprocess.run([ffmpeg, "-v", "error", "-nostdin", "-y", *args], capture_output=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"making {c.name} failed: {r.stderr.decode(errors='replace')[-400:]}")
    if c.post:
        c.post(out)
    return out


def _vmatch_hash(paths: list[Path], outdir: Path, mode: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "engine.cli", "hash", *map(str, paths), "-d", str(outdir),
                           "--mode", mode, "--device", "cpu"], capture_output=True, text=True, env=env,
                          check=False, timeout=900)


@pytest.fixture(scope="module")
def matrix(oracle: Oracle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    d = tmp_path_factory.mktemp("matrix")
    (d / "ref").mkdir()
    with ThreadPoolExecutor(max_workers=2) as pool:
        paths = list(pool.map(lambda c: _make(oracle.ffmpeg, d, c), MATRIX))

        def ref(p: Path) -> subprocess.CompletedProcess[bytes]:
            return oracle.hash_video(p, d / "ref" / (p.name + ".tmk"), timeout=300)

        refs = list(pool.map(ref, paths))
    # vmatch names outputs by stem; clips share stems across containers, so hash via links.
    links = d / "in"
    links.mkdir()
    inputs = []
    for p in paths:
        link = links / (p.name.replace(".", "_") + p.suffix)
        link.symlink_to(p)
        inputs.append(link)
    runs = {mode: _vmatch_hash(inputs, d / mode, mode) for mode in ("exact", "fast")}
    out: dict[str, Outcome] = {}
    for c, p, r, link in zip(MATRIX, paths, refs, inputs):
        err = r.stderr.decode(errors="replace").strip()
        out[c.name] = Outcome(c, link, r.returncode == 0, err, d / "ref" / (p.name + ".tmk"),
                              d / "exact" / (link.stem + ".tmk"), d / "fast" / (link.stem + ".tmk"))
    out["__runs__"] = runs  # type: ignore[assignment]
    yield out
    if os.environ.get("VMATCH_MATRIX_REPORT"):
        _write_report(Path(os.environ["VMATCH_MATRIX_REPORT"]), out)


def _decoder_of(path: Path) -> str:
    from engine.decode import DecodeError, VideoDecoder

    try:
        with VideoDecoder(path) as dec:
            return dec.info.backend + (f" ({dec.info.reason})" if dec.info.reason else "")
    except DecodeError as e:
        return f"error: {e.reason}"


def _write_report(dest: Path, res: dict[str, Outcome]) -> None:
    """The docs/compatibility.md table: one row per clip, from this run's files."""
    rows = ["| input | what | decoder used | exact | fast worst level-1 | fast worst level-2 |",
            "| --- | --- | --- | --- | --- | --- |"]
    for c in MATRIX:
        o = res[c.name]
        dec = _decoder_of(o.path)
        if not o.ref_ok:
            exact = "both fail" if not o.exact_tmk.exists() else "NO (reference fails, vmatch hashes)"
            l1 = l2 = "-"
        else:
            exact = "yes" if o.exact_tmk.exists() and o.exact_tmk.read_bytes() == o.ref_tmk.read_bytes() else "NO"
            if o.fast_tmk.exists():
                ref, got = read_tmk(o.ref_tmk), read_tmk(o.fast_tmk)
                a, b, _ = Scorer(ref.params, "cpu").pair(ref, got)
                l1, l2 = f"{a:.7f}", f"{b:.7f}"
            else:
                l1 = l2 = "missing"
        rows.append(f"| `{c.name}` | {c.what} | {dec} | {exact} | {l1} | {l2} |")
    dest.write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("name", [c.name for c in MATRIX])
def test_exact_is_byte_identical(matrix: dict[str, Outcome], name: str) -> None:
    o = matrix[name]
    stderr = matrix["__runs__"]["exact"].stderr  # type: ignore[index]
    mine = [ln for ln in stderr.splitlines() if ln.startswith(f"vmatch: {o.path}:")]
    if not o.ref_ok:
        assert not o.exact_tmk.exists(), f"reference fails ({o.ref_err[-200:]}) but vmatch wrote a hash"
        assert len(mine) == 1, f"expected one error line naming {o.path}, got: {stderr}"
        return
    assert not mine, mine
    assert o.exact_tmk.read_bytes() == o.ref_tmk.read_bytes()


@pytest.mark.parametrize("name", [c.name for c in MATRIX])
def test_fast_within_bounds(matrix: dict[str, Outcome], name: str) -> None:
    o = matrix[name]
    if not o.ref_ok:
        assert not o.fast_tmk.exists()
        return
    ref, got = read_tmk(o.ref_tmk), read_tmk(o.fast_tmk)
    assert got.frame_count == ref.frame_count
    assert np.abs(got.cos - ref.cos).max() <= 1e-5 and np.abs(got.sin - ref.sin).max() <= 1e-5
    scorer = Scorer(ref.params, "cpu")
    l1, l2, _ = scorer.pair(ref, got)
    if ref.frame_count:
        # a one-frame hash scores 0.518 against itself at level 2 (spec 7.4): bound relative to that
        self_l2 = min(1.0, scorer.pair(ref, ref)[1])
        assert l1 >= 0.99999 and l2 >= 0.99999 * self_l2


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_batch_reports_one_line_per_failure(matrix: dict[str, Outcome], mode: str) -> None:
    """The batch went on past the bad inputs; stderr holds one line per failure and the summary."""
    run = matrix["__runs__"][mode]  # type: ignore[index]
    failing = [o for k, o in matrix.items() if k != "__runs__" and not o.ref_ok]
    assert failing and run.returncode == 1
    lines = run.stderr.splitlines()
    assert lines[-1] == f"vmatch: {len(failing)} of {len(MATRIX)} inputs failed"
    assert sorted(lines[:-1]) == sorted(f"vmatch: {o.path}: " + ln.split(f"{o.path}: ", 1)[1]
                                        for o in failing for ln in lines if ln.startswith(f"vmatch: {o.path}: "))
    assert len(lines) == len(failing) + 1, lines  # no library noise on stderr
