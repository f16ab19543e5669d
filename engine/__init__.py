"""vmatch engine: decoding, hashing pipeline, `.tmk` I/O, index, matching, Ray and CLI.

The common entry points are importable from here (resolved lazily, so `import engine`
stays cheap)::

    from engine import hash_video, read_tmk, write_tmk, Scorer
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TmkFeatures": "engine.features",
    "FeatureBatch": "engine.features",
    "read_tmk": "engine.tmkfile",
    "write_tmk": "engine.tmkfile",
    "read_many": "engine.tmkfile",
    "read_batch": "engine.tmkfile",
    "TmkFormatError": "engine.tmkfile",
    "VideoHasher": "engine.hasher",
    "hash_video": "engine.hasher",
    "DecodeError": "engine.decode",
    "VideoDecoder": "engine.decode",
    "Scorer": "engine.scoring",
    "ScoreResult": "engine.scoring",
    "score_pair": "engine.scoring",
    "score_one_to_many": "engine.scoring",
    "load_config": "engine.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
