"""Signatures for every labelled item (read, hashed once, or cached) and level-1/level-2 of every pair."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from engine.eval.labels import LabelledSet, is_tmk
from engine.features import FeatureBatch, Signatures, TmkFeatures
from engine.tmkfile import read_tmk, write_tmk
from engine.errors import InputError


class Hasher(Protocol):
    def hash(self, path: str | os.PathLike[str]) -> TmkFeatures: ...


from engine.progress import Reporter as ProgressLike  # noqa: E402  (one progress type: engine.progress)


@dataclass
class PairScores:
    """Level-1 and level-2 (float32) and labels (bool) of every pair of a LabelledSet, in pair order."""

    level1: np.ndarray
    level2: np.ndarray
    labels: np.ndarray


#: Partners stacked per scoring call (bounds memory: about 260 KB per default signature).
_CHUNK = 256


class FeatureStore:
    """Signatures of items by path: ``.tmk`` files are read, videos hashed once each.

    ``cache_dir`` keeps hashes of videos across runs as ``<key>.tmk``, the key derived from the
    resolved path, size, modification time and hashing mode; ``lookup`` (e.g. an index's stored
    features) is asked first and may return None.
    """

    def __init__(self, hasher: Hasher | None = None, cache_dir: str | os.PathLike[str] | None = None,
                 cache_tag: str = "", lookup: Callable[[Path], TmkFeatures | None] | None = None) -> None:
        self.hasher = hasher
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.cache_tag, self.lookup = cache_tag, lookup
        self._mem: dict[Path, TmkFeatures] = {}
        self._sigs: dict[Path, Signatures] = {}
        self.hashed = self.cached = self.read = self.looked_up = 0
        #: --robust: hashes videos with border signatures (engine.borders.BorderHasher)
        self.border_hasher: Hasher | None = None
        #: --robust with an index: item path -> its stored Signatures (or None)
        self.signature_lookup: Callable[[Path], Signatures | None] | None = None

    def _cache_path(self, path: Path) -> Path | None:
        if self.cache_dir is None:
            return None
        st = path.stat()
        key = hashlib.sha256(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{self.cache_tag}".encode()).hexdigest()[:32]
        return self.cache_dir / f"{key}.tmk"

    def get(self, path: Path) -> TmkFeatures:
        """Signature of one item (raises TmkFormatError / DecodeError naming the file)."""
        path = Path(path)
        if path not in self._mem:
            self._mem[path] = self._resolve(path, robust=False)
        return self._mem[path]

    def signatures(self, path: Path) -> Signatures:
        """All signatures of one item (--robust): the main one and the border-cropped one, from
        ``X.borders.tmk`` beside a ``.tmk`` item, the index, the cache or a hash with borders."""
        path = Path(path)
        if path not in self._sigs:
            sig = self._resolve(path, robust=True)
            self._sigs[path] = sig
            self._mem.setdefault(path, sig.main)
        return self._sigs[path]

    def _resolve(self, path: Path, robust: bool):  # -> TmkFeatures, or Signatures when robust
        """The one ladder for an item: the lookup (an index), then a ``.tmk`` file, then the cache,
        then the hasher (whose result is cached).  ``robust`` asks for ``Signatures``: the
        signature lookup, the ``.borders.tmk`` sidecar, cache entries with their sidecar (or a
        ``.noborders`` marker) and the border hasher."""
        if robust:
            from engine.index.borders import sidecar_path   # lazy: plain eval does not load the index
        lookup = self.signature_lookup if robust else self.lookup
        found = lookup(path) if lookup else None
        if found is not None:
            self.looked_up += 1
            return found
        if is_tmk(path):
            if robust:
                side = sidecar_path(path)
                return Signatures(self.get(path), read_tmk(side) if side.is_file() else None)
            self.read += 1
            return read_tmk(path)
        cached = self._cache_path(path)
        if cached is not None and cached.is_file() and (not robust or sidecar_path(cached).is_file()
                                                        or cached.with_suffix(".noborders").is_file()):
            self.cached += 1
            if not robust:
                return read_tmk(cached)
            side = sidecar_path(cached)
            return Signatures(read_tmk(cached), read_tmk(side) if side.is_file() else None)
        hasher = self.border_hasher if robust else self.hasher
        if hasher is None:
            raise ValueError(f"{path}: a video input needs a hasher")
        out = hasher.hash(path)
        self.hashed += 1
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            write_tmk(cached, out.main if robust else out)
            if robust and out.borders is not None:
                write_tmk(sidecar_path(cached), out.borders)
            elif robust:
                cached.with_suffix(".noborders").touch()
        return out


class ItemError(InputError):
    """An item that could not be read, hashed or cached; str() is one line ``<path>: <reason>``."""


def load_features(lset: LabelledSet, store: FeatureStore, progress: ProgressLike | None = None,
                  robust: bool = False) -> list:
    """Signatures of every item, in item order (videos hashed once each); ItemError on failure.

    ``robust``: ``Signatures`` (with border signatures) instead of TmkFeatures."""
    from engine.decode import DecodeError
    from engine.tmkfile import TmkFormatError

    out = []
    for p in lset.items:
        try:
            out.append(store.signatures(p) if robust else store.get(p))
        except (DecodeError, TmkFormatError) as e:  # already `<path>: <reason>`
            raise ItemError(str(e)) from None
        except OSError as e:
            raise ItemError(f"{e.filename or p}: {e.strerror or e}") from None
        except Exception as e:  # noqa: BLE001 - name the item, keep the CLI free of tracebacks
            first = str(e).splitlines()[0] if str(e) else ""
            raise ItemError(f"{p}: {type(e).__name__}: {first}".rstrip(": ")) from e
        if progress:
            progress.update(1)
    return out


def score_pairs(lset: LabelledSet, feats: list[TmkFeatures], scorer, progress: ProgressLike | None = None) -> PairScores:
    """Level-1 and level-2 (full offset search, no level-1 cut) of every labelled pair.

    Pairs are grouped by their first item so each signature is scored against its partners in
    one batched call.
    """
    n = len(lset.pairs)
    l1 = np.full(n, np.nan, np.float32)
    l2 = np.full(n, np.nan, np.float32)
    by_a: dict[int, list[int]] = {}
    for k, p in enumerate(lset.pairs):
        by_a.setdefault(p.a, []).append(k)
    for a, ks in by_a.items():
        for s in range(0, len(ks), _CHUNK):
            chunk = ks[s:s + _CHUNK]
            res = scorer.one_to_many(feats[a], FeatureBatch.stack([feats[lset.pairs[k].b] for k in chunk]), -1.0)
            l1[chunk], l2[chunk] = res.level1, res.level2
            if progress:
                progress.update(len(chunk))
    return PairScores(l1, l2, np.array([p.label for p in lset.pairs], dtype=bool))


def score_pairs_robust(lset: LabelledSet, sigs: list[Signatures], scorer, progress: ProgressLike | None = None
                       ) -> tuple[PairScores, list[str]]:
    """Like score_pairs, each pair scored as its best variant (engine/robust.py, rule 'min': the
    highest min(level-1, level-2)); also returns the variant of every pair."""
    from engine.robust import RobustScorer

    rs = RobustScorer(scorer)
    n = len(lset.pairs)
    l1 = np.full(n, np.nan, np.float32)
    l2 = np.full(n, np.nan, np.float32)
    variants = [""] * n
    by_a: dict[int, list[int]] = {}
    for k, p in enumerate(lset.pairs):
        by_a.setdefault(p.a, []).append(k)
    for a, ks in by_a.items():
        for s in range(0, len(ks), _CHUNK):
            chunk = ks[s:s + _CHUNK]
            res = rs.one_to_many(sigs[a], [sigs[lset.pairs[k].b] for k in chunk], -1.0, None, choose="min")
            for k, r in zip(chunk, res):
                if r is not None:
                    l1[k], l2[k], variants[k] = r.level1, r.level2, r.variant
            if progress:
                progress.update(len(chunk))
    return PairScores(l1, l2, np.array([p.label for p in lset.pairs], dtype=bool)), variants
