"""The backfill ledger: one SQLite row per input video, the job's durable state.

Rows are keyed by path and carry the file's size and mtime when it was listed: a rerun skips
rows that are ``done`` with an unchanged key, and redoes a video whose file changed.  Status:

* ``pending``  - to hash (new, changed, failed before, or interrupted);
* ``indexing`` - hashed and handed to an index commit that may or may not have landed; a
  rerun looks the ids up in the index (see :meth:`Ledger.indexing`) before doing anything;
* ``done``     - every requested output (.tmk file, index entry) is committed;
* ``failed``   - gave up on it in the last run that listed it (``kind`` + one-line ``reason``;
  kind ``refused``: its name cannot be an id, engine.inputs.check_id, e.g. a TAB in it).

The database runs in WAL mode: a driver killed at any moment (kill -9) leaves the last committed
state, and other processes may read it while a run is going on.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator
from engine.errors import VmatchError
from engine.inputs import id_problem

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id       INTEGER PRIMARY KEY,
    path     TEXT NOT NULL UNIQUE,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    status   TEXT NOT NULL,
    name     TEXT NOT NULL UNIQUE,
    kind     TEXT,
    reason   TEXT,
    frames   INTEGER,
    seconds  REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    batch    INTEGER,
    run      INTEGER NOT NULL,
    updated  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS items_run_status ON items(run, status);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

PENDING, INDEXING, DONE, FAILED = "pending", "indexing", "done", "failed"


class LedgerError(VmatchError, ValueError):
    """A ledger that cannot serve this run; str() is one line `<path>: <reason>`."""


@dataclass
class Item:
    """One video to process: ledger row id, absolute path and its output name (file stem / index id)."""

    id: int
    path: str
    name: str
    attempts: int = 0


@dataclass
class ScanResult:
    listed: int = 0        # distinct paths listed by this run
    todo: int = 0          # pending after the scan
    skipped: int = 0       # done before with the same size and mtime
    missing: int = 0       # could not be stat'ed (recorded as failed)


def _stem_name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _alt_name(path: str) -> str:
    return f"{_stem_name(path)}-{hashlib.sha1(path.encode('utf-8', 'surrogateescape')).hexdigest()[:10]}"


class Ledger:
    """Open (creating if needed) the ledger at ``path``; ``settings`` must match an existing one's."""

    def __init__(self, path: str | os.PathLike[str], settings: dict[str, Any] | None = None,
                 lock: bool = False) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if lock:
                self._lock()
            self.db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses nothing
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise LedgerError(self.path, f"not a usable ledger ({e})") from None
        except OSError as e:
            raise LedgerError(self.path, e.strerror or str(e)) from None
        if settings is not None:
            self._check_settings(settings)

    def _lock(self) -> None:
        """One driver per ledger: a second concurrent run would hash (and index) the same videos."""
        import fcntl

        fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LedgerError(self.path, "another backfill is running with this ledger") from None
        self._lock_fd = fd

    # ------------------------------------------------------------------ metadata
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def _check_settings(self, settings: dict[str, Any]) -> None:
        """Outputs made under other settings (mode, TMK parameters) must not be mixed."""
        want = json.dumps(settings, sort_keys=True)
        have = self.get_meta("settings")
        if have is None:
            self.set_meta("settings", want)
        elif have != want:
            old = json.loads(have)
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}"
                             for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k))
            raise LedgerError(self.path, f"made with other settings ({diff}); use another ledger or output")

    def new_run(self) -> int:
        run = int(self.get_meta("runs") or 0) + 1
        self.set_meta("runs", str(run))
        return run

    # ------------------------------------------------------------------ listing
    def scan(self, paths: Iterable[str], run: int, batch: int = 2000) -> ScanResult:
        """Record every listed path for `run` (streamed, committed every `batch` rows)."""
        res = ScanResult()
        cur = self.db.cursor()
        buf: list[str] = []

        def flush() -> None:
            cur.execute("BEGIN IMMEDIATE")
            try:
                for p in buf:
                    self._scan_one(cur, p, run, res)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            buf.clear()

        for p in paths:
            buf.append(p)
            if len(buf) >= batch:
                flush()
        if buf:
            flush()
        return res

    def _scan_one(self, cur: sqlite3.Cursor, path: str, run: int, res: ScanResult) -> None:
        now = time.time()
        try:
            st = os.stat(path)
            size, mtime, err = st.st_size, st.st_mtime_ns, None
        except OSError as e:
            size, mtime, err = -1, -1, ("no such file" if isinstance(e, FileNotFoundError) else e.strerror or str(e))
        kind = "unreadable"
        if err is None and id_problem(_stem_name(path)):  # the one id rule (engine.inputs)
            kind, err = "refused", id_problem(_stem_name(path))
        row = cur.execute("SELECT status, size, mtime_ns, run FROM items WHERE path=?", (path,)).fetchone()
        if row is not None and row[3] == run:
            return  # listed twice in this run
        res.listed += 1
        if err is not None:
            res.missing += 1
            if row is None:
                cur.execute("INSERT INTO items(path, size, mtime_ns, status, name, kind, reason, run, updated) "
                            "VALUES (?,?,?,?,?,?,?,?,?)",
                            (path, size, mtime, FAILED, self._free_name(cur, path), kind, err, run, now))
            else:
                cur.execute("UPDATE items SET status=?, kind=?, reason=?, run=?, updated=? WHERE path=?",
                            (FAILED, kind, err, run, now, path))
            return
        if row is None:
            cur.execute("INSERT INTO items(path, size, mtime_ns, status, name, run, updated) VALUES (?,?,?,?,?,?,?)",
                        (path, size, mtime, PENDING, self._free_name(cur, path), run, now))
            res.todo += 1
            return
        status, old_size, old_mtime = row[0], row[1], row[2]
        same = (old_size, old_mtime) == (size, mtime)
        if same and status == DONE:
            res.skipped += 1
            cur.execute("UPDATE items SET run=? WHERE path=?", (run, path))
        elif same and status == INDEXING:
            res.todo += 1  # resolved against the index before anything is hashed
            cur.execute("UPDATE items SET run=? WHERE path=?", (run, path))
        else:  # new content, failed before, or interrupted: hash (again)
            res.todo += 1
            cur.execute("UPDATE items SET status=?, size=?, mtime_ns=?, kind=NULL, reason=NULL, attempts=0, "
                        "batch=NULL, run=?, updated=? WHERE path=?", (PENDING, size, mtime, run, now, path))

    @staticmethod
    def _free_name(cur: sqlite3.Cursor, path: str) -> str:
        """The output name: the file stem (as `vmatch hash -d` names files) unless another path has it."""
        for name in (_stem_name(path), _alt_name(path)):
            if cur.execute("SELECT 1 FROM items WHERE name=?", (name,)).fetchone() is None:
                return name
        n = 2
        while True:  # practically unreachable (10 hex digits of SHA-1 collided)
            name = f"{_alt_name(path)}-{n}"
            if cur.execute("SELECT 1 FROM items WHERE name=?", (name,)).fetchone() is None:
                return name
            n += 1

    # ------------------------------------------------------------------ work
    def pending(self, run: int, page: int = 512) -> Iterator[Item]:
        """This run's pending items in listing order, read page by page (bounded memory).

        Rows that stop being pending while iterating (done, failed) are simply not returned again.
        """
        last = 0
        while True:
            rows = self.db.execute("SELECT id, path, name, attempts FROM items WHERE run=? AND status=? AND id>? "
                                   "ORDER BY id LIMIT ?", (run, PENDING, last, page)).fetchall()
            if not rows:
                return
            for r in rows:
                yield Item(*r)
            last = rows[-1][0]

    def indexing(self, run: int) -> list[Item]:
        """Items of `run` whose index commit was under way when a previous driver stopped."""
        return [Item(*r) for r in self.db.execute(
            "SELECT id, path, name, attempts FROM items WHERE run=? AND status=? ORDER BY id", (run, INDEXING))]

    def transaction(self) -> "_Tx":
        return _Tx(self.db)

    def set_done(self, ids: Iterable[int], frames: dict[int, tuple[int, float]] | None = None) -> None:
        now = time.time()
        frames = frames or {}
        for i in ids:
            if i in frames:
                f, s = frames[i]
                self.db.execute("UPDATE items SET status=?, frames=?, seconds=?, kind=NULL, reason=NULL, batch=NULL, "
                                "updated=? WHERE id=?", (DONE, f, s, now, i))
            else:
                self.db.execute("UPDATE items SET status=?, kind=NULL, reason=NULL, batch=NULL, updated=? WHERE id=?",
                                (DONE, now, i))

    def set_indexing(self, ids: Iterable[int], batch: int, frames: dict[int, tuple[int, float]]) -> None:
        now = time.time()
        for i in ids:
            f, s = frames.get(i, (None, None))
            self.db.execute("UPDATE items SET status=?, batch=?, frames=?, seconds=?, updated=? WHERE id=?",
                            (INDEXING, batch, f, s, now, i))

    def set_pending(self, ids: Iterable[int]) -> None:
        now = time.time()
        for i in ids:
            self.db.execute("UPDATE items SET status=?, batch=NULL, updated=? WHERE id=?", (PENDING, now, i))

    def set_failed(self, item_id: int, kind: str, reason: str) -> None:
        self.db.execute("UPDATE items SET status=?, kind=?, reason=?, batch=NULL, updated=? WHERE id=?",
                        (FAILED, kind, reason, time.time(), item_id))

    def add_attempt(self, item_id: int) -> int:
        self.db.execute("UPDATE items SET attempts=attempts+1 WHERE id=?", (item_id,))
        return int(self.db.execute("SELECT attempts FROM items WHERE id=?", (item_id,)).fetchone()[0])

    def next_batch(self) -> int:
        b = int(self.get_meta("batches") or 0) + 1
        self.set_meta("batches", str(b))
        return b

    # ------------------------------------------------------------------ reporting
    def counts(self, run: int | None = None) -> dict[str, int]:
        q = "SELECT status, COUNT(*) FROM items" + (" WHERE run=?" if run is not None else "") + " GROUP BY status"
        return {s: int(n) for s, n in self.db.execute(q, () if run is None else (run,))}

    def failures(self, run: int) -> list[tuple[str, str, str]]:
        """(path, kind, reason) of this run's failed items."""
        return [tuple(r) for r in self.db.execute(
            "SELECT path, kind, reason FROM items WHERE run=? AND status=? ORDER BY id", (run, FAILED))]

    def close(self) -> None:
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None


class _Tx:
    """`with ledger.transaction():` - one atomic, durable group of updates."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
