import os

import numpy as np
import pytest

from engine.features import TmkFeatures
from engine.tmkfile import (TmkFormatError, from_bytes, iter_tmk_paths, read_batch, read_many, read_tmk, to_bytes,
                            write_tmk)
from kernels.params import DEFAULT_PARAMS


def _features(seed: int = 0, frames: int = 10) -> TmkFeatures:
    rng = np.random.default_rng(seed)
    shape = (4, 32, 256)
    return TmkFeatures(rng.standard_normal(256), rng.standard_normal(shape), rng.standard_normal(shape), frames,
                       name="x")


def test_reference_files_round_trip_byte_for_byte(ref_tmks):
    assert len(ref_tmks) == 16
    for stem, path in ref_tmks.items():
        data = path.read_bytes()
        f = read_tmk(path)
        assert f.name == stem and len(data) == 263_344
        assert to_bytes(f) == data


def test_header_of_chair_19(ref_tmks):
    f = read_tmk(ref_tmks["chair-19-sd-bar"])
    assert f.frame_count == 284 and f.params == DEFAULT_PARAMS
    want = ("544d4b31 46564543 50445146 0f000000 04000000 20000000 00010000 1c010000 "
            "ab0a0000 27110000 27260000 3d390000")  # spec 5.2
    assert to_bytes(f)[:48].hex() == want.replace(" ", "")


def test_write_is_atomic_and_round_trips(tmp_path):
    f = _features()
    p = tmp_path / "a.tmk"
    write_tmk(p, f)
    g = read_tmk(p)
    assert g.equal(f) and not [q for q in os.listdir(tmp_path) if q.startswith(".")]


def test_write_failure_keeps_previous_file(tmp_path, monkeypatch):
    p = tmp_path / "a.tmk"
    write_tmk(p, _features(0))
    before = p.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_tmk(p, _features(1))
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["a.tmk"]


@pytest.mark.parametrize("mutate, reason", [
    (lambda b: b"XXXX" + b[4:], "not a TMK file"),
    (lambda b: b[:4] + b"VSTR" + b[8:], "not a feature-vector file"),
    (lambda b: b[:8] + b"ABCD" + b[12:], "unknown frame-feature algorithm"),
    (lambda b: b[:1000], "truncated body"),
    (lambda b: b[:20], "truncated header"),
    (lambda b: b + b"\0", "trailing bytes"),
    (lambda b: b[:16] + (10**6).to_bytes(4, "little") + b[20:], "implausible header"),
])
def test_bad_files_name_the_file_and_cause(tmp_path, mutate, reason):
    p = tmp_path / "bad.tmk"
    p.write_bytes(mutate(to_bytes(_features())))
    with pytest.raises(TmkFormatError) as e:
        read_tmk(p)
    assert str(e.value).startswith(f"{p}: ") and reason in str(e.value) and "\n" not in str(e.value)


def test_missing_and_directory(tmp_path):
    with pytest.raises(TmkFormatError, match="no such file"):
        read_tmk(tmp_path / "nope.tmk")
    with pytest.raises(TmkFormatError, match="is a directory"):
        read_tmk(tmp_path)


def test_read_many_and_batch(tmp_path):
    paths = []
    for i in range(20):
        p = tmp_path / "d" / f"{i:02d}.tmk"
        p.parent.mkdir(exist_ok=True)
        write_tmk(p, _features(i, frames=i))
        paths.append(p)
    got = read_many(paths)
    assert [g.frame_count for g in got] == list(range(20))
    b = read_batch(paths)
    assert len(b) == 20 and b.cos.shape == (20, 4, 32, 256) and b[7].equal(got[7])
    assert iter_tmk_paths([tmp_path / "d"]) == paths


def test_from_bytes_accepts_memoryview():
    data = to_bytes(_features())
    assert from_bytes(memoryview(data)).equal(_features())
