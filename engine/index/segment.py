"""One segment: the rows one `add` call put into one shard, as immutable files.

* ``<name>.l1``    float32 [n, d]: L2-normalised pure averages (the level-1 vectors; a flat
  coarse index is exactly this matrix, so no second copy is written);
* ``<name>.store`` float32 or float16 [n, 2, P, m, d]: cos then sin features, memory-mapped
  by readers and read in bounded batches for level-2; or, for the int8 store, one record of
  int8 features and float32 per-vector scales per row (engine/index/int8.py, 66,560 bytes);
* ``<name>.ids.json`` the id table (id, source, frame count, content hash, time added) and
  a 64-bit checksum of every store row (`row_checksum`), so a corrupt row is caught when it
  is read, without checksumming gigabytes at open;
* ``<name>.ivf``   (ivf indexes only) the faiss IVF-Flat lists of the segment's l1 vectors.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from engine.features import TmkFeatures
from engine.index import int8
from engine.index.manifest import FileRef, IndexCorruptError, Segment, fsync_dir
from kernels.params import TmkParams

STORE_DTYPES = {"fp32": np.float32, "fp16": np.float16, "int8": np.uint8}


def stored_row_shape(store: str, params: TmkParams) -> tuple[int, ...]:
    """Shape of one stored row: [2, P, m, d] values, or [record bytes] for int8."""
    shape = (2, params.num_periods, params.num_coeffs, params.dim)
    return (int8.record_bytes(shape),) if store == "int8" else shape


def unit_average(avg: np.ndarray) -> np.ndarray:
    """The pure average L2-normalised in binary32, as the reference tmk-query does on load."""
    a = np.asarray(avg, dtype=np.float32)
    n = np.float32(np.sqrt(np.dot(a.astype(np.float64), a.astype(np.float64))))
    return a.copy() if n == 0 else (a / n).astype(np.float32)   # never a view of the caller's buffer


#: 64-bit words per block of the row checksum (4 KB).
_BLOCK_WORDS = 512


def block_sums(rows: np.ndarray) -> np.ndarray:
    """Wrapping (mod 2^64) sums of the 64-bit words of each 4 KB block of each row: [n, blocks]
    (a shorter last block when a row is not a whole number of blocks, as int8 records)."""
    n = rows.shape[0]
    words = rows.reshape(n, -1).view(np.uint64)
    full = words.shape[1] - words.shape[1] % _BLOCK_WORDS
    sums = words[:, :full].reshape(n, -1, _BLOCK_WORDS).sum(axis=2, dtype=np.uint64)
    if full == words.shape[1]:
        return sums
    return np.concatenate([sums, words[:, full:].sum(axis=1, dtype=np.uint64, keepdims=True)], axis=1)


def _digest(sums: np.ndarray) -> int:
    return int.from_bytes(hashlib.blake2b(sums.tobytes(), digest_size=8).digest(), "little")


def row_checksum(*parts: np.ndarray) -> int:
    """64-bit checksum of a stored row given as consecutive parts (each a multiple of 4 KB, or one part).

    blake2b-64 of the per-block word sums: any change confined to one 4 KB block is caught unless
    it keeps that block's word sum mod 2^64 (e.g. two words of one block swapped), and block
    swaps are caught.  About 7x cheaper than CRC-32 here, which matters because every level-2
    candidate row is checked when it is read.
    """
    return _digest(np.concatenate([block_sums(p.reshape(1, -1))[0] for p in parts]))


@dataclass
class Prepared:
    """A signature converted to its stored form (done in worker threads: numpy sums release the GIL)."""

    id: str
    source: str
    frame_count: int
    l1: np.ndarray         # float32 [d]
    row: tuple[np.ndarray, ...]   # the stored row [2, P, m, d] (store dtype), as consecutive parts
    row_sum: int
    content_hash: str
    time_added: float | None = None   # None: now


def prepare(f: TmkFeatures, item_id: str, source: str, store: str) -> Prepared:
    """Stored form of one signature; the content hash covers frame count, average and features."""
    full = row_checksum(f.cos, f.sin)
    h = hashlib.blake2b(digest_size=16)
    h.update(np.int64(f.frame_count).tobytes())
    h.update(f.avg.tobytes())
    h.update(full.to_bytes(8, "little"))
    if store == "fp32":
        row: tuple[np.ndarray, ...] = (f.cos, f.sin)
        row_sum = full
    elif store == "int8":
        row = (int8.quantize(np.stack([f.cos, f.sin])),)
        row_sum = row_checksum(row[0])
    else:  # torch's float16 conversion is vectorised (about 10x numpy's) and releases the GIL
        half = torch.empty((2, *f.cos.shape), dtype=torch.float16)
        half[0].copy_(torch.from_numpy(f.cos))
        half[1].copy_(torch.from_numpy(f.sin))
        row = (half.numpy(),)
        row_sum = row_checksum(row[0])
    return Prepared(item_id, source, f.frame_count, unit_average(f.avg), row, row_sum, h.hexdigest())


def write_small_file(root: Path, rel: str, data: bytes) -> FileRef:
    """Write a new immutable file durably and describe it (size, CRC) for the manifest."""
    with open(root / rel, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return FileRef(rel, len(data), zlib.crc32(data))


class SegmentWriter:
    """Appends prepared rows to new segment files of one shard; `finish` makes them durable."""

    def __init__(self, root: Path, shard: int, name: str, rel: str | None = None) -> None:
        self.root, self.name = root, name
        self.rel = rel or f"shard-{shard:03d}/{name}"     # rel: another folder (border signatures)
        (root / self.rel).parent.mkdir(exist_ok=True)
        self._l1 = open(root / f"{self.rel}.l1", "wb")
        self._store = open(root / f"{self.rel}.store", "wb")
        self._l1_crc = 0
        self.l1_rows: list[np.ndarray] = []
        self.cols: dict[str, list] = {k: [] for k in ("id", "source", "frame_count", "content_hash",
                                                      "time_added", "row_sum64")}

    def append(self, items: Sequence[Prepared]) -> None:
        now = round(time.time(), 3)
        for it in items:
            self._l1.write(it.l1)
            self._l1_crc = zlib.crc32(it.l1, self._l1_crc)
            for part in it.row:
                self._store.write(part)
            self.l1_rows.append(it.l1)
            for k, v in (("id", it.id), ("source", it.source), ("frame_count", it.frame_count),
                         ("content_hash", it.content_hash), ("time_added", it.time_added or now),
                         ("row_sum64", it.row_sum)):
                self.cols[k].append(v)

    @property
    def count(self) -> int:
        return len(self.cols["id"])

    def finish(self, ivf: bytes | None = None) -> Segment:
        """fsync every file and describe them for the manifest."""
        refs = {}
        for key, fh, crc in (("l1", self._l1, self._l1_crc), ("store", self._store, None)):
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            refs[key] = FileRef(f"{self.rel}.{key}", os.path.getsize(self.root / f"{self.rel}.{key}"), crc)
        refs["ids"] = write_small_file(self.root, f"{self.rel}.ids.json",
                                       json.dumps(self.cols, separators=(",", ":")).encode())
        if ivf is not None:
            refs["ivf"] = write_small_file(self.root, f"{self.rel}.ivf", ivf)
        fsync_dir((self.root / self.rel).parent)      # the new names themselves are durable
        return Segment(self.name, self.count, refs["l1"], refs["store"], refs["ids"], refs.get("ivf"))

    def abort(self) -> None:
        for fh in (self._l1, self._store):
            fh.close()


def read_checked(root: Path, ref: FileRef) -> bytes:
    """A small file's bytes, after checking its size and CRC against the manifest."""
    path = root / ref.name
    try:
        data = path.read_bytes()
    except OSError as e:
        raise IndexCorruptError(path, f"missing or unreadable index file ({e.strerror or e})") from None
    if len(data) != ref.size:
        raise IndexCorruptError(path, f"truncated or resized index file ({len(data)} bytes, manifest says {ref.size})")
    if ref.crc32 is not None and zlib.crc32(data) != ref.crc32:
        raise IndexCorruptError(path, "corrupt index file (checksum mismatch)")
    return data


