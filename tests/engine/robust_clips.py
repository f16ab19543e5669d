"""Small clips for the --robust and border tests: a film, its mirrored / bordered copies, another film.

Made with ffmpeg from lavfi sources in one encode each (the edit applied to the source), so a
copy and its original carry the same coding loss.
"""
from __future__ import annotations

from pathlib import Path

from tests.videos import run_ffmpeg

#: name -> (lavfi source, filter or None)
CLIPS: dict[str, tuple[str, str | None]] = {
    "a": ("testsrc2=size=128x96:rate=30:duration=3", None),
    "a_hflip": ("testsrc2=size=128x96:rate=30:duration=3", "hflip"),
    "a_rot90": ("testsrc2=size=128x96:rate=30:duration=3", "transpose=clock"),
    "a_lbox": ("testsrc2=size=128x96:rate=30:duration=3", "pad=iw:ih*3/2:0:(oh-ih)/2:black"),
    "a_wbox": ("testsrc2=size=128x96:rate=30:duration=3", "pad=iw*3/2:ih*3/2:(ow-iw)/2:(oh-ih)/2:0x808080"),
    "a_dark": ("testsrc2=size=128x96:rate=30:duration=3", "fade=in:0:40"),   # starts black: no bars
    "b": ("mandelbrot=size=128x96:rate=30", None),
    "b_pbox": ("mandelbrot=size=128x96:rate=30", "pad=iw*3/2:ih:(ow-iw)/2:0:0x2060a0"),
    "b_lbox": ("mandelbrot=size=128x96:rate=30", "pad=iw:ih*3/2:0:(oh-ih)/2:black"),
}


def make_clips(d: Path, names: list[str] | None = None) -> dict[str, Path]:
    out = {}
    for name in names or list(CLIPS):
        src, vf = CLIPS[name]
        p = d / f"{name}.mp4"
        run_ffmpeg("-f", "lavfi", "-i", src, "-t", "3", *(["-vf", vf] if vf else []), "-c:v", "libx264",
                   "-preset", "ultrafast", "-crf", "12", "-pix_fmt", "yuv420p", str(p))
        out[name] = p
    return out
