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
import logging
import os
import threading
import time
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from engine.features import FeatureBatch, TmkFeatures
from engine.index import int8
from engine.index.manifest import FileRef, IndexCorruptError, Segment, fsync_dir
from kernels.params import TmkParams

log = logging.getLogger(__name__)

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
    return int(_digests(sums.reshape(1, -1))[0])


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


def _content_hash(frame_count: int, avg: np.ndarray, full: int) -> str:
    return hashlib.blake2b(np.int64(frame_count).tobytes() + np.ascontiguousarray(avg).tobytes()
                           + full.to_bytes(8, "little"), digest_size=16).hexdigest()


def _to_half(cos: np.ndarray, sin: np.ndarray, out: np.ndarray) -> np.ndarray:
    """float32 cos, sin [B, P, m, d] -> float16 rows ``out`` [B, 2, P, m, d]: torch's conversion is
    vectorised (about 10x numpy's) and releases the GIL.  One copy per row side: at 32,768 values
    (the default parameters) that is torch's grain size, so a copy runs in the calling thread and
    two loader threads do not each start a team of OpenMP threads on a 2-core machine."""
    import torch

    half, c, s = torch.from_numpy(out), torch.from_numpy(cos), torch.from_numpy(sin)
    for i in range(len(out)):
        half[i, 0].copy_(c[i])
        half[i, 1].copy_(s[i])
    return out


def prepare(f: TmkFeatures, item_id: str, source: str, store: str) -> Prepared:
    """Stored form of one signature; the content hash covers frame count, average and features."""
    full = row_checksum(f.cos, f.sin)
    if store == "fp32":
        row: tuple[np.ndarray, ...] = (f.cos, f.sin)
        row_sum = full
    elif store == "int8":
        row = (int8.quantize(np.stack([f.cos, f.sin])),)
        row_sum = row_checksum(row[0])
    else:
        row = (_to_half(f.cos[None], f.sin[None], np.empty((1, 2, *f.cos.shape), np.float16))[0],)
        row_sum = row_checksum(row[0])
    return Prepared(item_id, source, f.frame_count, unit_average(f.avg), row, row_sum,
                    _content_hash(f.frame_count, f.avg, full))


@dataclass
class PreparedBatch:
    """Many signatures in stored form, as arrays (one chunk of a bulk add, `prepare_batch`).

    ``parts``: arrays [n, ...] whose row i, concatenated in order, is stored row i: (cos, sin)
    for fp32 (the read buffers themselves), one [n, 2, P, m, d] float16 or [n, record] int8 array
    otherwise.  The arrays may be views of buffers reused for a later chunk.
    """

    ids: list[str]
    sources: list[str]
    frame_counts: list[int]
    l1: np.ndarray                 # float32 [n, d]
    parts: tuple[np.ndarray, ...]
    row_sums: list[int]
    content_hashes: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def _digests(sums: np.ndarray) -> np.ndarray:
    """blake2b-64 (little-endian) of every row of block sums [n, blocks], as uint64 [n]: the
    one digest of `row_checksum`, for many rows in one tight loop."""
    buf = np.ascontiguousarray(sums, dtype=np.uint64).tobytes()
    w = sums.shape[1] * 8
    b2 = hashlib.blake2b
    return np.frombuffer(b"".join([b2(buf[o:o + w], digest_size=8).digest() for o in range(0, len(buf), w)]),
                         "<u8").astype(np.uint64)


def _row_sums(*parts: np.ndarray) -> list[int]:
    """`row_checksum` of every row of stacked parts [n, ...] (one vectorised pass per part)."""
    n = parts[0].shape[0]
    sums = np.concatenate([block_sums(p.reshape(n, -1)) for p in parts], axis=1)
    return _digests(sums).tolist()


