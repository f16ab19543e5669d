"""Needles for a query: `.tmk` files (read in parallel), folders of them, or videos (hashed)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from engine.errors import check_compatible
from engine.features import Signatures, TmkFeatures
from engine.inputs import check_id, is_tmk  # noqa: F401  (is_tmk importable from here as before)
from engine.tmkfile import iter_tmk_paths, read_many
from kernels.params import TmkParams


def load_needles(paths: Sequence[str | os.PathLike[str]],
                 hash_video: Callable[[Path], TmkFeatures] | None = None,
                 params: TmkParams | None = None) -> list[TmkFeatures]:
    """Signatures named by file stem, in argument order (folders expand to their .tmk files).

    Anything that is not a `.tmk` file is a video, hashed with `hash_video` (required then).
    With `params` (the index's), a needle of other parameters is an IncompatibleError naming its file.
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
        check_id(out[-1].name, p)  # needle names are printed in TSV: no control characters
        if params is not None:
            check_compatible(params, out[-1].params, p, "the index's")
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
