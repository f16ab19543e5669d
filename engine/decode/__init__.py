"""Video decoding to the frames the reference TMK+PDQF hasher sees (spec sections 2 and 11).

The reference hashes the frames of
``ffmpeg -i IN -s 64:64 -an -f rawvideo -pix_fmt rgb24 -r 15 pipe:1``: bicubic swscale to
64x64 (aspect ignored), display rotation applied, and ffmpeg-5.1 constant-frame-rate
duplication/dropping. Three decoders produce them:

* decord2 (in-process, random access): decodes and scales byte-identically to that pipe
  (spec 11); :func:`select_frames` reproduces the frame selection from the container's exact
  timestamps and packet durations. Used where it was measured exact (``choose``).
* the ffmpeg CLI itself (``ffmpeg_pipe``): the reference's command with the system ffmpeg
  5.1, exact by construction; used for every other input when such an ffmpeg exists.
* PyAV (in-process, sequential): the same libavfilter chain as the CLI; the fallback when
  neither of the above can read a file.

Frames are produced in bounded chunks so memory does not grow with video length.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from engine.decode import choose
from engine.decode.errors import DecodeError, DecodeTimeout, _one_line
from engine.decode.ffmpeg_pipe import FfmpegPipeSource, find_ffmpeg
from engine.decode.select import _CfrSync, select_frames
from kernels.params import DEFAULT_PARAMS

__all__ = [
    "DecodeError",
    "DecodeTimeout",
    "VideoInfo",
    "VideoDecoder",
    "decode_frames",
    "preload",
    "select_frames",
]

_T = TypeVar("_T")

log = logging.getLogger(__name__)
#: Degrees of slack ffmpeg allows when matching a display rotation to 0/90/180/270.
_ROTATION_SLACK = 1.0

BACKENDS = ("auto", "decord", "pyav", "ffmpeg")

# DecodeError / DecodeTimeout are engine.errors' (one error model); importable from here as before.


@dataclass(frozen=True)
class VideoInfo:
    """What was learned when opening a video.

    ``width``/``height`` are the coded size of the source (before rotation);
    ``source_frames`` the number of decodable-looking source frames, ``output_frames``
    the number of frames the decoder will yield (15 fps frames of the reference; for the
    ``ffmpeg`` backend an estimate from the container until the iteration has finished).
    """

    path: str
    width: int
    height: int
    fps_in: float
    source_frames: int
    output_frames: int
    backend: str
    #: why this decoder was chosen ("" for the default path)
    reason: str = ""


# --------------------------------------------------------------------------- backends


class _DecordSource:
    """decord2 reader at the output size; random access by source index."""

    name = "decord"

    def __init__(self, path: str, size: int, out_fps: int, container: Any = None,
                 facts: choose.StreamFacts | None = None, threads: int = 0) -> None:
        """``container``: the same file open in PyAV, for exact timestamps (decord's are float32);
        ``threads``: libavcodec decoding threads (0: its default, one per core)."""
        import decord  # imported lazily: heavy, and only this backend needs it

        _quiet_decord()
        self._reader: Any = decord.VideoReader(path, width=size, height=size, ctx=decord.cpu(0),
                                               num_threads=max(0, int(threads)))
        n = len(self._reader)
        self.fps_in = float(self._reader.get_avg_fps())
        pts = self._reader.get_frame_timestamp(range(n))[:, 0] if n else np.zeros(0)
        self.source_frames = n
        #: why decord's frame list cannot be trusted for this file (None: it can)
        self.mismatch: str | None = None
        if container is not None and facts is not None:
            timing = choose.exact_timing(container)
            stream = container.streams.best("video")
            start = float(stream.start_time) * facts.time_base if stream.start_time is not None else 0.0
            self.mismatch = choose.timing_reason(pts, timing, start)
            if facts.fps_guess > 0:
                self.fps_in = facts.fps_guess
            if self.mismatch is None:
                pts = timing.pts
                self.index = select_frames(timing.pts, self.fps_in, out_fps, timing.durations)
                return
        self.index = select_frames(pts, self.fps_in, out_fps)

    def chunks(self, chunk_frames: int) -> Iterator[np.ndarray]:
        for lo in range(0, len(self.index), chunk_frames):
            part = self.index[lo : lo + chunk_frames]
            uniq, inverse = np.unique(part, return_inverse=True)
            batch = self._reader.get_batch(uniq.tolist()).asnumpy()
            yield np.ascontiguousarray(batch[inverse.ravel()])

    def close(self) -> None:
        self._reader = None  # decord frees (and stops decoding ahead) on release


def _display_matrix(frame: Any) -> np.ndarray | None:
    """The frame's 3x3 display matrix (16.16 fixed point entries), if any."""
    for sd in frame.side_data:
        if getattr(sd.type, "name", "") == "DISPLAYMATRIX":
            m = np.frombuffer(bytes(sd), dtype="<i4")
            return m if m.size == 9 else None
    return None


def _rotation_filters(m: np.ndarray | None) -> list[tuple[str, str]]:
    """The filters the ffmpeg CLI inserts for a display matrix (fftools autorotate)."""
    if m is None:
        return []
    a, b, c, d = (float(m[i]) / 65536.0 for i in (0, 1, 3, 4))
    sx, sy = math.hypot(a, c), math.hypot(b, d)
    if sx == 0 or sy == 0:
        return []
    theta = -round(-math.degrees(math.atan2(b / sy, a / sx)))
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < _ROTATION_SLACK:
        return [("transpose", "cclock_flip" if m[3] > 0 else "clock")]
    if abs(theta - 180) < _ROTATION_SLACK:
        return ([("hflip", "")] if m[0] < 0 else []) + ([("vflip", "")] if m[4] < 0 else [])
    if abs(theta - 270) < _ROTATION_SLACK:
        return [("transpose", "clock_flip" if m[3] < 0 else "cclock")]
    if abs(theta) > _ROTATION_SLACK:
        return [("rotate", f"{theta:f}*PI/180")]
    return [("vflip", "")] if m[4] < 0 else []


def preload() -> None:
    """Import the in-process decoders now (a parent does this once before forking workers,
    which then start without importing them); missing ones are skipped."""
    for quiet in (_quiet_av, _quiet_decord):
        try:
            quiet()
        except ImportError:
            pass


def _quiet_decord() -> None:
    """decord prints libav warnings ("[h264 @ 0x..] ...") to stderr; errors arrive as exceptions."""
    import decord

    decord.logging.set_level(decord.logging.QUIET)


def _quiet_av() -> None:
    """Same for PyAV's libav log (PyAV >= 14 already defaults to no libav logging)."""
    import av

    av.logging.set_level(None)


def _av_reason(e: BaseException) -> str:
    """Short reason for a PyAV/FFmpeg exception."""
    import av

    if isinstance(e, av.error.InvalidDataError):
        return "not a video file (invalid data)"
    if isinstance(e, av.error.EOFError):
        return "truncated or frameless container (end of file while probing)"
    strerror = getattr(e, "strerror", None)
    return str(strerror) if strerror else f"{type(e).__name__}: {e}"


class _PyAVSource:
    """PyAV decoder running the ffmpeg CLI's filter chain; sequential only."""

    name = "pyav"

    def __init__(self, path: str, size: int, out_fps: int) -> None:
        self.path, self.size, self.out_fps = path, size, out_fps
        # Demux once (cheap, no decoding) to count frames and predict the selection.
        container, stream = self._open()
        try:
            self._time_base = stream.time_base
            self.fps_in = float(stream.guessed_rate or stream.average_rate or 0)  # ffmpeg's graph rate
            timing = choose.exact_timing(container)  # edit-list-dropped packets make no frame
        finally:
            container.close()
        self.source_frames = len(timing.pts)
        self.index = select_frames(timing.pts, self.fps_in, out_fps, timing.durations)

    def _open(self) -> tuple[Any, Any]:
        import av

        container = av.open(self.path)
        if not container.streams.video:
            container.close()
            raise DecodeError(self.path, "no video stream")
        stream = container.streams.best("video")
        # Slice (not frame) threading: with frame threads PyAV silently loses the frames
        # around a corrupt packet, whereas the ffmpeg CLI keeps them (truncated files).
        stream.thread_type = "SLICE"
        return container, stream

    def _graph(self, frame: Any) -> Any:
        import av

        graph = av.filter.Graph()
        chain = [
            graph.add_buffer(
                width=frame.width, height=frame.height, format=frame.format, time_base=self._time_base
            )
        ]
        for name, args in _rotation_filters(_display_matrix(frame)):
            chain.append(graph.add(name, args) if args else graph.add(name))
        chain.append(graph.add("scale", f"{self.size}:{self.size}:flags=bicubic"))
        chain.append(graph.add("format", "pix_fmts=rgb24"))
        chain.append(graph.add("buffersink"))
        for a, b in zip(chain, chain[1:]):
            a.link_to(b)
        graph.configure()
        return graph

    def _frames(self) -> Iterator[tuple[float, float, Any]]:
        """Decoded frames as (time, packet duration in seconds, VideoFrame); decode errors skip
        the packet like ffmpeg."""
        import av

        container, stream = self._open()
        try:
            tb = float(stream.time_base)
            packets = container.demux(stream)
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except av.error.FFmpegError:
                    break  # truncated/corrupt container: keep what decoded so far
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError:
                    continue
                for f in decoded:
                    if f.pts is not None:
                        yield f.pts * tb, (f.duration or 0) * tb, f
        finally:
            container.close()

    def chunks(self, chunk_frames: int) -> Iterator[np.ndarray]:
        buf = np.empty((chunk_frames, self.size, self.size, 3), dtype=np.uint8)
        fill = 0
        sync = _CfrSync(self.fps_in, self.out_fps)
        graph: Any = None
        key: Any = None
        # The previous *source* frame (ffmpeg repeats it even if it was dropped), converted lazily.
        prev: Any = None
        prev_img: np.ndarray | None = None

        def convert(frame: Any) -> np.ndarray:
            nonlocal graph, key
            m = _display_matrix(frame)
            fkey = (frame.width, frame.height, frame.format.name, None if m is None else m.tobytes())
            if graph is None or fkey != key:
                # Re-create the chain on format changes, as the ffmpeg CLI reconfigures its graph.
                graph, key = self._graph(frame), fkey
            graph.push(frame)
            return graph.pull().to_ndarray()

        def emit(img: np.ndarray, count: int) -> Iterator[np.ndarray]:
            nonlocal fill
            for _ in range(count):
                buf[fill] = img
                fill += 1
                if fill == chunk_frames:
                    yield buf.copy()
                    fill = 0

        for t, dur, frame in self._frames():
            nb0, nb = sync.push(t, dur if dur > 0 else None)
            if prev is None:
                nb0 = 0  # nothing to repeat yet: select_frames uses frame 0 too
            if nb0:
                if prev_img is None:
                    prev_img = convert(prev)
                yield from emit(prev_img, nb0)
            img = convert(frame) if nb > nb0 else None
            if img is not None:
                yield from emit(img, nb - nb0)
            prev, prev_img = frame, img
        if prev is not None:
            extra = sync.flush()
            if extra:
                yield from emit(prev_img if prev_img is not None else convert(prev), extra)
        if fill:
            yield buf[:fill].copy()

    def close(self) -> None:
        pass  # containers are opened and closed inside each pass


# --------------------------------------------------------------------------- decoder


class VideoDecoder:
    """Streams a video's reference frames (uint8 ``[n, size, size, 3]`` chunks, RGB).

    Opening happens here and raises :class:`DecodeError` with a one-line reason.
    ``backend="auto"`` picks the decoder per input from measured facts (``choose``): decord
    where it is exact, else the reference's ffmpeg command when a system ffmpeg 5.1 is found
    (``find_ffmpeg``), else decord anyway; if decord cannot open the file or fails while
    decoding, decoding restarts in the ffmpeg pipe (or PyAV without one) and continues after
    the frames already yielded (``info`` is updated). ``backend`` ``decord``, ``pyav`` or
    ``ffmpeg`` forces one decoder. ``timeout_s`` bounds the whole decode, opening
    included: every blocking library call runs in a daemon worker thread awaited with the
    time left; on expiry :class:`DecodeTimeout` is raised and the stuck thread is abandoned
    (it cannot be killed; being a daemon it does not keep the process alive; an ffmpeg
    process is killed).
    A decoder can be iterated once; iterate it fully or ``close()`` it (or use ``with``) so
    decord stops decoding ahead.
    ``threads`` sets decord's libavcodec threads (0: its default; 1 saves the threads'
    overhead, 5-10% of the CPU, where other videos are decoded at the same time); the ffmpeg
    pipe always runs the reference's command as it is.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        size: int = DEFAULT_PARAMS.frame_size,
        out_fps: int = DEFAULT_PARAMS.fps,
        chunk_frames: int = 256,
        backend: str = "auto",
        timeout_s: float | None = None,
        threads: int = 0,
    ) -> None:
        self.path = str(path)
        #: decord's decoding threads (0: one per core); 1 where other videos keep the cores busy
        self.threads = threads
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if size <= 0 or out_fps <= 0 or chunk_frames <= 0:
            raise ValueError("size, out_fps and chunk_frames must be positive")
        self.size, self.out_fps, self.chunk_frames = size, out_fps, chunk_frames
        self.backend = backend
        self.timeout_s = timeout_s
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._source: _DecordSource | _PyAVSource | FfmpegPipeSource | None = None
        self._abandoned = False
        self._used = False
        self._reason = ""
        self._facts: choose.StreamFacts | None = None
        self._ffmpeg_exe: str | None | bool = False   # looked up when first needed (False: not yet)
        self._check_path()
        width, height = self._call(self._probe)
        self._source = self._call(self._open_source)
        self.info = VideoInfo(
            path=self.path,
            width=width,
            height=height,
            fps_in=self._source.fps_in,
            source_frames=self._source.source_frames,
            output_frames=len(self._source.index),
            backend=self._source.name,
            reason=self._reason,
        )

    # -- opening

    @property
    def _ffmpeg(self) -> str | None:
        """The exact pipe's ffmpeg, found on first use: an input decord reads needs none, and
        checking the version runs ``ffmpeg -version`` (a process start per video)."""
        if self._ffmpeg_exe is False:
            self._ffmpeg_exe = find_ffmpeg() if self.backend in ("auto", "ffmpeg") else None
        return self._ffmpeg_exe  # type: ignore[return-value]

    def _check_path(self) -> None:
        p = Path(self.path)
        if not p.exists():
            raise DecodeError(self.path, "no such file")
        if p.is_dir():
            raise DecodeError(self.path, "is a directory")
        if not os.access(p, os.R_OK):
            raise DecodeError(self.path, "permission denied")
        if p.stat().st_size == 0:
            raise DecodeError(self.path, "empty file")

    def _probe(self) -> tuple[int, int]:
        """Container-level check with libavformat: clear reasons, the coded size, the facts."""
        try:
            import av
        except ImportError:
            if self.backend == "pyav":
                raise DecodeError(self.path, "PyAV (av) is not installed") from None
            return 0, 0  # decord alone will have to tell
        _quiet_av()
        try:
            container = av.open(self.path)
        except av.error.FFmpegError as e:
            raise DecodeError(self.path, _av_reason(e)) from None
        try:
            if not container.streams.video:
                raise DecodeError(self.path, "no video stream")
            self._facts = choose.probe_facts(container)
            return self._facts.width, self._facts.height
        finally:
            container.close()

    def _open_source(self) -> _DecordSource | _PyAVSource | FfmpegPipeSource:
        if self.backend == "pyav":
            return self._open_pyav()
        if self.backend == "ffmpeg":
            if self._ffmpeg is None:
                raise DecodeError(self.path, "no ffmpeg 5.1 found (install it, or set VMATCH_FFMPEG)")
            return self._open_pipe("requested")
        if self.backend == "auto" and self._facts is not None:
            why = choose.container_reason(self._facts)
            if why:
                # without the pipe, PyAV: it follows the container's timestamps and streams
                return self._open_pipe(why) if self._ffmpeg else self._open_pyav_for(why)
        try:
            source = self._open_decord()
        except Exception as e:  # decord raises DECORDError/RuntimeError with log text
            if self.backend == "decord":
                raise DecodeError(self.path, f"decord: {_one_line(e)}") from None
            if self._ffmpeg:
                return self._open_pipe(f"decord: {_one_line(e)}")
            self._reason = f"decord: {_one_line(e)}"
            return self._open_pyav()  # PyAV's reason is the clearer one if it fails too
        if source.mismatch and self.backend == "auto":
            source.close()
            return self._open_pipe(source.mismatch) if self._ffmpeg else self._open_pyav_for(source.mismatch)
        self._reason = source.mismatch or ""
        return source

    def _open_decord(self) -> _DecordSource:
        """decord, with exact timestamps from a PyAV demux pass when PyAV is there."""
        if self._facts is None:
            return _DecordSource(self.path, self.size, self.out_fps, threads=self.threads)
        import av

        container = av.open(self.path)
        try:
            return _DecordSource(self.path, self.size, self.out_fps, container, self._facts, self.threads)
        finally:
            container.close()

    def _open_pipe(self, why: str) -> FfmpegPipeSource:
        assert self._ffmpeg is not None
        f = self._facts
        expected = int(round(f.duration * self.out_fps)) if f is not None and f.duration > 0 else 0
        log.info("%s: decoding with %s (%s)", self.path, self._ffmpeg, why)
        self._reason = why
        return FfmpegPipeSource(self.path, self.size, self.out_fps, self._ffmpeg,
                                fps_in=f.fps_guess if f else 0.0, source_frames=f.frames if f else 0,
                                expected_frames=expected)

    def _open_pyav_for(self, why: str) -> _PyAVSource:
        log.info("%s: decoding with PyAV (%s; no ffmpeg 5.1 for the exact pipe)", self.path, why)
        self._reason = why
        return self._open_pyav()

    def _open_pyav(self) -> _PyAVSource:
        try:
            return _PyAVSource(self.path, self.size, self.out_fps)
        except DecodeError:
            raise
        except ImportError:
            raise DecodeError(self.path, "PyAV (av) is not installed") from None
        except Exception as e:
            import av

            reason = _av_reason(e) if isinstance(e, av.error.FFmpegError) else _one_line(e)
            raise DecodeError(self.path, reason) from None

    # -- timeout machinery

    def _remaining(self) -> float | None:
        if self._deadline is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise self._timeout()
        return left

    def _timeout(self) -> DecodeTimeout:
        self._abandoned = True
        return DecodeTimeout(self.path, f"decode timed out after {self.timeout_s:g} s")

    def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run one blocking step, in a daemon thread when a deadline is set."""
        left = self._remaining()
        if left is None:
            return fn(*args)
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["value"] = fn(*args)
            except BaseException as e:  # re-raised in the caller's thread
                box["error"] = e

        worker = threading.Thread(target=work, name=f"decode:{os.path.basename(self.path)}", daemon=True)
        worker.start()
        worker.join(left)
        if worker.is_alive():
            source, self._source = self._source, None  # owned by the stuck thread now
            if isinstance(source, FfmpegPipeSource):
                source.close()  # killing ffmpeg unblocks the thread
            raise self._timeout()
        if "error" in box:
            raise box["error"]
        return box["value"]

    # -- iteration

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._used or self._source is None:
            raise DecodeError(self.path, "decoder already consumed or closed")
        self._used = True
        return self._iterate()

    def _iterate(self) -> Iterator[np.ndarray]:
        emitted = 0
        try:
            source = self._source
            assert source is not None
            chunks = source.chunks(self.chunk_frames)
            while True:
                try:
                    chunk = self._call(next, chunks, None)
                except DecodeError:
                    raise
                except Exception as e:
                    if isinstance(source, _DecordSource) and self.backend == "auto":
                        source, chunks = self._fallback(emitted, _one_line(e))
                        continue
                    raise DecodeError(self.path, self._step_reason(e)) from None
                if chunk is None:
                    break
                emitted += len(chunk)
                yield chunk
            if emitted != self.info.output_frames:
                # Damaged file decoded partially (PyAV path), or the ffmpeg pipe's estimate.
                self.info = replace(self.info, output_frames=emitted)
        finally:
            self.close()

    def _fallback(self, emitted: int, why: str) -> tuple[_PyAVSource | FfmpegPipeSource, Iterator[np.ndarray]]:
        """decord failed mid-stream: redo the decode (ffmpeg pipe, else PyAV), skip what was yielded."""
        if self._source is not None:
            self._source.close()
        source: _PyAVSource | FfmpegPipeSource
        if self._ffmpeg:
            source = self._open_pipe(f"decord: {why}")
        else:
            self._reason = f"decord: {why}"
            source = self._call(self._open_pyav)
        self._source = source
        self.info = replace(
            self.info,
            backend=source.name,
            fps_in=source.fps_in,
            source_frames=source.source_frames,
            output_frames=len(source.index),
            reason=self._reason,
        )
        return source, _skip(source.chunks(self.chunk_frames), emitted)

    def _step_reason(self, e: BaseException) -> str:
        try:
            import av

            if isinstance(e, av.error.FFmpegError):
                return _av_reason(e)
        except ImportError:
            pass
        return _one_line(e)

    def close(self) -> None:
        """Release the reader now (decord keeps decoding ahead while a reader is alive)."""
        source, self._source = self._source, None
        if source is not None and not self._abandoned:
            source.close()

    def __enter__(self) -> VideoDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _skip(chunks: Iterator[np.ndarray], n: int) -> Iterator[np.ndarray]:
    """Drop the first ``n`` frames of a chunk stream."""
    for chunk in chunks:
        if n >= len(chunk):
            n -= len(chunk)
            continue
        yield chunk[n:]
        n = 0


def decode_frames(path: str | os.PathLike[str], **kw: Any) -> np.ndarray:
    """All output frames of a (small) video at once, ``uint8 [N, size, size, 3]``."""
    with VideoDecoder(path, **kw) as dec:
        chunks = list(dec)
        size = dec.size
    if not chunks:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    return np.concatenate(chunks)
