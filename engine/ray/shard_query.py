"""Sharded queries on Ray: one actor serves each index shard; needle batches fan out, results merge.

Each `ShardServer` opens the index restricted to its shard (`ShardView`: the other shards look
empty), so it maps and searches only that shard's files, on its own GPU where the cluster has
GPUs.  Per needle, the union of the shards' matches, sorted like `VideoIndex.query` sorts them
(level-2, then level-1 descending, then id) and cut to `top`, is the local query's answer: every
pair is scored by exactly one shard, and a needle's global top-k is within the shards' top-k.
"""
from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any, Sequence

from engine.features import TmkFeatures
from engine.index import Match, VideoIndex
from engine.index.snapshot import IndexSnapshot
from engine.ray.session import RaySession, connect, ray_config
from engine.errors import check_compatible


def ShardView(path: str | os.PathLike[str], shard: int, **kw: Any) -> IndexSnapshot:  # noqa: N802
    """A read-only view of one shard's segments (the earlier class name; now a snapshot constructor)."""
    return IndexSnapshot.shard(path, shard, **kw)


class ShardServer:
    """One shard of an index, queried by needle batches (the body of a Ray actor)."""

    def __init__(self, path: str, shard: int, device: str = "auto", verify_reads: bool = True,
                 batch_rows: int = 512, torch_threads: int = 1) -> None:
        import torch

        torch.set_num_threads(max(1, int(torch_threads)))
        # the snapshot maps the files and builds the searcher now, not on the first query
        self.view = IndexSnapshot.shard(path, shard, device=device, verify_reads=verify_reads, batch_rows=batch_rows)

    def ready(self) -> dict[str, Any]:
        return {"shard": self.view.shard_index, "items": len(self.view), "device": str(self.view.device),
                "pid": os.getpid()}

    def query(self, needles: Sequence[TmkFeatures], c1: float, c2: float, top: int | None) -> list[list[Match]]:
        return self.view.query(needles, c1, c2, top)


def merge(parts: Sequence[Sequence[list[Match]]], top: int | None) -> list[list[Match]]:
    """Per needle, the shards' matches in VideoIndex.query order, at most `top`."""
    if not parts:
        return []
    out: list[list[Match]] = []
    for per_needle in zip(*parts):
        lst = [m for shard_matches in per_needle for m in shard_matches]
        lst.sort(key=lambda mt: (-mt.level2, -mt.level1, mt.id))
        out.append(lst[:top] if top is not None else lst)
    return out


class ShardedQuery:
    """Shard actors of one index on Ray (start once, query many times, then `close`)."""

    def __init__(self, index: str | os.PathLike[str], ray_cfg: dict[str, Any] | None = None,
                 device: str = "auto", verify_reads: bool = True, batch_rows: int = 512) -> None:
        import ray

        self.rc = ray_config(ray_cfg or {})
        self.index = str(index)
        probe = VideoIndex(self.index, device="cpu")  # checks the path, reads the manifest
        self.params, shards = probe.params, probe.manifest.shards
        self.session: RaySession = connect(self.rc["address"], self.rc["num_cpus"], self.rc["num_gpus"],
                                           self.rc["namespace"])
        try:
            gpus = 0.0
            if self.session.gpus > 0 and device != "cpu":
                gpus = min(float(self.rc["query_gpus_per_shard"]), self.session.gpus / shards)
            cls = ray.remote(ShardServer).options(num_cpus=0, num_gpus=gpus, scheduling_strategy="SPREAD",
                                                  max_restarts=2, max_task_retries=2)
            root = str(Path(self.index).resolve())
            dev = device if gpus > 0 or device == "cpu" else "cpu"
            self.actors = [cls.remote(root, s, dev, verify_reads, batch_rows, self.rc["torch_threads"])
                           for s in range(shards)]
            self.shards = ray.get([a.ready.remote() for a in self.actors])
        except BaseException:
            self.session.close()
            raise

    def query(self, needles: Sequence[TmkFeatures], c1: float = 0.7, c2: float = 0.7,
              top: int | None = None) -> list[list[Match]]:
        """Same answers as VideoIndex(index).query(needles, c1, c2, top)."""
        import ray

        for f in needles:
            check_compatible(self.params, f.params, f.name or "<needle>", "the index's")
        batch = max(1, int(self.rc["query_batch"]))
        out: list[list[Match]] = []
        inflight: deque[list[Any]] = deque()
        results: dict[int, list[list[Match]]] = {}
        starts = list(range(0, len(needles), batch))

        def collect() -> None:
            refs = inflight.popleft()
            s = refs.pop()  # the batch start was stashed last
            results[s] = merge(ray.get(refs), top)

        for s in starts:
            chunk = ray.put(list(needles[s:s + batch]))
            inflight.append([a.query.remote(chunk, c1, c2, top) for a in self.actors] + [s])
            if len(inflight) > 2:  # bounded fan-out: two batches in flight
                collect()
        while inflight:
            collect()
        for s in starts:
            out.extend(results.pop(s))
        return out

    def close(self) -> None:
        import ray

        for a in getattr(self, "actors", []):
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001
                pass
        self.session.close()

    def __enter__(self) -> "ShardedQuery":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def query_on_ray(index: str | os.PathLike[str], needles: Sequence[TmkFeatures], c1: float, c2: float,
                 top: int | None = None, ray_cfg: dict[str, Any] | None = None, **open_kw: Any) -> list[list[Match]]:
    """One sharded query (starts or joins Ray, queries, stops what it started)."""
    with ShardedQuery(index, ray_cfg, **open_kw) as sq:
        return sq.query(needles, c1, c2, top)