class SegmentReader:
    """Read side of one segment: ids and row checksums in memory, the store memory-mapped."""

    def __init__(self, root: Path, seg: Segment, params: TmkParams, store: str, verify_reads: bool = True) -> None:
        self.seg, self.root, self.verify_reads = seg, root, verify_reads
        self.dim = params.dim
        try:
            cols = json.loads(read_checked(root, seg.ids))
        except ValueError as e:
            raise IndexCorruptError(root / seg.ids.name, f"corrupt id table ({e})") from None
        try:
            self.ids: list[str] = cols["id"]          # the other columns are not kept in memory
            self.row_sum: list[int] = cols["row_sum64"]
        except (KeyError, TypeError) as e:
            raise IndexCorruptError(root / seg.ids.name, f"corrupt id table (missing column {e})") from None
        self.row_shape = stored_row_shape(store, params)
        dtype = np.dtype(STORE_DTYPES[store])
        spath = root / seg.store.name
        size = spath.stat().st_size if spath.exists() else -1
        want = seg.count * int(np.prod(self.row_shape)) * dtype.itemsize
        if size != seg.store.size or size != want or len(self.ids) != seg.count:
            raise IndexCorruptError(spath, f"truncated or inconsistent segment ({size} bytes, expected {want})")
        # copy-on-write mapping: views are writable numpy arrays (torch wants those); nothing writes
        self.store = np.memmap(spath, dtype=dtype, mode="c", shape=(seg.count, *self.row_shape)) if seg.count \
            else np.zeros((0, *self.row_shape), dtype)

    def frame_counts(self) -> list[int]:
        """The frame count column of the id table (read again: it is not kept in memory)."""
        return [int(n) for n in json.loads(read_checked(self.root, self.seg.ids))["frame_count"]]

    def load_l1(self) -> np.ndarray:
        """The segment's level-1 vectors [n, d] (read and checked now; the caller keeps them)."""
        l1 = np.frombuffer(read_checked(self.root, self.seg.l1), dtype=np.float32).reshape(-1, self.dim)
        if len(l1) != self.seg.count:
            raise IndexCorruptError(self.root / self.seg.l1.name, f"{len(l1)} level-1 rows, expected {self.seg.count}")
        return l1

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Store rows `idx` (sorted, unique), each checked against its checksum.

        One run of consecutive rows comes back as a view of the map, not a copy (segment files
        are immutable; the kernel maps cached pages 64 KB per fault); scattered rows are gathered.
        """
        out = self.store[idx[0]:idx[-1] + 1] if len(idx) and idx[-1] - idx[0] + 1 == len(idx) else self.store[idx]
        if self.verify_reads and len(idx):
            for sums, i in zip(block_sums(out), idx):
                if _digest(sums) != self.row_sum[i]:
                    raise IndexCorruptError(self.root / self.seg.store.name,
                                            f"corrupt index file (row {int(i)}, id {self.ids[i]!r}: checksum mismatch)")
        return out

    def verify(self) -> None:
        """Check every store row (the full, slow integrity check)."""
        for s in range(0, self.seg.count, 256):
            self.rows(np.arange(s, min(s + 256, self.seg.count)))
