"""Persistent sharded index of TMK signatures: faiss level-1, batched level-2, duplicate clusters."""
from engine.index.cluster import connected_components
from engine.index.index import Match, QueryStats, VideoIndex, shard_of
from engine.index.manifest import (FORMAT_VERSION, IndexCorruptError, IndexFormatError, IndexLockedError,
                                   VideoIndexError)
from engine.index.snapshot import IndexSnapshot, IndexWriter

__all__ = ["VideoIndex", "Match", "QueryStats", "shard_of", "connected_components", "FORMAT_VERSION",
           "VideoIndexError", "IndexCorruptError", "IndexFormatError", "IndexLockedError",
           "IndexSnapshot", "IndexWriter"]
