"""engine.decode: the per-input decoder choice, the ffmpeg pipe (the reference's command), and the
frame selection with per-frame packet durations (ffmpeg 5.1 ``do_video_out``)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from engine import decode as decode_mod
from engine.decode import DecodeError, DecodeTimeout, VideoDecoder, decode_frames, select_frames
from engine.decode import choose
from engine.decode.ffmpeg_pipe import find_ffmpeg
from engine.decode.select import _CfrSync
from tests.oracle import Oracle


def _make(oracle: Oracle, out: Path, *args: str) -> Path:
    import subprocess

    subprocess.run([oracle.ffmpeg, "-v", "error", "-nostdin", "-y", *args, str(out)], check=True, capture_output=True)
    return out


def _src(size: str = "64x48", rate: str = "30", dur: float = 2.0) -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={dur}"]


X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]


@pytest.fixture(scope="module")
def clips(oracle: Oracle, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("choice")
    c = {
        "mp4": _make(oracle, d / "a.mp4", *_src(), *X264),
        "ts": _make(oracle, d / "a.ts", *_src(), "-c:v", "mpeg2video"),
        "webm": _make(oracle, d / "a.webm", *_src(), "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8"),
        "mkv2997": _make(oracle, d / "b.mkv", *_src(rate="30000/1001", dur=3.0), *X264),
        "vfr": _make(oracle, d / "vfr.mp4", *_src(dur=3.0), "-vf",
                     "setpts='if(gte(N,20),PTS+round(0.9/TB),PTS)'", "-fps_mode", "passthrough", *X264),
    }
    c["trim"] = _make(oracle, d / "trim.mp4", "-ss", "0.5", "-i", str(c["mp4"]), "-c", "copy")
    return c


def test_choice_follows_measured_facts(clips: dict[str, Path]) -> None:
    expect = {"mp4": "decord", "mkv2997": "decord", "vfr": "decord", "ts": "ffmpeg", "webm": "ffmpeg", "trim": "ffmpeg"}
    for key, backend in expect.items():
        with VideoDecoder(clips[key]) as dec:
            assert dec.info.backend == backend, (key, dec.info.reason)
            assert (dec.info.reason == "") == (backend == "decord")
    with VideoDecoder(clips["ts"]) as dec:
        assert "mpegts" in dec.info.reason
    with VideoDecoder(clips["trim"]) as dec:
        assert "edit list" in dec.info.reason


@pytest.mark.parametrize("key", ["mp4", "ts", "webm", "mkv2997", "vfr", "trim"])
def test_every_backend_choice_equals_the_reference_pipe(oracle: Oracle, clips: dict[str, Path], key: str) -> None:
    ref = np.frombuffer(oracle.pipe_frames(clips[key]), np.uint8).reshape(-1, 64, 64, 3)
    assert np.array_equal(decode_frames(clips[key], chunk_frames=7), ref)
    assert np.array_equal(decode_frames(clips[key], backend="ffmpeg", chunk_frames=7), ref)


@pytest.mark.parametrize("key", ["mkv2997", "vfr"])
def test_per_frame_durations_fix_decord_and_pyav(oracle: Oracle, clips: dict[str, Path], key: str) -> None:
    """Matroska 29.97 fps (33 ms packets) and VFR MP4: the selection needs the packet durations."""
    ref = np.frombuffer(oracle.pipe_frames(clips[key]), np.uint8).reshape(-1, 64, 64, 3)
    assert np.array_equal(decode_frames(clips[key], backend="decord"), ref)
    assert np.array_equal(decode_frames(clips[key], backend="pyav"), ref)


def test_duration_rule_of_ffmpeg_51() -> None:
    # 30 fps nominal: lrintf(0.5) = 0 -> the graph rate, 0.5 ticks
    assert _CfrSync(30.0, 15).frame_duration(None) == 0.5
    # Matroska 29.97: 33 ms packets round to 0 ticks -> min(15/29.97, 1); nominal would be 1
    s = _CfrSync(30000 / 1001, 15)
    assert s.frame_duration(None) == 1.0
    assert s.frame_duration(0.033) == pytest.approx(15 * 1001 / 30000)
    assert s.frame_duration(0.034) == 1.0
    # a 0.9 s gap lasts lrintf(13.5) = 14 ticks
    assert s.frame_duration(0.9) == 14.0
    # the durations change which frames are kept
    t = np.round(np.arange(90) * 1001 / 30) / 1000  # 1 ms time base
    with_d = select_frames(t, 30000 / 1001, 15, np.diff(np.append(t, t[-1] + 0.033)))
    assert not np.array_equal(with_d, select_frames(t, 30000 / 1001, 15))
    with pytest.raises(ValueError):
        select_frames(t, 30.0, 15, np.zeros(3))


def test_find_ffmpeg_env(monkeypatch: pytest.MonkeyPatch, oracle: Oracle) -> None:
    monkeypatch.setenv("VMATCH_FFMPEG", "none")
    assert find_ffmpeg() is None
    monkeypatch.setenv("VMATCH_FFMPEG", oracle.ffmpeg)
    assert find_ffmpeg() == oracle.ffmpeg
    monkeypatch.setenv("VMATCH_FFMPEG", "/nonexistent/ffmpeg")
    assert find_ffmpeg() is None
    monkeypatch.delenv("VMATCH_FFMPEG")
    assert find_ffmpeg() is not None  # the system 5.1 the oracle runs


def test_without_ffmpeg_backend_ffmpeg_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, clips: dict[str, Path]) -> None:
    monkeypatch.setenv("VMATCH_FFMPEG", "none")
    with pytest.raises(DecodeError, match="no ffmpeg 5.1 found"):
        VideoDecoder(clips["mp4"], backend="ffmpeg")
    with VideoDecoder(clips["ts"]) as dec:  # auto without the pipe: PyAV where decord is not exact
        assert dec.info.backend == "pyav" and "mpegts" in dec.info.reason
    with VideoDecoder(clips["trim"]) as dec:
        assert dec.info.backend == "pyav" and "edit list" in dec.info.reason
    with VideoDecoder(clips["mp4"]) as dec:
        assert dec.info.backend == "decord"


def _fake_ffmpeg(tmp_path: Path, body: str) -> str:
    exe = tmp_path / "ffmpeg"
    exe.write_text("#!/bin/sh\nif [ \"$1\" = -hide_banner ] && [ \"$2\" = -version ]; then echo 'ffmpeg version 5.1.9'; exit 0; fi\n"
                   + body + "\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(exe)


def test_ffmpeg_failure_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clips: dict[str, Path]) -> None:
    fake = _fake_ffmpeg(tmp_path, "echo '[mpegts @ 0x55d0] Packet corrupt' >&2\n"
                        "echo 'Error while decoding stream #0:0: Invalid data found' >&2\nexit 1")
    monkeypatch.setenv("VMATCH_FFMPEG", fake)
    with pytest.raises(DecodeError) as ei:
        list(VideoDecoder(clips["ts"]))
    e = ei.value
    assert e.path == str(clips["ts"]) and "\n" not in str(e)
    assert e.reason == "ffmpeg: Error while decoding stream #0:0: Invalid data found"


def test_partial_frame_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clips: dict[str, Path]) -> None:
    monkeypatch.setenv("VMATCH_FFMPEG", _fake_ffmpeg(tmp_path, "head -c 100 /dev/zero; exit 0"))
    with pytest.raises(DecodeError, match="partial frame"):
        list(VideoDecoder(clips["ts"]))


def test_timeout_kills_ffmpeg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clips: dict[str, Path]) -> None:
    pidfile = tmp_path / "pid"
    monkeypatch.setenv("VMATCH_FFMPEG", _fake_ffmpeg(tmp_path, f"echo $$ > {pidfile}; exec sleep 60"))
    with pytest.raises(DecodeTimeout):
        list(VideoDecoder(clips["ts"], timeout_s=1.0))
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(pid, 0)  # still there: wait a little for the kill to land
            import time

            time.sleep(0.1)


def test_midstream_decord_failure_continues_in_the_pipe(
    monkeypatch: pytest.MonkeyPatch, oracle: Oracle, clips: dict[str, Path]
) -> None:
    expected = np.frombuffer(oracle.pipe_frames(clips["mp4"]), np.uint8).reshape(-1, 64, 64, 3)
    real = decode_mod._DecordSource.chunks

    def flaky(self: decode_mod._DecordSource, chunk_frames: int):  # type: ignore[no-untyped-def]
        it = real(self, chunk_frames)
        yield next(it)
        raise RuntimeError("Error sending packet")

    monkeypatch.setattr(decode_mod._DecordSource, "chunks", flaky)
    dec = VideoDecoder(clips["mp4"], chunk_frames=5)
    got = np.concatenate(list(dec))
    assert dec.info.backend == "ffmpeg" and "Error sending packet" in dec.info.reason
    assert np.array_equal(got, expected)


def test_long_videos_go_to_the_pipe(monkeypatch: pytest.MonkeyPatch, clips: dict[str, Path]) -> None:
    monkeypatch.setattr(choose, "DECORD_MAX_SECONDS", 1.0)
    with VideoDecoder(clips["mp4"]) as dec:
        assert dec.info.backend == "ffmpeg" and "long video" in dec.info.reason
