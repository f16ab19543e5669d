"""Which decoder is exact for an input: measured facts about the container, codec and timestamps.

decord is fast and byte-exact on the inputs listed here (docs/compatibility.md, measured
against the reference with tests/engine/test_oracle_matrix.py); elsewhere it is not:
VP9 ("Error sending packet" on some sizes), MPEG-1/2 in MPEG-TS/PS (wrong frames after its
seeks), FLV1, packed B-frames in AVI (garbage timestamps), MP4 edit lists that drop
pre-roll frames (decord returns them), streams that start after the container's other
streams. For those, the reference's own ffmpeg command (engine.decode.ffmpeg_pipe) is used.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["StreamFacts", "probe_facts", "container_reason", "exact_timing", "timing_reason"]

#: libavformat demuxers on which decord's reading was measured exact.
DECORD_CONTAINERS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"})
#: Codecs (libavcodec decoder names) decord was measured exact on, in those containers.
DECORD_CODECS = frozenset({
    "h264", "hevc", "av1", "libdav1d", "libaom-av1", "vp8", "mpeg4", "mjpeg", "prores", "ffv1",
    "dnxhd", "h263", "theora",
})
#: Longest input (seconds) given to decord: its resident memory grows with the frames it has
#: read (measured +70..130 MB over a 60-minute 320x240 file, most of it in the first 10
#: minutes) and it decodes ahead without a cap when the consumer is slower; the ffmpeg pipe
#: is flat (docs/compatibility.md, "Memory").
DECORD_MAX_SECONDS = 120.0
#: Seconds by which decord's (float32) timestamps may differ from the container's.
_TS_TOLERANCE = 2e-3


@dataclass(frozen=True)
class StreamFacts:
    """What libavformat says about an input's best video stream (no decoding)."""

    width: int
    height: int
    container: str
    codec: str
    streams: int
    time_base: float
    #: av_guess_frame_rate: the frame rate the ffmpeg CLI's filter graph gets.
    fps_guess: float
    fps_avg: float
    #: video stream start minus the container's start time, seconds (0 when unknown).
    start_offset: float
    frames: int
    duration: float


def probe_facts(container: object) -> StreamFacts:
    """Facts of an open PyAV container's best video stream."""
    stream = container.streams.best("video")  # type: ignore[attr-defined]
    cc = stream.codec_context
    tb = float(stream.time_base) if stream.time_base else 0.0
    offset = 0.0
    cstart = container.start_time  # type: ignore[attr-defined]
    if stream.start_time is not None and cstart is not None:
        offset = float(stream.start_time) * tb - float(cstart) / 1e6
    duration = float(stream.duration) * tb if stream.duration else (
        float(container.duration) / 1e6 if container.duration else 0.0)  # type: ignore[attr-defined]
    return StreamFacts(
        width=int(cc.width), height=int(cc.height),
        container=str(container.format.name),  # type: ignore[attr-defined]
        codec=str(cc.name), streams=len(container.streams),  # type: ignore[attr-defined]
        time_base=tb,
        fps_guess=float(stream.guessed_rate or stream.average_rate or 0),
        fps_avg=float(stream.average_rate or stream.guessed_rate or 0),
        start_offset=offset, frames=int(stream.frames or 0), duration=duration,
    )


def container_reason(f: StreamFacts) -> str | None:
    """Why decord is not known to be exact on this container/codec, or None."""
    if f.container not in DECORD_CONTAINERS:
        return f"container {f.container.split(',')[0]}"
    if f.codec not in DECORD_CODECS:
        return f"codec {f.codec}"
    if f.duration > DECORD_MAX_SECONDS:
        return f"long video ({f.duration:.0f} s > {DECORD_MAX_SECONDS:.0f} s): bounded memory"
    if f.streams > 1 and abs(f.start_offset) > 1e-6:
        # ffmpeg's CFR sync then counts from the container start (duplicating the first frame)
        return f"video starts {f.start_offset:+.3f} s from the container start"
    return None


@dataclass(frozen=True)
class Timing:
    """Exact presentation times and packet durations (seconds) of the frames, from the demuxer."""

    pts: np.ndarray
    durations: np.ndarray
    discarded: int


def exact_timing(container: object) -> Timing:
    """Demux (no decoding) the best video stream: pts and durations in presentation order."""
    stream = container.streams.best("video")  # type: ignore[attr-defined]
    tb = stream.time_base
    pts: list[int] = []
    dur: list[int] = []
    discarded = 0
    for p in container.demux(stream):  # type: ignore[attr-defined]
        if p.pts is None or not p.size:
            continue
        if p.is_discard:  # dropped by an edit list: ffmpeg never shows this frame
            discarded += 1
            continue
        pts.append(p.pts)
        dur.append(p.duration or 0)
    order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
    t = np.asarray(pts, dtype=np.int64)[order]
    d = np.asarray(dur, dtype=np.int64)[order]
    scale = float(tb)
    return Timing(t.astype(np.float64) * scale, d.astype(np.float64) * scale, discarded)


def timing_reason(decord_pts: np.ndarray, timing: Timing, stream_start: float) -> str | None:
    """Why decord's frame list does not match the container's frames, or None."""
    if timing.discarded:
        return f"edit list drops {timing.discarded} frames"
    if len(decord_pts) != len(timing.pts):
        return f"decord sees {len(decord_pts)} frames, the container {len(timing.pts)}"
    if len(timing.pts) > 1 and not np.all(np.diff(timing.pts) > 0):
        return "repeated or unordered timestamps"
    if len(decord_pts):
        ours = np.asarray(decord_pts, dtype=np.float64)
        theirs = timing.pts - stream_start
        if not np.all(np.isfinite(ours)) or np.max(np.abs(ours - theirs)) > _TS_TOLERANCE + 2e-7 * np.max(np.abs(theirs)):
            return "decord's timestamps disagree with the container's"
    return None
