"""Fixtures for the evaluation tests: the reference sample set read in place from ../shared."""
from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
REF = REPO.parent / "shared" / "reference" / "threatexchange"


def family(name: str) -> str:
    """Content family of a reference sample (chair / pattern / doorknob / test)."""
    return Path(name).name.split("-")[0]


@pytest.fixture(scope="session")
def ref() -> Path:
    if not (REF / "tmk").is_dir() or not (REF / "pair-scores.txt").is_file():
        pytest.skip(f"reference data not found at {REF} (expected the shared/ folder beside the repository)")
    return REF


@pytest.fixture(scope="session")
def ref_tmks(ref: Path) -> list[Path]:
    """The 15 published .tmk files (test-padded-dimensions has no published hash)."""
    return sorted(p for p in (ref / "tmk").glob("*.tmk") if not p.name.startswith("test-padded"))


def write_pairs(path: Path, rows) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["a", "b", "label", "transform"])
        w.writerows(rows)
    return path


@pytest.fixture
def family_pairs_csv(tmp_path: Path, ref_tmks: list[Path]) -> Path:
    """All 105 pairs of the published hashes, labelled by content family."""
    rows = [(a, b, int(family(a.name) == family(b.name)), family(a.name) if family(a.name) == family(b.name) else "cross")
            for a, b in itertools.combinations(ref_tmks, 2)]
    return write_pairs(tmp_path / "pairs.csv", rows)
