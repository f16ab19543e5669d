"""Letterbox, pillarbox and window-box borders: detection while hashing, and the cropped signature.

Detection is fed by the 64x64 frames the hasher already decodes (``BorderDetector.update``):
over the whole video it keeps each pixel's temporal minimum, maximum and mean.  A band of rows
(or columns) from an edge inward is a border when every row in it is

* stable over the video: nearly every pixel's temporal range is small (bars do not change);
* flat across the frame: its mean colour varies little along the row (bars are one colour, of
  any colour);
* the colour of the outermost row (one band, not a gradient or a picture edge).

A band needs at least ``min_band`` of the 64 rows, and the content left inside must change over
time (mean temporal range >= ``min_activity``): a static or flat video, or a dark scene, gives
no evidence of bars, so nothing is detected there.  Dark *scenes* are not taken for bars because
the rows they darken do change over the video.

Where borders are found the edges are refined on a few key frames decoded at 256x256 by the
system ffmpeg (the 64x64 frames blur each edge over about two rows), and the content inside is
hashed again through ffmpeg: ``crop=...`` then the reference arguments (``-s 64:64 -pix_fmt rgb24
-r 15``).  This second decode costs only videos with borders.  The cropped signature is not a
reference hash (the reference has no crop); the main signature stays byte-identical.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from engine.decode import DecodeError
from engine.features import Signatures, TmkFeatures

log = logging.getLogger(__name__)

#: Rows / columns of the frames the detector sees (the hasher's 64x64).
GRID = 64
#: Resolution of the key frames used to refine the edges.
FINE = 256


@dataclass(frozen=True)
class Borders:
    """Fractions of the frame height (top, bottom) and width (left, right) covered by borders,
    and the border colour (mean RGB of the bands)."""

    top: float
    bottom: float
    left: float
    right: float
    colour: tuple[int, int, int] = (0, 0, 0)

    @property
    def kind(self) -> str:
        v, h = self.top + self.bottom > 0, self.left + self.right > 0
        return "window-box" if v and h else "letterbox" if v else "pillarbox" if h else "none"

    def crop_filter(self) -> str:
        """The ffmpeg ``crop`` filter keeping what is inside the borders (sizes in iw/ih units)."""
        w, h = 1.0 - self.left - self.right, 1.0 - self.top - self.bottom
        return f"crop=w=iw*{w:.6f}:h=ih*{h:.6f}:x=iw*{self.left:.6f}:y=ih*{self.top:.6f}"

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "top": round(self.top, 5), "bottom": round(self.bottom, 5),
                "left": round(self.left, 5), "right": round(self.right, 5), "colour": list(self.colour)}


@dataclass
class DetectorSettings:
    """Thresholds of the detector (8-bit levels, rows of the 64x64 grid)."""

    max_range: float = 24.0      # a border pixel's temporal max - min (compression noise, scaling)
    range_quantile: float = 0.9  # ... for this fraction of the row's pixels
    max_spread: float = 8.0      # std of the row's mean colour along the row
    max_colour_diff: float = 16.0  # colour difference to the outermost row of the band
    min_band: int = 2            # rows (of 64): thinner bands are picture edges, not borders
    min_inside: int = 16         # rows / columns of content that must remain
    min_activity: float = 20.0   # mean temporal range inside: the content must change over time
    min_frames: int = 2


class BorderDetector:
    """Accumulates per-pixel temporal statistics of uint8 RGB frames [n, H, W, 3]; then ``detect``."""

    def __init__(self, settings: DetectorSettings | None = None) -> None:
        self.s = settings or DetectorSettings()
        self.n = 0
        self._min: np.ndarray | None = None
        self._max: np.ndarray | None = None
        self._sum: np.ndarray | None = None

    def update(self, frames: np.ndarray) -> None:
        if len(frames) == 0:
            return
        lo, hi = frames.min(0), frames.max(0)
        sm = frames.sum(0, dtype=np.float64)
        if self._min is None:
            self._min, self._max, self._sum = lo, hi, sm
        else:
            np.minimum(self._min, lo, out=self._min)
            np.maximum(self._max, hi, out=self._max)
            self._sum += sm
        self.n += len(frames)

    def _band(self, rng: np.ndarray, mean: np.ndarray) -> int:
        """Border rows from row 0 of (rows-first) range [R, C] and mean [R, C, 3] arrays."""
        s = self.s
        ref = mean[0].mean(0)
        n = 0
        for r in range(rng.shape[0]):
            stable = np.quantile(rng[r], s.range_quantile) <= s.max_range
            flat = float(mean[r].std(0).max()) <= s.max_spread
            same = float(np.abs(mean[r].mean(0) - ref).max()) <= s.max_colour_diff
            if not (stable and flat and same):
                break
            n += 1
        return n if n >= s.min_band else 0

    def detect_rows(self) -> tuple[int, int, int, int, tuple[int, int, int]] | None:
        """(top, bottom, left, right) border rows/columns on the frame grid and the colour, or None.

        Bands are peeled repeatedly: bars of one colour around a picture that has bars of its own
        (a letterboxed copy of a pillarboxed film) are found as two nested layers."""
        s = self.s
        if self.n < s.min_frames or self._min is None:
            return None
        rng = (self._max.astype(np.int16) - self._min.astype(np.int16)).max(2).astype(np.float32)  # [H, W]
        mean = (self._sum / self.n).astype(np.float32)                                               # [H, W, 3]
        h, w = rng.shape
        t = b = l = r = 0
        bands: list[np.ndarray] = []
        for _ in range(4):
            # the row next to a band mixes bar and picture (scaling): leave it out of the next layer
            pt, pb, pl, pr = (int(x > 0) for x in (t, b, l, r))
            R, M = rng[t + pt:h - b - pb, l + pl:w - r - pr], mean[t + pt:h - b - pb, l + pl:w - r - pr]
            if R.shape[0] < s.min_inside or R.shape[1] < s.min_inside:
                return None                  # (nearly) the whole frame is "border": flat or static video
            nt = self._band(R, M)
            nb = self._band(R[::-1], M[::-1])
            nl = self._band(R.T, M.transpose(1, 0, 2))
            nr = self._band(R.T[::-1], M.transpose(1, 0, 2)[::-1])
            if not (nt or nb or nl or nr):
                break
            hh, ww = R.shape
            bands += [x.reshape(-1, 3) for x, k in ((M[:nt], nt), (M[hh - nb:], nb), (M[:, :nl], nl),
                                                     (M[:, ww - nr:], nr)) if k]
            t, b, l, r = (x + n + (p if n else 0) for x, n, p in ((t, nt, pt), (b, nb, pb), (l, nl, pl), (r, nr, pr)))
        if not (t or b or l or r):
            return None
        if h - t - b < s.min_inside or w - l - r < s.min_inside:
            return None
        inside = rng[t:h - b, l:w - r]
        if float(inside.mean()) < s.min_activity:
            return None                      # static content: no evidence that the bands are bars
        colour = np.concatenate(bands).mean(0)
        return t, b, l, r, tuple(int(round(c)) for c in colour)

    def detect(self) -> Borders | None:
        """Coarse borders (multiples of 1/64), or None."""
        r = self.detect_rows()
        if r is None:
            return None
        t, b, l, rt, colour = r
        return Borders(t / GRID, b / GRID, l / GRID, rt / GRID, colour)


def find_ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if not exe:
        raise FileNotFoundError("border signatures need the ffmpeg executable on PATH")
    return exe


def key_frames(path: str | os.PathLike[str], size: int = FINE, limit: int = 16,
               ffmpeg: str | None = None, timeout_s: float = 120.0) -> np.ndarray:
    """Up to ``limit`` key frames as grey [k, size, size] uint8 (only key frames are decoded)."""
    cmd = [ffmpeg or find_ffmpeg(), "-nostdin", "-v", "error", "-skip_frame", "nokey", "-i", os.fspath(path),
           "-an", "-vsync", "0", "-frames:v", str(limit), "-vf", f"scale={size}:{size}:flags=area,format=gray",
           "-f", "rawvideo", "pipe:1"]
    r = subprocess.run(cmd, capture_output=True, timeout=timeout_s)
    if r.returncode != 0:
        return np.zeros((0, size, size), np.uint8)
    n = len(r.stdout) // (size * size)
    return np.frombuffer(r.stdout[: n * size * size], np.uint8).reshape(n, size, size)


def _fine_edge(frames: np.ndarray, coarse: int, tol: float = 12.0, spread: float = 8.0) -> int:
    """First non-border row (of FINE) scanning from inside a coarse band of ``coarse`` rows of 64.

    frames [k, FINE, FINE] with the band at the top.  The border level is measured inside the
    band; a row is border when, in every frame, its mean is within ``tol`` of it and its std
    along the row is at most ``spread``."""
    f = FINE // GRID
    inner = max(0, coarse * f - 2 * f)              # well inside the coarse band
    level = float(np.median(frames[:, max(0, inner - 2 * f): max(1, inner)]))   # the innermost layer's level
    y = inner
    stop = min(frames.shape[1] // 2, (coarse + 3) * f)
    while y < stop:
        row = frames[:, y].astype(np.float32)
        if np.any(np.abs(row.mean(1) - level) > tol) or np.any(row.std(1) > spread):
            break
        y += 1
    return y


def refine(path: str | os.PathLike[str], coarse: Borders, ffmpeg: str | None = None) -> Borders:
    """Edges at 1/256 from key frames; the coarse edges where no key frame could be decoded."""
    fr = key_frames(path, ffmpeg=ffmpeg)
    if len(fr) == 0:
        return coarse
    f = FINE // GRID
    # each edge is scanned across the span between the perpendicular borders only (nested bars)
    r0, r1 = int(round(coarse.top * GRID)) * f + f, FINE - int(round(coarse.bottom * GRID)) * f - f
    c0, c1 = int(round(coarse.left * GRID)) * f + f, FINE - int(round(coarse.right * GRID)) * f - f
    cols, rows = fr[:, :, c0:c1], fr[:, r0:r1, :]
    views = {"top": cols, "bottom": cols[:, ::-1], "left": rows.transpose(0, 2, 1),
             "right": rows.transpose(0, 2, 1)[:, ::-1]}
    out = {}
    for side, v in views.items():
        c = int(round(getattr(coarse, side) * GRID))
        # one row of margin inward: the mixed row at the edge goes with the border
        out[side] = 0.0 if c == 0 else min((_fine_edge(v, c) + 1) / FINE, 0.45)
    return Borders(out["top"], out["bottom"], out["left"], out["right"], coarse.colour)


def cropped_frames(path: str | os.PathLike[str], box: Borders, size: int = 64, fps: int = 15,
                   chunk_frames: int = 256, ffmpeg: str | None = None) -> Iterator[np.ndarray]:
    """Frames of the content inside ``box``: ffmpeg ``-vf crop`` then the reference arguments."""
    cmd = [ffmpeg or find_ffmpeg(), "-nostdin", "-v", "error", "-i", os.fspath(path), "-vf", box.crop_filter(),
           "-s", f"{size}:{size}", "-an", "-f", "rawvideo", "-c:v", "rawvideo", "-pix_fmt", "rgb24",
           "-r", str(fps), "pipe:1"]
    frame = size * size * 3
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        while True:
            data = proc.stdout.read(frame * chunk_frames)
            if not data:
                break
            n = len(data) // frame
            if n:
                yield np.frombuffer(data[: n * frame], np.uint8).reshape(n, size, size, 3).copy()
        err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
        if proc.wait() != 0:
            raise DecodeError(path, f"cropped decode failed ({err.splitlines()[-1] if err else 'ffmpeg error'})")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class BorderHasher:
    """A VideoHasher that also returns the border-cropped signature: ``hash`` -> Signatures.

    The main signature is exactly the wrapped hasher's (same frames, same `.tmk` bytes).
    ``last_borders`` holds what the last call detected (None: no borders)."""

    def __init__(self, hasher, settings: DetectorSettings | None = None, ffmpeg: str | None = None) -> None:
        self.hasher, self.settings, self.ffmpeg = hasher, settings, ffmpeg
        self.params = hasher.params
        self.last_borders: Borders | None = None

    @property
    def mode(self) -> str:
        return self.hasher.mode

    def hash(self, path: str | os.PathLike[str], progress=None) -> Signatures:
        det = BorderDetector(self.settings)
        main = self.hasher.hash(path, progress, on_chunk=det.update)
        self.last_borders = None
        coarse = det.detect()
        if coarse is None:
            return Signatures(main)
        try:
            box = refine(path, coarse, self.ffmpeg)
            crop = self.hasher.hash_frames(cropped_frames(path, box, self.params.frame_size, self.params.fps,
                                                          ffmpeg=self.ffmpeg), main.name)
        except (FileNotFoundError, subprocess.TimeoutExpired) as e:
            raise DecodeError(path, f"border signature: {e}") from None
        self.last_borders = box
        log.info("%s: %s %s", path, box.kind, box.as_dict())
        return Signatures(main, crop if crop.frame_count else None)


def hash_signatures(path: str | os.PathLike[str], hasher) -> tuple[Signatures, Borders | None]:
    """Convenience: main and border signatures of one video with a VideoHasher."""
    bh = BorderHasher(hasher)
    s = bh.hash(Path(path))
    return s, bh.last_borders


__all__ = ["BorderDetector", "BorderHasher", "Borders", "DetectorSettings", "TmkFeatures", "cropped_frames",
           "hash_signatures", "refine"]
