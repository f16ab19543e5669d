"""Where a backfill's signatures go: a folder of `.tmk` files and/or an index.

Both keep the exactly-once protocol of engine/ray/backfill.py (documented there, with the
ledger's states in engine/ray/ledger.py): the `.tmk` sink writes atomically *before* the driver
marks the row done; the index sink buffers signatures and commits them in batches, each batch
marked ``indexing`` in the ledger (committed) before the index add and ``done`` after it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from engine.errors import VmatchError
from engine.features import TmkFeatures
from engine.ray.ledger import Item, Ledger
from engine.tmkfile import TmkFormatError, atomic_write_bytes, from_bytes

#: (item, kind, reason): how a sink reports a video it could not take.
FailFn = Callable[[Item, str, str], None]


class TmkDirSink:
    """``<outdir>/<name>.tmk`` per video, written atomically (same bytes as `vmatch hash -d`)."""

    def __init__(self, outdir: str | os.PathLike[str]) -> None:
        self.outdir = Path(outdir)

    def write(self, it: Item, tmk: bytes) -> str | None:
        """Write the file; the reason when it cannot be written (the video then failed), else None."""
        target = self.outdir / f"{it.name}.tmk"
        try:
            atomic_write_bytes(target, tmk)
        except OSError as e:
            return f"cannot write {target} ({e.strerror or e})"
        return None


class IndexSink:
    """Signatures added to an index in batches of ``batch`` videos, bracketed by ledger updates."""

    def __init__(self, index: Any, where: str, batch: int, fail: FailFn,
                 event: Callable[..., None] = lambda *a, **k: None) -> None:
        self.index, self.where, self.batch = index, where, int(batch)
        self.fail, self.event = fail, event
        self.buf: list[tuple[Item, TmkFeatures, int, float]] = []

    def parse(self, it: Item, tmk: bytes) -> TmkFeatures | str:
        """The signature of a worker's bytes, named by the item (or the reason it is not valid)."""
        try:
            feats = from_bytes(tmk, it.name)
        except TmkFormatError as e:
            return e.reason
        feats.name = it.name
        return feats

    def add(self, it: Item, feats: TmkFeatures, frames: int, seconds: float) -> bool:
        """Buffer one signature; True when a full batch is waiting (call `commit`)."""
        self.buf.append((it, feats, frames, seconds))
        return len(self.buf) >= self.batch

    def commit(self, ledger: Ledger, flush: Callable[[], None]) -> int:
        """Add the buffered signatures in one index commit; returns how many were added.

        ``flush`` commits the driver's pending ledger rows first (so failures recorded here land
        after them, as before).
        """
        from engine.index import VideoIndexError

        buf, self.buf = self.buf, []
        if not buf:
            return 0
        flush()
        self.index.reload()
        for it, *_ in [b for b in buf if b[0].name in self.index]:
            self.fail(it, "index", f"id {it.name!r} is already in the index {self.where} "
                                   f"(added by something else, or the video changed: remove it first)")
        buf = [b for b in buf if b[0].name not in self.index]
        if not buf:
            flush()
            return 0
        batch = ledger.next_batch()
        with ledger.transaction():
            ledger.set_indexing([b[0].id for b in buf], batch, {b[0].id: (b[2], b[3]) for b in buf})
        self.event("index_commit", batch=batch, size=len(buf))
        try:
            self.index.add([b[1] for b in buf], ids=[b[0].name for b in buf], sources=[b[0].path for b in buf])
        except (VmatchError, VideoIndexError, OSError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            for it, *_ in buf:
                self.fail(it, "index", f"index add failed: {reason}")
            flush()
            return 0
        self.event("index_committed", batch=batch, size=len(buf))
        with ledger.transaction():
            ledger.set_done([b[0].id for b in buf])
        return len(buf)
