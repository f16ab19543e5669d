"""Bounded video hashing for the server: a few hashing workers and a short queue, 503 beyond.

Each worker thread keeps its own `VideoHasher` (they are stateful); a video that cannot be
decoded is a 400 naming the upload, not a traceback.  Frames and seconds are counted for
/metrics (hashing frames/s).
"""
from __future__ import annotations

import collections
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from engine.decode import DecodeError
from engine.features import TmkFeatures
from engine.serve.banks import BankError


@dataclass
class HashResult:
    features: TmkFeatures
    frames: int
    seconds: float


class QueueFull(BankError):
    """The hashing queue is full: 503 with a Retry-After."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(503, "too many videos are being hashed; retry later")
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.retry_after,))


class HashPool:
    """`workers` videos hashed at once, `queue` more waiting; `make_hasher()` builds one hasher per worker."""

    def __init__(self, make_hasher: Callable[[], Any], workers: int = 1, queue: int = 4,
                 retry_after_s: int = 2) -> None:
        self.workers, self.queue_size, self.retry_after_s = max(1, workers), max(0, queue), retry_after_s
        self._make = make_hasher
        self._local = threading.local()
        self._ex = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="vmatch-hash")
        self._lock = threading.Lock()
        self.pending = 0                 # running + waiting
        self.frames_total = 0
        self.seconds_total = 0.0
        self._recent: collections.deque[tuple[float, int, float]] = collections.deque(maxlen=256)

    def submit(self, path: str | os.PathLike[str], name: str) -> Future:
        """Queue one video file; raises QueueFull when workers and queue are all taken."""
        with self._lock:
            if self.pending >= self.workers + self.queue_size:
                raise QueueFull(self.retry_after_s)
            self.pending += 1
        try:
            return self._ex.submit(self._run, Path(path), name)
        except RuntimeError:   # shut down
            with self._lock:
                self.pending -= 1
            raise BankError(503, "the server is shutting down") from None

    def _hasher(self) -> Any:
        h = getattr(self._local, "hasher", None)
        if h is None:
            h = self._local.hasher = self._make()
        return h

    def _run(self, path: Path, name: str) -> HashResult:
        try:
            t0 = time.perf_counter()
            try:
                feats = self._hasher().hash(path)
            except DecodeError as e:
                raise BankError(400, f"{name}: not a decodable video ({e.reason if hasattr(e, 'reason') else e})"
                                ) from None
            if feats.frame_count == 0:
                raise BankError(400, f"{name}: no frames could be decoded")
            dt = time.perf_counter() - t0
            with self._lock:
                self.frames_total += feats.frame_count
                self.seconds_total += dt
                self._recent.append((time.time(), feats.frame_count, dt))
            return HashResult(feats, feats.frame_count, dt)
        finally:
            with self._lock:
                self.pending -= 1

    def frames_per_second(self, window_s: float = 60.0) -> float:
        """Frames hashed per hashing-second over the jobs that finished in the last `window_s`."""
        now = time.time()
        with self._lock:
            recent = [(f, s) for t, f, s in self._recent if now - t <= window_s]
        secs = sum(s for _, s in recent)
        return sum(f for f, _ in recent) / secs if secs > 0 else 0.0

    def close(self) -> None:
        self._ex.shutdown(wait=True, cancel_futures=True)
