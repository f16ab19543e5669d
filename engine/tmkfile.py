"""Read and write `.tmk` files (type FVEC), byte-compatible with the reference (spec section 5)."""
from __future__ import annotations

import os
import struct
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from engine.errors import FormatError, check_compatible, os_reason
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


def file_size(params: TmkParams) -> int:
    """Bytes of a `.tmk` file with these parameters (the reader's fixed-size buffers)."""
    p, m, d = params.num_periods, params.num_coeffs, params.dim
    return HEADER.size + 4 * (p + m + d + 2 * p * m * d)


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


def parse_header(head: bytes | memoryview, size: int, path: str | os.PathLike[str] = "<bytes>"
                 ) -> tuple[TmkParams, int]:
    """Validate a file's header and parameter block (its first bytes) against its total size.

    Returns (params, frame count); raises TmkFormatError with the cause.  ``head`` must hold
    at least min(size, header + periods + coefficients) bytes.
    """
    if size < HEADER.size:
        raise TmkFormatError(path, f"truncated header ({size} bytes, need {HEADER.size})")
    magic, ftype, algo, fps, p, m, d, n = HEADER.unpack_from(head, 0)
    if magic != PROJECT_MAGIC:
        raise TmkFormatError(path, f"not a TMK file (magic {magic!r}, expected {PROJECT_MAGIC!r})")
    if ftype != FILE_TYPE_MAGIC:
        raise TmkFormatError(path, f"not a feature-vector file (type {ftype!r}, expected {FILE_TYPE_MAGIC!r})")
    if algo not in KNOWN_ALGORITHMS:
        raise TmkFormatError(path, f"unknown frame-feature algorithm {algo!r}")
    if not (0 < p <= _MAX_P and 0 < m <= _MAX_M and 0 < d <= _MAX_D) or fps <= 0 or n < 0:
        raise TmkFormatError(path, f"implausible header (fps={fps} P={p} m={m} d={d} frames={n})")
    need = HEADER.size + 4 * (p + m + d + 2 * p * m * d)
    if size != need:
        kind = "truncated body" if size < need else "trailing bytes"
        raise TmkFormatError(path, f"{kind}: {size} bytes, expected {need}")
    off = HEADER.size
    periods = np.frombuffer(head, "<i4", p, off)
    coeffs = np.frombuffer(head, "<f4", m, off + 4 * p)
    if np.any(periods <= 0):
        raise TmkFormatError(path, f"invalid periods {periods.tolist()}")
    if not np.all(np.isfinite(coeffs)):
        raise TmkFormatError(path, "non-finite Fourier coefficients")
    params = TmkParams(periods=tuple(periods.tolist()), coeffs=tuple(coeffs.tolist()), fps=fps, dim=d,
                       algorithm=algo)
    return params, n


def from_bytes(data: bytes | memoryview, path: str | os.PathLike[str] = "<bytes>") -> TmkFeatures:
    """Parse and validate a `.tmk` file image; raises TmkFormatError with the cause."""
    params, n = parse_header(data, len(data), path)
    p, m, d = params.num_periods, params.num_coeffs, params.dim
    off = HEADER.size + 4 * (p + m)
    avg = np.frombuffer(data, "<f4", d, off); off += 4 * d
    cos = np.frombuffer(data, "<f4", p * m * d, off); off += 4 * p * m * d
    sin = np.frombuffer(data, "<f4", p * m * d, off)
    return TmkFeatures(avg.copy(), cos.copy().reshape(p, m, d), sin.copy().reshape(p, m, d), n, params,
                       name=_stem(path))


def _stem(path: str | os.PathLike[str]) -> str:
    return Path(str(path)).stem if path != "<bytes>" else ""


