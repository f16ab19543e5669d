"""Read and write `.tmk` files (type FVEC), byte-compatible with the reference (spec section 5)."""
from __future__ import annotations

import os
import struct
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from engine.errors import FormatError
from engine.features import FeatureBatch, TmkFeatures
from kernels.params import TmkParams

PROJECT_MAGIC = b"TMK1"
FILE_TYPE_MAGIC = b"FVEC"
KNOWN_ALGORITHMS = (b"PDQF",)
HEADER = struct.Struct("<4s4s4s5i")  # magics, algorithm, fps, P, m, d, frame count
#: Sanity bounds so a corrupt header cannot make us allocate gigabytes.
_MAX_P, _MAX_M, _MAX_D = 64, 1024, 4096


#: A `.tmk` file that is not a valid FVEC signature; str() is `<path>: <reason>` (engine.errors).
TmkFormatError = FormatError


def to_bytes(f: TmkFeatures) -> bytes:
    """Serialise to the exact reference byte layout."""
    p = f.params
    head = HEADER.pack(PROJECT_MAGIC, FILE_TYPE_MAGIC, p.algorithm, p.fps, p.num_periods,
                       p.num_coeffs, p.dim, f.frame_count)
    return b"".join((
        head,
        np.asarray(p.periods, dtype="<i4").tobytes(),
        p.coeffs32.astype("<f4").tobytes(),
        f.avg.astype("<f4").tobytes(),
        f.cos.astype("<f4").tobytes(),
        f.sin.astype("<f4").tobytes(),
    ))


def from_bytes(data: bytes | memoryview, path: str | os.PathLike[str] = "<bytes>") -> TmkFeatures:
    """Parse and validate a `.tmk` file image; raises TmkFormatError with the cause."""
    if len(data) < HEADER.size:
        raise TmkFormatError(path, f"truncated header ({len(data)} bytes, need {HEADER.size})")
    magic, ftype, algo, fps, p, m, d, n = HEADER.unpack_from(data, 0)
    if magic != PROJECT_MAGIC:
        raise TmkFormatError(path, f"not a TMK file (magic {magic!r}, expected {PROJECT_MAGIC!r})")
    if ftype != FILE_TYPE_MAGIC:
        raise TmkFormatError(path, f"not a feature-vector file (type {ftype!r}, expected {FILE_TYPE_MAGIC!r})")
    if algo not in KNOWN_ALGORITHMS:
        raise TmkFormatError(path, f"unknown frame-feature algorithm {algo!r}")
    if not (0 < p <= _MAX_P and 0 < m <= _MAX_M and 0 < d <= _MAX_D) or fps <= 0 or n < 0:
        raise TmkFormatError(path, f"implausible header (fps={fps} P={p} m={m} d={d} frames={n})")
    need = HEADER.size + 4 * (p + m + d + 2 * p * m * d)
    if len(data) != need:
        kind = "truncated body" if len(data) < need else "trailing bytes"
        raise TmkFormatError(path, f"{kind}: {len(data)} bytes, expected {need}")
    off = HEADER.size
    periods = np.frombuffer(data, "<i4", p, off); off += 4 * p
    coeffs = np.frombuffer(data, "<f4", m, off); off += 4 * m
    if np.any(periods <= 0):
        raise TmkFormatError(path, f"invalid periods {periods.tolist()}")
    if not np.all(np.isfinite(coeffs)):
        raise TmkFormatError(path, "non-finite Fourier coefficients")
    avg = np.frombuffer(data, "<f4", d, off); off += 4 * d
    cos = np.frombuffer(data, "<f4", p * m * d, off); off += 4 * p * m * d
    sin = np.frombuffer(data, "<f4", p * m * d, off)
    params = TmkParams(periods=tuple(periods.tolist()), coeffs=tuple(coeffs.tolist()), fps=fps, dim=d,
                       algorithm=algo)
    return TmkFeatures(avg.copy(), cos.copy().reshape(p, m, d), sin.copy().reshape(p, m, d), n, params,
                       name=Path(str(path)).stem if path != "<bytes>" else "")


def read_tmk(path: str | os.PathLike[str]) -> TmkFeatures:
    """Read one `.tmk` file; errors name the file and the cause."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except IsADirectoryError:
        raise TmkFormatError(path, "is a directory") from None
    except FileNotFoundError:
        raise TmkFormatError(path, "no such file") from None
    except OSError as e:
        raise TmkFormatError(path, e.strerror or str(e)) from None
    return from_bytes(data, path)


def read_many(paths: Sequence[str | os.PathLike[str]], workers: int = 8) -> list[TmkFeatures]:
    """Read many files with parallel I/O (file reads release the GIL)."""
    if len(paths) < 16:
        return [read_tmk(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(read_tmk, paths))


def read_batch(paths: Sequence[str | os.PathLike[str]], workers: int = 8) -> FeatureBatch:
    return FeatureBatch.stack(read_many(paths, workers))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write via a temporary file in the same folder, fsync, then rename: never a half file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_tmk(path: str | os.PathLike[str], features: TmkFeatures) -> None:
    """Write a `.tmk` file atomically."""
    atomic_write_bytes(path, to_bytes(features))


def iter_tmk_paths(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand directories to the `.tmk` files inside them (sorted); files pass through (engine.inputs)."""
    from engine.inputs import expand_tmk_paths

    return expand_tmk_paths(paths)
