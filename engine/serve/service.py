"""What the HTTP layer calls: one machine (`LocalService`) or Ray Serve handles (engine/serve/ray_app.py).

Every method is async and takes/returns plain data, so the same FastAPI app runs in one
uvicorn process or as a Ray Serve ingress.  The local service runs blocking work (index
queries, commits, hashing) in bounded thread pools and batches concurrent lookups that use the
same banks and thresholds into one index query (one level-1 matrix product, level-2 grouped).
"""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, Sequence

from engine.features import TmkFeatures
from engine.index import Match
from engine.serve.banks import BankError, BankStore, check_bank_name
from engine.serve.hashing import HashPool, HashResult


def match_json(bank: str, m: Match) -> dict[str, Any]:
    return {"bank": bank, "id": int(m.id) if m.id.isdigit() else m.id, "level1": round(m.level1, 6),
            "level2": round(m.level2, 6), "offsets": m.offsets}


class Service(Protocol):
    async def ready(self) -> str | None: ...           # None when ready, else why not
    async def list_banks(self) -> list[dict[str, Any]]: ...
    async def get_bank(self, name: str) -> dict[str, Any]: ...
    async def create_bank(self, name: str, c1: Any, c2: Any) -> dict[str, Any]: ...
    async def update_bank(self, name: str, c1: Any, c2: Any) -> dict[str, Any]: ...
    async def delete_bank(self, name: str) -> dict[str, Any]: ...
    async def add(self, name: str, items: list[tuple[TmkFeatures, Any, Any]]) -> list[int]: ...
    async def content(self, name: str, content_id: int) -> dict[str, Any]: ...
    async def remove(self, name: str, content_id: int) -> dict[str, Any]: ...
    async def lookup(self, needles: list[TmkFeatures], banks: list[str] | None, c1: float | None,
                     c2: float | None, top: int | None) -> list[list[dict[str, Any]]]: ...
    async def hash(self, path: Path, name: str) -> HashResult: ...
    async def index_status(self) -> dict[str, Any]: ...
    def gauges(self) -> dict[str, Any]: ...            # bank sizes, queue depth, frames/s (for /metrics)
    async def close(self) -> None: ...


class _Batcher:
    """Concurrent lookups with the same (banks, c1, c2, top) answered by one index query."""

    def __init__(self, store: BankStore, threads: int, max_batch: int = 32) -> None:
        self.store, self.max_batch = store, max_batch
        self._ex = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="vmatch-lookup")
        self._lock = threading.Lock()
        self._waiting: dict[tuple, list[tuple[list[TmkFeatures], Future]]] = {}

    def submit(self, needles: list[TmkFeatures], key: tuple) -> Future:
        fut: Future = Future()
        with self._lock:
            queue = self._waiting.setdefault(key, [])
            queue.append((needles, fut))
            first = len(queue) == 1
        if first:
            self._ex.submit(self._run, key)
        return fut

    def _run(self, key: tuple) -> None:
        with self._lock:
            queue = self._waiting.get(key, [])
            take, rest = queue[:self.max_batch], queue[self.max_batch:]
            if rest:
                self._waiting[key] = rest
                self._ex.submit(self._run, key)
            else:
                self._waiting.pop(key, None)
        banks, c1, c2, top = key
        allneedles = [n for needles, _ in take for n in needles]
        try:
            res = self.store.lookup(allneedles, list(banks) if banks else None, c1, c2, top)
        except BaseException as e:  # noqa: BLE001 - handed to every waiting request
            for _, fut in take:
                fut.set_exception(e)
            return
        at = 0
        for needles, fut in take:
            fut.set_result([[match_json(b, m) for b, m in ms] for ms in res[at:at + len(needles)]])
            at += len(needles)

    def close(self) -> None:
        self._ex.shutdown(wait=True)


class LocalService:
    """Banks and hashing in this process."""

    def __init__(self, store: BankStore, hashing: HashPool, lookup_threads: int = 2) -> None:
        self.store, self.hashing = store, hashing
        #: 0: lookups run on the event loop's thread, one after another in arrival order (no GIL
        #: handoffs between threads; the choice for one serving process per core)
        self.inline = lookup_threads == 0
        self._batcher = _Batcher(store, max(1, lookup_threads))
        self._io = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vmatch-io")

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.wrap_future(self._io.submit(fn, *args))

    async def ready(self) -> str | None:
        if self.store.ready.is_set():
            return None
        return self.store.load_error or "INDEX-NOT-LOADED"

    async def list_banks(self) -> list[dict[str, Any]]:
        return [self.store.bank_json(b) for b in self.store.list_banks()]

    async def get_bank(self, name: str) -> dict[str, Any]:
        return self.store.bank_json(self.store.bank(name))

    async def create_bank(self, name: str, c1: Any, c2: Any) -> dict[str, Any]:
        return await asyncio.wrap_future(self.store.create_bank(name, c1, c2))

    async def update_bank(self, name: str, c1: Any, c2: Any) -> dict[str, Any]:
        return await asyncio.wrap_future(self.store.update_bank(name, c1, c2))

    async def delete_bank(self, name: str) -> dict[str, Any]:
        return await asyncio.wrap_future(self.store.delete_bank(name))

    async def add(self, name: str, items: list[tuple[TmkFeatures, Any, Any]]) -> list[int]:
        return await asyncio.wrap_future(self.store.add(name, items))

    async def content(self, name: str, content_id: int) -> dict[str, Any]:
        return await self._call(self.store.content, name, content_id)

    async def remove(self, name: str, content_id: int) -> dict[str, Any]:
        return await asyncio.wrap_future(self.store.remove(name, content_id))

    async def lookup(self, needles: list[TmkFeatures], banks: list[str] | None, c1: float | None,
                     c2: float | None, top: int | None) -> list[list[dict[str, Any]]]:
        for b in banks or []:
            self.store.bank(b)       # unknown bank: 404 now, not inside a batch
        self.store.check_ready()
        if self.inline:
            res = self.store.lookup(needles, banks, c1, c2, top)
            return [[match_json(b, m) for b, m in ms] for ms in res]
        key = (tuple(banks) if banks else (), c1, c2, top)
        return await asyncio.wrap_future(self._batcher.submit(needles, key))

    async def hash(self, path: Path, name: str) -> HashResult:
        return await asyncio.wrap_future(self.hashing.submit(path, name))

    async def index_status(self) -> dict[str, Any]:
        return self.store.index_status()

    def gauges(self) -> dict[str, Any]:
        banks = {b.name: b.size for b in self.store.list_banks()} if self.store.ready.is_set() else {}
        return {"bank_sizes": banks, "hash_queue": self.hashing.pending,
                "write_queue": self.store._ops.qsize(),
                "hash_frames_per_second": self.hashing.frames_per_second(),
                "hash_frames_total": self.hashing.frames_total, "hash_seconds_total": self.hashing.seconds_total}

    async def close(self) -> None:
        await asyncio.to_thread(self.store.close)
        self._batcher.close()
        self.hashing.close()
        self._io.shutdown(wait=True)


def check_banks(banks: Sequence[str] | None) -> list[str] | None:
    """Validated bank names (None: every bank)."""
    if not banks:
        return None
    return [check_bank_name(b) for b in banks]


__all__ = ["Service", "LocalService", "BankError", "match_json", "check_banks"]
