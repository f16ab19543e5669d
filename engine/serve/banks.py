"""The banks of a serving data directory: one vmatch index per bank, live reads, group commits.

Layout of ``--data DIR``::

    DIR/NEXT_ID              the next content id no process has reserved (ids are never reused)
    DIR/NEXT_ID.lock         flock taken to reserve a block of ids (several serving processes)
    DIR/<BANK>/bank.json     name and per-bank thresholds (null: the server's)
    DIR/<BANK>/COMPACT.lock  flock of the process compacting this bank
    DIR/<BANK>/index/        a vmatch index (docs/index.md); item id = content id as text,
                             source = JSON {note, metadata, avg} (avg: the raw pure average, so
                             the exact signal string can be given back)

Writes (adds, removals, bank changes) run on one writer thread, which takes whatever is queued
and commits each bank's adds as one index add: a request is acknowledged only after the index
commit it is part of is durable (the manifest rename and folder fsync of docs/index.md), so a
``kill -9`` loses nothing acknowledged.  After a commit the writer refreshes its index
incrementally (`VideoIndex.refresh`: only the new segment is read, its level-1 rows appended)
and swaps a fresh `snapshot` in as the bank's read view: lookups in flight finish on the view
they started with, the next ones see the commit; nothing is rebuilt.  A poller notices commits
made by other processes (another server, ``vmatch index add``) by the manifest's stat and
refreshes the same way; a read-only store (a Ray matcher replica) sees all changes that way.

Each group commit is a new index segment, and every commit reads and writes the manifest that
lists them all, so after a commit that leaves a shard with more than ``compact_segments``
segments the writer merges the bank's small trailing segments into one
(`VideoIndex.compact(tail=...)`, a few rows each time); one process at a time
(``COMPACT.lock``), through the index's writer lock like any commit, so it is safe with readers
and with ``kill -9``; readers pick the merged segment up like any other commit.

Several serving processes (``vmatch serve --workers N``) each hold a writable store on the same
DIR: their commits are serialised by the index's writer lock (each commit starts from the latest
manifest), content ids come from blocks reserved under ``NEXT_ID.lock``, and each process's
poller picks up the others' commits, bank creations and deletions within ``poll_s``.
"""
from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from engine.features import TmkFeatures
from engine.index import IndexSnapshot, Match, VideoIndex, VideoIndexError
from engine.index.manifest import MANIFEST_NAME, fsync_dir, read_manifest
from engine.signals import encode
from engine.tmkfile import atomic_write_bytes

log = logging.getLogger("vmatch.serve")

BANK_NAME = re.compile(r"^[A-Z0-9_]+$")
BANK_FILE = "bank.json"
INDEX_DIR = "index"
NEXT_ID_FILE = "NEXT_ID"
NEXT_ID_LOCK = "NEXT_ID.lock"
#: Content ids reserved per NEXT_ID write (a crash skips at most this many ids).
ID_BLOCK = 1000
COMPACT_LOCK = "COMPACT.lock"
#: How long files replaced by a compaction stay for readers of older manifests (the index's
#: default is an hour; a server compacts often, and the manifest lists retired files until then).
RETIRE_S = 60.0


