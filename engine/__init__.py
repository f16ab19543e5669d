"""vmatch engine: reference-exact TMK+PDQF hashing, `.tmk` I/O, scoring, a persistent index.

The public API is what this module exports (the README's "Python API" uses only these names);
they are resolved lazily, so ``import engine`` stays cheap::

    from engine import hash_video, read_tmk, write_tmk, Scorer, VideoIndex, Match, VmatchError

Submodules (engine.decode, engine.index, engine.ray, ...) hold the rest; they are not
promised to stay where they are.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # hashing
    "VideoHasher": "engine.hasher",
    "hash_video": "engine.hasher",
    "VideoDecoder": "engine.decode",
    # signatures and .tmk I/O
    "TmkFeatures": "engine.features",
    "FeatureBatch": "engine.features",
    "TmkParams": "kernels.params",
    "DEFAULT_PARAMS": "kernels.params",
    "read_tmk": "engine.tmkfile",
    "write_tmk": "engine.tmkfile",
    "read_many": "engine.tmkfile",
    "read_batch": "engine.tmkfile",
    "to_bytes": "engine.tmkfile",
    "from_bytes": "engine.tmkfile",
    # scoring
    "Scorer": "engine.scoring",
    "ScoreResult": "engine.scoring",
    "score_pair": "engine.scoring",
    "score_one_to_many": "engine.scoring",
    "check_compatible": "engine.errors",
    # the index
    "VideoIndex": "engine.index",
    "Match": "engine.index",
    "IndexSnapshot": "engine.index",
    "IndexWriter": "engine.index",
    # configuration
    "Config": "engine.config",
    "load_config": "engine.config",
    # errors
    "VmatchError": "engine.errors",
    "InputError": "engine.errors",
    "FormatError": "engine.errors",
    "TmkFormatError": "engine.tmkfile",
    "IncompatibleError": "engine.errors",
    "DecodeError": "engine.errors",
    "DecodeTimeout": "engine.errors",
    "StorageError": "engine.errors",
    "ConfigError": "engine.errors",
    "VideoIndexError": "engine.index",
    "IndexCorruptError": "engine.index",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
