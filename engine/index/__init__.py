"""Persistent sharded index of TMK signatures: faiss level-1, batched level-2, duplicate clusters.

Names are resolved lazily, so importing `engine.index.manifest` (e.g. for `vmatch index info`)
does not import torch or faiss.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VideoIndex": "engine.index.index",
    "Match": "engine.index.snapshot",
    "QueryStats": "engine.index.snapshot",
    "shard_of": "engine.index.shards",
    "connected_components": "engine.index.cluster",
    "FORMAT_VERSION": "engine.index.manifest",
    "VideoIndexError": "engine.index.manifest",
    "IndexCorruptError": "engine.index.manifest",
    "IndexFormatError": "engine.index.manifest",
    "IndexLockedError": "engine.index.manifest",
    "IndexSnapshot": "engine.index.snapshot",
    "IndexWriter": "engine.index.writer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'engine.index' has no attribute {name!r}")
