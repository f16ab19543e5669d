"""Shared by the benchmark scripts: the reference tools (the oracle), subprocess timing, statistics.

The reference tools are found (and built on first use) by `tests/oracle.py`, the same code the
tests use: built from ../shared/reference/oracle, run with the system ffmpeg 5.1.  Where they
cannot be had, the scripts fall back to the constants published in
../shared/reference/threatexchange/README.md and say so in their output (`reference.source`).
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.oracle import Oracle, find_oracle  # noqa: E402

#: Reference figures of ../shared/reference/threatexchange/README.md (2-core machine): fallback only.
README_FALLBACK: dict[str, Any] = {
    "hash_fps_sd": (167, 310), "hash_fps_720p": (93, 124),
    "level2_ms_per_pair_one_core": (4.6, 4.9), "load_s_per_10k_tmk_warm": (2.2, 2.9),
    "level1_per_s": (300_000, 600_000),
}
FALLBACK_NOTE = ("reference tools unavailable ({why}): ratios use the constants of "
                 "../shared/reference/threatexchange/README.md, measured on another machine, not side by side")


def oracle() -> tuple[Oracle | None, str]:
    """The built reference tools, or None and why not."""
    return find_oracle()


def vmatch_cmd(*args: object) -> list[str]:
    """The `vmatch` command of this checkout (python -m engine.cli), as a user runs it."""
    return [sys.executable, "-m", "engine.cli", *map(str, args)]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def run_timed(cmd: Sequence[object], stdin: bytes | None = None, timeout: float = 3600) -> tuple[float, bytes]:
    """Wall time of one whole process (start-up and exit included); raises if it fails."""
    t0 = time.perf_counter()
    r = subprocess.run([str(c) for c in cmd], input=stdin, capture_output=True, cwd=REPO, env=env(),
                       timeout=timeout, check=False)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))[:200]} exited {r.returncode}: "
                           f"{r.stderr.decode(errors='replace').strip()[-400:]}")
    return dt, r.stdout


def spread(xs: Sequence[float], digits: int = 4) -> dict[str, Any]:
    """Median and range of repeated measurements."""
    return {"median": round(statistics.median(xs), digits), "min": round(min(xs), digits),
            "max": round(max(xs), digits), "runs": len(xs)}


def ratio(ref: dict[str, Any], ours: dict[str, Any]) -> float:
    """Speed-up of vmatch over the reference: reference median time / vmatch median time."""
    return round(ref["median"] / ours["median"], 2)


def machine() -> dict[str, Any]:
    """What a figure was measured on, and how busy the machine was (it is shared)."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()]}
