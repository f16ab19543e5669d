"""Shared fixtures: the reference corpus (skipped when ../shared is absent) and CUDA skipping."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.oracle import Oracle, require_oracle
from tests.videos import reference_dir

SKIP_REF = "reference corpus ../shared/reference/threatexchange not found next to the checkout"


@pytest.fixture(scope="session")
def ref_dir() -> Path:
    d = reference_dir()
    if d is None:
        pytest.skip(SKIP_REF)
    return d


@pytest.fixture(scope="session")
def oracle() -> Oracle:
    """The reference tools built from ../shared/reference/oracle, with the system ffmpeg 5.1."""
    return require_oracle()


@pytest.fixture(scope="session")
def ref_tmks(ref_dir: Path) -> dict[str, Path]:
    """Published .tmk files by stem."""
    return {p.stem: p for p in sorted((ref_dir / "tmk").glob("*.tmk"))}


@pytest.fixture(scope="session")
def ref_pairs(ref_dir: Path) -> list[tuple[float, float, str, str]]:
    """The 105 lines of the reference tmk-two-level-score table."""
    out = []
    for line in (ref_dir / "pair-scores.txt").read_text().splitlines():
        l1, l2, a, b = line.split()
        out.append((float(l1), float(l2), a, b))
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
