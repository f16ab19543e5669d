"""Border detection (engine/borders.py) on synthetic frames and on real clips, and `vmatch hash --borders`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.borders import BorderDetector, Borders
from engine.tmkfile import read_tmk


def content(n: int, h: int, w: int, seed: int = 0, lo: int = 0, hi: int = 256) -> np.ndarray:
    """Moving content: a random blocky picture shifted a little every frame."""
    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(lo, hi, (h // 4 + 2, w // 4 + 2, 3)), np.ones((4, 4, 1))).astype(np.uint8)
    return np.stack([np.roll(base, (i % 7, 2 * i % 5), (0, 1))[:h, :w] for i in range(n)])


def framed(c: np.ndarray, top: int, bottom: int, left: int, right: int, colour=(0, 0, 0),
           noise: int = 2, seed: int = 1) -> np.ndarray:
    """Content padded to 64x64 with bars of one colour (plus a little coding noise)."""
    n, h, w, _ = c.shape
    assert h + top + bottom == 64 and w + left + right == 64
    out = np.empty((n, 64, 64, 3), np.int16)
    out[:] = np.asarray(colour, np.int16)
    out += np.random.default_rng(seed).integers(-noise, noise + 1, out.shape).astype(np.int16)
    out[:, top:top + h, left:left + w] = c
    return np.clip(out, 0, 255).astype(np.uint8)


def detect(frames: np.ndarray, chunk: int = 16):
    det = BorderDetector()
    for s in range(0, len(frames), chunk):
        det.update(frames[s:s + chunk])
    return det.detect_rows()


@pytest.mark.parametrize("box", [(11, 11, 0, 0), (6, 6, 0, 0), (0, 0, 10, 10), (0, 0, 16, 16), (8, 8, 8, 8),
                                 (12, 0, 0, 0), (9, 9, 0, 5)])
def test_bars_found_where_they_are(box: tuple[int, int, int, int]) -> None:
    t, b, l, r = box
    f = framed(content(40, 64 - t - b, 64 - l - r), t, b, l, r)
    got = detect(f)
    assert got is not None and got[:4] == box


@pytest.mark.parametrize("colour", [(255, 255, 255), (40, 90, 200), (128, 128, 128), (200, 30, 30)])
def test_coloured_bars(colour: tuple[int, int, int]) -> None:
    f = framed(content(30, 44, 64, seed=2), 10, 10, 0, 0, colour)
    got = detect(f)
    assert got is not None and got[:4] == (10, 10, 0, 0)
    assert np.abs(np.array(got[4]) - colour).max() <= 2


def test_no_bars_in_plain_content() -> None:
    assert detect(content(40, 64, 64)) is None


def test_dark_scenes_are_not_bars() -> None:
    """A film with dark scenes (black frames, a dark top half for a while) has no bars."""
    c = content(60, 64, 64, seed=3)
    c[:20] = 0                              # a black opening
    c[30:45, :24] = 3                       # a dark sky in one scene
    assert detect(c) is None
    # dark content that still moves: no bars either
    assert detect(content(40, 64, 64, seed=4, lo=0, hi=40)) is None


def test_flat_or_static_video_gives_no_borders() -> None:
    flat = np.full((30, 64, 64, 3), 77, np.uint8)
    assert detect(flat) is None
    still = np.repeat(framed(content(1, 44, 64), 10, 10, 0, 0), 30, axis=0)   # bars, but nothing moves
    assert detect(still) is None
    assert detect(framed(content(1, 44, 64), 10, 10, 0, 0)) is None            # one frame: no evidence


def test_bars_that_change_are_not_borders() -> None:
    """Bands that flicker (a caption strip, a changing colour) are content."""
    f = framed(content(40, 44, 64), 10, 10, 0, 0)
    f[::2, :10] = 90
    got = detect(f)
    assert got is not None and got[0] == 0 and got[1] == 10


def test_crop_filter() -> None:
    b = Borders(0.125, 0.25, 0.0, 0.1)
    assert b.kind == "window-box"
    assert b.crop_filter() == "crop=w=iw*0.900000:h=ih*0.625000:x=iw*0.000000:y=ih*0.125000"
    assert Borders(0.1, 0.1, 0, 0).kind == "letterbox" and Borders(0, 0, 0.2, 0.2).kind == "pillarbox"


def test_clips(robust_sigs) -> None:
    """Real clips: bars found (refined to 1/256 of the frame), none in the plain and the dark-opening clip."""
    for name in ("a", "a_hflip", "a_rot90", "a_dark", "b"):
        sig, box = robust_sigs[name]
        assert box is None and sig.borders is None, name
    exp = {"a_lbox": (1 / 6, 1 / 6, 0, 0), "b_lbox": (1 / 6, 1 / 6, 0, 0), "b_pbox": (0, 0, 1 / 6, 1 / 6),
           "a_wbox": (1 / 6, 1 / 6, 1 / 6, 1 / 6)}
    for name, want in exp.items():
        sig, box = robust_sigs[name]
        assert box is not None and sig.borders is not None, name
        got = (box.top, box.bottom, box.left, box.right)
        assert np.allclose(got, want, atol=2 / 256), (name, got)
        assert sig.borders.frame_count == sig.main.frame_count
    assert robust_sigs["b_pbox"][1].colour == pytest.approx((29, 95, 159), abs=6)
    assert robust_sigs["a_wbox"][1].kind == "window-box"


def test_hash_borders_cli(robust_clips, tmp_path: Path) -> None:
    """`vmatch hash --borders`: STEM.borders.tmk only for bordered videos; the main .tmk as without it."""
    vids = [robust_clips["a"], robust_clips["a_lbox"]]
    root = Path(__file__).resolve().parents[2]

    def vm(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], capture_output=True,
                              text=True, cwd=root)

    r = vm("hash", "--borders", *vids, "-d", tmp_path / "b", "--mode", "exact", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "a_lbox.mp4: letterbox" in r.stderr
    r = vm("hash", *vids, "-d", tmp_path / "p", "--mode", "exact", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["a.tmk", "a_lbox.borders.tmk", "a_lbox.tmk"]
    for n in ("a.tmk", "a_lbox.tmk"):
        assert (tmp_path / "b" / n).read_bytes() == (tmp_path / "p" / n).read_bytes()
    assert read_tmk(tmp_path / "b" / "a_lbox.borders.tmk").frame_count == read_tmk(tmp_path / "p" / "a_lbox.tmk").frame_count


def test_nested_bars_of_two_colours() -> None:
    """A blue letterbox added to a film that has black pillars: both layers are peeled off."""
    f = np.empty((40, 64, 64, 3), np.uint8)
    f[:] = np.array([30, 47, 109], np.uint8)
    f[:, 10:54] = 0                                                              # the film's black pillars
    f[:, 10:54, 12:52] = content(40, 44, 40, seed=5)
    got = detect(f)
    assert got is not None and got[:4] == (10, 10, 12, 12)
