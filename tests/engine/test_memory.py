"""Resident memory does not grow with video length (issue 8): a 60-minute tiny video vs 1 minute.

Each hash runs in a fresh Python process (the API, ``VideoHasher.hash``) that reports its own
peak RSS, so the two figures are comparable and not polluted by the test process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.oracle import Oracle

REPO = Path(__file__).resolve().parents[2]
#: Allowed peak-RSS difference between the 60-minute and the 1-minute video (issue 8).
MAX_GROWTH_MB = 50.0

CHILD = """
import json, resource, sys
from engine.hasher import VideoHasher
h = VideoHasher(mode="fast", device="cpu", torch_threads=1)
f = h.hash(sys.argv[1])
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "frames": f.frame_count, "backend": h.last_stats.info.backend}))
"""


def _peak(video: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", CHILD, str(video)], capture_output=True, text=True, env=env,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tiny_videos(oracle: Oracle, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """32x32 testsrc at 5 fps (each source frame is 3 output frames): 1 and 60 minutes."""
    d = tmp_path_factory.mktemp("memory")
    out = {}
    for minutes in (1, 60):
        p = d / f"tiny-{minutes}min.mp4"
        subprocess.run([oracle.ffmpeg, "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i",
                        f"testsrc=size=32x32:rate=5:duration={minutes * 60}", "-c:v", "libx264",
                        "-preset", "ultrafast", "-g", "250", str(p)], check=True, capture_output=True)
        out[minutes] = p
    return out


def test_rss_flat_in_video_length(tiny_videos: dict[int, Path]) -> None:
    short, long = _peak(tiny_videos[1]), _peak(tiny_videos[60])
    assert abs(short["frames"] - 60 * 15) <= 5 and abs(long["frames"] - 3600 * 15) <= 5
    growth = long["rss_mb"] - short["rss_mb"]
    assert growth <= MAX_GROWTH_MB, (
        f"peak RSS {short['rss_mb']:.0f} MB for 1 min ({short['backend']}) vs {long['rss_mb']:.0f} MB "
        f"for 60 min ({long['backend']})")