def prepare_batch(b: FeatureBatch, ids: Sequence[str], sources: Sequence[str], store: str,
                  out: np.ndarray | None = None) -> PreparedBatch:
    """`prepare` of every signature of a batch at once: the same bytes, checksums and hashes.

    Checksums, quantisation and float16 conversion run over the whole batch (numpy and torch
    release the GIL, so two batches prepare on two cores); ``out`` is a reusable buffer for the
    converted rows (int8 [>= n, record] uint8, fp16 [>= n, 2, P, m, d] float16)."""
    n = len(b)
    full = _row_sums(b.cos, b.sin)
    counts = [int(c) for c in b.frame_counts]
    hashes = [_content_hash(counts[i], b.avg[i], full[i]) for i in range(n)]
    l1 = np.empty((n, b.avg.shape[1]), np.float32)
    for i in range(n):
        l1[i] = unit_average(b.avg[i])
    if store == "fp32":
        parts: tuple[np.ndarray, ...] = (b.cos, b.sin)
        sums = full
    elif store == "int8":
        if out is None:
            out = np.empty((n, int8.record_bytes((2, *b.cos.shape[1:]))), np.uint8)
        parts = (int8.quantize_into((b.cos, b.sin), out),)
        sums = _row_sums(parts[0])
    else:
        if out is None:
            out = np.empty((n, 2, *b.cos.shape[1:]), np.float16)
        parts = (_to_half(b.cos, b.sin, out[:n]),)
        sums = _row_sums(parts[0])
    return PreparedBatch(list(ids), list(sources), counts, l1, parts, sums, hashes)