class BankError(Exception):
    """An expected failure of a bank request: HTTP status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message

    def __reduce__(self) -> tuple[Any, ...]:
        # keep (status, message) across pickling (Ray replicas hand errors to the ingress)
        return (type(self), (self.status, self.message))


@dataclass
class BankConfig:
    """Per-bank settings (None: the server's default)."""

    c1: float | None = None
    c2: float | None = None

    def to_json(self, name: str) -> dict[str, Any]:
        return {"name": name, "c1": self.c1, "c2": self.c2}


@dataclass
class Bank:
    name: str
    root: Path
    config: BankConfig
    index: VideoIndex                 # the writer's (or poller's) object; refreshed in place
    view: IndexSnapshot               # the read view lookups use: a snapshot, swapped on commits
    built_to: float = field(default_factory=time.time)
    stat: tuple[int, int, int] = (0, 0, 0)

    @property
    def size(self) -> int:
        return len(self.view)


def check_bank_name(name: str) -> str:
    if not isinstance(name, str) or not BANK_NAME.match(name):
        raise BankError(400, f"invalid bank name {name!r}: use A-Z, 0-9 and _ only")
    return name


def check_thresholds(c1: Any, c2: Any) -> tuple[float | None, float | None]:
    out = []
    for name, v in (("c1", c1), ("c2", c2)):
        if v is None:
            out.append(None)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not -1.0 <= float(v) <= 1.0:
            raise BankError(400, f"{name} must be a number between -1 and 1 (got {v!r})")
        out.append(float(v))
    return out[0], out[1]


def _manifest_stat(index_dir: Path) -> tuple[int, int, int]:
    try:
        st = os.stat(index_dir / MANIFEST_NAME)
    except OSError:
        return (0, 0, 0)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def source_record(f: TmkFeatures, note: Any, metadata: Any) -> str:
    """What the index's source column holds for a content item."""
    avg = np.ascontiguousarray(f.avg, dtype=np.float32)
    return json.dumps({"note": note, "metadata": metadata, "avg": base64.b64encode(avg.tobytes()).decode()},
                      separators=(",", ":"))


class _Op:
    def __init__(self, kind: str, bank: str, payload: Any = None) -> None:
        self.kind, self.bank, self.payload = kind, bank, payload
        self.future: Future = Future()


class BankStore:
    """All banks of one data directory; thread-safe.  ``writable=False``: read-only, polling."""

    def __init__(self, data: str | os.PathLike[str], c1: float = 0.7, c2: float = 0.7, device: str = "cpu",
                 writable: bool = True, poll_s: float = 0.25, shards: int = 1, store: str = "fp32",
                 max_batch: int = 512, compact_segments: int = 16) -> None:
        self.data = Path(data)
        self.c1, self.c2, self.device = c1, c2, device
        self.writable, self.poll_s, self.shards, self.store = writable, poll_s, shards, store
        self.max_batch = max_batch
        #: A shard with more segments than this gets its small trailing ones merged (0: never).
        self.compact_segments = compact_segments
        self.compactions = 0
        self.banks: dict[str, Bank] = {}
        self.ready = threading.Event()
        self.load_error: str | None = None
        self._lock = threading.Lock()          # guards self.banks
        self._id_lock = threading.Lock()       # guards the id counter (held over NEXT_ID's fsync)
        self._ops: queue.Queue[_Op | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next_id = 1
        self._reserved = 0              # ids up to here are this process's (a block under NEXT_ID.lock)
        self._top_seen = 0              # highest id in the banks at load (a data dir older than NEXT_ID)
        #: Called with the number of items after each commit (metrics).
        self.on_commit: Callable[[str, int], None] | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Load the banks in the background (``ready`` is set when done), start writer and poller."""
        if self.writable:
            self.data.mkdir(parents=True, exist_ok=True)
        elif not self.data.is_dir():
            raise BankError(500, f"{self.data}: no such data directory")
        t = threading.Thread(target=self._load_all, name="vmatch-banks-load", daemon=True)
        t.start()
        self._threads.append(t)

    def _load_all(self) -> None:
        try:
            if self.writable:        # leftovers of a crash while creating or deleting a bank
                for e in os.scandir(self.data):
                    if e.is_dir() and e.name.startswith((".new-", ".deleted-")):
                        shutil.rmtree(e.path, ignore_errors=True)
            for name in self._bank_dirs():
                self._open_bank(name)
            if self.writable:
                self._init_ids()
        except Exception as e:  # noqa: BLE001 - reported by /status, the server keeps answering
            self.load_error = str(e)
            log.error("loading banks failed: %s", e)
            return
        log.info("loaded %d bank(s) from %s", len(self.banks), self.data)
        self.ready.set()
        for target, name in ((self._writer, "vmatch-writer"), (self._poller, "vmatch-poller")):
            if name != "vmatch-poller" and not self.writable:
                continue                      # a read-only store only follows the others' commits
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def close(self, timeout: float = 30.0) -> None:
        """Finish queued writes, then stop the threads (graceful shutdown)."""
        self._stop.set()
        self._ops.put(None)
        for t in self._threads:
            t.join(timeout)

    def _bank_dirs(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.data)
                          if e.is_dir() and BANK_NAME.match(e.name) and (Path(e.path) / BANK_FILE).exists())
        except FileNotFoundError:
            return []

    def _open_bank(self, name: str) -> Bank:
        """Open a bank (once: a bank another thread opened meanwhile is kept)."""
        root = self.data / name
        try:
            cfg = json.loads((root / BANK_FILE).read_text())
            config = BankConfig(*check_thresholds(cfg.get("c1"), cfg.get("c2")))
        except (OSError, ValueError, BankError) as e:
            raise BankError(500, f"{root / BANK_FILE}: unreadable bank settings ({e})") from None
        stat = _manifest_stat(root / INDEX_DIR)
        ix = VideoIndex(root / INDEX_DIR, device=self.device)
        ix.retire_after_s = RETIRE_S
        ix._state()        # map the files and build the level-1 searcher now
        bank = Bank(name, root, config, ix, ix.snapshot(), stat=stat)
        with self._lock:
            return self.banks.setdefault(name, bank)

    def _init_ids(self) -> None:
        if (self.data / NEXT_ID_FILE).exists():
            self._read_next_id()         # checked now: a damaged file is a load error, not a failed add
            return
        top = 0                          # a data dir from before NEXT_ID: start above every id in it
        for b in self.banks.values():
            for i in b.index.ids():
                if i.isdigit():
                    top = max(top, int(i))
        self._top_seen = top

    def _read_next_id(self) -> int:
        try:
            return int((self.data / NEXT_ID_FILE).read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            raise BankError(500, f"{self.data / NEXT_ID_FILE}: not a number") from None

    def _new_ids(self, n: int) -> list[int]:
        """`n` fresh content ids: from this process's block, else a new block reserved durably under
        the cross-process lock (a crash skips the rest of a block; an id is never given twice)."""
        with self._id_lock:
            if self._next_id + n - 1 > self._reserved:
                fd = os.open(self.data / NEXT_ID_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    first = max(self._read_next_id(), self._top_seen + 1, 1)
                    block = max(n, ID_BLOCK)
                    atomic_write_bytes(self.data / NEXT_ID_FILE, f"{first + block}\n".encode())
                    fsync_dir(self.data)
                finally:
                    os.close(fd)          # releases the lock
                self._next_id, self._reserved = first, first + block - 1
            first = self._next_id
            self._next_id += n
        return list(range(first, first + n))

    # ------------------------------------------------------------------ reading
    def check_ready(self) -> None:
        if not self.ready.is_set():
            raise BankError(503, self.load_error or "banks are loading")

    def bank(self, name: str) -> Bank:
        self.check_ready()
        check_bank_name(name)
        with self._lock:
            b = self.banks.get(name)
        if b is None and (self.data / name / BANK_FILE).exists():
            b = self._open_bank(name)      # created by another process since the last poll
        if b is None:
            raise BankError(404, f"no bank named {name!r}")
        return b

    def list_banks(self) -> list[Bank]:
        self.check_ready()
        with self._lock:
            return [self.banks[k] for k in sorted(self.banks)]

    def bank_json(self, b: Bank) -> dict[str, Any]:
        return {**b.config.to_json(b.name), "matching_enabled_ratio": 1.0, "size": b.size}

    def thresholds(self, b: Bank, c1: float | None, c2: float | None) -> tuple[float, float]:
        return (c1 if c1 is not None else b.config.c1 if b.config.c1 is not None else self.c1,
                c2 if c2 is not None else b.config.c2 if b.config.c2 is not None else self.c2)

    def lookup(self, needles: Sequence[TmkFeatures], banks: Sequence[str] | None = None, c1: float | None = None,
               c2: float | None = None, top: int | None = None) -> list[list[tuple[str, Match]]]:
        """Per needle, the (bank, match) pairs of every bank asked (all: None), best first per bank."""
        targets = [self.bank(n) for n in banks] if banks else self.list_banks()
        out: list[list[tuple[str, Match]]] = [[] for _ in needles]
        for b in targets:
            t1, t2 = self.thresholds(b, c1, c2)
            view = b.view         # one snapshot for the whole query
            for k, ms in enumerate(view.query(list(needles), t1, t2, top)):
                out[k].extend((b.name, m) for m in ms)
        return out

    def content(self, name: str, content_id: int) -> dict[str, Any]:
        b = self.bank(name)
        view = b.view
        key = str(content_id)
        if key not in view:
            raise BankError(404, f"no content {content_id} in bank {name!r}")
        info = view.item_info(key)
        feats = view.features([key])[0]
        rec = json.loads(str(info.get("source") or "{}"))
        if rec.get("avg"):
            feats.avg = np.frombuffer(base64.b64decode(rec["avg"]), dtype=np.float32).copy()
        feats.frame_count = int(info.get("frame_count", feats.frame_count) or 0)
        return {"id": content_id, "bank": name, "enabled": True, "note": rec.get("note"),
                "metadata": rec.get("metadata"), "added": info.get("time_added"),
                "signals": {"tmk_pdqf": encode(feats)}}

    def index_status(self) -> dict[str, Any]:
        banks = self.list_banks() if self.ready.is_set() else []
        return {"present": self.ready.is_set(), "built_to": int(max((b.built_to for b in banks), default=0)),
                "size": sum(b.size for b in banks)}

    # ------------------------------------------------------------------ writing (queued)
    def _submit(self, kind: str, bank: str, payload: Any = None) -> Future:
        self.check_ready()
        if not self.writable:
            raise BankError(405, "this replica is read-only")
        if self._stop.is_set():
            raise BankError(503, "the server is shutting down")
        op = _Op(kind, bank, payload)
        self._ops.put(op)
        return op.future

    def create_bank(self, name: str, c1: Any = None, c2: Any = None) -> Future:
        check_bank_name(name)
        return self._submit("create", name, BankConfig(*check_thresholds(c1, c2)))

    def update_bank(self, name: str, c1: Any = None, c2: Any = None) -> Future:
        self.bank(name)
        return self._submit("update", name, BankConfig(*check_thresholds(c1, c2)))

    def delete_bank(self, name: str) -> Future:
        self.bank(name)
        return self._submit("delete", name)

    def add(self, name: str, items: Sequence[tuple[TmkFeatures, Any, Any]]) -> Future:
        """Queue (signature, note, metadata) items; the future gives their content ids once durable."""
        self.bank(name)
        return self._submit("add", name, list(items))

    def remove(self, name: str, content_id: int) -> Future:
        b = self.bank(name)
        if str(content_id) not in b.view:
            raise BankError(404, f"no content {content_id} in bank {name!r}")
        return self._submit("remove", name, content_id)

    def _writer(self) -> None:
        while True:
            op = self._ops.get()
            if op is None:
                break
            batch, stop = [op], False
            while len(batch) < self.max_batch:
                try:
                    nxt = self._ops.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._run_batch(batch)
            if stop:
                break
        # drain whatever came after the stop marker: refuse it, never leave a caller hanging
        while True:
            try:
                op = self._ops.get_nowait()
            except queue.Empty:
                return
            if op is not None:
                op.future.set_exception(BankError(503, "the server is shutting down"))

    def _run_batch(self, batch: list[_Op]) -> None:
        run: list[_Op] = []
        for op in batch + [None]:  # type: ignore[list-item]
            if op is not None and op.kind == "add":
                run.append(op)
                continue
            if run:
                self._commit_adds(run)
                run = []
            if op is not None:
                self._guarded(op, lambda o=op: self._single(o))

    @staticmethod
    def _guarded(op: _Op, fn: Callable[[], Any]) -> None:
        try:
            op.future.set_result(fn())
        except BankError as e:
            op.future.set_exception(e)
        except (VideoIndexError, OSError, ValueError) as e:
            log.error("write to bank %s failed: %s", op.bank, e)
            op.future.set_exception(BankError(500, f"write to bank {op.bank} failed: {e}"))

    def _commit_adds(self, ops: list[_Op]) -> None:
        by_bank: dict[str, list[_Op]] = {}
        for op in ops:
            by_bank.setdefault(op.bank, []).append(op)
        for name, group in by_bank.items():
            with self._lock:
                b = self.banks.get(name)
            if b is None:
                for op in group:
                    op.future.set_exception(BankError(404, f"no bank named {name!r}"))
                continue
            n = sum(len(op.payload) for op in group)

            def commit() -> list[int]:
                if not (b.root / BANK_FILE).exists():
                    raise BankError(404, f"no bank named {name!r} (deleted)")
                ids = self._new_ids(n)
                feats = [f for op in group for f, _, _ in op.payload]
                sources = [source_record(f, note, meta) for op in group for f, note, meta in op.payload]
                before = _manifest_stat(b.root / INDEX_DIR)
                b.index.add(feats, ids=[str(i) for i in ids], sources=sources)   # durable on return
                self._publish(b, before)
                return ids

            holder = _Op("add", name)
            self._guarded(holder, commit)
            try:
                ids = holder.future.result()
            except BankError as e:
                for op in group:
                    op.future.set_exception(e)
                continue
            at = 0
            for op in group:
                op.future.set_result(ids[at:at + len(op.payload)])
                at += len(op.payload)
            if self.on_commit:
                self.on_commit(name, n)
            self._maybe_compact(b)          # after the acknowledgements: the next writes wait for it

    def _publish(self, b: Bank, stat: tuple[int, int, int] | None = None) -> None:
        """Swap in a read view of what the bank's index object holds, after refreshing it (None)
        or as a write of this process left it (`stat`: the manifest's stat from before that write).

        The stat recorded is always from before the state loaded, so a commit by another process
        that the view may have missed changes the stat, and the poller refreshes again."""
        if stat is None:
            stat = _manifest_stat(b.root / INDEX_DIR)
            b.index.refresh()
        b.view = b.index.snapshot()
        b.built_to = time.time()
        b.stat = stat

    def _single(self, op: _Op) -> Any:
        if op.kind == "create":
            with self._lock:
                if op.bank in self.banks or (self.data / op.bank).exists():
                    raise BankError(403, f"bank {op.bank!r} already exists")
            tmp = self.data / f".new-{op.bank}-{uuid.uuid4().hex[:8]}"
            VideoIndex.create(tmp / INDEX_DIR, shards=self.shards, coarse="flat", store=self.store, device="cpu")
            atomic_write_bytes(tmp / BANK_FILE, json.dumps(op.payload.to_json(op.bank)).encode())
            fsync_dir(tmp)
            try:
                os.rename(tmp, self.data / op.bank)    # the bank appears whole or not at all
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
                if (self.data / op.bank).exists():     # another process created it just now
                    raise BankError(403, f"bank {op.bank!r} already exists") from None
                raise
            fsync_dir(self.data)
            return self.bank_json(self._open_bank(op.bank))
        if op.kind == "refresh":
            self._refresh(op.bank)
            return None
        b = self.bank(op.bank)
        if op.kind == "update":
            cfg = BankConfig(op.payload.c1 if op.payload.c1 is not None else b.config.c1,
                             op.payload.c2 if op.payload.c2 is not None else b.config.c2)
            atomic_write_bytes(b.root / BANK_FILE, json.dumps(cfg.to_json(b.name)).encode())
            b.config = cfg
            return self.bank_json(b)
        if op.kind == "delete":
            trash = self.data / f".deleted-{b.name}-{uuid.uuid4().hex[:8]}"
            os.rename(b.root, trash)
            fsync_dir(self.data)
            with self._lock:
                self.banks.pop(b.name, None)
            shutil.rmtree(trash, ignore_errors=True)
            return {"message": "Done"}
        if op.kind == "remove":
            key = str(op.payload)
            before = _manifest_stat(b.root / INDEX_DIR)
            try:
                b.index.remove([key])
            except VideoIndexError:
                raise BankError(404, f"no content {op.payload} in bank {b.name!r}") from None
            self._publish(b, before)
            return {"message": "Done"}
        raise BankError(500, f"unknown operation {op.kind}")

    # ------------------------------------------------------------------ other processes' commits
    def _poller(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 - keep polling; the next round may succeed
                log.warning("poll failed: %s", e)

    def poll(self) -> None:
        """Pick up banks created or deleted and commits made by other processes."""
        names = set(self._bank_dirs())
        with self._lock:
            known = dict(self.banks)
        for name in names - set(known):      # created by another process (or just now by this one)
            self._open_bank(name)
        for name, b in known.items():
            if name not in names:            # deleted by another process
                with self._lock:
                    if self.banks.get(name) is b:
                        del self.banks[name]
                continue
            stat = _manifest_stat(b.root / INDEX_DIR)
            if stat != b.stat:
                if self.writable:            # the writer thread owns the index object
                    self._ops.put(_Op("refresh", name))
                else:
                    self._publish(b)
            try:
                cfg = json.loads((b.root / BANK_FILE).read_text())
                b.config = BankConfig(*check_thresholds(cfg.get("c1"), cfg.get("c2")))
            except (OSError, ValueError, BankError):
                pass

    # ------------------------------------------------------------------ compaction (writer thread)
    def _maybe_compact(self, b: Bank) -> None:
        try:
            self.compact(b)
        except Exception as e:  # noqa: BLE001 - the bank is as it was; the next commit tries again
            log.warning("compacting bank %s failed: %s", b.name, e)

    def compact(self, b: Bank) -> int:
        """Merge the bank's small trailing segments if a shard has more than `compact_segments`
        (skipped while another process compacts it); returns the shards rewritten.  Runs on the
        writer thread, which owns ``b.index``."""
        if self.compact_segments <= 0 or \
                max((len(s) for s in b.index.manifest.segments), default=0) <= self.compact_segments:
            return 0
        try:
            fd = os.open(b.root / COMPACT_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            return 0                          # the bank was deleted
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0                      # another process is at it
            root = b.root / INDEX_DIR
            if max((len(s) for s in read_manifest(root).segments), default=0) <= self.compact_segments:
                return 0                      # done by another process meanwhile
            t0 = time.perf_counter()
            before = _manifest_stat(root)
            n = b.index.compact(tail=self.compact_segments)
            self._publish(b, before)
            if n:
                self.compactions += 1
                log.info("bank %s: merged the small segments of %d shard(s) in %.2f s", b.name, n,
                         time.perf_counter() - t0)
            return n
        finally:
            os.close(fd)

    def _refresh(self, name: str) -> None:
        with self._lock:
            b = self.banks.get(name)
        if b is not None:
            self._publish(b)
