"""engine.decode.prestart: the reference's ffmpeg command started before probing (one-video hashes)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.decode import DecodeError, VideoDecoder, decode_frames, prestart
from tests.oracle import Oracle

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clip(oracle: Oracle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prestart") / "a.mp4"
    subprocess.run([oracle.ffmpeg, "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=96x72:rate=30:duration=3", "-c:v", "libx264", "-preset", "ultrafast",
                    "-pix_fmt", "yuv420p", str(out)], check=True, capture_output=True)
    return out


def test_an_early_pipe_gives_the_frames_of_the_chosen_decoder(clip):
    pipe = prestart(clip)
    assert pipe is not None
    with VideoDecoder(clip, pipe=pipe) as dec:
        early = np.concatenate(list(dec))
        assert dec.info.backend == "ffmpeg" and "before probing" in dec.info.reason
    assert dec.info.output_frames == len(early) > 40
    assert np.array_equal(early, decode_frames(clip))           # decord, chosen for this mp4


def test_no_early_pipe_for_what_is_not_a_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert prestart(tmp_path / "empty.mp4") is None
    assert prestart(tmp_path / "missing.mp4") is None
    assert prestart(tmp_path) is None


def test_the_early_pipe_is_stopped_when_unused(clip, tmp_path):
    pipe = prestart(clip)
    VideoDecoder(clip, backend="decord", pipe=pipe).close()        # a decoder that does not take it
    assert pipe._killed and pipe._proc is None
    bad = tmp_path / "text.mp4"
    bad.write_text("not a video\n")
    pipe = prestart(bad)
    assert pipe is not None
    with pytest.raises(DecodeError, match="text.mp4: not a video file"):  # the probe's reason, as without
        VideoDecoder(bad, pipe=pipe)
    assert pipe._killed and pipe._proc is None


def test_one_video_hash_uses_the_early_pipe_and_the_same_bytes(clip, tmp_path):
    env = {"PYTHONPATH": str(ROOT)}

    def vm(*args):
        return subprocess.run([sys.executable, "-m", "engine.cli", "-v", "hash", *map(str, args)], capture_output=True,
                              text=True, cwd=ROOT, env={**os.environ, **env}, timeout=120)
    r = vm(clip, "-o", tmp_path / "one.tmk")
    assert r.returncode == 0 and "before probing" in r.stderr, r.stderr
    (tmp_path / "b.mp4").write_bytes(clip.read_bytes())
    r2 = vm(clip, tmp_path / "b.mp4", "-d", tmp_path / "d", "-j", "1")   # two inputs: no early pipe (decord)
    assert r2.returncode == 0 and "before probing" not in r2.stderr, r2.stderr
    assert (tmp_path / "one.tmk").read_bytes() == (tmp_path / "d" / "a.tmk").read_bytes()
