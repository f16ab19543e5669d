"""TmkPdqfIndex: a pytx `SignalTypeIndex` over vmatch's two-stage search.

Signals are decoded once, when added; the index keeps what a vmatch index keeps (the
L2-normalised pure average for level-1, the cos/sin features for level-2, float32 or float16)
and answers `query` with `VideoIndex.in_memory(...).query`, the same faiss level-1 search and
bounded level-2 batches as `vmatch query`.  Identical signals share one row.

It pickles its arrays, never the 351 KB strings, through `__getstate__`/`__setstate__`, so the
base `SignalTypeIndex.deserialize` (plain `pickle.load`, HMA's reload path) restores it, and
unpickling imports neither torch nor faiss (they load on the first query).
"""
from __future__ import annotations

import hashlib
import logging
import threading
import typing as t
from dataclasses import dataclass

import numpy as np
from threatexchange.signal_type.index import IndexMatch, SignalSimilarityInfo, SignalTypeIndex, T

from engine import signals
from engine.tmkfile import from_bytes
from kernels.params import DEFAULT_PARAMS

log = logging.getLogger(__name__)
_P = DEFAULT_PARAMS
_ROW_SHAPE = (2, _P.num_periods, _P.num_coeffs, _P.dim)
_DTYPES = {"fp32": np.float32, "fp16": np.float16}


@dataclass
class TmkPdqfSimilarityInfo(SignalSimilarityInfo):
    """Level-1 and level-2 of a comparison; `pretty_str` is one token (``0.9123/0.8841``).

    pytx orders similarity infos as distances (smaller is closer), so ``a < b`` here means
    a is the closer match: higher level-2, then higher level-1.
    """

    level1: float
    level2: float

    def pretty_str(self) -> str:
        return f"{self.level1:.4f}/{self.level2:.4f}"

    def __lt__(self, other: t.Any) -> bool:
        if isinstance(other, TmkPdqfSimilarityInfo):
            return (self.level2, self.level1) > (other.level2, other.level1)
        return NotImplemented


