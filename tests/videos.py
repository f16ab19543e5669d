"""Test-video helpers shared by the test suite: small clips made with ffmpeg, reference data.

Clips are generated (never checked in) with the ffmpeg binary bundled by imageio-ffmpeg, so
tests do not depend on a system ffmpeg.
"""
from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kernels.params import DEFAULT_PARAMS

#: Where the ThreatExchange sample videos and .tmk files live (next to the checkout).
REFERENCE_SUBDIR = "shared/reference/threatexchange"

#: The 14 reference sample videos and their reference frame counts (spec 2.3 / 7.2).
REFERENCE_FRAME_COUNTS: dict[str, int] = {
    "chair-19-sd-bar": 284,
    "chair-20-sd-bar": 309,
    "chair-22-sd-grey-bar": 338,
    "chair-22-sd-sepia-bar": 338,
    "chair-22-with-large-logo-bar": 338,
    "chair-22-with-small-logo-bar": 338,
    "chair-orig-22-sd-bar": 338,
    "doorknob-hd-no-bar": 62,
    "pattern-hd-no-bar": 105,
    "pattern-longer-no-bar": 119,
    "pattern-sd-grey-bar": 105,
    "pattern-sd-with-large-logo-bar": 105,
    "pattern-sd-with-small-logo-bar": 105,
    "test-padded-dimensions": 77,
}

#: MD5 of the reference ffmpeg pipe output (spec appendix B).
REFERENCE_PIPE_MD5: dict[str, str] = {
    "doorknob-hd-no-bar": "15f22525b4733f0f6fbb7a6cfb9aa686",
    "chair-19-sd-bar": "3fffd885960dca73c34ac6931512d236",
    "test-padded-dimensions": "b50d804488095c6ca6fd720c5288e4ce",
}

H264_ARGS: tuple[str, ...] = ("-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast")
VP9_ARGS: tuple[str, ...] = (
    "-c:v", "libvpx-vp9", "-pix_fmt", "yuv420p", "-deadline", "realtime", "-cpu-used", "8",
)


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(*args: str) -> bytes:
    """Run ffmpeg quietly; raise with its stderr on failure; return stdout."""
    cmd = [ffmpeg_exe(), "-v", "error", "-nostdin", "-y", *args]
    r = subprocess.run(cmd, capture_output=True, check=False)
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace")
        raise RuntimeError(f"ffmpeg failed ({r.returncode}): {' '.join(cmd)}\n{err}")
    return r.stdout


def make_testsrc(
    path: str | Path,
    seconds: float,
    fps: float | str,
    size: tuple[int, int] = (96, 72),
    codec_args: Sequence[str] = H264_ARGS,
    *,
    source: str = "testsrc",
    extra_args: Sequence[str] = (),
) -> Path:
    """Encode a lavfi test pattern (moving counter, so frames differ) to ``path``."""
    path = Path(path)
    w, h = size
    run_ffmpeg(
        "-f", "lavfi", "-i", f"{source}=size={w}x{h}:rate={fps}:duration={seconds}",
        *codec_args, *extra_args, str(path),
    )
    return path


def reference_pipe_frames(
    path: str | Path, size: int = DEFAULT_PARAMS.frame_size, fps: int = DEFAULT_PARAMS.fps
) -> np.ndarray:
    """Frames of the reference command (spec 2.1) run with :func:`ffmpeg_exe`, ``[N,size,size,3]``."""
    out = run_ffmpeg(
        "-i", str(path), "-s", f"{size}:{size}", "-an", "-f", "rawvideo",
        "-c:v", "rawvideo", "-pix_fmt", "rgb24", "-r", str(fps), "pipe:1",
    )
    return np.frombuffer(out, dtype=np.uint8).reshape(-1, size, size, 3)


def reference_dir() -> Path | None:
    """The shared ThreatExchange reference data directory, or None when it is absent."""
    d = Path(__file__).resolve().parents[1].parent / REFERENCE_SUBDIR
    return d if (d / "videos").is_dir() else None
