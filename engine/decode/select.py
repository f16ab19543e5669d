"""Which source frames the reference's ``ffmpeg -r 15`` emits (spec 2.3), from frame timestamps.

ffmpeg 5.1's constant-frame-rate output vsync, reproduced online (``_CfrSync``, one source
timestamp at a time, for streaming decoders) and over a whole timestamp array
(:func:`select_frames`, for random-access decoders).
"""
from __future__ import annotations

import math

import numpy as np

from kernels.params import DEFAULT_PARAMS

__all__ = ["select_frames"]

#: ffmpeg's CFR vsync thresholds (fftools/ffmpeg.c 5.1 ``do_video_out``): a source frame
#: further than this many output ticks behind is dropped, ahead is duplicated.
_VSYNC_DROP = -1.1
_VSYNC_DUP = 1.1
#: ffmpeg subtracts this from the drift before rounding the previous-frame repeat count.
_VSYNC_PREV_BIAS = 0.6
#: ffmpeg keeps this many previous-frame repeat counts; their median pads the end of stream.
_VSYNC_HISTORY = 3
#: ffmpeg computes the source time in output ticks with this many extra fractional bits
#: (at most) and then nudges it by half of one such unit "to avoid exact midpoints"
#: (fftools ``adjust_frame_pts_to_encoder_tb``); reproducing it makes the selection immune to
#: the float32 rounding of decord's timestamps.
_PTS_EXTRA_BITS_MAX = 16
_PTS_EXTRA_BITS_BASE = 29

def _lrintf(x: float) -> int:
    """C ``llrintf``: round to float32, then to the nearest integer, ties to even."""
    return int(np.rint(np.float32(x)))


class _CfrSync:
    """ffmpeg 5.1 ``-r`` output vsync (spec 2.3), fed one source timestamp at a time.

    Online so that a streaming decoder (PyAV) can select frames as they are decoded,
    exactly like the ffmpeg CLI does.

    The duration of a frame, in output ticks, is what ffmpeg 5.1's ``do_video_out`` uses:
    ``lrintf(pkt_duration * out_fps)`` when that is positive (no user filtergraph), else the
    filter graph's frame rate capped at one tick, ``min(out_fps / fps_in, 1)``. Without a
    per-frame duration the nominal ``1 / fps_in`` is assumed, which gives the spec 2.3 rule.
    Per-frame durations matter for variable frame rate and for containers whose time base
    rounds the duration (Matroska's 1 ms: 29.97 fps frames last 33 ms, 0.495 ticks -> 0).
    """

    def __init__(self, fps_in: float, out_fps: int, *, round_duration: bool = True) -> None:
        if not out_fps > 0:
            raise ValueError(f"out_fps must be positive, got {out_fps}")
        self.out_fps = out_fps
        d = out_fps / fps_in if fps_in > 0 and math.isfinite(fps_in) else 1.0
        # Without a user filtergraph ffmpeg 5.1 replaces the duration by its rounding if > 0
        # (ffmpeg >= 6 keeps d unrounded: round_duration=False emulates that, for tests).
        rounded = _lrintf(d)
        self.duration = float(rounded) if rounded > 0 and round_duration else d
        self.round_duration = round_duration
        self._graph_duration = min(d, 1.0)
        bits = min(max(_PTS_EXTRA_BITS_BASE - (int(out_fps).bit_length() - 1), 0), _PTS_EXTRA_BITS_MAX)
        self._scale = float(1 << bits)
        self._nudge = 1.0 / (1 << (bits + 1))
        self.emitted = 0
        self.frames_seen = 0
        self.start: float | None = None
        self.history = [0] * _VSYNC_HISTORY

    def frame_duration(self, duration: float | None) -> float:
        """Duration in output ticks of a frame whose packet lasts ``duration`` seconds."""
        if duration is None or not self.round_duration or not math.isfinite(duration):
            return self.duration
        rounded = _lrintf(duration * self.out_fps)
        return float(rounded) if rounded > 0 else self._graph_duration

    def push(self, t: float, duration: float | None = None) -> tuple[int, int]:
        """Source frame at time ``t`` seconds (packet duration ``duration`` seconds, if known)
        -> (copies of the previous frame, total emitted)."""
        if self.start is None:
            self.start = t
        delta0 = self._ticks(t - self.start) - self.emitted
        delta = delta0 + self.frame_duration(duration)
        if delta0 < 0 < delta:
            delta0 = 0.0
        nb, nb0 = 1, 0
        if delta < _VSYNC_DROP:
            nb = 0
        elif delta > _VSYNC_DUP:
            nb = _lrintf(delta)
            if delta0 > _VSYNC_DUP:
                nb0 = min(_lrintf(delta0 - _VSYNC_PREV_BIAS), nb)
        self.history = [nb0] + self.history[:-1]
        self.emitted += nb
        self.frames_seen += 1
        return nb0, nb

    def _ticks(self, seconds: float) -> float:
        """Source time in output ticks exactly as ffmpeg computes ``float_pts``."""
        q = seconds * self.out_fps * self._scale
        q = math.floor(abs(q) + 0.5) * (1 if q >= 0 else -1)  # av_rescale_q: half away from 0
        x = q / self._scale
        return x + (self._nudge if x > 0 else -self._nudge)  # FFSIGN(0) is -1

    def flush(self) -> int:
        """End of stream: how many extra copies of the last frame ffmpeg appends."""
        if self.start is None:
            return 0
        nb = sorted(self.history)[len(self.history) // 2]
        self.emitted += nb
        return nb


def select_frames(pts: np.ndarray, fps_in: float, out_fps: int = DEFAULT_PARAMS.fps,
                  durations: np.ndarray | None = None) -> np.ndarray:
    """Source frame index of every output frame of ``ffmpeg -r out_fps`` (spec 2.3).

    ``pts`` are the source frames' start times in seconds, in presentation order;
    ``durations`` their packet durations in seconds (``None``: nominal ``1 / fps_in``;
    entries <= 0: unknown), see :class:`_CfrSync`.
    Indices are non-decreasing and may repeat (duplicated frames). Times are quantized and
    nudged as ffmpeg does (``_CfrSync._ticks``) so exact ties such as 10 fps' Δ = 1.5 round
    the same way whether ``pts`` are exact (PyAV) or float32 (decord).
    """
    sync = _CfrSync(fps_in, out_fps)
    times = np.asarray(pts, dtype=np.float64).ravel()
    durs = None if durations is None else np.asarray(durations, dtype=np.float64).ravel()
    if durs is not None and len(durs) != len(times):
        raise ValueError(f"{len(durs)} durations for {len(times)} timestamps")
    # Built in an int64 array grown by doubling, not a Python list (8 bytes per output frame).
    out = np.empty(max(16, len(times)), dtype=np.int64)
    fill = 0

    def put(value: int, count: int) -> None:
        nonlocal out, fill
        if fill + count > len(out):
            out = np.resize(out, max(2 * len(out), fill + count))
        out[fill:fill + count] = value
        fill += count

    for n in range(len(times)):
        d = None if durs is None or not durs[n] > 0 else float(durs[n])
        nb0, nb = sync.push(float(times[n]), d)
        if nb0:
            put(max(n - 1, 0), nb0)
        if nb > nb0:
            put(n, nb - nb0)
    if n_frames := sync.frames_seen:
        put(n_frames - 1, sync.flush())  # ffmpeg repeats the last *source* frame
    return out[:fill].copy()