class TmkPdqfIndex(SignalTypeIndex[T]):
    """Two-stage TMK index; thresholds are inclusive (``>=``), like the reference."""

    #: Defaults of new indexes (an HMA operator can set them in the OMM config).
    LEVEL1_THRESHOLD = 0.7
    LEVEL2_THRESHOLD = 0.7
    #: Level-2 feature precision: fp32 (scores equal the reference's) or fp16 (half the size;
    #: level-2 within engine.index.level2.FP16_LEVEL2_BOUND, like `vmatch index create --store fp16`).
    STORE = "fp32"
    #: Query device: auto (CUDA when present), cpu or cuda.
    DEVICE = "auto"
    _STATE_VERSION = 1

    def __init__(self, level1_threshold: float | None = None, level2_threshold: float | None = None,
                 store: str | None = None) -> None:
        super().__init__()
        self.level1_threshold = self.LEVEL1_THRESHOLD if level1_threshold is None else float(level1_threshold)
        self.level2_threshold = self.LEVEL2_THRESHOLD if level2_threshold is None else float(level2_threshold)
        self.store = store or self.STORE
        if self.store not in _DTYPES:
            raise ValueError(f"unknown store {self.store!r} (expected fp32 or fp16)")
        self._entries: list[list[T]] = []           # per row: every entry added with that signal
        self._keys: dict[bytes, int] = {}            # SHA-256 of the .tmk bytes -> row
        self._unit = np.zeros((0, _P.dim), np.float32)
        self._rows = np.zeros((0, *_ROW_SHAPE), _DTYPES[self.store])
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._search: t.Any = None                   # VideoIndex.in_memory, built on first query
        self._lock = threading.Lock()

    @classmethod
    def build(cls, entries: t.Iterable[t.Tuple[str, T]], level1_threshold: float | None = None,
              level2_threshold: float | None = None, store: str | None = None) -> "TmkPdqfIndex[T]":
        ret = cls(level1_threshold, level2_threshold, store)
        ret.add_all(entries)
        return ret

    def __len__(self) -> int:
        """Distinct signals held."""
        return len(self._entries)

    # ------------------------------------------------------------------ adding
    def add(self, signal_str: str, entry: T) -> None:
        """Add one signal (either string form; ValueError if invalid); duplicates keep every entry."""
        data = signals.decode_bytes(signal_str, "<signal>", _P)
        key = hashlib.sha256(data).digest()
        with self._lock:
            row = self._keys.get(key)
            if row is not None:
                self._entries[row].append(entry)
                return
            self._pending.append(self._prepare(data))
            self._keys[key] = len(self._entries)
            self._entries.append([entry])
            self._search = None

    def add_all(self, entries: t.Iterable[t.Tuple[str, T]]) -> None:
        """`add` each entry; an invalid signal is logged (one line) and skipped, so one bad hash
        from an exchange does not stop the whole index from being built."""
        bad = 0
        for n, (signal_str, entry) in enumerate(entries, 1):
            try:
                self.add(signal_str, entry)
            except signals.SignalError as e:
                bad += 1
                log.warning("tmk_pdqf index: entry %d (%r) skipped: %s", n, entry, e.reason)
        if bad:
            log.warning("tmk_pdqf index: %d invalid signals skipped", bad)

    def _prepare(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """The stored form of a signature, converted as `vmatch index add` converts it."""
        from engine.index.segment import prepare

        f = from_bytes(data)
        p = prepare(f, "", "", self.store)
        row = p.row[0] if len(p.row) == 1 else np.stack(p.row)
        return p.l1, np.ascontiguousarray(row, dtype=_DTYPES[self.store])

    def _consolidate(self) -> None:
        if self._pending:
            self._unit = np.concatenate([self._unit, np.stack([u for u, _ in self._pending])])
            self._rows = np.concatenate([self._rows, np.stack([r for _, r in self._pending])])
            self._pending = []

    # ---------------------------------------------------------------- querying
    def _searcher(self) -> t.Any:
        self._consolidate()
        if self._search is None and len(self._entries):
            import torch

            from engine.index import VideoIndex
            from kernels.device import resolve_device

            device = resolve_device(self.DEVICE)
            rows = torch.from_numpy(self._rows).to(device)
            self._search = VideoIndex.in_memory([str(i) for i in range(len(self._entries))], self._unit, rows,
                                                _P, device, batch_rows=4096 if device.type == "cuda" else 512)
        return self._search

    def query(self, query: str) -> t.List[IndexMatch[T]]:
        """Every entry whose signal has level-1 >= and level-2 >= the thresholds, best first;
        ValueError for an invalid signal, no matches for an empty one."""
        if isinstance(query, str) and not query.strip():
            return []   # pytx's hash of a file that could not be hashed (hash_from_file logged why)
        needle = signals.decode(query, "<query>", _P)
        with self._lock:  # one query at a time: the search sets torch's thread count around level-2
            ix = self._searcher()
            if ix is None:
                return []
            found = ix.query([needle], self.level1_threshold, self.level2_threshold)[0]
        out: t.List[IndexMatch[T]] = []
        for m in found:
            info = TmkPdqfSimilarityInfo(m.level1, m.level2)
            out.extend(IndexMatch(info, e) for e in self._entries[int(m.id)])
        return out

    def dispose(self) -> None:
        with self._lock:
            self._search = None

    # ----------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, t.Any]:
        with self._lock:
            self._consolidate()
            keys = sorted(self._keys, key=self._keys.__getitem__)
            return {"version": self._STATE_VERSION, "level1_threshold": self.level1_threshold,
                    "level2_threshold": self.level2_threshold, "store": self.store,
                    "keys": b"".join(keys), "entries": self._entries, "unit": self._unit, "rows": self._rows}

    def __setstate__(self, state: dict[str, t.Any]) -> None:
        if state.get("version") != self._STATE_VERSION:
            raise ValueError(f"TmkPdqfIndex: unsupported pickled state version {state.get('version')!r}")
        self.level1_threshold, self.level2_threshold = state["level1_threshold"], state["level2_threshold"]
        self.store, self._entries = state["store"], state["entries"]
        self._unit, self._rows = state["unit"], state["rows"]
        keys = state["keys"]
        self._keys = {keys[i:i + 32]: k for k, i in enumerate(range(0, len(keys), 32))}
        if not (len(self._keys) == len(self._entries) == len(self._unit) == len(self._rows)):
            raise ValueError("TmkPdqfIndex: inconsistent pickled state")
        self._pending = []
        self._init_runtime()
