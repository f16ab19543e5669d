import os

import numpy as np
import pytest

from engine.features import TmkFeatures
from engine.tmkfile import (TmkFormatError, from_bytes, iter_batches, iter_tmk_paths, read_batch, read_many, read_tmk,
                            to_bytes, write_tmk)
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


# ---- the fast batch read path (BatchBuffer / read_batch / iter_batches) on corrupt files
_CORRUPT = {
    "magic": lambda b: b"XXXX" + b[4:],
    "type": lambda b: b[:4] + b"VSTR" + b[8:],
    "algo": lambda b: b[:8] + b"ABCD" + b[12:],
    "truncated": lambda b: b[:1000],
    "header": lambda b: b[:20],
    "empty": lambda b: b"",
    "trailing": lambda b: b + b"\0",
    "implausible": lambda b: b[:16] + (10**6).to_bytes(4, "little") + b[20:],
    "negative-frames": lambda b: b[:28] + (-5).to_bytes(4, "little", signed=True) + b[32:],
    "bad-period": lambda b: b[:32] + (0).to_bytes(4, "little") + b[36:],
    "nan-coeff": lambda b: b[:48] + b"\x00\x00\xc0\x7f" + b[52:],
    "other-period": lambda b: b[:32] + (2732).to_bytes(4, "little") + b[36:],
}


def _bank(tmp_path, n=40):
    paths = []
    for i in range(n):
        p = tmp_path / f"{i:02d}.tmk"
        write_tmk(p, _features(i, frames=i))
        paths.append(p)
    return paths


@pytest.mark.parametrize("kind", sorted(_CORRUPT))
def test_batch_read_of_a_corrupt_file_gives_the_single_file_error(tmp_path, kind):
    paths = _bank(tmp_path)
    bad = paths[17]
    bad.write_bytes(_CORRUPT[kind](bad.read_bytes()))
    try:
        read_tmk(bad)
        single = None
    except TmkFormatError as e:
        single = str(e)
    with pytest.raises(TmkFormatError) as e:
        read_batch(paths)
    msg = str(e.value)
    assert msg.startswith(f"{bad}: ") and "\n" not in msg
    if single is not None:          # a readable but incompatible file has no single-file error
        assert msg == single
    else:
        assert kind == "other-period" and "TMK parameters differ" in msg
    # collecting instead of raising: every other file is read exactly, the bad one reported once
    errors = []
    names = []
    for b in iter_batches(paths, batch=16, errors=errors):   # views of one reused buffer: check now
        for i in range(len(b)):
            if b.names[i] != bad.stem:
                assert b[i].equal(read_tmk(tmp_path / f"{b.names[i]}.tmk"))
                names.append(b.names[i])
    assert [(i, str(err)) for i, err in errors] == [(17, msg)]
    assert names == [p.stem for p in paths if p != bad]


def test_batch_read_equals_single_reads_and_accepts_compatible_coefficients(tmp_path):
    paths = _bank(tmp_path, 50)
    paths.append(tmp_path / "missing.tmk")
    with pytest.raises(TmkFormatError, match="missing.tmk: no such file"):
        read_batch(paths)
    paths[-1] = tmp_path
    with pytest.raises(TmkFormatError, match="is a directory"):
        read_batch(paths)
    paths.pop()
    # coefficient 5 moved by one ulp: compatible (1e-6 relative), read by the careful path
    data = bytearray(paths[9].read_bytes())
    c = np.frombuffer(bytes(data[48 + 20:48 + 24]), "<f4")[0]
    data[48 + 20:48 + 24] = np.nextafter(c, np.float32(1)).astype("<f4").tobytes()
    paths[9].write_bytes(bytes(data))
    b = read_batch(paths)
    assert b.params == DEFAULT_PARAMS and list(b.frame_counts) == list(range(50))
    for i in (0, 9, 31, 49):
        assert b[i].frame_count == i and np.array_equal(b.cos[i], read_tmk(paths[i]).cos)
    # one reused buffer: later batches overwrite earlier views, each batch right when yielded
    for k, bb in enumerate(iter_batches(paths, batch=7)):
        assert bb.names == [p.stem for p in paths[7 * k:7 * k + 7]]
        assert all(bb[j].equal(read_tmk(paths[7 * k + j])) or 7 * k + j == 9 for j in range(len(bb)))