def write_small_file(root: Path, rel: str, data: bytes) -> FileRef:
    """Write a new immutable file durably and describe it (size, CRC) for the manifest."""
    with open(root / rel, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return FileRef(rel, len(data), zlib.crc32(data))


def _write_all(fd: int, views: Sequence[memoryview | np.ndarray]) -> int:
    """Write buffers in order, one `write` each straight from its array (no copy into one buffer),
    retrying short writes; returns the bytes written.  (One `writev` of a chunk's rows was 3x
    slower here, almost all of it system time: an fp16 add of 20,000 files took 15.6 s, 12 s of
    it in the kernel, against 4.9 s with one write per row; docs/benchmarks.md.)"""
    total = 0
    for v in views:
        mv = memoryview(v).cast("B")
        while len(mv):
            n = os.write(fd, mv)
            total += n
            mv = mv[n:]
    return total


class Flusher:
    """Starts the disk writes of segment files while they are still being written.

    Left alone, the kernel holds a bulk add's rows as dirty pages and writes most of them at the
    final fsync, after all the CPU work; an `fdatasync` in one background thread every
    `every` bytes keeps the disk busy meanwhile (the final fsync still makes the files durable:
    nothing about the commit changes).  Errors of a background flush are raised by `drain`.
    """

    def __init__(self, every: int = 64 << 20) -> None:
        self.every = every
        self._ex: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None
        self._since: dict[int, int] = {}

    def wrote(self, fd: int, nbytes: int) -> None:
        self._since[fd] = self._since.get(fd, 0) + nbytes
        if self._since[fd] < self.every or (self._pending is not None and not self._pending.done()):
            return
        self._check()
        self._since[fd] = 0
        if self._ex is None:
            self._ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vmatch-flush")
        self._pending = self._ex.submit(os.fdatasync, fd)

    def _check(self) -> None:
        if self._pending is not None:
            p, self._pending = self._pending, None
            p.result()

    def drain(self) -> None:
        """Wait for the flush in flight (call before closing any file it may be flushing)."""
        try:
            self._check()
        finally:
            if self._ex is not None:
                self._ex.shutdown(wait=True)
                self._ex = None


class SegmentWriter:
    """Appends prepared rows to new segment files of one shard; `finish` makes them durable."""

    def __init__(self, root: Path, shard: int, name: str, rel: str | None = None,
                 flusher: Flusher | None = None) -> None:
        self.root, self.name = root, name
        self.rel = rel or f"shard-{shard:03d}/{name}"     # rel: another folder (border signatures)
        (root / self.rel).parent.mkdir(exist_ok=True)
        self._l1 = open(root / f"{self.rel}.l1", "wb")
        # unbuffered: rows are written straight from their arrays (`append_batch`)
        self._store = open(root / f"{self.rel}.store", "wb", buffering=0)
        self._flusher = flusher
        self._l1_crc = 0
        self.l1_rows: list[np.ndarray] = []
        self.cols: dict[str, list] = {k: [] for k in ("id", "source", "frame_count", "content_hash",
                                                      "time_added", "row_sum64")}

    def append(self, items: Sequence[Prepared]) -> None:
        now = round(time.time(), 3)
        for it in items:
            self._l1.write(it.l1)
            self._l1_crc = zlib.crc32(it.l1, self._l1_crc)
            _write_all(self._store.fileno(), it.row)
            self.l1_rows.append(it.l1)
            for k, v in (("id", it.id), ("source", it.source), ("frame_count", it.frame_count),
                         ("content_hash", it.content_hash), ("time_added", it.time_added or now),
                         ("row_sum64", it.row_sum)):
                self.cols[k].append(v)

    def append_batch(self, b: PreparedBatch, rows: np.ndarray | None = None) -> None:
        """Append rows `rows` (positions in `b`, in order; default all) of a prepared batch: one
        write of their level-1 vectors, then their store rows straight from the batch's arrays."""
        sel = np.arange(len(b)) if rows is None else np.asarray(rows, dtype=np.int64)
        if not len(sel):
            return
        l1 = np.ascontiguousarray(b.l1[sel])
        self._l1.write(l1)
        self._l1_crc = zlib.crc32(l1, self._l1_crc)
        self.l1_rows.extend(l1)
        fd = self._store.fileno()
        nbytes = _write_all(fd, [part[i] for i in sel.tolist() for part in b.parts])
        if self._flusher is not None:
            self._flusher.wrote(fd, nbytes)
        now = round(time.time(), 3)
        idx = sel.tolist()
        self.cols["id"] += [b.ids[i] for i in idx]
        self.cols["source"] += [b.sources[i] for i in idx]
        self.cols["frame_count"] += [b.frame_counts[i] for i in idx]
        self.cols["content_hash"] += [b.content_hashes[i] for i in idx]
        self.cols["time_added"] += [now] * len(idx)
        self.cols["row_sum64"] += [b.row_sums[i] for i in idx]

    @property
    def count(self) -> int:
        return len(self.cols["id"])

    def finish(self, ivf: bytes | None = None) -> Segment:
        """fsync every file and describe them for the manifest."""
        if self._flusher is not None:
            self._flusher.drain()
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
        if self._flusher is not None:
            try:
                self._flusher.drain()
            except OSError:
                pass          # the add is failing anyway; its files are removed as orphans
        for fh in (self._l1, self._store):
            fh.close()


def bulk_prepare(paths: Sequence[str | os.PathLike[str]], ids: Sequence[str], sources: Sequence[str],
                 params: TmkParams, store: str, chunk: int = 128, workers: int = 2,
                 owner: str = "the index's") -> Iterator[PreparedBatch]:
    """Read and prepare `.tmk` files chunk by chunk, `workers` chunks at a time, in order.

    Each chunk is read straight into a reused buffer (engine.tmkfile.BatchBuffer: one readv per
    file) and prepared as a whole (`prepare_batch`) in a worker thread; both release the GIL, so
    on 2 cores two chunks load while the caller writes the previous one.  A yielded batch is
    valid until the next one is requested.  A bad file raises its TmkFormatError (the first bad
    file in path order) when its chunk is reached, so nothing after it is yielded.
    """
    from engine.tmkfile import BatchBuffer

    n = len(paths)
    if not n:
        return
    chunk = max(1, min(chunk, -(-n // max(1, workers))))
    nbuf = workers + 1          # `workers` loading, one being written by the caller
    bufs = [BatchBuffer(params, min(chunk, n), owner) for _ in range(nbuf)]
    rec = (2, params.num_periods, params.num_coeffs, params.dim)
    outs = [None if store == "fp32" else
            np.empty((min(chunk, n), int8.record_bytes(rec)), np.uint8) if store == "int8" else
            np.empty((min(chunk, n), *rec), np.float16) for _ in range(nbuf)]
    jobs = -(-n // chunk)

    def load(k: int) -> PreparedBatch:
        lo, hi = k * chunk, min(n, (k + 1) * chunk)
        b = bufs[k % nbuf].fill(paths[lo:hi], workers=1)
        return prepare_batch(b, ids[lo:hi], sources[lo:hi], store, outs[k % nbuf])

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vmatch-load") as ex:
        ahead: deque[Future[PreparedBatch]] = deque(ex.submit(load, k) for k in range(min(workers, jobs)))
        nxt = len(ahead)
        try:
            for _ in range(jobs):
                batch = ahead.popleft().result()
                if nxt < jobs:      # its buffer was the previous batch's, which the caller has written
                    ahead.append(ex.submit(load, nxt))
                    nxt += 1
                yield batch
        finally:
            for f in ahead:
                f.cancel()


def add_tmk_files(root: Path, name: str, paths: Sequence[str | os.PathLike[str]], ids: Sequence[str],
                  sources: Sequence[str], params: TmkParams, store: str, shard_fn: Callable[[str], int],
                  writers: dict[int, SegmentWriter], progress: Callable[[int], object] | None = None,
                  chunk: int = 128, workers: int = 2) -> None:
    """The bulk add of `.tmk` files: `bulk_prepare` chunks routed to one SegmentWriter per shard
    (created in `writers`, which the caller finishes, or aborts on an error), the disk writing
    behind them (`Flusher`)."""
    flusher = Flusher()
    try:
        for b in bulk_prepare(paths, ids, sources, params, store, chunk, workers):
            shard = np.fromiter((shard_fn(i) for i in b.ids), np.int64, len(b))
            for sid in np.unique(shard).tolist():
                if sid not in writers:
                    writers[sid] = SegmentWriter(root, sid, name, flusher=flusher)
                writers[sid].append_batch(b, np.nonzero(shard == sid)[0])
            if progress:
                progress(len(b))
    except BaseException:
        try:
            flusher.drain()
        except OSError:
            pass
        raise


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


#: Readers opened ahead of the index that will use them (`open_ahead`), each adopted once by the
#: SegmentReader made for the same segment file, which then starts with its work done.
_AHEAD: dict[tuple[str, str], "SegmentReader"] = {}
_AHEAD_LOCK = threading.Lock()


class SegmentReader:
    """Read side of one segment: ids and row checksums in memory, the store memory-mapped."""

    def __init__(self, root: Path, seg: Segment, params: TmkParams, store: str, verify_reads: bool = True) -> None:
        with _AHEAD_LOCK:
            ahead = _AHEAD.pop((str(root), seg.store.name), None)
        if ahead is not None and ahead._same(seg, params, store, verify_reads):
            self.__dict__.update(ahead.__dict__)
            self.seg = seg         # the caller's manifest entry (its tombstones are the caller's)
            return
        self.seg, self.root, self.verify_reads = seg, root, verify_reads
        self.dim = params.dim
        self._kind = store
        #: Rows whose checksum `precheck` verified and no read has used yet (None: none).
        self._prechecked: np.ndarray | None = None
        self._l1: np.ndarray | None = None
        try:
            cols = json.loads(read_checked(root, seg.ids))
        except ValueError as e:
            raise IndexCorruptError(root / seg.ids.name, f"corrupt id table ({e})") from None
        try:
            self.ids: list[str] = cols["id"]          # the other columns are not kept in memory
            self.row_sum = np.array(cols["row_sum64"], dtype=np.uint64)    # compared as one array
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

    def _same(self, seg: Segment, params: TmkParams, store: str, verify_reads: bool) -> bool:
        """Whether this reader was opened on the very files `seg` names, the same way."""
        s = self.seg
        return (s.name, s.count, s.store, s.ids, s.l1) == (seg.name, seg.count, seg.store, seg.ids, seg.l1) \
            and self._kind == store and self.dim == params.dim and self.verify_reads == verify_reads

    def frame_counts(self) -> list[int]:
        """The frame count column of the id table (read again: it is not kept in memory)."""
        return [int(n) for n in json.loads(read_checked(self.root, self.seg.ids))["frame_count"]]

    def load_l1(self) -> np.ndarray:
        """The segment's level-1 vectors [n, d] (read and checked now; the caller keeps them)."""
        if self._l1 is not None:          # read by `open_ahead`: handed over once
            l1, self._l1 = self._l1, None
            return l1
        l1 = np.frombuffer(read_checked(self.root, self.seg.l1), dtype=np.float32).reshape(-1, self.dim)
        if len(l1) != self.seg.count:
            raise IndexCorruptError(self.root / self.seg.l1.name, f"{len(l1)} level-1 rows, expected {self.seg.count}")
        return l1

    def _bad_rows(self, rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Positions k where rows[k] (store row idx[k]) does not match its checksum.

        The digests come from one bytes object in a tight loop and are compared as one array:
        this runs beside torch's import (`open_ahead`), where every Python-level step per row
        waits for the GIL."""
        return np.nonzero(_digests(block_sums(rows)) != self.row_sum[idx])[0].astype(np.int64)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Store rows `idx` (sorted, unique), each checked against its checksum.

        One run of consecutive rows comes back as a view of the map, not a copy (segment files
        are immutable; the kernel maps cached pages 64 KB per fault); scattered rows are gathered.
        A row `precheck` verified is not summed again: its check is used up by this read.
        """
        out = self.store[idx[0]:idx[-1] + 1] if len(idx) and idx[-1] - idx[0] + 1 == len(idx) else self.store[idx]
        if self.verify_reads and len(idx):
            todo = np.arange(len(idx))
            if self._prechecked is not None:
                done = self._prechecked[idx]
                self._prechecked[idx] = False
                todo = todo[~done]
            part = out if len(todo) == len(idx) else out[todo]
            bad = self._bad_rows(part, idx[todo]) if len(todo) else ()
            if len(bad):
                i = int(idx[todo][bad[0]])
                raise IndexCorruptError(self.root / self.seg.store.name,
                                        f"corrupt index file (row {i}, id {self.ids[i]!r}: checksum mismatch)")
        return out

    def precheck(self, idx: np.ndarray, batch: int = 256) -> None:
        """Verify rows `idx` now, `batch` at a time (faulting their pages into this map), so the
        next read of each skips the sums.  Rows that do not match are left unmarked: their read
        raises the error, in its usual place."""
        if not self.verify_reads or not len(idx):
            return
        if self._prechecked is None:
            self._prechecked = np.zeros(self.seg.count, bool)
        for s in range(0, len(idx), batch):
            part = np.asarray(idx[s:s + batch], dtype=np.int64)
            rows = self.store[part[0]:part[-1] + 1] if part[-1] - part[0] + 1 == len(part) else self.store[part]
            ok = np.ones(len(part), bool)
            ok[self._bad_rows(rows, part)] = False
            self._prechecked[part[ok]] = True

    def live_rows(self) -> np.ndarray:
        keep = np.ones(self.seg.count, bool)
        keep[np.asarray(self.seg.deleted, dtype=np.int64)] = False
        return np.nonzero(keep)[0]

    def verify(self) -> None:
        """Check every store row (the full, slow integrity check)."""
        self._prechecked = None
        for s in range(0, self.seg.count, 256):
            self.rows(np.arange(s, min(s + 256, self.seg.count)))


def discard_ahead(root: Path) -> None:
    """Forget the readers `open_ahead` opened under `root` that no index adopted (a command that
    failed before reading them): stale ones must not serve a later index in the same process."""
    with _AHEAD_LOCK:
        for key in [k for k in _AHEAD if k[0] == str(root)]:
            del _AHEAD[key]


def open_ahead(root: Path, segments: Sequence[Segment], params: TmkParams, store: str, verify_reads: bool,
               precheck_all: bool = False) -> int:
    """Open the readers of `segments` before the index that will use them exists, e.g. while a
    command imports torch (reading, checksums and page faults release the GIL): their id tables
    and level-1 vectors are read, and with ``precheck_all`` every live row is verified (what a
    query that scores every row will read).  The index's own SegmentReader for the same file
    adopts each one (once).  Anything that fails is left for the index to meet and report in
    its usual place.  Returns the rows prechecked."""
    done = 0
    for seg in segments:
        try:
            r = SegmentReader(root, seg, params, store, verify_reads)
            r._l1 = r.load_l1()
            if precheck_all:
                live = r.live_rows()
                r.precheck(live)
                done += len(live)
        except (OSError, ValueError, IndexCorruptError) as e:
            log.debug("open_ahead %s: %s", seg.name, e)
            continue
        with _AHEAD_LOCK:
            _AHEAD[(str(root), seg.store.name)] = r
    return done
