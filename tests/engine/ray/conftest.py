"""Fixtures of the Ray tests: one local Ray (2 CPUs, no dashboard) for the module, small clips, bad files."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.videos import make_testsrc


@pytest.fixture(scope="package")
def ray_local():
    """A local Ray shared by the in-process tests (the backfill driver joins it and leaves it up)."""
    import ray

    from engine.ray.cluster import connect

    session = connect(None, num_cpus=2, num_gpus=0)
    yield session
    ray.shutdown()


@pytest.fixture(scope="package")
def clips(tmp_path_factory) -> list[Path]:
    """Six distinct 1-2 s clips (different lengths, rates and patterns)."""
    d = tmp_path_factory.mktemp("clips")
    out = []
    for i in range(6):
        out.append(make_testsrc(d / f"clip{i}.mp4", 1 + (i % 2), (25, 30, 24)[i % 3],
                                source=("testsrc", "testsrc2", "smptebars")[i % 3]))
    return out


@pytest.fixture(scope="package")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    """Corrupt and unreadable inputs, each with a distinct failure."""
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.mp4").write_bytes(b"")
    (d / "garbage.mp4").write_bytes(bytes(range(256)) * 64)
    good = make_testsrc(d / "src.mp4", 2, 30)
    (d / "truncated.mp4").write_bytes(good.read_bytes()[:700])
    good.unlink()
    return {"empty": d / "empty.mp4", "garbage": d / "garbage.mp4", "truncated": d / "truncated.mp4"}
