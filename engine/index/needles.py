"""Needles for a query: `.tmk` files (read in parallel), folders of them, or videos (hashed)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from engine.features import Signatures, TmkFeatures
from engine.tmkfile import iter_tmk_paths, read_many


def is_tmk(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() == ".tmk"


def load_needles(paths: Sequence[str | os.PathLike[str]],
                 hash_video: Callable[[Path], TmkFeatures] | None = None) -> list[TmkFeatures]:
    """Signatures named by file stem, in argument order (folders expand to their .tmk files).

    Anything that is not a `.tmk` file is a video, hashed with `hash_video` (required then).
    """
    expanded = iter_tmk_paths(paths)
    tmk = [p for p in expanded if is_tmk(p)]
    read = dict(zip(tmk, read_many(tmk)))
    out = []
    for p in expanded:
        if p in read:
            out.append(read[p])
        else:
            if hash_video is None:
                raise ValueError(f"{p}: not a .tmk file and no video hasher given")
            out.append(hash_video(p))
    return out


def load_signatures(paths: Sequence[str | os.PathLike[str]],
                    hash_video: Callable[[Path], Signatures] | None = None) -> list[Signatures]:
    """Like load_needles, with border signatures (``--robust``): ``X.borders.tmk`` beside ``X.tmk``
    is X's, not a needle of its own; videos are hashed by ``hash_video`` (an engine.borders
    BorderHasher's ``hash``)."""
    from engine.index.borders import split_sidecars

    expanded, side = split_sidecars(iter_tmk_paths(paths))
    tmk = [p for p in expanded if is_tmk(p)]
    read = dict(zip(tmk, read_many(tmk)))
    extra = dict(zip(side, read_many(list(side.values()))))
    out = []
    for p in expanded:
        if p in read:
            out.append(Signatures(read[p], extra.get(p)))
        else:
            if hash_video is None:
                raise ValueError(f"{p}: not a .tmk file and no video hasher given")
            out.append(hash_video(p))
    return out
