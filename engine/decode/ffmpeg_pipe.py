"""The reference's own decoding: the ffmpeg CLI with the reference's argument list (spec 2.1).

``tmk-hash-video`` reads ``ffmpeg ... -i IN -s 64:64 -an -f rawvideo -c:v rawvideo -pix_fmt
rgb24 -r 15 pipe:1``. Running the same command with the same ffmpeg (Debian's 5.1.x, which
reproduces every published hash) is byte-exact by construction, whatever the container,
codec or timestamps: it is the exact fallback for inputs where an in-process decoder is not.
Other ffmpeg versions select different frames for some frame rates (spec 2.4), so only 5.1.x
is accepted unless ``VMATCH_FFMPEG`` names an executable explicitly.
"""
from __future__ import annotations

import collections
import logging
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from functools import lru_cache

import numpy as np

from engine.decode.errors import DecodeError, _one_line

__all__ = ["find_ffmpeg", "FfmpegPipeSource", "REFERENCE_FFMPEG_VERSION"]

log = logging.getLogger(__name__)

#: The ffmpeg release line the reference is defined with (spec 2.4).
REFERENCE_FFMPEG_VERSION = "5.1"
#: stderr lines of ffmpeg kept for the error message.
_STDERR_LINES = 20


@lru_cache(maxsize=8)
def _version(exe: str) -> str:
    try:
        r = subprocess.run([exe, "-hide_banner", "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    m = re.search(r"ffmpeg version (\S+)", r.stdout)
    return m.group(1) if m else ""


def find_ffmpeg() -> str | None:
    """The ffmpeg executable for the exact pipe: ``$VMATCH_FFMPEG``, else ``ffmpeg`` on PATH if 5.1.x.

    ``VMATCH_FFMPEG=none`` (or empty-string-like ``0``) turns the pipe off.
    """
    env = os.environ.get("VMATCH_FFMPEG")
    if env is not None:
        if env.lower() in ("", "0", "none", "off"):
            return None
        return env if _version(env) else None
    exe = shutil.which("ffmpeg")
    if exe is None:
        return None
    version = _version(exe)
    # Debian spells it "5.1.9-0+deb12u1"; builds from git say "n5.1.x".
    if version.lstrip("n").startswith(REFERENCE_FFMPEG_VERSION + "."):
        return exe
    log.debug("ffmpeg %s at %s is not %s.x: not used for exact decoding", version, exe, REFERENCE_FFMPEG_VERSION)
    return None


class FfmpegPipeSource:
    """Runs the reference's ffmpeg command and reads its rgb24 pipe in chunks; sequential only.

    ``index`` is unknown before the end (ffmpeg decides the frame count); ``expected_frames``
    is the container's estimate, for information only.
    """

    name = "ffmpeg"

    def __init__(self, path: str, size: int, out_fps: int, ffmpeg: str, *,
                 fps_in: float = 0.0, source_frames: int = 0, expected_frames: int = 0) -> None:
        self.path, self.size, self.out_fps, self.ffmpeg = path, size, out_fps, ffmpeg
        self.fps_in, self.source_frames = fps_in, source_frames
        self.index = np.zeros(expected_frames, dtype=np.int64)  # placeholder: length = estimate
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._killed = False

    def command(self) -> list[str]:
        """The reference's argument list (spec 2.1); logging options do not change the frames."""
        # An absolute path cannot be mistaken for a protocol ("x:...") or an option ("-x").
        return [self.ffmpeg, "-loglevel", "error", "-hide_banner", "-nostats", "-nostdin",
                "-i", os.path.abspath(self.path), "-s", f"{self.size}:{self.size}", "-an",
                "-f", "rawvideo", "-c:v", "rawvideo", "-pix_fmt", "rgb24", "-r", str(self.out_fps), "pipe:1"]

    def chunks(self, chunk_frames: int) -> Iterator[np.ndarray]:
        frame_bytes = self.size * self.size * 3
        want = chunk_frames * frame_bytes
        with self._lock:
            if self._killed:
                return
            proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, bufsize=0)
            self._proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        tail: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        drain = threading.Thread(target=_drain, args=(proc.stderr, tail), daemon=True,
                                 name=f"ffmpeg-stderr:{os.path.basename(self.path)}")
        drain.start()
        try:
            while True:
                buf = bytearray(want)
                view, got = memoryview(buf), 0
                while got < want:
                    n = proc.stdout.readinto(view[got:])
                    if not n:
                        break
                    got += n
                if got % frame_bytes:
                    proc.wait()
                    drain.join(5)
                    raise DecodeError(self.path, _reason(tail, proc.returncode, "partial frame at end of ffmpeg output"))
                if got:
                    yield np.frombuffer(buf, dtype=np.uint8, count=got).reshape(-1, self.size, self.size, 3)
                if got < want:
                    break
            rc = proc.wait()
            drain.join(5)
            if rc != 0 and not self._killed:
                # The reference fails the whole hash when ffmpeg fails (spec 2.1).
                raise DecodeError(self.path, _reason(tail, rc, f"ffmpeg exited with status {rc}"))
        finally:
            self.close()

    def close(self) -> None:
        """Stop ffmpeg (safe from any thread; a decode timeout uses it to unblock the reader)."""
        with self._lock:
            self._killed = True
            proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()


def _drain(stream: object, tail: collections.deque[str]) -> None:
    for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
        line = raw.decode(errors="replace").strip()
        if line:
            tail.append(line)
    stream.close()  # type: ignore[attr-defined]


def _reason(tail: collections.deque[str], rc: int | None, default: str) -> str:
    """ffmpeg's most telling stderr line (its last one usually repeats the cause)."""
    lines = [ln for ln in tail if not ln.startswith("Conversion failed")]
    if lines:
        # "[mov,mp4 @ 0x...] moov atom not found" -> "moov atom not found"
        return "ffmpeg: " + _one_line(re.sub(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*", "", lines[-1]))
    return default
