"""Fixtures shared by the engine tests: small clips and their signatures for --robust matching."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.features import Signatures
from tests.engine.robust_clips import make_clips


@pytest.fixture(scope="session")
def robust_clips(tmp_path_factory) -> dict[str, Path]:
    if shutil.which("ffmpeg") is None:
        pytest.skip("border signatures need the ffmpeg executable on PATH")
    return make_clips(tmp_path_factory.mktemp("robust-clips"))


@pytest.fixture(scope="session")
def robust_sigs(robust_clips: dict[str, Path]) -> dict[str, tuple[Signatures, object]]:
    """name -> (Signatures with borders, detected Borders or None), hashed once (exact mode)."""
    from engine.borders import BorderHasher
    from engine.hasher import VideoHasher

    bh = BorderHasher(VideoHasher(mode="exact", device="cpu"))
    out = {}
    for name, p in robust_clips.items():
        s = bh.hash(p)
        out[name] = (s, bh.last_borders)
    return out
