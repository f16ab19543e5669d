"""Hashing parity with the reference: byte-identical in exact mode, tight bounds in fast mode."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from engine.decode import decode_frames
from engine.features import TmkFeatures
from engine.hasher import VideoHasher, hash_video, resolve_mode
from engine.scoring import Scorer
from engine.tmkfile import read_tmk, to_bytes
from tests.videos import REFERENCE_FRAME_COUNTS, make_testsrc

PUBLISHED = [s for s in REFERENCE_FRAME_COUNTS if s != "test-padded-dimensions"]


@pytest.fixture(scope="module")
def frames(ref_dir):
    """Decoded 15 fps frames of every reference video (decoded once for all tests here)."""
    return {s: decode_frames(ref_dir / "videos" / f"{s}.mp4") for s in REFERENCE_FRAME_COUNTS}


def _hash(frames: np.ndarray, mode: str, device: str = "cpu", name: str = "") -> TmkFeatures:
    chunks = (frames[i:i + 100] for i in range(0, len(frames), 100))
    return VideoHasher(mode=mode, device=device).hash_frames(chunks, name)


def test_exact_mode_is_byte_identical_for_all_13_published_hashes(frames, ref_tmks):
    assert len(PUBLISHED) == 13
    for stem in PUBLISHED:
        got = to_bytes(_hash(frames[stem], "exact"))
        assert got == ref_tmks[stem].read_bytes(), stem


def test_padded_dimensions_matches_the_reference_binary_hash(frames, ref_tmks):
    """The whole file against the shipped reference .tmk (made by the reference tool, spec 7.2)."""
    got = to_bytes(_hash(frames["test-padded-dimensions"], "exact"))
    digest = hashlib.sha256(got).hexdigest()
    assert digest.startswith("e9d77993") and digest.endswith("b438c410")  # spec 7.2
    assert got == ref_tmks["test-padded-dimensions"].read_bytes()


def test_padded_dimensions_matches_the_reference_tool_run_now(frames, ref_tmks, oracle, tmp_path):
    got = to_bytes(_hash(frames["test-padded-dimensions"], "exact"))
    out = tmp_path / "oracle.tmk"
    video = ref_tmks["test-padded-dimensions"].parents[1] / "videos" / "test-padded-dimensions.mp4"
    r = oracle.hash_video(video, out)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-500:]
    assert got == out.read_bytes()


def _check_fast(got: TmkFeatures, ref: TmkFeatures, scorer: Scorer) -> None:
    assert got.frame_count == ref.frame_count
    assert np.abs(got.cos - ref.cos).max() <= 1e-5 and np.abs(got.sin - ref.sin).max() <= 1e-5
    assert np.abs(got.avg - ref.avg).max() <= 1e-5 * np.abs(ref.avg).max()
    l1, l2, _ = scorer.pair(ref, got)
    assert l1 >= 0.99999 and l2 >= 0.99999


def test_fast_mode_within_bounds_for_every_reference_video(frames, ref_tmks):
    scorer = Scorer(read_tmk(ref_tmks[PUBLISHED[0]]).params, "cpu")
    for stem in PUBLISHED:
        _check_fast(_hash(frames[stem], "fast"), read_tmk(ref_tmks[stem]), scorer)


@pytest.fixture(scope="module")
def flat_clip(tmp_path_factory):
    """A clip with a fade to flat grey and black frames: degenerate PDQF features (spec 3.6)."""
    path = tmp_path_factory.mktemp("flat") / "fade.mp4"
    make_testsrc(path, 4, 30, size=(96, 72), source="testsrc",
                 extra_args=("-vf", "fade=t=out:st=1:d=1:color=0x7e7e7e,fade=t=in:st=3:d=0.5:color=black"))
    return path


def test_fast_mode_survives_flat_frames(flat_clip):
    fr = decode_frames(flat_clip)
    exact, fast = _hash(fr, "exact"), _hash(fr, "fast")
    _check_fast(fast, exact, Scorer(exact.params, "cpu"))


def test_hash_video_end_to_end_and_modes(ref_dir, ref_tmks):
    f = hash_video(ref_dir / "videos" / "doorknob-hd-no-bar.mp4", device="cpu")
    assert f.name == "doorknob-hd-no-bar" and to_bytes(f) == ref_tmks["doorknob-hd-no-bar"].read_bytes()
    assert resolve_mode("auto", torch.device("cpu")) == "exact"
    assert resolve_mode("auto", torch.device("cuda")) == "fast"
    with pytest.raises(ValueError):
        resolve_mode("turbo", torch.device("cpu"))


def test_empty_frame_stream_gives_zero_signature():
    f = VideoHasher(device="cpu").hash_frames(iter([]))
    assert f.frame_count == 0 and not f.avg.any()


@pytest.mark.cuda
def test_cuda_exact_and_fast(frames, ref_tmks):
    scorer = Scorer(read_tmk(ref_tmks[PUBLISHED[0]]).params, "cpu")
    for stem in PUBLISHED:
        ref = read_tmk(ref_tmks[stem])
        _check_fast(_hash(frames[stem], "fast", "cuda"), ref, scorer)
    for stem in ("doorknob-hd-no-bar", "chair-19-sd-bar"):
        assert to_bytes(_hash(frames[stem], "exact", "cuda")) == ref_tmks[stem].read_bytes(), stem


def test_cpu_exact_runs_the_numpy_kernels_with_the_torch_kernels_bytes(frames):
    """The CPU default (numpy kernels, no torch) and the torch kernels give the same file."""
    h = VideoHasher(mode="auto", device="cpu")
    assert (h.kernels, h.mode, h.device_type) == ("numpy", "exact", "cpu")
    assert VideoHasher(mode="fast", device="cpu").kernels == "torch"
    t = VideoHasher(mode="exact", device="cpu")
    t.kernels = "torch"                       # force the torch kernels on CPU
    for stem in ("doorknob-hd-no-bar", "test-padded-dimensions"):
        chunks = [frames[stem][i:i + 37] for i in range(0, len(frames[stem]), 37)]
        assert to_bytes(h.hash_frames(iter(chunks))) == to_bytes(t.hash_frames(iter(chunks))), stem
