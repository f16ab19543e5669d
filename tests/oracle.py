"""The reference tools as a test oracle: built from ../shared/reference/oracle, run with the system ffmpeg.

The reference `tmk-hash-video` runs an ffmpeg executable; Debian's ffmpeg 5.1.x makes it
reproduce every published hash byte for byte, so that is the ffmpeg the oracle requires.
The tools are built once per source tree into a cache folder (seconds with g++ and make).
Without them the oracle tests skip with the reason, unless ``VMATCH_REQUIRE_ORACLE=1``
(set by ``.ci/run``), which turns the skip into a failure so CI cannot pass silently.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

ORACLE_SUBDIR = "shared/reference/oracle"
TOOLS = ("tmk-hash-video", "tmk-two-level-score", "tmk-query", "tmk-compare-two-tmks", "tmk-clusterize")


@dataclass(frozen=True)
class Oracle:
    """Paths of the built reference tools and the ffmpeg they run."""

    bin_dir: Path
    ffmpeg: str
    ffmpeg_version: str

    def tool(self, name: str) -> Path:
        return self.bin_dir / name

    def hash_video(self, video: str | os.PathLike[str], out: str | os.PathLike[str],
                   timeout: float = 600) -> subprocess.CompletedProcess[bytes]:
        """Run the reference hasher exactly as its README says; returns the finished process."""
        return subprocess.run(
            [str(self.tool("tmk-hash-video")), "-f", self.ffmpeg, "-i", str(video), "-o", str(out)],
            capture_output=True, timeout=timeout, check=False)

    def pipe_frames(self, video: str | os.PathLike[str]) -> bytes:
        """The raw 64x64 rgb24 frames of the reference's ffmpeg command (spec 2.1)."""
        cmd = [self.ffmpeg, "-loglevel", "warning", "-hide_banner", "-nostdin", "-i", str(video),
               "-s", "64:64", "-an", "-f", "rawvideo", "-c:v", "rawvideo", "-pix_fmt", "rgb24",
               "-r", "15", "pipe:1"]
        r = subprocess.run(cmd, capture_output=True, check=True)
        return r.stdout


def oracle_src() -> Path | None:
    d = Path(__file__).resolve().parents[1].parent / ORACLE_SUBDIR
    return d if (d / "build.sh").is_file() else None


def _src_digest(src: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(src.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(src)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def ffmpeg_version(exe: str) -> str:
    r = subprocess.run([exe, "-version"], capture_output=True, text=True, check=False)
    m = re.search(r"ffmpeg version (\S+)", r.stdout)
    return m.group(1) if m else "unknown"


@lru_cache(maxsize=1)
def find_oracle() -> tuple[Oracle | None, str]:
    """The oracle, or None and the reason it is not available."""
    src = oracle_src()
    if src is None:
        return None, f"reference oracle sources not found next to the checkout ({ORACLE_SUBDIR})"
    ffmpeg = os.environ.get("VMATCH_ORACLE_FFMPEG") or shutil.which("ffmpeg")
    if not ffmpeg:
        return None, "no system ffmpeg (apt-get install -y ffmpeg)"
    version = ffmpeg_version(ffmpeg)
    if not version.startswith("5.1"):
        return None, f"system ffmpeg is {version}; the reference is defined with Debian's 5.1.x"
    if os.environ.get("VMATCH_ORACLE_DIR"):
        bin_dir = Path(os.environ["VMATCH_ORACLE_DIR"])
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vmatch-oracle"
        bin_dir = cache / _src_digest(src)
    if not all((bin_dir / t).is_file() for t in TOOLS):
        if not (shutil.which("g++") and shutil.which("make")):
            return None, "g++ and make are needed to build the reference tools"
        bin_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="build-", dir=bin_dir.parent))
        r = subprocess.run(["bash", str(src / "build.sh"), str(tmp)], capture_output=True, text=True,
                           check=False)
        if r.returncode != 0:
            return None, f"building the reference tools failed: {r.stderr.strip()[-500:]}"
        try:
            os.replace(tmp, bin_dir)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent build won
    return Oracle(bin_dir, ffmpeg, version), ""


def require_oracle() -> Oracle:
    """For fixtures: the oracle, else skip (or fail under VMATCH_REQUIRE_ORACLE=1)."""
    import pytest

    oracle, why = find_oracle()
    if oracle is None:
        if os.environ.get("VMATCH_REQUIRE_ORACLE") == "1":
            pytest.fail(f"reference oracle required but unavailable: {why}")
        pytest.skip(why)
    return oracle