def read_tmk(path: str | os.PathLike[str]) -> TmkFeatures:
    """Read one `.tmk` file; errors name the file and the cause."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise TmkFormatError(path, os_reason(e)) from None
    return from_bytes(data, path)


class _Layout:
    """What every file of one parameter set looks like: its size and its first bytes.

    A file is accepted on the fast path when one read returns exactly `size` bytes and its
    header and parameter block equal `prefix` byte for byte (frame count aside), which is the
    full validation `parse_header` would do, without building a TmkParams per file.
    """

    def __init__(self, params: TmkParams) -> None:
        self.params = params
        p, m, d = params.num_periods, params.num_coeffs, params.dim
        self.shape = (p, m, d)
        self.head = HEADER.size + 4 * (p + m)
        self.size = file_size(params)
        ref = to_bytes(TmkFeatures(np.zeros(d, np.float32), np.zeros(self.shape, np.float32),
                                   np.zeros(self.shape, np.float32), 0, params))[:self.head]
        self.prefix = np.frombuffer(ref, np.uint8)
        self.mask = np.ones(self.head, bool)
        self.mask[28:32] = False      # the frame count may differ


class BatchBuffer:
    """Preallocated stacked arrays for `capacity` signatures, filled straight from the files.

    Reusing one buffer across batches avoids faulting in fresh memory for every file (that
    was most of the system time of reading many files).
    """

    def __init__(self, params: TmkParams, capacity: int, owner: str | None = None) -> None:
        #: Whose parameters the files must match, for the error message (default: the first file's).
        self.owner = owner
        self.layout = _Layout(params)
        p, m, d = self.layout.shape
        self.capacity = capacity
        self.head = np.empty((capacity, self.layout.head), np.uint8)
        self.avg = np.empty((capacity, d), np.float32)
        self.cos = np.empty((capacity, p, m, d), np.float32)
        self.sin = np.empty((capacity, p, m, d), np.float32)
        self._extra = bytearray(1)

    def _read_one(self, i: int, path: str | os.PathLike[str]) -> bool:
        """Read one file into slot i with one readv; False when it needs the careful path."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            got = os.readv(fd, [self.head[i], self.avg[i], self.cos[i], self.sin[i], self._extra])
        except OSError:
            return False
        finally:
            os.close(fd)
        return got == self.layout.size

    def fill(self, paths: Sequence[str | os.PathLike[str]], workers: int = 2,
             errors: list[tuple[int, TmkFormatError]] | None = None) -> FeatureBatch:
        """Read `paths` (at most capacity) into the buffer; a FeatureBatch of views of it.

        Raises TmkFormatError for the first bad file in order (the same message `read_tmk` gives),
        or, with ``errors``, appends (position, error) there, zeroes that slot and goes on.
        """
        n = len(paths)
        if n > self.capacity:
            raise ValueError(f"{n} files for a buffer of {self.capacity}")
        ok = np.zeros(n, bool)

        def run(lo: int, hi: int) -> None:
            for i in range(lo, hi):
                ok[i] = self._read_one(i, paths[i])

        workers = max(1, min(workers, n // 32 or 1))
        if workers == 1:
            run(0, n)
        else:
            cuts = np.linspace(0, n, workers + 1).astype(int)
            with ThreadPoolExecutor(max_workers=workers) as ex:
                list(ex.map(run, cuts[:-1], cuts[1:]))
        lay = self.layout
        head = self.head[:n]
        ok &= np.all((head == lay.prefix) | ~lay.mask, axis=1)
        counts = head[:, 28:32].copy().view("<i4")[:, 0].astype(np.int64)
        ok &= counts >= 0
        for i in np.nonzero(~ok)[0]:        # careful path: exact error, or a compatible variant
            try:
                f = read_tmk(paths[i])
                check_compatible(lay.params, f.params, paths[i], self.owner or f"{paths[0]}'s")  # the one check
            except TmkFormatError as e:
                if errors is None:
                    raise
                errors.append((int(i), e))
                self.avg[i], self.cos[i], self.sin[i], counts[i] = 0, 0, 0, 0
                continue
            self.avg[i], self.cos[i], self.sin[i] = f.avg, f.cos, f.sin
            counts[i] = f.frame_count
        return FeatureBatch(self.avg[:n], self.cos[:n], self.sin[:n], counts, [_stem(p) for p in paths],
                            lay.params)


def read_batch(paths: Sequence[str | os.PathLike[str]], workers: int = 2) -> FeatureBatch:
    """Read and validate many files into one stacked FeatureBatch (its arrays are fresh)."""
    if not paths:
        return FeatureBatch.stack([])
    first = read_tmk(paths[0])
    return BatchBuffer(first.params, len(paths)).fill(paths, workers)


def iter_batches(paths: Sequence[str | os.PathLike[str]], batch: int = 256, workers: int = 2,
                 params: TmkParams | None = None, errors: list[tuple[int, TmkFormatError]] | None = None,
                 owner: str | None = None) -> Iterator[FeatureBatch]:
    """Read many files in batches of `batch` through one reused buffer (bounded memory).

    Each yielded FeatureBatch is a view of the buffer, valid until the next one is requested:
    copy what must outlive it.  ``errors``: collect (position in `paths`, error) of bad files
    and go on (their slots are zero) instead of raising.  ``params``: the parameters every file
    must be compatible with (default: the first file's), ``owner`` whose they are, for messages.
    """
    if not paths:
        return
    buf = BatchBuffer(params or read_tmk(paths[0]).params, min(batch, len(paths)), owner or f"{paths[0]}'s")
    for s in range(0, len(paths), batch):
        local: list[tuple[int, TmkFormatError]] | None = [] if errors is not None else None
        out = buf.fill(paths[s:s + batch], workers, local)
        if local:
            errors.extend((s + i, e) for i, e in local)  # type: ignore[union-attr]
        yield out


def read_many(paths: Sequence[str | os.PathLike[str]], workers: int = 2) -> list[TmkFeatures]:
    """Read many files (one stacked read; the signatures are views of one batch)."""
    if len(paths) < 4:
        return [read_tmk(p) for p in paths]
    b = read_batch(paths, workers)
    return [TmkFeatures(b.avg[i], b.cos[i], b.sin[i], int(b.frame_counts[i]), b.params, b.names[i])
            for i in range(len(b))]


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
